"""Loss bookkeeping without a GPU sync per step: losses stay detached 0-d device tensors and are checked in windows."""

from __future__ import annotations

import logging
import math

import torch

from turbo.training.plan import StepPlan

__all__ = ["check_and_log", "finite_values"]

logger = logging.getLogger("turbo")


def check_and_log(name: str, step: int, plan: StepPlan, losses: list[torch.Tensor], log_every: int) -> None:
    """Every `log_every` steps: check the losses since the last check are finite (one GPU sync) and log their mean.

    `losses` holds detached 0-d tensors, one per step 0..`step`. Raises FloatingPointError naming the first step whose
    loss is not finite.
    """
    if not log_every or (step + 1) % log_every:
        return
    window = torch.stack(losses[-log_every:]).float().cpu()
    if not torch.isfinite(window).all():
        bad = int((~torch.isfinite(window)).nonzero()[0]) + step + 1 - len(window)
        raise FloatingPointError(f"{name}: loss became {float(window[bad - step - 1 + len(window)])} at step {bad}; "
                                 "lower the learning rate")
    total = "?" if plan.minutes is not None and step < plan.probe else plan.total
    memory = (f", GPU memory {torch.cuda.memory_allocated() / 2**30:.1f} GiB (peak "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f})" if torch.cuda.is_available() else "")
    logger.info("%s step %d/%s loss %.5f (mean of last %d: %.5f)%s", name, step + 1, total, float(window[-1]),
                len(window), float(window.mean()), memory)


def finite_values(name: str, losses: list[torch.Tensor]) -> list[float]:
    """Loss tensors -> floats; raises FloatingPointError naming the first step whose loss is not finite."""
    values = torch.stack(losses).float().cpu().tolist() if losses else []
    for step, value in enumerate(values):
        if not math.isfinite(value):
            raise FloatingPointError(f"{name}: loss became {value} at step {step}; lower the learning rate")
    return values
