"""Per-accelerate() runtime state: which step and CFG branch a transformer call belongs to, its token geometry, and
what the attention methods did. One `TurboRuntime` serves every transformer of one pipeline (both Wan2.2 experts
share it, so step counting is global). Nothing here is class-level state.

The compile boundary: `begin_forward` runs in the transformer-level hook, outside compilation. It decides everything
that changes from call to call (step, branch, dense warm-up), counts statistics, and publishes a small frozen
`ForwardPlan` that the code inside the blocks reads. Plans are interned by value, so the blocks see one plan object
for the sparse steps and one for the dense warm-up steps: a compiled block specialises on `plan.dense` (one extra
graph at most) and on nothing that changes per step."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .geometry import TokenGeometry

DEFAULT_BRANCH = "default"
DENSE_WARMUP = "dense warm-up"


@dataclass
class BranchState:
    """Step counter of one CFG branch (cond / uncond / default)."""

    step_index: int = -1
    last_timestep: float | None = None


@dataclass(frozen=True)
class ForwardPlan:
    """What the blocks of one transformer forward may read: whether this step runs dense attention everywhere, the
    token grid, and whether a q/k/v capture is active. Values only; per-step state stays in the runtime."""

    dense: bool
    geometry: TokenGeometry | None
    capture: bool = False


@dataclass(frozen=True)
class StepInfo:
    """Where a forward is, for the methods' `prepare` (called outside compilation, once per forward and layer)."""

    step_index: int
    branch: str
    layer_index: int
    geometry: TokenGeometry | None
    device: torch.device
    record_density: Callable[[float], None] | None = None  # for methods whose density is known only after the call


@dataclass
class AttentionCall:
    """What a method needs to know about one self-attention call (no per-step values: it is built inside blocks).

    `num_video` is the number of video tokens at the front of q/k/v; tokens after it are text (HunyuanVideo), with
    `text_mask` [B, L] bool marking real (True) vs padding (False) text tokens. `dense` runs the stock attention path
    (same backend and mask as the unaccelerated model) on [B, S, H, D] tensors. Under Ulysses context parallelism
    q/k/v hold the whole sequence for `heads` of the model's heads (a method with per-head parameters selects them)."""

    geometry: TokenGeometry
    num_video: int
    dense: Callable[..., torch.Tensor]
    attn_mask: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    key_mask: torch.Tensor | None = None  # [B, S] which keys may be attended (True / nonzero), from `attn_mask`
    heads: slice | None = None  # the model's heads q/k/v hold (a Ulysses rank's share); None: all of them


@dataclass
class RuntimeStats:
    """Counters reported in `pipe.turbo`, kept by the hook (never inside the blocks)."""

    calls: Counter = field(default_factory=Counter)  # method name or DENSE_WARMUP -> self-attention calls
    density_sum: float = 0.0
    density_calls: int = 0
    requests: int = 0

    def record_density(self, density: float, calls: int = 1) -> None:
        self.density_sum += density * calls
        self.density_calls += calls

    @property
    def mean_density(self) -> float | None:
        return self.density_sum / self.density_calls if self.density_calls else None


class TurboRuntime:
    """Tracks step/branch/geometry across the transformer calls of one pipeline and decides dense warm-up."""

    def __init__(self, dense_steps: int = 0, dense_layers: int = 0):
        self.dense_steps = dense_steps
        self.dense_layers = dense_layers
        self.branches: dict[str, BranchState] = {}
        self.branch = DEFAULT_BRANCH
        self.geometry: TokenGeometry | None = None
        self.stats = RuntimeStats()
        self.capture = None  # a turbo.eval.capture.QKVCapture while one is active
        self.plan: ForwardPlan | None = None
        self._plans: dict[tuple, ForwardPlan] = {}

    def reset(self) -> None:
        """Forget step counters (a new generation request starts)."""
        self.branches.clear()
        self.branch = DEFAULT_BRANCH

    def begin_forward(self, geometry: TokenGeometry, timestep: Callable[[], float | None] | float | None,
                      branch: str | None, step_index: int | None) -> ForwardPlan:
        """Called before every transformer forward (outside compilation). Steps come from the pipeline's
        `step_index` when it passes one, else from the timestep: a lower timestep than the branch saw last is the
        next step, a higher one starts a new request (diffusion timesteps only decrease within a request).
        `timestep` may be a callable, read only when no step index is given (reading a GPU tensor syncs)."""
        branch = branch or DEFAULT_BRANCH
        if step_index is None and callable(timestep):
            timestep = timestep()
        elif step_index is not None:
            timestep = None
        state = self.branches.get(branch)
        if state is not None and (
            (step_index is not None and step_index < state.step_index)
            or (step_index is None and None not in (timestep, state.last_timestep) and timestep > state.last_timestep)
        ):
            self.branches.clear()
            state = None
        if not self.branches:
            self.stats.requests += 1
        if state is None:
            state = self.branches[branch] = BranchState()
        if step_index is not None:
            state.step_index = step_index
        elif state.last_timestep is None or timestep is None or timestep < state.last_timestep:
            state.step_index += 1
        state.last_timestep = timestep
        self.branch = branch
        self.geometry = geometry
        key = (self.step_index < self.dense_steps, geometry, self.capture is not None)
        if key not in self._plans:
            self._plans[key] = ForwardPlan(*key)
        self.plan = self._plans[key]
        return self.plan

    @property
    def step_index(self) -> int:
        state = self.branches.get(self.branch)
        return max(state.step_index, 0) if state else 0

    def layer_is_dense(self, layer_index: int) -> bool:
        """Dense warm-up of this forward: the first `dense_steps` steps and the first `dense_layers` blocks."""
        return (self.plan is not None and self.plan.dense) or layer_index < self.dense_layers

    def count_calls(self, method: str, layers: list[int]) -> None:
        """Count one forward's self-attention calls (one per layer) into the report's statistics."""
        dense = sum(self.layer_is_dense(layer) for layer in layers)
        if dense:
            self.stats.calls[DENSE_WARMUP] += dense
        if len(layers) - dense:
            self.stats.calls[method] += len(layers) - dense

    @torch.compiler.disable
    def record_capture(self, layer_index: int, q, k, v, num_video: int, attn_mask) -> None:
        """Hand one call's post-RoPE q/k/v to the active capture (eval tooling; runs outside compilation)."""
        if self.capture is not None:
            self.capture.record(layer_index, self.step_index, self.branch, q, k, v, num_video, attn_mask,
                                self.geometry)
