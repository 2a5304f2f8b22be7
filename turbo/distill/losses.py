"""rCM losses as pure functions on tensors (semantics of `rcm/models/t2v_model_distill_rcm.py`).

Every loss returns a per-sample vector [B]: a **sum** over all other dimensions (C, T, H, W), scaled; the trainer sums
over the batch (and divides by gradient-accumulation steps) as the reference does. θ is the TrigFlow angle ([B] or
[B, 1], float64). Float64 where the reference promotes to it (F from `TrigFlowModel` is float64 already).
"""

from __future__ import annotations

import torch

from .trigflow import rf_to_trig, shift_rf_time

__all__ = [
    "SCM_LOSS_SCALE", "DMD_LOSS_SCALE", "TANGENT_NORM_EPS", "tangent_warmup_ratio", "cfg_combine",
    "scm_tangents", "scm_target", "normalize_tangent", "scm_loss", "dmd_generator_loss", "fake_score_loss",
    "dmd_simulation_steps", "sample_lognormal_theta", "sample_uniform_shift_theta",
]

SCM_LOSS_SCALE = 100.0  # `loss_scale`
DMD_LOSS_SCALE = 1.0  # `loss_scale_dmd`
TANGENT_NORM_EPS = 0.1  # g ← g/(‖g‖ + 0.1)


def _per_sample(theta: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    theta = torch.as_tensor(theta, device=like.device).to(torch.float64)
    return theta.reshape(theta.shape[0], *([1] * (like.ndim - 1))) if theta.ndim else theta


def _sample_any(mask: torch.Tensor) -> torch.Tensor:
    """[B, …] bool → [B] 'any element of the sample'."""
    return mask.flatten(start_dim=1).any(dim=1)


def _expand(per_sample: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return per_sample.reshape(per_sample.shape[0], *([1] * (like.ndim - 1))).expand_as(like)


def tangent_warmup_ratio(step: int, warmup: int) -> float:
    """r = min(1, step/warmup); 1 when warmup is 0."""
    return 1.0 if warmup == 0 else min(1.0, step / warmup)


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """uncond + w·(cond − uncond) (the reference applies it for w > 1 only; for w = 1 this is `cond`)."""
    return cond if guidance == 1.0 else uncond + guidance * (cond - uncond)


def scm_tangents(F_teacher: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """JVP tangent inputs (t_x, t_θ) = (cos θ·sin θ·F_T, cos θ·sin θ) — the cos·sin factor sits inside the tangent
    (sCM §5.1 'JVP rearrangement'). Returns t_x like F_T (promoted to float64) and t_θ [B] float64."""
    th = _per_sample(theta, F_teacher)
    cs = torch.cos(th) * torch.sin(th)
    return cs * F_teacher, cs.reshape(-1)


def scm_target(F_sg: torch.Tensor, F_teacher: torch.Tensor, t_F: torch.Tensor, x_t: torch.Tensor,
               theta: torch.Tensor, r: float) -> torch.Tensor:
    """Raw sCM tangent target (before NaN zeroing and normalisation), `_student_scm_step`:

    g = −cos θ·√(1 − r²·sin²θ)·(F⁻ − F_T) − (r·cos θ·sin θ·x_t + t_F)

    t_F = cos θ·sin θ·dF⁻/dθ is the JVP output; r scales the x_t term only (not t_F). At r = 1:
    g = −cos²θ·(F⁻ − F_T) − cos θ·sin θ·(x_t + dF⁻/dθ).
    """
    th = _per_sample(theta, x_t)
    c, s = torch.cos(th), torch.sin(th)
    return -c * torch.sqrt(1 - r ** 2 * s ** 2) * (F_sg - F_teacher) - (r * c * s * x_t + t_F)


def normalize_tangent(g: torch.Tensor, eps: float = TANGENT_NORM_EPS) -> torch.Tensor:
    """Per-sample g/(‖g‖₂ + eps), norm over all non-batch dims, in float64. Returns float64."""
    g = g.double()
    return g / (g.flatten(start_dim=1).norm(p=2, dim=1).reshape(-1, *([1] * (g.ndim - 1))) + eps)


def scm_loss(F: torch.Tensor, F_teacher: torch.Tensor, t_F: torch.Tensor, x_t: torch.Tensor, theta: torch.Tensor,
             r: float = 1.0, *, F_sg: torch.Tensor | None = None, loss_scale: float = SCM_LOSS_SCALE,
             eps: float = TANGENT_NORM_EPS) -> torch.Tensor:
    """sCM loss per sample [B]: loss_scale·Σ(F − F⁻ − ĝ)², ĝ = normalize_tangent(scm_target(…)).

    F: student F_θ with gradient [B, C, T, H, W]; F⁻ = F.detach() unless `F_sg` is given; F_teacher: teacher F
    (CFG applied, no grad); t_F: JVP tangent; x_t: the TrigFlow state; r: tangent warm-up ratio. Samples whose g or F
    contain NaN are zeroed (loss 0, zero gradient), as the reference does.
    """
    F_sg = F.detach() if F_sg is None else F_sg.detach()
    with torch.no_grad():
        g = scm_target(F_sg, F_teacher, t_F, x_t, theta, r)
        bad = _expand(_sample_any(torch.isnan(g)) | _sample_any(torch.isnan(F_sg)), g)
        g = torch.where(bad, torch.zeros((), dtype=g.dtype, device=g.device), g)
        g = normalize_tangent(g, eps)
        F_sg = torch.where(bad, torch.zeros((), dtype=F_sg.dtype, device=F_sg.device), F_sg)
    F = torch.where(bad, torch.zeros((), dtype=F.dtype, device=F.device), F)
    return loss_scale * ((F - F_sg - g) ** 2).flatten(start_dim=1).sum(dim=1)


def dmd_generator_loss(G_x0: torch.Tensor, x0_fake: torch.Tensor, x0_teacher: torch.Tensor, *,
                       loss_scale: float = DMD_LOSS_SCALE) -> torch.Tensor:
    """DMD (reverse-KL score distillation) loss per sample [B], `_student_dmd_step`:

    w = max(mean|G − x0_T|, 1e-5) per sample (no grad, float64); grad = (x0_fake − x0_T)/w;
    loss = loss_scale·Σ(G − sg(G − grad))², so ∂loss/∂G = 2·loss_scale·grad. Float64. Samples with a NaN are zeroed
    (loss 0 and zero gradient; the mask is applied before squaring so no NaN leaks into the gradient).
    G_x0: the student's generation (with grad); x0_fake / x0_teacher: the fake-score and teacher (CFG) x0 estimates at
    the re-noised G_x0.
    """
    G = G_x0.double()
    with torch.no_grad():
        weight = (G - x0_teacher.double()).abs().flatten(start_dim=1).mean(dim=1).clip(min=1e-5)
        grad = (x0_fake.double() - x0_teacher.double()) / weight.reshape(-1, *([1] * (G.ndim - 1)))
        target = G - grad
    diff = G - target
    bad = _expand(_sample_any(torch.isnan(diff.detach())), diff)
    diff = torch.where(bad, torch.zeros((), dtype=diff.dtype, device=diff.device), diff)
    return loss_scale * (diff ** 2).flatten(start_dim=1).sum(dim=1)


def fake_score_loss(G_x0: torch.Tensor, x0_fake: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Fake-score (critic) loss per sample [B]: Σ(G − x0̂_fake)²/sin²θ (velocity-MSE weighting in TrigFlow),
    `training_step_critic`. G_x0 is generated without grad; the gradient reaches the fake-score net via x0_fake."""
    th = _per_sample(theta, x0_fake)
    return ((G_x0.detach() - x0_fake) ** 2 / torch.sin(th) ** 2).flatten(start_dim=1).sum(dim=1)


def dmd_simulation_steps(effective_step: int, max_steps: int = 4) -> int:
    """Student steps of the DMD / critic backward simulation: cycles 1 … max_steps (`max_simulation_steps_fake`)."""
    return effective_step % max_steps + 1


def sample_lognormal_theta(shape, p_mean: float, p_std: float, *, generator: torch.Generator | None = None,
                           device=None) -> torch.Tensor:
    """p_G: σ = exp(N(p_mean, p_std²)) → RF t = σ/(1 + σ), clamped to [0, 1] → θ (float64). rCM Wan2.1 1.3B uses
    (0.7, 1.6), 14B (1.5, 1.6) (`LogNormal` in rcm/utils/timestep_utils.py; the normal is drawn in float32)."""
    log_sigma = torch.randn(shape, generator=generator, device=device).to(torch.float64) * p_std + p_mean
    sigma = torch.exp(log_sigma)
    return rf_to_trig((sigma / (sigma + 1)).clamp(0.0, 1.0))


def sample_uniform_shift_theta(shape, shift: float = 5.0, *, generator: torch.Generator | None = None,
                               device=None) -> torch.Tensor:
    """p_D: u ~ U[0, 1) (float32 draw) → t = shift·u/(1 + (shift − 1)·u) → θ (float64) (`UniformShift`)."""
    u = torch.rand(shape, generator=generator, device=device).to(torch.float64)
    return rf_to_trig(shift_rf_time(u, shift).clamp(0.0, 1.0))
