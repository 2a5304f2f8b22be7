"""TrigFlow view of a rectified-flow (RF) video transformer, as rCM trains it (NVlabs/rcm, arXiv 2510.08431).

Conventions (σ_data = 1; all coefficients float64, as `rcm/utils/denoiser_scaling.py::RectifiedFlow_TrigFlowWrapper`):

* TrigFlow: angle θ ∈ [0, π/2], state x_θ = cos θ·x0 + sin θ·ε, velocity F = dx_θ/dθ = cos θ·ε − sin θ·x0.
* RF (Wan, HunyuanVideo): time t ∈ [0, 1], x_t = (1 − t)·x0 + t·ε, velocity v = ε − x0, model timestep 1000·t.
* Same point on both paths: σ = tan θ, t = σ/(1 + σ) = sin θ/(sin θ + cos θ), and x_RF = x_θ/(cos θ + sin θ)
  (equivalently x_θ = x_RF/√(t² + (1 − t)²)).
* Wrapping the RF network v(x_RF, 1000·t) as a TrigFlow denoiser:
  c_in = 1/(cos + sin) (the network sees x_θ·c_in = x_RF), c_noise = 1000·sin/(cos + sin),
  x0̂ = c_skip·x_θ + c_out·v with c_skip = 1/(cos + sin), c_out = −sin/(cos + sin), and F̂ = (cos·x_θ − x0̂)/sin
  (which equals ((cos − sin)·x_θ + v)/(cos + sin)).

The student stays an ordinary diffusers transformer; `TrigFlowModel` only wraps its call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "TIMESTEP_SCALE", "rf_to_trig", "trig_to_rf", "sigma_to_trig", "trig_to_sigma", "shift_rf_time",
    "rf_to_trig_state", "trig_to_rf_state", "trigflow_coefficients", "rf_velocity_to_x0", "x0_to_F", "F_to_x0",
    "rf_velocity_to_F", "trig_noise", "TrigFlowPrediction", "TrigFlowModel", "backward_simulation",
]

TIMESTEP_SCALE = 1000.0  # RF time t → model timestep (Wan / diffusers flow-matching convention)


def _angle(theta: torch.Tensor | float, like: torch.Tensor | None = None) -> torch.Tensor:
    theta = torch.as_tensor(theta, device=None if like is None else like.device)
    return theta.to(torch.float64)


def _bcast(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """θ of shape [B] / [B, 1] / scalar → [B, 1, …, 1] broadcastable against x [B, …] (float64)."""
    theta = _angle(theta, x)
    if theta.ndim == 0:
        return theta
    return theta.reshape(theta.shape[0], *([1] * (x.ndim - 1)))


# ---- time conversions (float64), rcm/utils/timestep_utils.py semantics ----------------------------------------------

def rf_to_trig(t: torch.Tensor | float) -> torch.Tensor:
    """RF time t ∈ [0, 1] → TrigFlow angle θ = atan(t/(1 − t)) (float64; t = 1 ↦ π/2 exactly via atan2)."""
    t = _angle(t)
    return torch.atan2(t, 1.0 - t)


def trig_to_rf(theta: torch.Tensor | float) -> torch.Tensor:
    """TrigFlow angle θ → RF time t = sin θ/(sin θ + cos θ) (float64)."""
    theta = _angle(theta)
    s, c = torch.sin(theta), torch.cos(theta)
    return s / (s + c)


def sigma_to_trig(sigma: torch.Tensor | float) -> torch.Tensor:
    return torch.atan(_angle(sigma))


def trig_to_sigma(theta: torch.Tensor | float) -> torch.Tensor:
    return torch.tan(_angle(theta))


def shift_rf_time(t: torch.Tensor | float, shift: float) -> torch.Tensor:
    """Wan-style time shift t ↦ s·t/(1 + (s − 1)·t) (identity for shift ≤ 0, as rcm's `shift_rf_time`)."""
    t = _angle(t)
    if shift <= 0:
        return t
    return shift * t / (1 + (shift - 1) * t)


# ---- state / prediction conversions ---------------------------------------------------------------------------------

def rf_to_trig_state(x_rf: torch.Tensor, theta: torch.Tensor | float) -> torch.Tensor:
    """x_θ = x_RF·(cos θ + sin θ). x: [B, …]; θ: [B] or scalar. Result float64 (or x's dtype if that is wider)."""
    th = _bcast(theta, x_rf)
    return x_rf * (torch.cos(th) + torch.sin(th))


def trig_to_rf_state(x_trig: torch.Tensor, theta: torch.Tensor | float) -> torch.Tensor:
    """x_RF = x_θ/(cos θ + sin θ)."""
    th = _bcast(theta, x_trig)
    return x_trig / (torch.cos(th) + torch.sin(th))


def trigflow_coefficients(theta: torch.Tensor, timestep_scale: float = TIMESTEP_SCALE):
    """(c_skip, c_out, c_in, c_noise) for θ (any shape), float64; c_noise is the model timestep 1000·t."""
    theta = _angle(theta)
    s, c = torch.sin(theta), torch.cos(theta)
    c_skip = 1 / (c + s)
    c_out = -s / (c + s)
    c_in = 1 / (c + s)
    c_noise = s / (c + s) * timestep_scale
    return c_skip, c_out, c_in, c_noise


def rf_velocity_to_x0(x_trig: torch.Tensor, v: torch.Tensor, theta) -> torch.Tensor:
    """x0̂ = c_skip·x_θ + c_out·v = (x_θ − sin θ·v)/(cos θ + sin θ), v the RF velocity at x_RF = c_in·x_θ."""
    th = _bcast(theta, x_trig)
    c_skip, c_out, _, _ = trigflow_coefficients(th)
    return c_skip * x_trig + c_out * v


def x0_to_F(x_trig: torch.Tensor, x0: torch.Tensor, theta) -> torch.Tensor:
    """F = (cos θ·x_θ − x0)/sin θ (undefined at θ = 0, as in the reference)."""
    th = _bcast(theta, x_trig)
    return (torch.cos(th) * x_trig - x0) / torch.sin(th)


def F_to_x0(x_trig: torch.Tensor, F: torch.Tensor, theta) -> torch.Tensor:
    """x0 = cos θ·x_θ − sin θ·F."""
    th = _bcast(theta, x_trig)
    return torch.cos(th) * x_trig - torch.sin(th) * F


def rf_velocity_to_F(x_trig: torch.Tensor, v: torch.Tensor, theta) -> torch.Tensor:
    """Closed form F = ((cos θ − sin θ)·x_θ + v)/(cos θ + sin θ) (no division by sin θ)."""
    th = _bcast(theta, x_trig)
    s, c = torch.sin(th), torch.cos(th)
    return ((c - s) * x_trig + v) / (c + s)


def trig_noise(x0: torch.Tensor, noise: torch.Tensor, theta) -> torch.Tensor:
    """x_θ = cos θ·x0 + sin θ·ε (float64 coefficients; result in the promoted dtype)."""
    th = _bcast(theta, x0)
    return torch.cos(th) * x0 + torch.sin(th) * noise


# ---- the wrapped network -------------------------------------------------------------------------------------------

@dataclass
class TrigFlowPrediction:
    x0: torch.Tensor  # [B, C, T, H, W], float64
    F: torch.Tensor  # [B, C, T, H, W], float64


class TrigFlowModel(nn.Module):
    """F_θ(x_θ, θ, cond) around an RF velocity transformer (a diffusers `WanTransformer3DModel`, unchanged).

    The transformer is called as `transformer(hidden_states=x_θ·c_in, timestep=1000·t, encoder_hidden_states=…,
    return_dict=False)[0]` with the input cast to the transformer's dtype and its output read as float32 — like
    `rcm/models/t2v_model_distill_rcm.py::denoise`. `bf16_timesteps` (default on) rounds the timestep 1000·t to
    bfloat16 before the call, as rCM/TurboDiffusion do (they cast c_noise to the bf16 network dtype; see
    turbo/schedulers/rcm.py); under `torch.func.jvp` the rounding is straight-through, so the timestep tangent is
    cast to bfloat16 too, exactly as the reference casts its c_noise tangent. x0̂ and F come back float64.
    """

    def __init__(self, transformer: nn.Module, *, bf16_timesteps: bool = True,
                 timestep_scale: float = TIMESTEP_SCALE):
        super().__init__()
        self.transformer = transformer
        self.bf16_timesteps = bf16_timesteps
        self.timestep_scale = timestep_scale

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def _timestep(self, c_noise: torch.Tensor) -> torch.Tensor:
        timestep = c_noise.reshape(c_noise.shape[0]) if c_noise.ndim else c_noise
        if self.bf16_timesteps:
            timestep = timestep.to(torch.bfloat16)
        return timestep.to(torch.float32)

    def rf_velocity(self, x_rf: torch.Tensor, timestep: torch.Tensor, **cond) -> torch.Tensor:
        """The raw RF velocity v(x_RF, timestep) as float32 ([B, C, T, H, W])."""
        out = self.transformer(hidden_states=x_rf.to(self.dtype), timestep=timestep, return_dict=False, **cond)[0]
        return out.float()

    def denoise(self, x: torch.Tensor, theta: torch.Tensor, **cond) -> TrigFlowPrediction:
        """x: x_θ [B, C, T, H, W] (any float dtype); θ: [B] or [B, 1] radians. Returns x0̂ and F̂ (float64)."""
        th = _bcast(theta.reshape(theta.shape[0]) if theta.ndim > 1 else theta, x)
        c_skip, c_out, c_in, c_noise = trigflow_coefficients(th, self.timestep_scale)
        v = self.rf_velocity(x * c_in, self._timestep(c_noise), **cond)
        x0 = c_skip * x + c_out * v
        F = (torch.cos(th) * x - x0) / torch.sin(th)
        return TrigFlowPrediction(x0=x0, F=F)

    def forward(self, x: torch.Tensor, theta: torch.Tensor, **cond) -> torch.Tensor:
        """F_θ(x_θ, θ, cond): [B, C, T, H, W] float64."""
        return self.denoise(x, theta, **cond).F

    def F_and_tangent(self, x: torch.Tensor, theta: torch.Tensor, t_x: torch.Tensor, t_theta: torch.Tensor,
                      **cond) -> tuple[torch.Tensor, torch.Tensor]:
        """(F, dF) = forward-mode JVP of F_θ at (x, θ) along (t_x, t_θ), preconditioning included, under no_grad.

        rCM's sCM step passes t_x = cos θ·sin θ·F_teacher, t_θ = cos θ·sin θ (`_student_scm_step`), giving
        dF = cos θ·sin θ·dF/dθ along the teacher's PF-ODE. Needs forward-mode-capable attention
        (`turbo.distill.jvp_attention.install_jvp_attention`): SDPA has no forward AD. Both outputs are detached.
        """
        theta = theta.reshape(theta.shape[0]).to(torch.float64)
        t_theta = t_theta.reshape(t_theta.shape[0]).to(torch.float64)

        def fn(x_, th_):
            return self.denoise(x_, th_, **cond).F

        with torch.no_grad():
            F, tF = torch.func.jvp(fn, (x, theta), (t_x.to(x.dtype), t_theta))
        return F.detach(), tF.detach()


# ---- few-step generation as the DMD branch uses it ------------------------------------------------------------------

def backward_simulation(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
                        thetas: Sequence[torch.Tensor] | torch.Tensor, *, with_grad: bool = False,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Student generation from pure noise along the angle grid `thetas` ([π/2, θ_1, …], each a scalar or [B], non-
    increasing; 0 is appended): x0̂ = denoise(x, θ_i); x ← cos θ_{i+1}·x0̂ + sin θ_{i+1}·ε_fresh. Only the last
    call keeps a gradient when `with_grad` (`rcm/models/t2v_model_distill_rcm.py::backward_simulation`).
    `denoise(x, θ[B]) -> x0̂`; noise: [B, C, T, H, W]. Returns the last x0̂ (float32)."""
    batch = noise.shape[0]
    grid = [torch.as_tensor(t, dtype=torch.float64, device=noise.device).expand(batch) for t in thetas]
    grid.append(torch.zeros(batch, dtype=torch.float64, device=noise.device))
    x = noise
    steps = len(grid) - 1
    for i in range(steps):
        last = i == steps - 1
        with torch.set_grad_enabled(with_grad and last and torch.is_grad_enabled()):
            x = denoise(x, grid[i]).float()
        if not last:
            fresh = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = trig_noise(x, fresh, grid[i + 1]).float()
    return x

