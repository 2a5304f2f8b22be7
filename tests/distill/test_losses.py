"""rCM loss terms vs hand-computed values, NaN handling, time samplers, and one sCM + DMD + critic step end to end."""

from __future__ import annotations

import copy
import math
import time

import torch

from turbo.distill import losses as L
from turbo.distill.jvp_attention import using_jvp_attention
from turbo.distill.trigflow import TrigFlowModel, backward_simulation, trig_noise

from . import LATENT, TEXT_DIM, tiny_wan


def _t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_scm_target_and_loss_by_hand_r1():
    # θ = π/4: cos = sin = √½, so g = −½(F⁻ − F_T) − (½·x + t_F)
    theta = _t(math.pi / 4)
    F_sg, F_T, x, t_F = _t([1.0, 2.0]), _t([0.0, 1.0]), _t([2.0, 0.0]), _t([0.5, -1.0])
    g = L.scm_target(F_sg, F_T, t_F, x, theta, 1.0)
    torch.testing.assert_close(g, _t([-2.0, 0.5]), atol=1e-14, rtol=0)
    F = F_sg.clone().requires_grad_()
    loss = L.scm_loss(F, F_T, t_F, x, theta, 1.0)
    norm = math.sqrt(4.25)
    assert loss.shape == (1,)
    assert abs(float(loss.detach()) - 100 * 4.25 / (norm + 0.1) ** 2) < 1e-12  # a sum over elements, × 100
    loss.sum().backward()  # ∂/∂F = 2·100·(F − F⁻ − ĝ) = −200·ĝ
    torch.testing.assert_close(F.grad, -200 * _t([-2.0, 0.5]) / (norm + 0.1), atol=1e-12, rtol=0)


def test_scm_target_warmup_by_hand():
    # θ = π/6, r = ½: g = −cos·√(1 − ¼·sin²)(F⁻ − F_T) − (½·cos·sin·x + t_F); t_F is not scaled by r
    theta, r = _t(math.pi / 6), 0.5
    c, s = math.sqrt(3) / 2, 0.5
    g = L.scm_target(_t([1.0, 0.0]), _t([0.0, 0.0]), _t([0.0, 1.0]), _t([1.0, 1.0]), theta, r)
    expected = [-c * math.sqrt(1 - 0.25 * s * s) - 0.5 * c * s, -0.5 * c * s - 1.0]
    torch.testing.assert_close(g, _t(expected), atol=1e-14, rtol=0)
    assert L.tangent_warmup_ratio(250, 1000) == 0.25 and L.tangent_warmup_ratio(5000, 1000) == 1.0
    assert L.tangent_warmup_ratio(3, 0) == 1.0


def test_scm_r1_is_the_scm_form():
    g_ = torch.Generator().manual_seed(0)
    shape = (3, 4, 2, 2, 2)
    F_sg, F_T, x, dF = (torch.randn(shape, generator=g_, dtype=torch.float64) for _ in range(4))
    theta = _t(0.3, 0.8, 1.4)
    c, s = torch.cos(theta).view(-1, 1, 1, 1, 1), torch.sin(theta).view(-1, 1, 1, 1, 1)
    t_x, t_theta = L.scm_tangents(F_T, theta)
    torch.testing.assert_close(t_x, c * s * F_T) and torch.testing.assert_close(t_theta, (c * s).view(-1))
    g = L.scm_target(F_sg, F_T, c * s * dF, x, theta, 1.0)
    torch.testing.assert_close(g, -c ** 2 * (F_sg - F_T) - c * s * (x + dF), atol=1e-13, rtol=1e-13)
    n = L.normalize_tangent(g)
    torch.testing.assert_close(n.flatten(1).norm(dim=1), g.flatten(1).norm(dim=1) / (g.flatten(1).norm(dim=1) + 0.1))


def test_scm_nan_samples_are_zeroed():
    g_ = torch.Generator().manual_seed(1)
    shape = (3, 2, 1, 2, 2)
    F_T, x, t_F = (torch.randn(shape, generator=g_, dtype=torch.float64) for _ in range(3))
    F0 = torch.randn(shape, generator=g_, dtype=torch.float64)
    theta = _t(0.5, 0.9, 1.1)
    t_F[1, 0, 0, 1, 1] = float("nan")  # NaN tangent → sample 1 out
    F0[2, 1, 0, 0, 0] = float("nan")  # NaN student output → sample 2 out
    F = F0.clone().requires_grad_()
    loss = L.scm_loss(F, F_T, t_F, x, theta, 0.7)
    assert torch.isfinite(loss).all() and float(loss[1].detach()) == 0 and float(loss[2].detach()) == 0
    loss.sum().backward()
    assert torch.isfinite(F.grad).all() and float(F.grad[1:].abs().max()) == 0
    alone = L.scm_loss(F0[:1], F_T[:1], t_F[:1], x[:1], theta[:1], 0.7)
    torch.testing.assert_close(loss[:1], alone)


def test_dmd_generator_loss_by_hand():
    G = _t([1.0, 3.0]).requires_grad_()
    x0_T, x0_fake = _t([0.0, 1.0]), _t([1.0, 1.0])
    # w = mean(|1|, |2|) = 1.5; grad = (x0_fake − x0_T)/w = [2/3, 0]; loss = Σ grad² = 4/9; ∂/∂G = 2·grad
    loss = L.dmd_generator_loss(G, x0_fake, x0_T)
    assert loss.dtype == torch.float64 and abs(float(loss.detach()) - 4 / 9) < 1e-14
    loss.sum().backward()
    torch.testing.assert_close(G.grad, _t([4 / 3, 0.0]), atol=1e-14, rtol=0)
    # G equal to the teacher: the weight clips at 1e-5
    loss = L.dmd_generator_loss(_t([0.0, 1.0]), x0_fake, x0_T, loss_scale=2.0)
    assert abs(float(loss) - 2.0 * (1 / 1e-5) ** 2) < 1e-3


def test_dmd_nan_samples_are_zeroed():
    G = _t([1.0, 3.0], [1.0, 3.0]).requires_grad_()
    x0_T = _t([0.0, 1.0], [0.0, 1.0])
    x0_fake = _t([1.0, 1.0], [float("nan"), 1.0])
    loss = L.dmd_generator_loss(G, x0_fake, x0_T)
    assert abs(float(loss[0].detach()) - 4 / 9) < 1e-14 and float(loss[1].detach()) == 0
    loss.sum().backward()
    assert torch.isfinite(G.grad).all() and float(G.grad[1].abs().max()) == 0


def test_fake_score_loss_by_hand():
    # θ = π/6: sin² = ¼, so Σ(G − x0_fake)²/sin²θ = (1 + 4)·4 = 20
    fake = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    loss = L.fake_score_loss(_t([1.0, 2.0]), fake, _t(math.pi / 6))
    assert abs(float(loss.detach()) - 20.0) < 1e-12
    loss.sum().backward()
    torch.testing.assert_close(fake.grad, _t([-8.0, -16.0]), atol=1e-12, rtol=0)


def test_helpers():
    assert [L.dmd_simulation_steps(i) for i in range(6)] == [1, 2, 3, 4, 1, 2]
    a, b = _t([1.0]), _t([3.0])
    torch.testing.assert_close(L.cfg_combine(a, b, 5.0), _t([-7.0]))
    assert L.cfg_combine(a, b, 1.0) is a


def test_time_samplers():
    gen = torch.Generator().manual_seed(0)
    theta = L.sample_uniform_shift_theta((4,), 5.0, generator=gen)
    u = torch.rand((4,), generator=torch.Generator().manual_seed(0)).double()
    t = 5 * u / (1 + 4 * u)
    assert theta.dtype == torch.float64
    torch.testing.assert_close(theta, torch.atan(t / (1 - t)), atol=1e-12, rtol=0)
    theta = L.sample_lognormal_theta((4,), 0.7, 1.6, generator=torch.Generator().manual_seed(1))
    z = torch.randn((4,), generator=torch.Generator().manual_seed(1)).double()
    torch.testing.assert_close(theta, torch.atan(torch.exp(z * 1.6 + 0.7)), atol=1e-12, rtol=0)
    # medians: p_D t = 2.5/3; p_G (0.7, 1.6) t = e^0.7/(1 + e^0.7)
    many = torch.tan(L.sample_uniform_shift_theta((20000,), 5.0, generator=gen))
    assert abs(float((many / (1 + many)).median()) - 2.5 / 3) < 0.01
    many = torch.tan(L.sample_lognormal_theta((20000,), 0.7, 1.6, generator=gen))
    assert abs(float((many / (1 + many)).median()) - math.exp(0.7) / (1 + math.exp(0.7))) < 0.01
    assert float(many.min()) >= 0


def test_one_scm_dmd_and_critic_step_end_to_end():
    start = time.perf_counter()
    torch.manual_seed(0)
    teacher_net = tiny_wan(seed=0).requires_grad_(False)
    student_net, fake_net = (copy.deepcopy(teacher_net).requires_grad_(True) for _ in range(2))
    teacher, student, fake = (TrigFlowModel(n) for n in (teacher_net, student_net, fake_net))
    B = 1
    x0 = torch.randn(B, *LATENT)
    cond = {"encoder_hidden_states": torch.randn(B, 8, TEXT_DIM)}
    uncond = {"encoder_hidden_states": torch.zeros(B, 8, TEXT_DIM)}
    gen = torch.Generator().manual_seed(0)

    # sCM
    theta = L.sample_lognormal_theta((B,), 0.7, 1.6, generator=gen).clamp(0.2, 1.5)
    x_t = trig_noise(x0, torch.randn(x0.shape, generator=gen), theta).float()
    with torch.no_grad():
        F_T = L.cfg_combine(teacher(x_t, theta, **cond), teacher(x_t, theta, **uncond), 5.0)
    t_x, t_theta = L.scm_tangents(F_T, theta)
    with using_jvp_attention(student_net):
        _, t_F = student.F_and_tangent(x_t, theta, t_x, t_theta, **cond)
    F = student(x_t, theta, **cond)
    loss_scm = L.scm_loss(F, F_T, t_F, x_t, theta, L.tangent_warmup_ratio(500, 1000)).sum()
    loss_scm.backward()
    assert torch.isfinite(loss_scm) and float(loss_scm.detach()) > 0
    grads = [p.grad for p in student_net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in teacher_net.parameters())
    assert all(p.grad is None for p in fake_net.parameters())
    student_net.zero_grad(set_to_none=True)

    # DMD (generator side): 2-step backward simulation, only the last step with grad
    def student_x0(x, th):
        return student.denoise(x, th, **cond).x0

    thetas = [torch.full((B,), math.pi / 2, dtype=torch.float64),
              L.sample_uniform_shift_theta((B,), 5.0, generator=gen).clamp(max=math.pi / 2)]
    G = backward_simulation(student_x0, torch.randn(x0.shape, generator=gen), thetas, with_grad=True,
                            generator=gen)
    theta_D = L.sample_uniform_shift_theta((B,), 5.0, generator=gen).clamp(0.1, 1.5)
    x_D = trig_noise(G, torch.randn(G.shape, generator=gen), theta_D).float()
    with torch.no_grad():
        x0_fake = fake.denoise(x_D, theta_D, **cond).x0
        x0_T = L.cfg_combine(teacher.denoise(x_D, theta_D, **cond).x0, teacher.denoise(x_D, theta_D, **uncond).x0,
                             5.0)
    loss_dmd = L.dmd_generator_loss(G, x0_fake, x0_T).sum()
    loss_dmd.backward()
    assert torch.isfinite(loss_dmd)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student_net.parameters())
    assert all(p.grad is None for p in teacher_net.parameters()) and all(p.grad is None for p in fake_net.parameters())
    student_net.zero_grad(set_to_none=True)

    # critic: the fake score learns on the student's (no-grad) generations
    with torch.no_grad():
        G = backward_simulation(student_x0, torch.randn(x0.shape, generator=gen), thetas[:1], generator=gen)
    x_D = trig_noise(G, torch.randn(G.shape, generator=gen), theta_D).float()
    loss_fake = L.fake_score_loss(G, fake.denoise(x_D, theta_D, **cond).x0, theta_D).sum()
    loss_fake.backward()
    assert torch.isfinite(loss_fake)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fake_net.parameters())
    assert all(p.grad is None for p in student_net.parameters())
    assert all(p.grad is None for p in teacher_net.parameters())
    assert time.perf_counter() - start < 30
