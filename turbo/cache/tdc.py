"""Temporal Delta Cache (ALGORITHMS.md §7): per transformer block, reuse the block's residual from its last computed
step while the residual is predicted stable.

Built on diffusers' hook machinery, like its FirstBlockCache / MagCache: one `TDCBlockHook` (a `ModelHook` with
`new_forward`) per denoising block, all hooks of one transformer sharing one `BranchStates` (a diffusers
`StateManager`) whose per-branch `BranchCache` holds, per block:

* `residuals[l]`: tuple of the block's output − input tensors (hidden states [B, S, C]; HunyuanVideo blocks also the
  text stream [B, L, C]) from its last computed step, in the block's output dtype;
* `rate[l]`: Γ per step, the relative L1 change of that residual between its last two computed steps,
  Σ|r_new − r_old| / Σ|r_old| (over every element of every output stream, fp32 sums), divided by the number of steps
  between those two computations (spec: "its change over the last two computed steps"; the division, which makes
  Γ a per-step drift when a skip run lies between the two computations, is our choice where the spec is silent);
* `skips[l]` (consecutive skips) and `error[l]` (accumulated predicted error E = Σ Γ over the current skip run).

Decision for block l at step s (taken in the hook, outside compilation, from Python floats only):
skip iff warmup_steps ≤ s < total − final_steps, Γ is known (two computed steps), Γ < threshold, skips < max_skips
and E + Γ ≤ max_error. A skip returns input + cached residual (E += Γ, skips += 1); a computation runs the block
and resets E and skips. threshold 0 never skips (bit-identical to no cache).

Where the step, branch and request come from: the step hook (turbo/adapters/step_hook.py) has already published
them on the shared `TurboRuntime` before the blocks run: `runtime.step_index`, `runtime.branch` (the pipeline's
`cache_context` name: "cond"/"uncond", or "default") and `runtime.stats.requests` (incremented when a new generation
starts); a branch's cache resets when that number changes. The total step count is the `cache_context`'s
`num_inference_steps` (Wan pipelines pass it) or the length of the pipeline scheduler's `timesteps`.

Same decision on every rank: step, branch and total are values every rank shares; the Γ sums are the only
tensor-derived inputs and, when `torch.distributed` is initialised with more than one rank, they are all-reduced
(sum) over the default group before the ratio is taken (so under context parallelism the sums cover the whole
sequence, not one rank's shard). Every rank must therefore run the same transformer calls, as context parallelism
does. Γ sums of one forward are read back in one batched transfer at the next forward of that branch (one host sync
per forward, not per block).

Compilation: `new_forward` is `torch.compiler.disable(recursive=False)`: the hook's own frame (the decision, the
residual arithmetic) runs eagerly, while the block's original forward it calls is still compiled (regional
compilation keeps one graph for all blocks)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from diffusers.hooks.hooks import BaseState, StateManager

from ..block_hooks import BlockHook, install_block_hooks, l1_sums, remove_block_hooks

HOOK_NAME = "turbo.tdc"
DEFAULT_BRANCH = "default"
_EPS = 1e-12


@dataclass(frozen=True)
class TDCSettings:
    """The decision parameters (from `CacheConfig`)."""

    threshold: float
    max_error: float
    max_skips: int
    warmup_steps: int
    final_steps: int


def may_skip(settings: TDCSettings, step: int, total: int | None, rate: float | None, skips: int,
             error: float) -> bool:
    """The skip rule for one block (see the module docstring); pure, on Python numbers."""
    if step < settings.warmup_steps or (total is not None and step >= total - settings.final_steps):
        return False
    if rate is None or skips >= settings.max_skips:
        return False
    return rate < settings.threshold and error + rate <= settings.max_error


class BranchCache(BaseState):
    """Cache of one CFG branch of one transformer: per-block residuals, Γ, skip run; reset per request."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.reset()

    def reset(self, *args, **kwargs) -> None:
        n = self.num_blocks
        self.request: int | None = None
        self.residuals: list[tuple[torch.Tensor, ...] | None] = [None] * n
        self.computed_at: list[int | None] = [None] * n
        self.rate: list[float | None] = [None] * n
        self.pending: dict[int, tuple[torch.Tensor, int]] = {}  # block → ([Σ|Δr|, Σ|r_old|] fp32, step gap)
        self.skips = [0] * n
        self.error = [0.0] * n

    def resolve_pending(self) -> None:
        """Turn the pending Γ sums into floats: one batched device→host transfer (and one all-reduce when
        distributed), so every rank sees the same numbers."""
        if not self.pending:
            return
        blocks = list(self.pending)
        sums = torch.stack([self.pending[b][0] for b in blocks])  # [n, 2] fp32
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(sums)
        for block, (delta, old) in zip(blocks, sums.tolist(), strict=True):
            gap = max(self.pending[block][1], 1)
            self.rate[block] = delta / max(old, _EPS) / gap
        self.pending.clear()


class BranchStates(StateManager):
    """diffusers `StateManager` of `BranchCache`s keyed by CFG branch. `cache_context` reaches it (the hooks are
    stateful) and `reset_stateful_hooks` clears it; `for_branch` also serves calls made without a cache context."""

    def for_branch(self, name: str) -> BranchCache:
        if name not in self._state_cache:
            self._state_cache[name] = self._state_cls(*self._init_args, **self._init_kwargs)
        return self._state_cache[name]


class TransformerCache:
    """The TDC of one transformer: settings, the shared branch states, the block hooks and what undo needs.
    `counts[branch]` = Counter(computed=…, skipped=…) of block evaluations since install (all requests)."""

    def __init__(self, model: torch.nn.Module, blocks: list[torch.nn.Module], settings: TDCSettings, runtime,
                 total_steps):
        self.model = model
        self.blocks = blocks
        self.settings = settings
        self.runtime = runtime
        self.total_steps = total_steps  # () -> int | None: the scheduler's step count
        self.states = BranchStates(BranchCache, (len(blocks),))
        self.counts: dict[str, Counter] = {}
        self.skipped_at: dict[str, list[tuple[int, int]]] = {}  # branch → (step, block) of each skip, last request
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
        return branch, state

    def total(self) -> int | None:
        context = self.states._context
        if context is not None and context.num_inference_steps is not None:
            return int(context.num_inference_steps)
        return self.total_steps()

    # ---------------------------------------------------------------------------------------------- install/undo
    def install(self) -> None:
        install_block_hooks(self.model, self.blocks, lambda index: TDCBlockHook(self, index), HOOK_NAME, self.installed)

    def remove(self) -> None:
        remove_block_hooks(self.model, HOOK_NAME, self.installed)
        self.states.reset()

    def skipped_fraction(self) -> float:
        total = sum(c["computed"] + c["skipped"] for c in self.counts.values())
        return sum(c["skipped"] for c in self.counts.values()) / total if total else 0.0


class TDCBlockHook(BlockHook):
    """Per-block hook: skip (input + cached residual) or compute (and cache output − input)."""

    def __init__(self, cache: TransformerCache, index: int):
        super().__init__(cache, index)
        self.cache = cache

    @torch.compiler.disable(recursive=False)
    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        meta = self._metadata
        inputs = [meta._get_parameter_from_args_kwargs(meta.hidden_states_argument_name, args, kwargs)]
        if meta.return_encoder_hidden_states_index is not None:
            inputs.append(meta._get_parameter_from_args_kwargs(meta.encoder_hidden_states_argument_name, args, kwargs))
        cache, index, settings = self.cache, self.index, self.cache.settings
        branch, state = cache.branch_cache()
        counts = cache.counts.setdefault(branch, Counter(computed=0, skipped=0))
        step = cache.runtime.step_index
        if settings.threshold > 0 and state.residuals[index] is not None:
            state.resolve_pending()
            if may_skip(settings, step, cache.total(), state.rate[index], state.skips[index], state.error[index]):
                state.skips[index] += 1
                state.error[index] += state.rate[index]
                cache.skipped_at[branch].append((step, index))
                counts["skipped"] += 1
                outputs = [x + r for x, r in zip(inputs, state.residuals[index], strict=True)]
                return self._pack(outputs)

        output = self.fn_ref.original_forward(*args, **kwargs)
        counts["computed"] += 1
        state.skips[index], state.error[index] = 0, 0.0
        if settings.threshold > 0:  # threshold 0 never skips: keep nothing
            outs = self._unpack(output)
            residual = tuple((o - x).detach() for o, x in zip(outs, inputs, strict=True))
            old = state.residuals[index]
            if old is not None:
                state.pending[index] = (l1_sums(residual, old), step - state.computed_at[index])
            state.residuals[index] = residual
            state.computed_at[index] = step
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
        return module
