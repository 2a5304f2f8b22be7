"""EMA (constant decay and EDM2 power EMA) against their closed forms; the warm-up/constant and cosine LR schedules."""

from __future__ import annotations

import math

import pytest
import torch

from turbo.errors import TurboConfigError
from turbo.training import (
    EMA,
    PowerEMA,
    StepPlan,
    TensorLambdaLR,
    TrainConfig,
    build_optimizer,
    lr_factor,
    make_ema,
    power_ema_gamma,
    power_ema_sigma_rel,
)


def _scalar_module(value: float) -> torch.nn.Module:
    module = torch.nn.Module()
    module.w = torch.nn.Parameter(torch.tensor([value], dtype=torch.float64))
    return module


def _run(ema_cls, values, **kwargs):
    module = _scalar_module(values[0])
    ema = ema_cls(module, **kwargs)
    for v in values[1:]:
        module.w.data.fill_(v)
        ema.update(module)
    return ema


def test_constant_ema_matches_closed_form():
    values = [0.3, -1.0, 2.0, 0.5, 4.0, -0.25]
    decay = 0.8
    ema = _run(EMA, values, decay=decay)
    n = len(values) - 1  # updates after the initial copy
    want = decay**n * values[0] + sum((1 - decay) * decay ** (n - t) * values[t] for t in range(1, n + 1))
    assert float(ema.shadow["w"]) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("sigma_rel", [0.05, 0.1, 0.2])
def test_power_ema_gamma_round_trip(sigma_rel):
    gamma = power_ema_gamma(sigma_rel)
    assert gamma > 0 and power_ema_sigma_rel(gamma) == pytest.approx(sigma_rel, rel=1e-10)
    # EDM2 numbers: σ_rel 0.05 -> γ ≈ 16.97, 0.10 -> γ ≈ 6.94
    assert {0.05: 16.97, 0.1: 6.94, 0.2: 1.83}[sigma_rel] == pytest.approx(gamma, abs=0.01)


@pytest.mark.parametrize("sigma_rel", [0.05, 0.15])
def test_power_ema_matches_closed_form(sigma_rel):
    """After T updates of θ_1..θ_T: Σ_t w_t θ_t with w_t = (t^(γ+1) - (t-1)^(γ+1)) / T^(γ+1) (β_t = (1 - 1/t)^(γ+1)),
    whatever the initial shadow (β_1 = 0)."""
    gen = torch.Generator().manual_seed(0)
    thetas = torch.randn(40, generator=gen, dtype=torch.float64).tolist()
    ema = _run(PowerEMA, [123.0, *thetas], sigma_rel=sigma_rel)
    g, T = ema.gamma, len(thetas)
    weights = [(t ** (g + 1) - (t - 1) ** (g + 1)) / T ** (g + 1) for t in range(1, T + 1)]
    assert sum(weights) == pytest.approx(1.0)
    want = sum(w * th for w, th in zip(weights, thetas, strict=True))
    assert float(ema.shadow["w"]) == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert float(ema.num_updates) == T


def test_power_ema_state_round_trip_continues_identically():
    values = [float(v) for v in range(10)]
    full = _run(PowerEMA, values, sigma_rel=0.1)
    half = _run(PowerEMA, values[:5], sigma_rel=0.1)
    module = _scalar_module(0.0)
    resumed = PowerEMA(module, sigma_rel=0.1)
    resumed.load_state_dict({k: v.clone() for k, v in half.state_dict().items()})
    for v in values[5:]:
        module.w.data.fill_(v)
        resumed.update(module)
    assert float(resumed.shadow["w"]) == float(full.shadow["w"])


def test_make_ema_follows_the_config():
    module = torch.nn.Linear(2, 2)
    assert make_ema(module, TrainConfig(steps=1)) is None
    assert type(make_ema(module, TrainConfig(steps=1, ema_decay=0.99))) is EMA
    assert isinstance(make_ema(module, TrainConfig(steps=1, ema_sigma_rel=0.05)), PowerEMA)


def test_linear_warmup_then_constant():
    factor = lr_factor("constant", warmup=4, total=lambda: 100)
    assert [factor(s) for s in range(7)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]
    opt, sched = build_optimizer(torch.nn.Linear(2, 2).parameters(), TrainConfig(steps=20, lr=2e-4, warmup=4),
                                 StepPlan(20))
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([5e-5, 1e-4, 1.5e-4, 2e-4, 2e-4, 2e-4, 2e-4, 2e-4])


def test_warmup_from_a_start_factor_as_rcm():
    factor = lr_factor("constant", warmup=4, total=lambda: 100, warmup_start=1e-6)
    assert [factor(s) for s in range(6)] == pytest.approx([1e-6, 0.25 + 0.75e-6, 0.5 + 0.5e-6, 0.75 + 0.25e-6, 1, 1])
    opt, _ = build_optimizer(torch.nn.Linear(2, 2).parameters(),
                             TrainConfig(steps=20, lr=2e-6, warmup=100, warmup_start=1e-6), StepPlan(20))
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-12)
    with pytest.raises(TurboConfigError, match="warmup_start"):
        TrainConfig(steps=1, warmup_start=0.0)


def test_cosine_ends_at_min_lr_and_tensor_lr_matches():
    plan = StepPlan(30)
    config = TrainConfig(steps=30, lr=1.0, warmup=3, schedule="cosine", min_lr=0.1)
    factor = lr_factor("cosine", 3, lambda: plan.total, 0.1)
    assert factor(30) == pytest.approx(0.1) and factor(3) == pytest.approx(1.0)
    assert factor(3 + 27 // 2) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 13 / 27)))
    opt, sched = build_optimizer([torch.nn.Parameter(torch.zeros(2))], config, plan, capturable=False)
    p = torch.nn.Parameter(torch.zeros(2))
    tensor_opt = torch.optim.SGD([p], lr=torch.tensor(1.0))
    tensor_sched = TensorLambdaLR(tensor_opt, factor)
    for _ in range(31):
        assert float(tensor_opt.param_groups[0]["lr"]) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step(), tensor_opt.step()
        sched.step(), tensor_sched.step()
