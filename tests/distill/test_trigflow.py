"""TrigFlow ↔ rectified-flow conversions and the `TrigFlowModel` wrapper."""

from __future__ import annotations

import math

import pytest
import torch

from turbo.distill import trigflow as tf

torch.set_default_dtype(torch.float32)


def _f64(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_time_conversions_known_values_and_round_trips():
    assert torch.allclose(tf.trig_to_rf(_f64(0.0, math.pi / 4, math.pi / 2)), _f64(0.0, 0.5, 1.0), atol=1e-15)
    assert torch.allclose(tf.rf_to_trig(_f64(0.0, 0.5, 1.0)), _f64(0.0, math.pi / 4, math.pi / 2), atol=1e-15)
    # σ_max = 80: t = 80/81 (the rCM sampler's first RF time 0.9877)
    assert abs(float(tf.trig_to_rf(tf.sigma_to_trig(80.0))) - 80 / 81) < 1e-14
    t = torch.rand(1000, dtype=torch.float64)
    assert torch.allclose(tf.trig_to_rf(tf.rf_to_trig(t)), t, atol=1e-14)
    theta = torch.rand(1000, dtype=torch.float64) * (math.pi / 2 - 1e-3)
    assert torch.allclose(tf.sigma_to_trig(tf.trig_to_sigma(theta)), theta, atol=1e-12)
    assert tf.rf_to_trig(t).dtype == torch.float64
    # Wan shift 5 at t = 0.5 → 2.5/3
    assert abs(float(tf.shift_rf_time(0.5, 5.0)) - 2.5 / 3) < 1e-15


def test_states_and_predictions_agree_with_both_paths():
    torch.manual_seed(0)
    x0, eps = torch.randn(3, 4, 2, 2, 2, dtype=torch.float64), torch.randn(3, 4, 2, 2, 2, dtype=torch.float64)
    theta = _f64(0.2, 0.9, 1.5)
    t = tf.trig_to_rf(theta).view(-1, 1, 1, 1, 1)
    c, s = torch.cos(theta).view(-1, 1, 1, 1, 1), torch.sin(theta).view(-1, 1, 1, 1, 1)
    x_rf = (1 - t) * x0 + t * eps
    x_trig = tf.trig_noise(x0, eps, theta)
    assert torch.allclose(x_trig, c * x0 + s * eps, atol=1e-14)
    assert torch.allclose(tf.rf_to_trig_state(x_rf, theta), x_trig, atol=1e-13)
    assert torch.allclose(tf.trig_to_rf_state(x_trig, theta), x_rf, atol=1e-13)
    # x_θ = x_RF / √(t² + (1 − t)²)
    assert torch.allclose(x_trig, x_rf / torch.sqrt(t ** 2 + (1 - t) ** 2), atol=1e-13)
    v = eps - x0  # the exact RF velocity
    F_true = c * eps - s * x0  # the exact TrigFlow velocity
    assert torch.allclose(tf.rf_velocity_to_x0(x_trig, v, theta), x0, atol=1e-13)
    assert torch.allclose(tf.rf_velocity_to_F(x_trig, v, theta), F_true, atol=1e-13)
    assert torch.allclose(tf.x0_to_F(x_trig, x0, theta), F_true, atol=1e-12)
    assert torch.allclose(tf.F_to_x0(x_trig, F_true, theta), x0, atol=1e-13)


def test_coefficients_float64_values():
    assert all(x.dtype == torch.float64 for x in tf.trigflow_coefficients(torch.tensor([0.3])))  # float32 in
    c_skip, c_out, c_in, c_noise = tf.trigflow_coefficients(_f64(math.pi / 4))
    r = 1 / math.sqrt(2)
    assert abs(float(c_skip) - r) < 1e-15 and abs(float(c_in) - r) < 1e-15
    assert abs(float(c_out) + 0.5) < 1e-15 and abs(float(c_noise) - 500.0) < 1e-12


class _LinearRF(torch.nn.Module):
    """Fake RF transformer v = a·x + timestep/1000 that records what it was called with."""

    def __init__(self, a: float = 2.0):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a))
        self.calls = []

    def forward(self, hidden_states, timestep, encoder_hidden_states=None, return_dict=True):
        self.calls.append((hidden_states.detach().clone(), timestep.detach().clone()))
        return (self.a * hidden_states + timestep.view(-1, 1, 1, 1, 1) / 1000,)


@pytest.mark.parametrize("bf16", [True, False])
def test_model_wrapper_inputs_and_outputs(bf16):
    torch.manual_seed(0)
    net = _LinearRF()
    model = tf.TrigFlowModel(net, bf16_timesteps=bf16)
    x = torch.randn(2, 4, 1, 2, 2)
    theta = _f64(0.4, 1.3)
    pred = model.denoise(x, theta, encoder_hidden_states=None)
    x_in, timestep = net.calls[-1]
    t = tf.trig_to_rf(theta)
    assert torch.allclose(x_in.double(), tf.trig_to_rf_state(x.double(), theta), atol=1e-6)
    expected_ts = (1000 * t).to(torch.bfloat16).float() if bf16 else (1000 * t).float()
    assert torch.equal(timestep, expected_ts)
    if bf16:
        assert not torch.equal(timestep, (1000 * t).float())  # 135.58…, 953.9… are not bf16 numbers
    v = (2.0 * x_in + timestep.view(-1, 1, 1, 1, 1) / 1000).double()
    assert pred.F.dtype == torch.float64 and pred.x0.dtype == torch.float64
    assert torch.allclose(pred.x0, tf.rf_velocity_to_x0(x.double(), v, theta), atol=1e-6)
    assert torch.allclose(pred.F, tf.rf_velocity_to_F(x.double(), v, theta), atol=1e-5)
    assert torch.allclose(model(x, theta), pred.F)


def test_model_jvp_matches_closed_form():
    torch.manual_seed(0)
    model = tf.TrigFlowModel(_LinearRF().double(), bf16_timesteps=False)
    x = torch.randn(2, 4, 1, 2, 2, dtype=torch.float64)
    theta, t_theta = _f64(0.4, 1.3), _f64(0.3, -0.7)
    t_x = torch.randn_like(x)
    F, tF = model.F_and_tangent(x, theta, t_x, t_theta)

    def closed(x_, th_):
        t = tf.trig_to_rf(th_).view(-1, 1, 1, 1, 1)
        v = 2.0 * tf.trig_to_rf_state(x_, th_) + t.float().double()
        return tf.rf_velocity_to_F(x_, v, th_)

    F_ref, tF_ref = torch.func.jvp(closed, (x, theta), (t_x, t_theta))
    assert torch.allclose(F, F_ref, atol=1e-6) and torch.allclose(tF, tF_ref, atol=1e-5)
    assert not F.requires_grad and not tF.requires_grad


def test_backward_simulation_grid_and_grad():
    seen = []
    param = torch.nn.Parameter(torch.tensor(1.0))

    def denoise(x, theta):
        seen.append((theta.clone(), torch.is_grad_enabled()))
        return param * torch.ones_like(x)

    noise = torch.randn(2, 3, 1, 2, 2)
    out = tf.backward_simulation(denoise, noise, [math.pi / 2, _f64(1.0, 0.5)], with_grad=True,
                                 generator=torch.Generator().manual_seed(0))
    assert [bool(g) for _, g in seen] == [False, True]
    assert torch.allclose(seen[0][0], _f64(math.pi / 2, math.pi / 2)) and torch.allclose(seen[1][0], _f64(1.0, 0.5))
    assert out.requires_grad and torch.equal(out.detach(), torch.ones_like(noise))
    out.sum().backward()
    assert float(param.grad) == noise.numel()
