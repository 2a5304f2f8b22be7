"""The precision router of `quant="nvfp4-mixed"` (6Bit-Diffusion's DMPQ) and its offline calibration.

Per denoising block a diffusers `ModelHook` (`RouterBlockHook`, built like TDC's, turbo/cache/tdc.py) shares one
`BranchStates` StateManager per transformer whose per-CFG-branch `BranchRoute` holds, per block, Γ of its last call:
Γ = Σ|out − in| / Σ|in| over every output stream (hidden states [B, S, C]; HunyuanVideo's dual-stream blocks also the
text stream), fp32 sums. Before the block's next call in the same branch the hook sets `precision` of every
`MixedLinear` inside the block (a plain attribute; the block itself branches on nothing else): "high" (INT8 W8A8) if
the predicted error α·Γ_prev + β exceeds `max_error`, else "low" (NVFP4 activations); "high" when Γ_prev is unknown
(the first step of a pipeline call in that branch). Step, branch and request come from the step hook's
`TurboRuntime` (`runtime.branch`, `runtime.step_index`, `runtime.stats.requests`), exactly as for TDC; a branch's
state resets when the request number changes. Γ sums stay on the device and are read back in one batched transfer
(all-reduced when torch.distributed runs with several ranks) at the branch's next forward.

Calibration (`calibrate_mixed`): the same hooks in "calibrate" mode run every block twice, with its linears at full
precision and on the "low" path, record (Γ_prev of that block and branch from the full-precision trajectory, E_rel =
Σ|out_low − out_full| / Σ|out_full|) for every call whose Γ_prev is known, and return the full-precision output (the
trajectory is the unquantised one, bit for bit). α, β: least squares of E_rel on Γ_prev. Samples = prompts × CFG
branches × blocks × (steps − 1)."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass

import torch
from diffusers.hooks.hooks import BaseState, StateManager
from torch import nn

from ..block_hooks import BlockHook, install_block_hooks, l1_sums, remove_block_hooks
from ..errors import TurboConfigError

HOOK_NAME = "turbo.quant.router"
DEFAULT_BRANCH = "default"
CALIBRATION_FILE = "turbo_mixed_calibration.json"
_EPS = 1e-12


@dataclass(frozen=True)
class RouterSettings:
    """The linear error model E ≈ α·Γ + β (from the calibration) and the error budget."""

    alpha: float
    beta: float
    max_error: float


def route(settings: RouterSettings, gamma: float | None) -> str:
    """"high" when Γ_prev is unknown or α·Γ_prev + β > max_error, else "low"; pure, on Python numbers."""
    if gamma is None:
        return "high"
    return "high" if settings.alpha * gamma + settings.beta > settings.max_error else "low"


class BranchRoute(BaseState):
    """Router state of one CFG branch of one transformer: Γ per block (last call), pending Γ sums; reset per request."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.reset()

    def reset(self, *args, **kwargs) -> None:
        self.request: int | None = None
        self.gamma: list[float | None] = [None] * self.num_blocks
        self.pending: dict[int, torch.Tensor] = {}  # block → [Σ|out − in|, Σ|in|] fp32, on the device

    def resolve_pending(self) -> None:
        """Pending Γ sums → floats in one device→host transfer (all-reduced over ranks when distributed)."""
        if not self.pending:
            return
        blocks = list(self.pending)
        sums = torch.stack([self.pending[b] for b in blocks])  # [n, 2] fp32
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(sums)
        for block, (delta, norm) in zip(blocks, sums.tolist(), strict=True):
            self.gamma[block] = delta / max(norm, _EPS)
        self.pending.clear()


class BranchStates(StateManager):
    """`BranchRoute`s keyed by CFG branch (diffusers StateManager: `reset_stateful_hooks` clears it)."""

    def for_branch(self, name: str) -> BranchRoute:
        if name not in self._state_cache:
            self._state_cache[name] = self._state_cls(*self._init_args, **self._init_kwargs)
        return self._state_cache[name]


class _CalibrationLinear(nn.Module):
    """Calibration only: the original linear and its `MixedLinear` ("low" path); `low` (plain attribute, set by the
    router hook outside the block) picks which one runs."""

    def __init__(self, linear: nn.Linear, mixed: nn.Module):
        super().__init__()
        self.linear, self.mixed = linear, mixed
        self.mixed.precision = "low"
        self.low = False

    def forward(self, x):
        return self.mixed(x) if self.low else self.linear(x)


class TransformerRouter:
    """The router of one transformer: settings, branch states, block hooks, undo information. `counts[branch]` =
    Counter(low=…, high=…) of block evaluations since install; `decided_at[branch]` = [(step, block, precision)] of
    the last request; in calibration mode (`settings` None) `samples` collects (Γ_prev, E_rel) pairs."""

    def __init__(self, model: nn.Module, blocks: list[nn.Module], switches: list[list[nn.Module]], runtime,
                 settings: RouterSettings | None):
        self.model = model
        self.blocks = blocks
        self.switches = switches  # per block: its MixedLinears (routing) or _CalibrationLinears (calibration)
        self.runtime = runtime
        self.settings = settings
        self.states = BranchStates(BranchRoute, (len(blocks),))
        self.counts: dict[str, Counter] = {}
        self.decided_at: dict[str, list[tuple[int, int, str]]] = {}
        self.samples: list[tuple[float, float]] = []
        self._pending_samples: list[tuple[float, torch.Tensor]] = []
        self.installed: list[tuple[nn.Module, bool, bool]] = []

    def branch_state(self) -> tuple[str, BranchRoute]:
        branch = self.runtime.branch or DEFAULT_BRANCH
        state = self.states.for_branch(branch)
        request = self.runtime.stats.requests
        if state.request != request:
            state.reset()
            state.request = request
            self.decided_at[branch] = []
        return branch, state

    def install(self) -> None:
        install_block_hooks(self.model, self.blocks, lambda index: RouterBlockHook(self, index), HOOK_NAME,
                            self.installed)

    def remove(self) -> None:
        remove_block_hooks(self.model, HOOK_NAME, self.installed)
        self.states.reset()

    def resolve_samples(self) -> None:
        """Calibration: the pending E_rel sums → floats (one transfer)."""
        if self._pending_samples:
            sums = torch.stack([s for _, s in self._pending_samples]).tolist()
            self.samples += [(g, d / max(n, _EPS)) for (g, _), (d, n) in zip(self._pending_samples, sums, strict=True)]
            self._pending_samples.clear()


class RouterBlockHook(BlockHook):
    """Per-block hook: set the block's precision from Γ_prev (routing) or run it twice and record (calibration)."""

    def __init__(self, router: TransformerRouter, index: int):
        super().__init__(router, index)
        self.router = router

    @torch.compiler.disable(recursive=False)
    def new_forward(self, module: nn.Module, *args, **kwargs):
        meta = self._metadata
        inputs = [meta._get_parameter_from_args_kwargs(meta.hidden_states_argument_name, args, kwargs)]
        if meta.return_encoder_hidden_states_index is not None:
            inputs.append(meta._get_parameter_from_args_kwargs(meta.encoder_hidden_states_argument_name, args, kwargs))
        router, index = self.router, self.index
        branch, state = router.branch_state()
        state.resolve_pending()
        gamma = state.gamma[index]
        if router.settings is None:  # calibration: full precision, then every linear on the low path
            output = self.fn_ref.original_forward(*args, **kwargs)
            full = self._unpack(output)
            if gamma is not None:
                for switch in router.switches[index]:
                    switch.low = True
                try:
                    low = self._unpack(self.fn_ref.original_forward(*args, **kwargs))
                finally:
                    for switch in router.switches[index]:
                        switch.low = False
                router._pending_samples.append((gamma, l1_sums(low, full)))
        else:
            precision = route(router.settings, gamma)
            for switch in router.switches[index]:
                switch.precision = precision
            router.counts.setdefault(branch, Counter(low=0, high=0))[precision] += 1
            router.decided_at[branch].append((router.runtime.step_index, index, precision))
            output = self.fn_ref.original_forward(*args, **kwargs)
            full = self._unpack(output)
        state.pending[index] = l1_sums(full, inputs)
        return output

    def _unpack(self, output) -> list[torch.Tensor]:
        meta = self._metadata
        if not isinstance(output, tuple):
            return [output]
        outs = [output[meta.return_hidden_states_index]]
        if meta.return_encoder_hidden_states_index is not None:
            outs.append(output[meta.return_encoder_hidden_states_index])
        return outs

    def reset_state(self, module):
        self.states.reset()
        return module


# ---------------------------------------------------------------------------------------------------- calibration


def model_fingerprint(model: nn.Module) -> dict:
    """What a calibration is valid for: {"class", "num_layers" (denoising blocks), "inner_dim", "linears" (a short
    hash of the [in, out] shapes of the block linears that become MixedLinear, in order)}."""
    from ..adapters import adapter_for
    from . import block_linears
    from .nvfp4 import nvfp4_ready

    blocks = adapter_for(model).denoising_blocks(model)
    shapes = [[m.in_features, m.out_features] for _, _, m in block_linears(blocks, weight_only=True)
              if nvfp4_ready(m.in_features)]
    config = getattr(model, "config", None)
    heads, head_dim = getattr(config, "num_attention_heads", None), getattr(config, "attention_head_dim", None)
    inner = int(heads * head_dim) if heads and head_dim else (shapes[0][0] if shapes else 0)
    digest = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:12]
    return {"class": type(model).__name__, "num_layers": len(blocks), "inner_dim": inner, "linears": digest}


def _describe(fingerprint: dict) -> str:
    return (f"{fingerprint.get('class')} ({fingerprint.get('num_layers')} blocks, inner dim "
            f"{fingerprint.get('inner_dim')}, linears {fingerprint.get('linears')})")


def fit_linear(samples: list[tuple[float, float]]) -> tuple[float, float, float]:
    """Least squares E ≈ α·Γ + β over (Γ, E) pairs (float64) -> (α, β, r²); α = 0 when every Γ is the same."""
    if len(samples) < 2:
        raise TurboConfigError(f"calibrate_mixed needs at least 2 samples (2 or more steps), got {len(samples)}.")
    g = torch.tensor([s[0] for s in samples], dtype=torch.float64)
    e = torch.tensor([s[1] for s in samples], dtype=torch.float64)
    g_mean, e_mean = g.mean(), e.mean()
    var = ((g - g_mean) ** 2).sum()
    alpha = (((g - g_mean) * (e - e_mean)).sum() / var).item() if var > 0 else 0.0
    beta = (e_mean - alpha * g_mean).item()
    residual = ((e - (alpha * g + beta)) ** 2).sum().item()
    total = ((e - e_mean) ** 2).sum().item()
    r2 = 1.0 - residual / total if total > 0 else (1.0 if residual == 0 else 0.0)
    return alpha, beta, r2


def calibrate_mixed(pipe, prompts: list[str], **call_kwargs) -> dict:
    """Run `pipe(prompt=p, **call_kwargs)` for every prompt with calibration hooks (module docstring) and fit the
    router's error model: {"alpha", "beta", "samples", "r2", "model": `model_fingerprint`}. The pipeline is left as
    it was; its outputs are the unquantised ones. Every transformer of the pipe (Wan2.2's two experts) must share one
    fingerprint; their samples are pooled."""
    from ..adapters import adapter_for, find_transformers
    from ..adapters.step_hook import install_step_hook, remove_step_hook
    from ..runtime import TurboRuntime
    from . import block_linears
    from .mixed import MixedLinear
    from .nvfp4 import nvfp4_ready

    if getattr(pipe, "turbo", None) is not None:
        raise TurboConfigError("calibrate_mixed needs an unaccelerated pipeline; call turbo.restore(pipe) first.")
    if not prompts:
        raise TurboConfigError("calibrate_mixed needs at least one prompt.")
    found = find_transformers(pipe)
    fingerprints = [model_fingerprint(model) for _, model in found]
    if any(f != fingerprints[0] for f in fingerprints):
        raise TurboConfigError("calibrate_mixed needs every transformer of the pipeline to have one architecture; got "
                               + " and ".join(_describe(f) for f in fingerprints) + ".")
    runtime = TurboRuntime()
    hooks, routers, swapped = [], [], []
    try:
        for _, model in found:
            adapter = adapter_for(model)
            hooks.append((model, install_step_hook(model, runtime, adapter.patch_size(model))))
            blocks = adapter.denoising_blocks(model)
            switches = []
            for block in blocks:
                mine = []
                for parent, attr, linear in block_linears([block], weight_only=True):
                    if nvfp4_ready(linear.in_features):
                        switch = _CalibrationLinear(linear, MixedLinear(linear))
                        setattr(parent, attr, switch)
                        swapped.append((parent, attr, linear))
                        mine.append(switch)
                switches.append(mine)
            router = TransformerRouter(model, blocks, switches, runtime, None)
            routers.append(router)
            router.install()
        for prompt in prompts:
            with torch.no_grad():
                pipe(prompt=prompt, **call_kwargs)
    finally:
        for router in reversed(routers):
            router.remove()
        for parent, attr, linear in reversed(swapped):
            setattr(parent, attr, linear)
        for model, undo in reversed(hooks):
            remove_step_hook(model, undo)
    samples = []
    for router in routers:
        router.resolve_samples()
        samples += router.samples
    if not all(math.isfinite(g) and math.isfinite(e) for g, e in samples):
        raise TurboConfigError("calibrate_mixed measured a non-finite block error; check the pipeline's outputs.")
    alpha, beta, r2 = fit_linear(samples)
    return {"alpha": alpha, "beta": beta, "samples": len(samples), "r2": r2, "model": fingerprints[0]}


def save_calibration(calibration: dict, path: str | os.PathLike) -> None:
    """Write a `calibrate_mixed` result as JSON."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(calibration, handle, indent=2)


def load_calibration(path: str | os.PathLike, model: nn.Module) -> dict:
    """Read a calibration JSON and check it was made for `model` (a transformer); one-sentence TurboConfigError if
    the file is missing, malformed or for another model."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as error:
        raise TurboConfigError(f"cannot read the nvfp4-mixed calibration {str(path)!r} ({type(error).__name__}); run "
                               "`turbo calibrate` to write one.") from None
    keys = ("alpha", "beta", "samples", "r2", "model")
    if not isinstance(data, dict) or any(k not in data for k in keys) or not all(
            isinstance(data[k], (int, float)) and math.isfinite(data[k]) for k in ("alpha", "beta")):
        raise TurboConfigError(f"{str(path)!r} is not an nvfp4-mixed calibration (needs finite alpha, beta and "
                               f"{', '.join(keys[2:])}); run `turbo calibrate` to write one.")
    mine = model_fingerprint(model)
    if data["model"] != mine:
        theirs = data["model"] if isinstance(data["model"], dict) else {}
        raise TurboConfigError(f"the nvfp4-mixed calibration {str(path)!r} was made for {_describe(theirs)}, not "
                               f"for this {_describe(mine)}; run `turbo calibrate` on this model.")
    return data
