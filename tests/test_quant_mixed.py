"""NVFP4/INT8 mixed precision (`quant="nvfp4-mixed"`, turbo/quant/mixed.py, turbo/quant/router.py): both MixedLinear
paths against their references and closed forms, the router's per-branch decisions and per-call reset, calibration
(trajectory unchanged, sample count, fit, fingerprints), accelerate/restore and `turbo calibrate`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import turbo
from turbo.quant import calibrate_mixed, load_calibration, save_calibration
from turbo.quant.int8 import int8_linear_reference, quantize_weight_int8
from turbo.quant.mixed import (
    MixedLinear,
    fake_quantize_nvfp4_rows,
    mixed_high_reference,
    mixed_low_reference,
)
from turbo.quant.nvfp4 import dequantize_nvfp4, quantize_weight_nvfp4
from turbo.quant.router import RouterSettings, fit_linear, model_fingerprint, route

from .pipes import assert_same_snapshot, build, call_kwargs, run, snapshot

STEPS = 3
CFG = {"guidance_scale": 5.0}


@pytest.fixture(scope="module")
def wan():
    return build("wan-t2v")


@pytest.fixture(scope="module")
def calibration(wan, tmp_path_factory):
    """A calibration of the tiny Wan pipeline (1 prompt, 3 steps, CFG) saved as JSON, and its result."""
    kwargs = call_kwargs("wan-t2v", num_inference_steps=STEPS, **CFG)
    prompt = kwargs.pop("prompt")
    result = calibrate_mixed(wan, [prompt], generator=torch.Generator().manual_seed(0), **kwargs)
    path = tmp_path_factory.mktemp("mixed") / "calibration.json"
    save_calibration(result, path)
    return path, result


def _write(tmp_path, alpha: float, beta: float, model) -> str:
    path = tmp_path / f"cal_{alpha}_{beta}.json"
    save_calibration({"alpha": alpha, "beta": beta, "samples": 2, "r2": 1.0, "model": model_fingerprint(model)}, path)
    return str(path)


# ---------------------------------------------------------------------------------------------------- numerics


def test_activation_fake_quant_closed_forms_zero_block_ties_and_per_token_scale():
    row = torch.zeros(64)
    row[0] = 2688.0  # token amax 6 · 448: tensor scale exactly 1, block 0's scale e4m3(448) = 448
    ties = [6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.0, -0.25, -1.25, 0.0, 3.0, -6.0, 1.0, 0.5]
    row[16:32] = torch.tensor(ties)  # amax 6: s_b = 1, every tie to the even code
    # block 2 (32:48) stays zero; block 3: amax 7 -> s_b = e4m3(7/6) = 1.125, codes clamp at ±6
    row[48:64] = torch.linspace(-7.0, 7.0, 16)
    x = torch.stack([row, row * 2.0 ** -10, torch.zeros(64)])  # a power-of-two smaller token, an all-zero token
    out = fake_quantize_nvfp4_rows(x)
    assert out.dtype == torch.float32 and out.shape == (3, 64)
    assert out[0, 0].item() == 2688.0 and torch.equal(out[0, 1:16], torch.zeros(15))
    assert out[0, 16:32].tolist() == [6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -4.0, 0.0, -1.0, 0.0, 3.0, -6.0, 1.0, 0.5]
    assert torch.equal(out[0, 32:48], torch.zeros(16))  # zero block: zeros, no NaN
    assert out[0, 48].item() == -6.75 and out[0, 63].item() == 6.75  # ±7 / 1.125 clamped to ±6, times 1.125
    assert torch.equal(out[1], out[0] * 2.0 ** -10)  # the scale is per token
    assert torch.equal(out[2], torch.zeros(64))
    # leading dimensions are tokens too; a K not a multiple of 16 is refused
    assert torch.equal(fake_quantize_nvfp4_rows(x.reshape(3, 1, 64)), out.reshape(3, 1, 64))
    with pytest.raises(ValueError, match="multiple of 16"):
        fake_quantize_nvfp4_rows(torch.ones(2, 24))


def test_activation_fake_quant_matches_the_weight_quantiser_row_by_row():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 96, generator=g) * torch.tensor([1e-3, 1.0, 30.0, 0.2, 5.0])[:, None]
    out = fake_quantize_nvfp4_rows(x)
    for m in range(5):  # one token = one weight row with its own tensor scale
        assert torch.equal(out[m], dequantize_nvfp4(*quantize_weight_nvfp4(x[m:m + 1]))[0])
    relative = ((out - x).norm() / x.norm()).item()
    assert 0.03 < relative < 0.15


@pytest.mark.parametrize("n, k, bias", [(48, 64, True), (20, 32, False)])
def test_both_paths_match_their_references(n, k, bias):
    g = torch.Generator().manual_seed(n + k)
    linear = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(n, k, generator=g))
    x = torch.randn(2, 7, k, generator=g)
    module = MixedLinear(linear)
    assert module.precision == "high" and module.high_backend == ("int_mm" if n % 8 == 0 else "reference")
    buffers = (module.packed, module.block_scale, module.tensor_scale, module.bias)
    high = module(x)
    assert torch.equal(high, mixed_high_reference(x, *buffers)) and high.shape == (2, 7, n)
    # high: the NVFP4 weight re-quantised to int8 per channel, then the INT8 W8A8 linear
    weight_q, weight_scale = quantize_weight_int8(dequantize_nvfp4(*buffers[:3]))
    assert torch.equal(module.weight_q, weight_q) and torch.equal(module.weight_scale, weight_scale)
    assert torch.equal(high, int8_linear_reference(x, weight_q, weight_scale, module.bias))
    module.precision = "low"
    low = module(x)
    assert torch.equal(low, mixed_low_reference(x, *buffers))
    w = dequantize_nvfp4(*buffers[:3])
    want = fake_quantize_nvfp4_rows(x) @ w.T + (module.bias if bias else 0)
    torch.testing.assert_close(low, want, rtol=1e-6, atol=1e-6)
    exact = linear(x).detach()
    low_error = ((low - exact).norm() / exact.norm()).item()
    high_error = ((high - exact).norm() / exact.norm()).item()
    assert 0 < high_error < low_error < 0.25  # both really quantised; NVFP4 activations cost more than INT8
    assert "precision=low" in repr(module)
    with pytest.raises(ValueError, match="multiple of 16"):
        MixedLinear(nn.Linear(24, 8))


# ---------------------------------------------------------------------------------------------------- router


def test_route_rule():
    assert route(RouterSettings(0.0, 1.0, 0.5), 0.0) == "high"
    assert route(RouterSettings(0.0, 0.0, 0.05), 3.0) == "low"
    assert route(RouterSettings(0.0, 0.0, 0.05), None) == "high"  # Γ unknown: first step
    assert route(RouterSettings(2.0, 0.0, 0.05), 0.025) == "low"  # exactly max_error is not above it
    assert route(RouterSettings(2.0, 0.0, 0.05), 0.03) == "high"
    assert route(RouterSettings(-1.0, 0.1, 0.05), 0.06) == "low"  # a negative slope: volatile blocks predicted fine


def _routers(pipe):
    return [token for feature, token in pipe.turbo.installed if feature.name == "quant"][0]["routers"]


def test_always_high_when_the_predicted_error_exceeds_max_error(wan, tmp_path):
    path = _write(tmp_path, 0.0, 1.0, wan.transformer)
    turbo.accelerate(wan, quant="nvfp4-mixed", quant_calibration=path, quant_mixed_max_error=0.5)
    try:
        run(wan, "wan-t2v", num_inference_steps=STEPS, **CFG)
        (router,) = _routers(wan)
        counts = {b: dict(c) for b, c in router.counts.items()}
        line = str(wan.turbo)
    finally:
        turbo.restore(wan)
    blocks = len(wan.transformer.blocks)
    assert counts == {"cond": {"low": 0, "high": blocks * STEPS}, "uncond": {"low": 0, "high": blocks * STEPS}}
    assert f"transformer cond 0/{blocks * STEPS}" in line and "alpha 0, beta 1, max error 0.5" in line


def test_low_after_the_first_step_per_branch_and_reset_per_call(wan, tmp_path):
    """α = β = 0: step 0 of each branch is high (Γ unknown), every later step low. A state shared between the CFG
    branches would make uncond's step 0 low; a state kept across calls would make the second call's step 0 low."""
    path = _write(tmp_path, 0.0, 0.0, wan.transformer)
    turbo.accelerate(wan, quant="nvfp4-mixed", quant_calibration=path)
    blocks = len(wan.transformer.blocks)
    try:
        mixed = [m for m in wan.transformer.modules() if isinstance(m, MixedLinear)]
        first = run(wan, "wan-t2v", num_inference_steps=STEPS, **CFG)
        (router,) = _routers(wan)
        decided = {b: list(d) for b, d in router.decided_at.items()}
        assert all(m.precision == "low" for m in mixed)  # the last step ran low
        second = run(wan, "wan-t2v", num_inference_steps=STEPS, **CFG)
        decided_again = {b: list(d) for b, d in router.decided_at.items()}
        counts = {b: dict(c) for b, c in router.counts.items()}
    finally:
        turbo.restore(wan)
    expected = [(step, block, "high" if step == 0 else "low") for step in range(STEPS) for block in range(blocks)]
    assert decided == decided_again == {"cond": expected, "uncond": expected}
    assert counts == {b: {"low": 2 * blocks * (STEPS - 1), "high": 2 * blocks} for b in ("cond", "uncond")}
    np.testing.assert_array_equal(first, second)


def test_low_and_high_give_different_videos_close_to_the_original(wan, tmp_path):
    reference = run(wan, "wan-t2v", num_inference_steps=STEPS, **CFG)
    videos = {}
    for name, beta in (("high", 1.0), ("low", 0.0)):
        turbo.accelerate(wan, quant="nvfp4-mixed", quant_calibration=_write(tmp_path, 0.0, beta, wan.transformer),
                         quant_mixed_max_error=0.5)
        try:
            videos[name] = run(wan, "wan-t2v", num_inference_steps=STEPS, **CFG)
        finally:
            turbo.restore(wan)
    high_error = float(np.abs(videos["high"] - reference).mean())
    low_error = float(np.abs(videos["low"] - reference).mean())
    assert 0 < high_error < 0.02 and 0 < low_error < 0.02 and not np.array_equal(videos["high"], videos["low"])


# ---------------------------------------------------------------------------------------------------- calibration


def test_calibration_fits_finite_alpha_beta_and_leaves_the_trajectory_unchanged(wan, calibration):
    path, result = calibration
    blocks = len(wan.transformer.blocks)
    assert result["samples"] == 1 * 2 * blocks * (STEPS - 1)  # prompts × CFG branches × blocks × (steps − 1)
    assert all(np.isfinite(result[k]) for k in ("alpha", "beta", "r2"))
    assert result["model"] == {"class": "WanTransformer3DModel", "num_layers": blocks,
                               "inner_dim": model_fingerprint(wan.transformer)["inner_dim"],
                               "linears": model_fingerprint(wan.transformer)["linears"]}
    # the pipeline is as before and its video during calibration was the unquantised one: same as a plain run
    before = snapshot(wan)
    plain = run(wan, "wan-t2v", num_inference_steps=STEPS, **CFG)
    kwargs = call_kwargs("wan-t2v", num_inference_steps=STEPS, **CFG)
    prompt = kwargs.pop("prompt")
    seen = []
    original_call = type(wan).__call__

    class Spy(type(wan)):
        def __call__(self, *args, **kw):
            out = original_call(self, *args, **kw)
            seen.append(out.frames[0])
            return out

    wan.__class__ = Spy
    try:
        again = calibrate_mixed(wan, [prompt], generator=torch.Generator().manual_seed(0), **kwargs)
    finally:
        wan.__class__ = Spy.__bases__[0]
    np.testing.assert_array_equal(seen[0], plain)
    assert again == result  # deterministic
    assert_same_snapshot(before, snapshot(wan))
    np.testing.assert_array_equal(run(wan, "wan-t2v", num_inference_steps=STEPS, **CFG), plain)


def test_fit_is_least_squares():
    alpha, beta, r2 = fit_linear([(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)])
    assert (alpha, beta, r2) == pytest.approx((2.0, 1.0, 1.0))
    alpha, beta, r2 = fit_linear([(0.0, 0.0), (1.0, 1.0), (2.0, 0.0), (3.0, 1.0)])
    assert (alpha, beta) == pytest.approx((0.2, 0.2)) and r2 == pytest.approx(0.2)
    assert fit_linear([(1.0, 0.5), (1.0, 0.7)])[:2] == pytest.approx((0.0, 0.6))  # constant Γ: β is the mean
    with pytest.raises(turbo.TurboConfigError, match="at least 2 samples"):
        fit_linear([(1.0, 0.5)])


def test_save_load_round_trip_and_another_model_is_one_sentence(wan, calibration, tmp_path):
    path, result = calibration
    assert load_calibration(path, wan.transformer) == result
    assert json.loads(path.read_text())["alpha"] == result["alpha"]
    hunyuan = build("hunyuan-t2v")
    with pytest.raises(turbo.TurboConfigError) as error:
        load_calibration(path, hunyuan.transformer)
    message = str(error.value)
    assert "WanTransformer3DModel" in message and "HunyuanVideoTransformer3DModel" in message
    assert "\n" not in message and message.count(". ") == 0 and message.endswith(".")
    with pytest.raises(turbo.TurboConfigError, match="was made for"):
        turbo.accelerate(hunyuan, quant="nvfp4-mixed", quant_calibration=str(path))
    assert not hasattr(hunyuan, "turbo")
    broken = tmp_path / "broken.json"
    broken.write_text('{"alpha": 1}')
    with pytest.raises(turbo.TurboConfigError, match="not an nvfp4-mixed calibration"):
        load_calibration(broken, wan.transformer)
    with pytest.raises(turbo.TurboConfigError, match="turbo calibrate"):
        load_calibration(tmp_path / "missing.json", wan.transformer)


def test_accelerate_without_calibration_raises_and_changes_nothing(wan):
    before = snapshot(wan)
    with pytest.raises(turbo.TurboConfigError, match="turbo calibrate") as error:
        turbo.accelerate(wan, quant="nvfp4-mixed")
    assert "\n" not in str(error.value) and not hasattr(wan, "turbo")
    assert_same_snapshot(before, snapshot(wan))


def test_accelerate_swaps_nvfp4_ready_block_linears_and_restore_is_exact(wan, calibration):
    path, _ = calibration
    before = snapshot(wan)
    blocks = [b for b in wan.transformer.modules() if b is not wan.transformer]
    block_state = [(hasattr(b, "_diffusers_hook"), "forward" in vars(b)) for b in blocks]
    reference = run(wan, "wan-t2v", num_inference_steps=STEPS, **CFG)
    model = wan.transformer
    expected = {f"blocks.{i}.{name}" for i, block in enumerate(model.blocks) for name, m in block.named_modules()
                if isinstance(m, nn.Linear) and "norm" not in name and m.in_features % 16 == 0}
    turbo.accelerate(wan, quant="nvfp4-mixed", quant_calibration=str(path))
    try:
        swapped = {n for n, m in model.named_modules() if isinstance(m, MixedLinear)}
        assert swapped and swapped == expected
        out = run(wan, "wan-t2v", num_inference_steps=STEPS, **CFG)
        assert "quant: block evaluations low (NVFP4) / high (INT8)" in str(wan.turbo)
    finally:
        turbo.restore(wan)
    assert np.isfinite(out).all() and 0 < float(np.abs(out - reference).mean()) < 0.02
    assert_same_snapshot(before, snapshot(wan))
    assert [(hasattr(b, "_diffusers_hook"), "forward" in vars(b)) for b in blocks] == block_state
    np.testing.assert_array_equal(run(wan, "wan-t2v", num_inference_steps=STEPS, **CFG), reference)


def test_cli_calibrate_writes_a_json_that_accelerate_accepts(tmp_path, capsys):
    from pipelines.cli import main
    from pipelines.tiny import build_wan_t2v

    build_wan_t2v().save_pretrained(tmp_path / "model")
    code = main(["calibrate", "--model", str(tmp_path / "model"), "--prompts", "1", "--steps", "2", "--height", "64",
                 "--width", "64", "--frames", "9", "--dtype", "float32"])
    assert code == 0
    written = tmp_path / "model" / "transformer" / "turbo_mixed_calibration.json"
    out = capsys.readouterr().out
    assert f"wrote {written}" in out
    data = json.loads(written.read_text())
    assert data["samples"] == 1 * 2 * 2 * 1 and np.isfinite(data["alpha"])  # 1 prompt, CFG, 2 blocks, 1 step pair
    pipe = build("wan-t2v")
    turbo.accelerate(pipe, quant="nvfp4-mixed", quant_calibration=str(written))
    assert f"alpha {data['alpha']:.4g}" in str(pipe.turbo)
    turbo.restore(pipe)
    assert main(["calibrate", "--model", str(tmp_path / "model"), "--steps", "1", "--out",
                 str(tmp_path / "x.json")]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_hunyuan_dual_stream_blocks_calibrate_and_route(tmp_path):
    """HunyuanVideo (dual- and single-stream blocks, true CFG): calibration counts every block and CFG branch, the
    router decides for every block, and the video stays finite and close."""
    pipe = build("hunyuan-t2v")
    cfg = {"true_cfg_scale": 5.0, "negative_prompt": "blurry", "guidance_scale": 1.0}
    reference = run(pipe, "hunyuan-t2v", num_inference_steps=STEPS, **cfg)
    kwargs = call_kwargs("hunyuan-t2v", num_inference_steps=STEPS, **cfg)
    prompt = kwargs.pop("prompt")
    result = calibrate_mixed(pipe, [prompt], generator=torch.Generator().manual_seed(0), **kwargs)
    blocks = len(pipe.transformer.transformer_blocks) + len(pipe.transformer.single_transformer_blocks)
    assert result["samples"] == 2 * blocks * (STEPS - 1) and np.isfinite(result["alpha"])
    path = tmp_path / "hunyuan.json"
    save_calibration(result, path)
    turbo.accelerate(pipe, quant="nvfp4-mixed", quant_calibration=str(path))
    try:
        out = run(pipe, "hunyuan-t2v", num_inference_steps=STEPS, **cfg)
        (router,) = _routers(pipe)
        counts = {b: c["low"] + c["high"] for b, c in router.counts.items()}
    finally:
        turbo.restore(pipe)
    assert counts == {"cond": blocks * STEPS, "uncond": blocks * STEPS}
    assert np.isfinite(out).all() and 0 < float(np.abs(out - reference).mean()) < 0.02
    np.testing.assert_array_equal(run(pipe, "hunyuan-t2v", num_inference_steps=STEPS, **cfg), reference)


def test_composes_with_tdc_and_restores_exactly(wan, calibration):
    path, _ = calibration
    before = snapshot(wan)
    reference = run(wan, "wan-t2v", num_inference_steps=6, **CFG)
    turbo.accelerate(wan, quant="nvfp4-mixed", quant_calibration=str(path), cache="tdc", cache_threshold=10.0,
                     cache_max_error=100.0, cache_warmup_steps=2, cache_final_steps=1)
    try:
        out = run(wan, "wan-t2v", num_inference_steps=6, **CFG)
        (router,) = _routers(wan)
        evaluated = sum(c["low"] + c["high"] for c in router.counts.values())
        report = str(wan.turbo)
    finally:
        turbo.restore(wan)
    assert "cache: block evaluations skipped" in report and "quant: block evaluations" in report
    assert 0 < evaluated < 2 * 6 * len(wan.transformer.blocks)  # a block TDC skips is not routed
    assert np.isfinite(out).all() and float(np.abs(out - reference).mean()) < 0.05
    assert_same_snapshot(before, snapshot(wan))
    np.testing.assert_array_equal(run(wan, "wan-t2v", num_inference_steps=6, **CFG), reference)


def test_regional_compile_gives_the_eager_video(wan, tmp_path):
    """The blocks branch only on `MixedLinear.precision` (set by the hook outside them): compiled (dynamo, eager
    backend) and eager runs route and compute the same."""
    path = _write(tmp_path, 0.0, 0.0, wan.transformer)
    videos, counts = [], []
    for compile_mode in ("off", "regional"):
        turbo.accelerate(wan, quant="nvfp4-mixed", quant_calibration=path, compile=compile_mode,
                         compile_backend="eager")
        try:
            from torch._dynamo.utils import counters

            counters.clear()
            videos.append(run(wan, "wan-t2v", num_inference_steps=STEPS, **CFG))
            counts.append({b: dict(c) for b, c in _routers(wan)[0].counts.items()})
            graphs = counters["stats"]["unique_graphs"]
            run(wan, "wan-t2v", num_inference_steps=STEPS + 2, **CFG)  # more steps, both routes again
            if compile_mode == "regional":  # the block once per route (low, high) + 1 other; none per step or call
                assert 0 < graphs <= 3 and counters["stats"]["unique_graphs"] == graphs
        finally:
            turbo.restore(wan)
            torch._dynamo.reset()
    np.testing.assert_array_equal(videos[0], videos[1])
    assert counts[0] == counts[1] and counts[0]["cond"]["low"] > 0
