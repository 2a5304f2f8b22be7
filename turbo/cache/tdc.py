"""Temporal Delta Cache (ALGORITHMS.md §7): reuse the residual of a span of consecutive transformer blocks from its
last computed steps while it is predicted accurately enough.

Built on diffusers' hook machinery, like its FirstBlockCache / MagCache: one `TDCBlockHook` (a `ModelHook` with
`new_forward`) per denoising block, all hooks of one transformer sharing one `BranchStates` (a diffusers
`StateManager`) whose per-branch `BranchCache` holds, per span:

* spans: `span` consecutive blocks each (the default 0: one span of all the blocks, i.e. a whole-stack cache like
  MagCache's; 1: per block, the first TDC when `aligned` and `extrapolate` are off too). A span's residual is its last
  block's output − its first block's input (hidden states [B, S, C]; HunyuanVideo blocks also the text stream [B, L,
  C]), in the blocks' output dtype;
* `residuals[k]` from the span's last computed step and, with `extrapolate` (default), `slopes[k]`, its change per step
  between its last two computations: a skip `j` steps after the last computation returns input + residual + j · slope
  (first-order extrapolation); without `extrapolate`, input + residual (hold);
* `rate[k]`, the stability signal, a relative L1 per step, measured at every computation after the first (fp32 sums over
  every element of every stream): with `extrapolate`, ε = Σ|r − r̂| / Σ|r̂| / gap, how far the extrapolation r̂ from the
  two previous computations missed the residual r just computed (at the second computation, with no extrapolation yet, Γ
  below stands in); without, Γ = Σ|r_new − r_old| / Σ|r_old| / gap, the residual's change; gap = steps between the two
  computations. With `extrapolate` both are measured and the span's next skips use the predictor that missed less
  (`hold[k]`: Γ < ε holds the residual and takes Γ as the rate): extrapolating two noisy residuals amplifies their
  noise, so when the residual flickers from step to step more than it drifts — quantised linears or attention, whose
  per-token scales change every step — holding is the better prediction. (Measured on ToyWorld, 8 prompts: with
  `quant="fp8"` the extrapolation miss never fell under 0.056 per step, so the extrapolating cache skipped nothing;
  with the choice it skips 45.5 % at 34.9 dB against the unquantised video, FP8 alone being 35.0 dB; without
  quantisation the choice moved the default from 59.5 % / 45.3 dB to 59.7 % / 49.2 dB);
* the skip run: consecutive skips and the accumulated predicted error E (Σ over the run of each skip's predicted error:
  ε · j with extrapolation — the miss grows with the distance j from the last computation —, Γ without).

Decision for span k at step s (taken at its first block, in the hook, outside compilation, from Python floats only):
skip iff warmup_steps ≤ s < total − final_steps, the predicted error e is known, e < threshold, skips < max_skips
and E + e ≤ max_error. With `aligned` (default) one decision per step and span serves every CFG branch: the first
branch to reach (s, k) takes it from the largest e over the branches of the request (each branch still keeps and
extrapolates its own residual), the skip run is shared, and the other branches reuse it — both guidance branches
are then stale at the same steps, so their errors largely cancel in cond − uncond instead of being amplified by
the guidance scale. A skip returns the prediction at the span's first block and passes the streams through its
other blocks; a computation runs the blocks and keeps the new residual at the span's last block. threshold 0
never skips and keeps nothing (bit-identical to no cache). The defaults (span 0, aligned, extrapolate,
threshold 0.05, max error 0.1, ≤ 4 skips in a row, not in the first 5 / last 2 steps) come from the ToyWorld
measurements in benchmarks/results/2026-11-30-cpu-toyworld-tdc-v2.md: on ToyWorld (8 prompts, 50 steps + CFG 5)
59.5 % of block evaluations skipped at 45.3 dB same-seed PSNR, judge readings unchanged, where diffusers' MagCache
0.12 skipped 54.0 % at 42.7 dB and the first TDC (per block, decisions per branch, held residuals, ≤ 2 skips:
span 1, aligned off, extrapolate off, max_skips 2) 51.3 % at 33.2 dB; each of span 0, aligned and extrapolate gained
on its own.

Memory: per branch and span the residual (+ the slope with `extrapolate`): with the defaults 2 hidden states per CFG
branch per transformer, whatever the depth: Wan2.1-1.3B 480p (32,760 tokens × 1536 × bf16 = 100.6 MB) 4 × 100.6 MB =
0.40 GB; Wan2.1-14B 720p (75,600 × 5120 × bf16 = 774 MB) 4 × 774 MB = 3.1 GB (computed, not measured; the per-block TDC
held 6.0 GB and 62 GB), plus transients: about three hidden states while a span's residual, slope and ε are computed,
and the span's input, kept alive until its last block. `max_memory_gb` (default 8) caps what one transformer holds: a
span whose first residual would pass it is not cached in that request (always computed; with aligned decisions freed in
every branch), with a warning. The last step's residuals are freed at once. `TransformerCache.peak_bytes` (in
`pipe.turbo`'s cache line) is the most held at once.

Where the step, branch and request come from: the step hook (turbo/adapters/step_hook.py) has already published
them on the shared `TurboRuntime` before the blocks run: `runtime.step_index`, `runtime.branch` (the pipeline's
`cache_context` name: "cond"/"uncond", or "default") and `runtime.stats.requests` (incremented when a new generation
starts); a branch's cache (and the shared skip runs) reset when that number changes. The total step count is the
`cache_context`'s `num_inference_steps` (Wan pipelines pass it) or the length of the pipeline scheduler's
`timesteps`.

Same decision on every rank: step, branch and total are values every rank shares; the rate sums are the only
tensor-derived inputs and, when `torch.distributed` is initialised with more than one rank, they are all-reduced
(sum) over the default group before the ratio is taken (so under context parallelism the sums cover the whole
sequence, not one rank's shard). Every rank must therefore run the same transformer calls, as context parallelism
does. A branch's pending rate sums are read back in one batched transfer at the next decision that reads that
branch's rate (at most one host sync per branch and forward, not per block).

Compilation: `new_forward` is `torch.compiler.disable(recursive=False)`: the hook's own frame (the decision, the
residual arithmetic) runs eagerly, while the block's original forward it calls is still compiled (regional
compilation keeps one graph for all blocks)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import torch
from diffusers.hooks.hooks import BaseState, StateManager

from ..block_hooks import BlockHook, install_block_hooks, l1_sums, remove_block_hooks

HOOK_NAME = "turbo.tdc"
DEFAULT_BRANCH = "default"
_EPS = 1e-12
logger = logging.getLogger("turbo")


@dataclass(frozen=True)
class TDCSettings:
    """The decision parameters (from `CacheConfig`)."""

    threshold: float
    max_error: float
    max_skips: int
    warmup_steps: int
    final_steps: int
    span: int = 0  # consecutive blocks per span (one residual, one decision); 0: all blocks
    aligned: bool = True  # one decision per step and span, shared by the CFG branches
    extrapolate: bool = True  # first-order extrapolation; its measured error is the stability signal
    max_memory_gb: float = 8.0  # cap on the residual memory of one transformer (all branches)


def may_skip(settings: TDCSettings, step: int, total: int | None, rate: float | None, skips: int,
             error: float) -> bool:
    """The skip rule for one span (see the module docstring); pure, on Python numbers. `rate` is the predicted error
    of this skip (Γ when holding, ε · steps ahead when extrapolating)."""
    if step < settings.warmup_steps or (total is not None and step >= total - settings.final_steps):
        return False
    if rate is None or skips >= settings.max_skips:
        return False
    return rate < settings.threshold and error + rate <= settings.max_error


def make_spans(num_blocks: int, span: int) -> list[tuple[int, int]]:
    """[(first, last)] block indices of each span: `span` consecutive blocks each (0: one span of all blocks)."""
    size = num_blocks if span <= 0 else span
    return [(start, min(start + size, num_blocks) - 1) for start in range(0, num_blocks, size)]


class RunState:
    """Per span: the current skip run (consecutive skips, accumulated predicted error) and the decision taken at the
    span's current step (what the other CFG branches of that step reuse when decisions are aligned)."""

    def __init__(self, num_spans: int):
        self.num_spans = num_spans
        self.reset()

    def reset(self) -> None:
        n = self.num_spans
        self.request: int | None = None
        self.skips = [0] * n
        self.error = [0.0] * n
        self.decided: list[tuple[int | None, bool]] = [(None, False)] * n  # (step, skip) per span

    def record(self, span: int, step: int, skip: bool, predicted: float | None) -> None:
        if skip:
            self.skips[span] += 1
            self.error[span] += predicted
        else:
            self.skips[span], self.error[span] = 0, 0.0
        self.decided[span] = (step, skip)


class BranchCache(BaseState):
    """Cache of one CFG branch of one transformer: per-span residual (and per-step slope), stability rate, skip run;
    reset per request."""

    def __init__(self, num_spans: int):
        self.num_spans = num_spans
        self.reset()

    def reset(self, *args, **kwargs) -> None:
        n = self.num_spans
        self.request: int | None = None
        self.residuals: list[tuple[torch.Tensor, ...] | None] = [None] * n
        self.slopes: list[tuple[torch.Tensor, ...] | None] = [None] * n  # residual change per step (extrapolation)
        self.computed_at: list[int | None] = [None] * n
        self.rate: list[float | None] = [None] * n  # the per-step miss of the predictor in use
        self.hold = [True] * n  # predictor in use: hold the residual (True) or extrapolate it
        self.pending: dict[int, tuple[torch.Tensor, int]] = {}  # span → ([Σ|r − r̂|, Σ|r̂|, Σ|r − r_old|,
        #                                                        Σ|r_old|] fp32, step gap)
        self.run = RunState(n)  # the skip runs when decisions are per branch
        self.refused = [False] * n  # span not cached in this request: over the memory cap
        self.inputs: list[tuple[torch.Tensor, ...] | None] = [None] * n  # span inputs of the current forward
        self.skipping = [False] * n  # whether the span is skipped in the current forward

    def held_bytes(self, per_residual: int) -> int:
        """Bytes this branch holds, counting `per_residual` tensors (residual, and slope once it exists) per kept
        residual stream."""
        return per_residual * sum(t.numel() * t.element_size() for ts in self.residuals if ts for t in ts)

    def resolve_pending(self) -> None:
        """Turn the pending rate sums into floats: one batched device→host transfer (and one all-reduce when
        distributed), so every rank sees the same numbers."""
        if not self.pending:
            return
        spans = list(self.pending)
        sums = torch.stack([self.pending[s][0] for s in spans])  # [n, 4] fp32
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(sums)
        for span, (miss, norm, change, old) in zip(spans, sums.tolist(), strict=True):
            gap = max(self.pending[span][1], 1)
            extrapolated, held = miss / max(norm, _EPS) / gap, change / max(old, _EPS) / gap
            self.hold[span] = held < extrapolated
            self.rate[span] = held if self.hold[span] else extrapolated
        self.pending.clear()

    def predicted_error(self, settings: TDCSettings, span: int, step: int) -> float | None:
        """Predicted relative error of skipping `span` at `step` (None: not known yet)."""
        self.resolve_pending()
        rate = self.rate[span]
        if rate is None or not settings.extrapolate:
            return rate
        return rate * (step - self.computed_at[span])


class BranchStates(StateManager):
    """diffusers `StateManager` of `BranchCache`s keyed by CFG branch. `cache_context` reaches it (the hooks are
    stateful) and `reset_stateful_hooks` clears it; `for_branch` also serves calls made without a cache context."""

    def for_branch(self, name: str) -> BranchCache:
        if name not in self._state_cache:
            self._state_cache[name] = self._state_cls(*self._init_args, **self._init_kwargs)
        return self._state_cache[name]


class TransformerCache:
    """The TDC of one transformer: settings, spans, the shared branch states, the block hooks and what undo needs.
    `counts[branch]` = Counter(computed=…, skipped=…) of block evaluations since install (all requests);
    `peak_bytes`: the most residual memory held at once (all branches); `refused`: span residuals not kept because
    of `max_memory_gb` (since install)."""

    def __init__(self, model: torch.nn.Module, blocks: list[torch.nn.Module], settings: TDCSettings, runtime,
                 total_steps):
        self.model = model
        self.blocks = blocks
        self.settings = settings
        self.runtime = runtime
        self.total_steps = total_steps  # () -> int | None: the scheduler's step count
        self.spans = make_spans(len(blocks), settings.span)
        self.span_of = [i for i, (first, last) in enumerate(self.spans) for _ in range(first, last + 1)]
        self.states = BranchStates(BranchCache, (len(self.spans),))
        self.shared = RunState(len(self.spans))  # the skip runs when decisions are aligned across branches
        self.counts: dict[str, Counter] = {}
        self.skipped_at: dict[str, list[tuple[int, int]]] = {}  # branch → (step, block) of each skip, last request
        self.peak_bytes = 0
        self.refused = 0
        self.installed: list[tuple[torch.nn.Module, bool, bool]] = []  # (block, had registry, had forward attr)

    # ---------------------------------------------------------------------------------------------- per forward
    def branch_cache(self) -> tuple[str, BranchCache]:
        branch = self.runtime.branch or DEFAULT_BRANCH
        state = self.states.for_branch(branch)
        request = self.runtime.stats.requests
        if state.request != request:
            state.reset()
            state.request = request
            self.skipped_at[branch] = []
        if self.shared.request != request:
            self.shared.reset()
            self.shared.request = request
        return branch, state

    def total(self) -> int | None:
        context = self.states._context
        if context is not None and context.num_inference_steps is not None:
            return int(context.num_inference_steps)
        return self.total_steps()

    def decide(self, state: BranchCache, span: int, step: int) -> bool:
        """Skip span `span` of this branch at `step`? Aligned: the first branch to reach (step, span) decides from
        every branch's predicted error (the largest) and the others reuse that decision."""
        settings = self.settings
        if settings.threshold <= 0 or state.residuals[span] is None:
            return False
        if not settings.aligned:
            predicted = state.predicted_error(settings, span, step)
            run = state.run
        else:
            run = self.shared
            decided_step, skip = run.decided[span]
            if decided_step == step:
                return skip
            errors = [other.predicted_error(settings, span, step) if other.residuals[span] is not None else None
                      for other in self.states._state_cache.values() if other.request == state.request]
            predicted = None if any(e is None for e in errors) else max(errors)
        skip = may_skip(settings, step, self.total(), predicted, run.skips[span], run.error[span])
        run.record(span, step, skip, predicted)
        return skip

    def store(self, state: BranchCache, span: int, step: int, residual: tuple[torch.Tensor, ...]) -> None:
        """Keep a computed span residual: measure the rate against the previous one (pending: read at the next
        decision), update the slope; refuse a new span over the memory cap."""
        settings = self.settings
        old = state.residuals[span]
        if old is None:
            held = self.held_bytes()
            need = sum(r.numel() * r.element_size() for r in residual) * (2 if settings.extrapolate else 1)
            if held + need > settings.max_memory_gb * 2**30:
                if not state.refused[span]:
                    self.refused += 1
                    if self.refused == 1:
                        logger.warning("turbo: TDC keeps no residual for span %d (%.0f MB): the cache would pass "
                                       "cache_max_memory_gb=%g; that span is always computed", span, need / 2**20,
                                       settings.max_memory_gb)
                state.refused[span] = True
                if settings.aligned:  # a span no branch can skip: free it everywhere
                    for other in self.states._state_cache.values():
                        if other.request == state.request:
                            other.residuals[span] = other.slopes[span] = None
                            other.refused[span] = True
                return
            state.residuals[span], state.computed_at[span] = residual, step
            self.peak_bytes = max(self.peak_bytes, held + need)
            return
        gap = max(step - state.computed_at[span], 1)
        slope = state.slopes[span]
        change = l1_sums(residual, old)  # Γ: the residual's change (the miss of holding it)
        if not settings.extrapolate or slope is None:  # no extrapolation (yet): Γ for both predictors
            state.pending[span] = (torch.cat([change, change]), gap)
        else:  # ε: how far off the extrapolation to this step was, beside Γ
            predicted = tuple(torch.add(o, d, alpha=gap) for o, d in zip(old, slope, strict=True))
            state.pending[span] = (torch.cat([l1_sums(residual, predicted), change]), gap)
        if settings.extrapolate:
            state.slopes[span] = tuple((r - o) / gap for r, o in zip(residual, old, strict=True))
        state.residuals[span], state.computed_at[span] = residual, step

    # ---------------------------------------------------------------------------------------------- install/undo
    def install(self) -> None:
        install_block_hooks(self.model, self.blocks, lambda index: TDCBlockHook(self, index), HOOK_NAME, self.installed)

    def remove(self) -> None:
        remove_block_hooks(self.model, HOOK_NAME, self.installed)
        self.states.reset()
        self.shared.reset()

    def held_bytes(self) -> int:
        """Residual memory of all branches, a slope counted from the first residual on (it follows at the next
        computation)."""
        per_residual = 2 if self.settings.extrapolate else 1
        return sum(state.held_bytes(per_residual) for state in self.states._state_cache.values())

    def skipped_fraction(self) -> float:
        total = sum(c["computed"] + c["skipped"] for c in self.counts.values())
        return sum(c["skipped"] for c in self.counts.values()) / total if total else 0.0


class TDCBlockHook(BlockHook):
    """Per-block hook. The first block of a span decides; a skipped span returns span input + predicted residual at
    its first block and passes the streams through its other blocks; a computed span keeps output − span input at
    its last block."""

    def __init__(self, cache: TransformerCache, index: int):
        super().__init__(cache, index)
        self.cache = cache
        self.span = cache.span_of[index]
        first, last = cache.spans[self.span]
        self.first, self.last = index == first, index == last

    @torch.compiler.disable(recursive=False)
    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        meta = self._metadata
        inputs = [meta._get_parameter_from_args_kwargs(meta.hidden_states_argument_name, args, kwargs)]
        if meta.return_encoder_hidden_states_index is not None:
            inputs.append(meta._get_parameter_from_args_kwargs(meta.encoder_hidden_states_argument_name, args, kwargs))
        cache, span, settings = self.cache, self.span, self.cache.settings
        branch, state = cache.branch_cache()
        counts = cache.counts.setdefault(branch, Counter(computed=0, skipped=0))
        step = cache.runtime.step_index
        if self.first:
            state.skipping[span] = cache.decide(state, span, step)
            state.inputs[span] = tuple(inputs) if settings.threshold > 0 and not state.refused[span] else None
        if state.skipping[span]:
            cache.skipped_at[branch].append((step, self.index))
            counts["skipped"] += 1
            if not self.first:  # the span's first block already added the whole residual
                return self._pack(inputs)
            residual, slope = state.residuals[span], state.slopes[span]
            if slope is None or state.hold[span]:  # holding (only one computation so far, or it missed less)
                return self._pack([x + r for x, r in zip(inputs, residual, strict=True)])
            ahead = step - state.computed_at[span]
            return self._pack([x + torch.add(r, d, alpha=ahead) for x, r, d in zip(inputs, residual, slope,
                                                                                    strict=True)])

        output = self.fn_ref.original_forward(*args, **kwargs)
        counts["computed"] += 1
        if self.last and state.inputs[span] is not None:  # threshold 0 never skips: keeps nothing
            outs = self._unpack(output)
            residual = tuple((o - x).detach() for o, x in zip(outs, state.inputs[span], strict=True))
            state.inputs[span] = None
            total = cache.total()
            if total is not None and step >= total - 1:  # nothing left to reuse it for: free it now
                state.residuals[span] = state.slopes[span] = None
            else:
                cache.store(state, span, step, residual)
        return output

    def _unpack(self, output) -> list[torch.Tensor]:
        meta = self._metadata
        if not isinstance(output, tuple):
            return [output]
        outs = [output[meta.return_hidden_states_index]]
        if meta.return_encoder_hidden_states_index is not None:
            outs.append(output[meta.return_encoder_hidden_states_index])
        return outs

    def _pack(self, outputs: list[torch.Tensor]):
        meta = self._metadata
        if meta.return_encoder_hidden_states_index is None:
            return outputs[0]
        packed = [None, None]
        packed[meta.return_hidden_states_index] = outputs[0]
        packed[meta.return_encoder_hidden_states_index] = outputs[1]
        return tuple(packed)

    def reset_state(self, module):
        self.states.reset()
        self.cache.shared.reset()
        return module
