"""W8A8 FP8 linears (turbo/quant): numerics against closed forms, the swap inside transformer blocks, restore."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import turbo
from turbo.quant.fp8 import FP8, FP8_MAX, FP8Linear, fp8_linear_reference, quantize_rows, quantize_weight

from .pipes import assert_quantised_then_restored, build, run, snapshot


def test_e4m3_values_round_to_nearest_even_and_saturate_by_the_clamp():
    x = torch.tensor([[448.0, -448.0, 1.0, 1.0625, 1.1875, 0.0]])  # 1.0625 halfway 1 and 1.125 -> even (1.0)
    q, scale = quantize_rows(x)
    assert scale.item() == 1.0
    assert q.to(torch.float32).tolist() == [[448.0, -448.0, 1.0, 1.0, 1.25, 0.0]]
    assert q.dtype == FP8


def test_row_scales_are_per_token_and_zero_rows_stay_zero():
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, -8.0, 1.0, 0.5]])
    q, scale = quantize_rows(x)
    assert scale[0].item() == pytest.approx(1e-12 / FP8_MAX)
    assert torch.equal(q[0].to(torch.float32), torch.zeros(4))
    assert scale[1].item() == pytest.approx(8.0 / FP8_MAX)
    assert q[1, 1].to(torch.float32).item() == -FP8_MAX


def test_weight_scale_is_per_output_channel():
    w = torch.tensor([[1.0, -4.0], [0.25, 0.125]])
    q, scale = quantize_weight(w)
    torch.testing.assert_close(scale, torch.tensor([4.0, 0.25]) / FP8_MAX)
    torch.testing.assert_close(q.to(torch.float32) * scale[:, None], w)  # exactly representable


def test_reference_matches_the_closed_form_with_an_outlier_channel():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 64)
    x[..., 7] = 50.0  # an outlier feature: every token's scale grows, small values lose precision
    w, b = torch.randn(32, 64), torch.randn(32)
    w_q, w_s = quantize_weight(w)
    out = fp8_linear_reference(x, w_q, w_s, b)
    rows = x.reshape(-1, 64)
    x_scale = rows.abs().amax(-1, keepdim=True) / 448
    x_deq = (rows / x_scale).to(FP8).to(torch.float32) * x_scale
    expected = (x_deq @ (w_q.to(torch.float32) * w_s[:, None]).T + b).reshape(3, 5, 32)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    relative = (out - (x @ w.T + b)).norm() / (x @ w.T + b).norm()
    assert 1e-3 < relative < 0.1  # really quantised, and close


def test_fp8_linear_module_keeps_dtype_and_shapes():
    linear = nn.Linear(48, 32).to(torch.bfloat16)
    module = FP8Linear(linear, use_gemm=False)
    x = torch.randn(2, 7, 48, dtype=torch.bfloat16)
    out = module(x)
    assert out.shape == (2, 7, 32) and out.dtype == torch.bfloat16
    assert module.weight_q.dtype == FP8 and module.weight_scale.shape == (32,)
    assert "simulated" in repr(module)


@pytest.mark.parametrize("kind", ["wan-t2v", "hunyuan-t2v", "hunyuan15-t2v"])
def test_accelerate_quantises_block_linears_only_and_restore_is_exact(kind):
    pipe = build(kind)
    before = snapshot(pipe)
    reference = run(pipe, kind)
    turbo.accelerate(pipe, quant="fp8")
    model = pipe.transformer
    swapped = {n for n, m in model.named_modules() if isinstance(m, FP8Linear)}
    assert swapped
    if kind == "wan-t2v":
        assert all(n.startswith("blocks.") for n in swapped)
        assert {"blocks.0.attn1.to_q", "blocks.0.ffn.net.0.proj", "blocks.0.attn2.to_k"} <= swapped
        ffn_down = model.get_submodule("blocks.0.ffn.net.2")  # 4x wider input than output: stays unquantised
        assert (ffn_down.in_features >= 4 * ffn_down.out_features) == ("blocks.0.ffn.net.2" not in swapped)
    assert not any("norm" in n for n in swapped)
    assert not any(n.startswith(("condition_embedder", "proj_out", "patch_embedding", "x_embedder",
                                 "time_text_embed", "context_embedder", "image_embedder", "time_embed"))
                   for n in swapped)
    assert "fp8" in str(pipe.turbo) and any("simulated" in w for w in pipe.turbo.warnings)
    assert_quantised_then_restored(pipe, kind, before, reference)


@pytest.mark.parametrize("mode, words", [("nvfp4-mixed", "turbo calibrate")])
def test_modes_missing_their_inputs_say_what_to_do(mode, words):
    pipe = build("wan-t2v")
    with pytest.raises(turbo.TurboConfigError, match=words) as error:
        turbo.accelerate(pipe, quant=mode)
    assert "\n" not in str(error.value) and not hasattr(pipe, "turbo")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_gemm_matches_the_reference():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("no FP8 tensor cores")
    from turbo.quant.fp8 import fp8_linear

    torch.manual_seed(0)
    x = torch.randn(300, 1536, device="cuda", dtype=torch.bfloat16)
    w, b = torch.randn(8960, 1536, device="cuda"), torch.randn(8960, device="cuda", dtype=torch.bfloat16)
    w_q, w_s = quantize_weight(w)
    fast = fp8_linear(x, w_q, w_s, b).float()
    ref = fp8_linear_reference(x, w_q, w_s, b).float()
    assert float((fast - ref).norm() / ref.norm()) < 1e-2

