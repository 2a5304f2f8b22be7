"""AdamW and its learning-rate schedule: linear warm-up, then constant or cosine decay to ``min_lr * lr`` at the
plan's last step. For a CUDA-graphed step the optimizer is capturable and its rate a device tensor (`TensorLambdaLR`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from turbo.errors import TurboConfigError
from turbo.training.config import SCHEDULES
from turbo.training.plan import StepPlan

__all__ = ["TensorLambdaLR", "build_optimizer", "lr_factor"]


class TensorLambdaLR:
    """`LambdaLR` for an optimizer whose learning rate is a device tensor (capturable AdamW): the rate is written into
    that tensor in place, so a captured CUDA graph reads each step's value."""

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Callable[[int], float]):
        self.optimizer, self.factor, self.last_epoch = optimizer, factor, 0
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self._apply()

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"].fill_(base * self.factor(self.last_epoch))

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.last_epoch, self.base_lrs = int(state["last_epoch"]), list(state["base_lrs"])
        self._apply()


def lr_factor(schedule: str, warmup: int, total: Callable[[], int], min_lr: float = 0.1,
              warmup_start: float | None = None) -> Callable[[int], float]:
    """Multiplier of the base rate at step s (0-based): during the warm-up ``(s + 1) / warmup``, or, with
    `warmup_start`, linear from that factor at step 0 to 1 at step ``warmup`` (rCM: 1e-6); then 1 ("constant") or a
    half cosine from 1 to `min_lr` reached at step ``total()`` ("cosine"; `total` is read lazily, so a time-budget
    plan's estimate is followed)."""
    if schedule not in SCHEDULES:
        raise TurboConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")

    def factor(s: int) -> float:
        if warmup and s < warmup:
            if warmup_start is not None:
                return warmup_start + (1.0 - warmup_start) * s / warmup
            return (s + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (s - warmup) / max(1, total() - warmup))
        return min_lr + (1 - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_optimizer(params, config, plan: StepPlan, capturable: bool = False, warmup: int | None = None):
    """(AdamW, scheduler) for the trainable `params` under `config` (a `TrainConfig`: lr, betas, weight decay,
    warm-up, schedule, min_lr); `warmup` overrides ``config.warmup``. The scheduler's ``step()`` follows each
    optimizer step.

    `capturable`: an AdamW that a CUDA graph can capture (foreach, state and a tensor learning rate on the device),
    with a `TensorLambdaLR`; otherwise a plain AdamW and ``torch.optim.lr_scheduler.LambdaLR``.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise TurboConfigError("build_optimizer: nothing to train (no parameter requires grad)")
    betas = (config.beta1, config.beta2)
    if capturable:
        opt = torch.optim.AdamW(params, lr=torch.tensor(float(config.lr), device=params[0].device), betas=betas,
                                weight_decay=config.weight_decay, capturable=True, foreach=True)
    else:
        opt = torch.optim.AdamW(params, lr=config.lr, betas=betas, weight_decay=config.weight_decay)
    factor = lr_factor(config.schedule, config.warmup if warmup is None else warmup, lambda: plan.total,
                       config.min_lr, config.warmup_start)
    sched = TensorLambdaLR(opt, factor) if capturable else torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return opt, sched
