"""TrainConfig: JSON round trip, diff and validation; the compiled/graphed steps say when they run eagerly."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch

from turbo.errors import TurboConfigError
from turbo.training import CompiledForward, GraphedStep, TrainConfig, backward_and_step, use_cuda_graphs


def test_config_round_trip_and_diff():
    config = TrainConfig(steps=100, lr=1e-4, ema_sigma_rel=0.05, device=torch.device("cpu"))
    assert config.device == "cpu"
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and config.diff(again) == {}
    other = config.replace(lr=2e-4, warmup=0)
    assert config.diff(other) == {"lr": (1e-4, 2e-4), "warmup": (100, 0)}


def test_config_refuses_bad_values_in_one_sentence():
    with pytest.raises(TurboConfigError, match="unknown TrainConfig keys colour"):
        TrainConfig.from_dict({"steps": 1, "colour": "red"})
    with pytest.raises(TurboConfigError, match="steps, minutes or both"):
        TrainConfig()
    with pytest.raises(TurboConfigError, match="schedule"):
        TrainConfig(steps=1, schedule="linear")
    with pytest.raises(TurboConfigError, match="not both"):
        TrainConfig(steps=1, ema_decay=0.9, ema_sigma_rel=0.05)
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig(steps=1).lr = 1.0  # type: ignore[misc]


def _sgd_step():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)

    def step(x):
        loss = (w * x).sum()
        backward_and_step(loss, opt, [w])
        return loss

    return w, opt, step


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
def test_graphed_step_on_cpu_says_it_runs_eagerly(caplog):
    w, opt, step = _sgd_step()
    with caplog.at_level(logging.WARNING, logger="turbo"):
        graphed = GraphedStep(step, opt, enabled=True, device="cpu", name="toy step")
    assert not graphed.enabled
    assert "CUDA graphs were requested for the toy step but the device is cpu: it runs eagerly" in caplog.text
    for _ in range(3):
        graphed(torch.ones(3))
    assert torch.allclose(w.detach(), torch.full((3,), 0.7))  # each step saw a fresh gradient of 1, not a sum
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="turbo"):
        assert use_cuda_graphs(False, "cpu") is False and GraphedStep(step, opt, enabled=False).enabled is False
    assert caplog.text == ""  # not asked for: nothing to say


def test_compiled_forward_failure_says_it_runs_eagerly(caplog, monkeypatch):
    def broken_compile(module, **kwargs):
        def fail(*args, **kw):
            raise RuntimeError("no C++ compiler here\nmore detail")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    module = torch.nn.Linear(2, 2)
    forward = CompiledForward(module, enabled=True, name="toy transformer")
    x = torch.ones(1, 2)
    with caplog.at_level(logging.WARNING, logger="turbo"):
        out = forward(x)
    assert torch.equal(out, module(x)) and forward.compiled is None
    assert ("torch.compile of the toy transformer failed (RuntimeError: no C++ compiler here); its forward runs "
            "eagerly from now on") in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graphed_step_with_power_ema_matches_eager_on_cuda():
    """A captured step (capturable AdamW, tensor LR, power EMA with its device-side step count) replays exactly what
    the eager step does."""
    from turbo.training import PowerEMA, StepPlan, build_optimizer

    results = []
    for graphs in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 1)).cuda()
        config = TrainConfig(steps=12, lr=1e-2, warmup=3, schedule="cosine", device="cuda")
        params = list(model.parameters())
        opt, sched = build_optimizer(params, config, StepPlan(12), capturable=graphs)
        ema = PowerEMA(model, sigma_rel=0.1)

        def step(x, y, model=model, opt=opt, ema=ema, params=params):
            loss = (model(x) - y).pow(2).mean()
            backward_and_step(loss, opt, params, 1.0, ema, model)
            return loss

        graphed = GraphedStep(step, opt, graphs, device="cuda")
        gen = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(12):
            x, y = torch.randn(4, 8, generator=gen).cuda(), torch.randn(4, 1, generator=gen).cuda()
            losses.append(graphed(x, y))
            sched.step()
        assert graphed.enabled == graphs and len(graphed._graphs) == int(graphs)
        results.append((torch.stack(losses), torch.cat([s.flatten() for s in ema.shadow.values()])))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-5, rtol=1e-4)
