"""`TrainConfig`: the hyper-parameters every turbo trainer shares, one frozen dataclass that serialises to JSON/YAML.

What a trainer does with its data (clip sizes, loss weights, caption dropout...) lives in that trainer's own
dataclass; this one holds the budget, the optimizer and its schedule, the EMA, the step execution and logging.
`diff` lists the keys two configs disagree on (a ``--resume`` with a changed config is refused by naming them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from turbo.errors import TurboConfigError

__all__ = ["SCHEDULES", "TrainConfig"]

SCHEDULES = ("constant", "cosine")


class ConfigDict:
    """`replace`, `to_dict`, `from_dict` (missing keys take defaults, unknown keys refused by name) and `diff` for the
    frozen config dataclasses of the training code; `_label` names the config in messages."""

    _label = "config"

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML values, every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Inverse of `to_dict`; missing keys take their defaults, unknown keys are refused by name."""
        if not isinstance(data, dict):
            raise TurboConfigError(f"a {cls._label} must be a mapping of keys to values, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TurboConfigError(f"unknown {cls._label} keys {', '.join(unknown)}; known keys: "
                                   f"{', '.join(sorted(known))}.")
        return cls(**data)

    def diff(self, other, ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
        """{key: (this value, other value)} for every field the two configs disagree on, except `ignore`."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (mine[k], theirs[k]) for k in mine if k not in ignore and mine[k] != theirs[k]}


@dataclasses.dataclass(frozen=True)
class TrainConfig(ConfigDict):
    """Budget, optimizer, schedule, EMA and step execution of one training run.

    steps / minutes: a fixed step count, or as many steps as fit in that wall time (at most `steps` when both; see
        `StepPlan`).
    lr, weight_decay, beta1, beta2: AdamW. grad_clip: max global grad norm (0: no clipping).
    warmup, schedule, min_lr: linear warm-up over `warmup` steps, then "constant" or "cosine" decay to ``min_lr * lr``
        at the plan's last step. warmup_start: the warm-up's first factor (None: 1/warmup; rCM starts at 1e-6).
    ema_decay: a constant-decay EMA of the trained weights (0.999...); ema_sigma_rel: an EDM2 power EMA of that
        relative standard deviation instead (rCM exports one); at most one of the two.
    cuda_graphs: replay each training step as a CUDA graph (CUDA only; elsewhere the step runs eagerly and says so).
    compile: run the model's forward through ``torch.compile`` (a failure is reported and the step runs eagerly).
    device: where training runs ("cpu", "cuda", "cuda:1"); a ``torch.device`` is stored as its string.
    """

    _label = "TrainConfig"

    steps: int | None = None
    minutes: float | None = None
    batch_size: int = 2
    seed: int = 0
    device: str = "cpu"
    lr: float = 3e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    warmup: int = 100
    warmup_start: float | None = None
    schedule: str = "constant"
    min_lr: float = 0.1
    ema_decay: float | None = None
    ema_sigma_rel: float | None = None
    cuda_graphs: bool = True
    compile: bool = False
    log_every: int = 50
    show_progress: bool | None = None

    def __post_init__(self):
        if not isinstance(self.device, str):
            object.__setattr__(self, "device", str(self.device))
        if self.steps is None and self.minutes is None:
            raise TurboConfigError("TrainConfig needs steps, minutes or both; give steps=N or minutes=M")
        if self.steps is not None and self.steps < 0:
            raise TurboConfigError(f"TrainConfig.steps must be >= 0, got {self.steps}")
        if self.minutes is not None and self.minutes <= 0:
            raise TurboConfigError(f"TrainConfig.minutes must be > 0, got {self.minutes}")
        if self.schedule not in SCHEDULES:
            raise TurboConfigError(f"TrainConfig.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.warmup_start is not None and not 0.0 < self.warmup_start <= 1.0:
            raise TurboConfigError(f"TrainConfig.warmup_start must be in (0, 1], got {self.warmup_start}")
        if self.lr <= 0 or self.batch_size < 1 or self.warmup < 0 or self.grad_clip < 0:
            raise TurboConfigError(f"TrainConfig needs lr > 0, batch_size >= 1, warmup >= 0 and grad_clip >= 0, got "
                                   f"lr={self.lr}, batch_size={self.batch_size}, warmup={self.warmup}, "
                                   f"grad_clip={self.grad_clip}")
        if self.ema_decay is not None and self.ema_sigma_rel is not None:
            raise TurboConfigError("TrainConfig takes ema_decay or ema_sigma_rel (power EMA), not both")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise TurboConfigError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.ema_sigma_rel is not None and not 0.0 < self.ema_sigma_rel < 0.28:
            raise TurboConfigError(f"TrainConfig.ema_sigma_rel must be in (0, 0.28) (EDM2 power EMA), got "
                                   f"{self.ema_sigma_rel}")

