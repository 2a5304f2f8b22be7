"""The rCM time grid (pure Python, no diffusers): TrigFlow angles and their rectified-flow times."""

from __future__ import annotations

import math
from collections.abc import Sequence

PUBLISHED_MID_T = (1.5, 1.4, 1.0)


def rcm_angles(steps: int, sigma_max: float, mid_t: Sequence[float]) -> list[float]:
    """The TrigFlow angle grid [atan(σ_max), *mid_t[:steps − 1], 0] (radians, steps + 1 values, decreasing).

    Raises `ValueError` (one sentence) for steps outside [1, len(mid_t) + 1], σ_max ≤ 0 or a grid that does not
    decrease strictly."""
    mid_t = [float(a) for a in mid_t]
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= len(mid_t) + 1:
        raise ValueError(f"rCM steps={steps!r} must be between 1 and {len(mid_t) + 1} (one more than the "
                         f"{len(mid_t)} intermediate angles mid_t={mid_t}).")
    if not (isinstance(sigma_max, (int, float)) and math.isfinite(sigma_max) and sigma_max > 0):
        raise ValueError(f"rCM sigma_max={sigma_max!r} must be a finite number > 0 (published: 80 for T2V, 200 for "
                         "I2V, 120 for 14B 720p).")
    angles = [math.atan(sigma_max), *mid_t[: steps - 1], 0.0]
    for a, b in zip(angles, angles[1:], strict=False):
        if not (a > b and a <= math.pi / 2):
            raise ValueError(f"the rCM angle grid {[round(x, 4) for x in angles]} (atan(sigma_max), mid_t, 0) must "
                             "decrease strictly within (0, π/2]; raise sigma_max or lower mid_t.")
    return angles


def rcm_rf_times(steps: int = 4, sigma_max: float = 80.0, mid_t: Sequence[float] = PUBLISHED_MID_T) -> list[float]:
    """RF times t = sin θ / (sin θ + cos θ) of the rCM grid, steps + 1 values ending with 0.0 (float64 math).

    `rcm_rf_times(4, 80)` ≈ [0.9877, 0.9338, 0.8529, 0.6090, 0.0]."""
    return [math.sin(a) / (math.sin(a) + math.cos(a)) for a in rcm_angles(steps, sigma_max, mid_t)]
