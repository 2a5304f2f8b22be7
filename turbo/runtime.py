"""Per-accelerate() runtime state: which step and CFG branch a transformer call belongs to, its token geometry,
and what the attention methods did. One `TurboRuntime` serves every transformer of one pipeline (both Wan2.2
experts share it, so step counting is global). Nothing here is class-level state."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .geometry import TokenGeometry

DEFAULT_BRANCH = "default"


@dataclass
class BranchState:
    """Step counter of one CFG branch (cond / uncond / default)."""

    step_index: int = -1
    last_timestep: float | None = None


@dataclass
class AttentionCall:
    """What a method needs to know about one self-attention call.

    `num_video` is the number of video tokens at the front of q/k/v; tokens after it are text (HunyuanVideo), with
    `text_mask` [B, L] bool marking real (True) vs padding (False) text tokens. `dense` runs the stock attention path
    (same backend and mask as the unaccelerated model) on [B, S, H, D] tensors."""

    geometry: TokenGeometry
    num_video: int
    step_index: int
    layer_index: int
    branch: str
    dense: Callable[..., torch.Tensor]
    attn_mask: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None


@dataclass
class RuntimeStats:
    """Counters reported in `pipe.turbo`."""

    calls: Counter = field(default_factory=Counter)  # (path) -> count, path in {"method", "dense-warmup"}
    density_sum: float = 0.0
    density_calls: int = 0
    requests: int = 0

    def record_density(self, density: float) -> None:
        self.density_sum += density
        self.density_calls += 1

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

    def reset(self) -> None:
        """Forget step counters (a new generation request starts)."""
        self.branches.clear()
        self.branch = DEFAULT_BRANCH

    def begin_forward(self, geometry: TokenGeometry, timestep: float | None, branch: str | None,
                      step_index: int | None) -> None:
        """Called before every transformer forward. Steps come from the pipeline's `step_index` when it passes
        one, else from the timestep: a lower timestep than the branch saw last is the next step, a higher one
        starts a new request (diffusion timesteps only decrease within a request)."""
        branch = branch or DEFAULT_BRANCH
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

    @property
    def step_index(self) -> int:
        state = self.branches.get(self.branch)
        return max(state.step_index, 0) if state else 0

    def use_dense(self, layer_index: int) -> bool:
        """Dense warm-up: the first `dense_steps` steps and the first `dense_layers` blocks run dense attention."""
        return self.step_index < self.dense_steps or layer_index < self.dense_layers
