"""How many steps a training loop runs (`StepPlan`) and the progress bar that walks them (`progress`)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator

from turbo.errors import TurboConfigError

__all__ = ["StepPlan", "progress"]


class StepPlan:
    """How many steps a loop runs: a fixed count, or as many as fit in `minutes` of wall time.

    With `minutes`, the loop runs `probe` steps, measures the time per step over the last ``probe // 2`` of them and
    fixes ``total`` (at most `max_steps` when given); every `probe` steps after that it re-estimates ``total`` from the
    rate since the probe (other processes on the same GPU come and go), and it stops once the wall time is spent
    whatever the estimate. The learning-rate schedule reads ``total`` lazily, so a cosine decay follows the estimate;
    `stop(step)` says when to leave the loop.
    """

    def __init__(self, steps: int | None, minutes: float | None = None, probe: int = 30):
        if steps is None and minutes is None:
            raise TurboConfigError("a step plan needs steps, minutes or both")
        if steps is not None and steps < 0:
            raise TurboConfigError(f"steps must be >= 0, got {steps}")
        if minutes is not None and minutes <= 0:
            raise TurboConfigError(f"minutes must be > 0, got {minutes}")
        self.max_steps, self.minutes, self.probe = steps, minutes, max(4, probe)
        self.total = steps if minutes is None else (steps or 10**9)
        self._times: list[float] = []
        self._start = None

    @classmethod
    def from_config(cls, config) -> StepPlan:
        """The plan of a `TrainConfig` (its ``steps`` and ``minutes``)."""
        return cls(config.steps, config.minutes)

    def _fit(self, step: int, now: float) -> None:
        """``total`` from the rate since step ``probe // 2`` (the first steps include warm-up costs)."""
        since_step = self.probe // 2
        per_step = (now - self._times[since_step]) / max(1, step - since_step)
        fit = step + int((self.minutes * 60.0 - (now - self._start)) / max(per_step, 1e-6))
        self.total = max(self.probe, fit if self.max_steps is None else min(fit, self.max_steps))

    def stop(self, step: int) -> bool:
        now = time.perf_counter()
        if self._start is None:
            self._start = now
        if self.minutes is not None:
            if step <= self.probe:
                self._times.append(now)
            if step >= self.probe and step % self.probe == 0:
                self._fit(step, now)
            if step > self.probe and now - self._start > self.minutes * 60.0:
                self.total = step
        return step >= self.total


def progress(plan: StepPlan, desc: str, show: bool | None = None, start: int = 0,
             status: Callable[[], dict] | None = None) -> Iterator[int]:
    """Yield the step indices of `plan` from `start` under a tqdm bar (its total is refreshed once a time budget fixes
    it; it shows it/s and the ETA, plus `status()` — e.g. the last loss — after each step). `show` None: tqdm decides
    (off when not a terminal)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=plan.total if plan.minutes is None else None, desc=desc, leave=False, initial=start,
               disable=(not show) if show is not None else None)
    for step in itertools.count(start):
        if plan.stop(step):
            break
        if plan.minutes is not None and bar.total != plan.total and step == plan.probe:
            bar.total = plan.total
            bar.refresh()
        yield step
        if status is not None:
            bar.set_postfix(status(), refresh=False)
        bar.update(1)
    bar.close()
