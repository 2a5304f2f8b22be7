"""Video quality metrics: PSNR and SSIM of a video against a reference, and temporal flicker of one video.

Every function takes videos as ``[F, H, W, 3]`` (or one frame ``[H, W, 3]``; ``[F, 3, H, W]`` is transposed) float in
``[0, 1]``, as numpy arrays or torch tensors (uint8 is read as 0–255 and scaled to ``[0, 1]``). Computation is in
float64 numpy; the data range is 1.0. Luma is BT.601: ``Y = 0.299 R + 0.587 G + 0.114 B``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["luma", "psnr", "ssim", "temporal_flicker"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
_LUMA = np.array([0.299, 0.587, 0.114])


def video_array(x) -> np.ndarray:
    """float64 ``[F, H, W, 3]`` in the units of the input (uint8 scaled to [0, 1])."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ValueError(f"a video must be [F, H, W, 3] (or one [H, W, 3] frame), got shape {arr.shape}")
    if arr.shape[-1] != 3 and arr.shape[1] == 3:
        arr = arr.transpose(0, 2, 3, 1)
    if arr.shape[-1] != 3:
        raise ValueError(f"a video must have 3 colour channels last, got shape {arr.shape}")
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    return arr.astype(np.float64) / scale


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = video_array(a), video_array(b)
    if a.shape != b.shape:
        raise ValueError(f"videos must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def luma(video) -> np.ndarray:
    """BT.601 luma ``[F, H, W]`` (float64, range of the input) of a video."""
    return video_array(video) @ _LUMA


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB of video ``a`` against ``b``: ``10 log10(1 / MSE)`` with the MSE over every
    frame, pixel and channel (data range 1). Identical videos give ``inf``; a constant offset ``c`` gives
    ``-20 log10(|c|)``."""
    a, b = _pair(a, b)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def _gaussian(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of the last two axes of ``x`` with the 1-D window ``g`` (both axes)."""
    k = g.shape[0]
    x = np.lib.stride_tricks.sliding_window_view(x, k, axis=-2) @ g
    return np.lib.stride_tricks.sliding_window_view(x, k, axis=-1) @ g


def _ssim_frame(a: np.ndarray, b: np.ndarray, g: np.ndarray) -> float:
    """Mean SSIM of two 2-D images (data range 1)."""
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a * mu_a
    var_b = _filter_valid(b * b, g) - mu_b * mu_b
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def ssim(a, b, *, channels: str = "luma") -> float:
    """Structural similarity (Wang et al. 2004) of video ``a`` against ``b``, averaged over frames.

    Gaussian window 11 × 11 with σ = 1.5 (normalised; truncated to the largest odd size that fits frames smaller than
    11 pixels), 'valid' positions only, ``C1 = (0.01 L)²``, ``C2 = (0.03 L)²`` with ``L = 1``. ``channels="luma"``
    (default) compares BT.601 luma; ``"rgb"`` averages the SSIM of R, G and B. Symmetric in ``a`` and ``b``;
    1.0 for identical videos.
    """
    if channels not in ("luma", "rgb"):
        raise ValueError(f"channels must be 'luma' or 'rgb', got {channels!r}")
    a, b = _pair(a, b)
    if np.array_equal(a, b):
        return 1.0
    if channels == "luma":
        planes_a, planes_b = (a @ _LUMA)[:, None], (b @ _LUMA)[:, None]  # [F, 1, H, W]
    else:
        planes_a, planes_b = a.transpose(0, 3, 1, 2), b.transpose(0, 3, 1, 2)  # [F, 3, H, W]
    size = min(SSIM_WINDOW, planes_a.shape[-2], planes_a.shape[-1])
    size -= 1 - size % 2  # odd
    g = _gaussian(size, SSIM_SIGMA)
    values = [_ssim_frame(fa[c], fb[c], g) for fa, fb in zip(planes_a, planes_b, strict=True)
              for c in range(fa.shape[0])]
    return float(np.mean(values))


def temporal_flicker(video) -> float:
    """Temporal flicker: the mean absolute frame-to-frame luma difference,
    ``mean over t = 1..F-1 and pixels of |Y_t - Y_{t-1}|`` (luma in [0, 1]).

    0 for a static video (or a single frame); higher means more change between consecutive frames. Genuine motion
    counts too, so compare flicker between videos of the same content (e.g. an accelerated run and its reference).
    """
    y = luma(video)
    if y.shape[0] < 2:
        return 0.0
    return float(np.mean(np.abs(np.diff(y, axis=0))))
