"""W8A8 INT8 linears (turbo/quant/int8.py): numerics against closed forms, torch._int_mm against the exact reference,
the swap inside transformer blocks, restore."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import turbo
from turbo.quant.int8 import INT8Linear, int8_linear, int8_linear_reference, quantize_rows_int8, quantize_weight_int8

from .pipes import assert_same_snapshot, build, run, snapshot


def test_rows_round_half_to_even_per_token_and_zero_rows_stay_zero():
    x = torch.tensor([[127.0, -127.0, 2.5, 3.5, -0.5, 0.0], [0.0] * 6])
    q, scale = quantize_rows_int8(x)
    assert scale[0].item() == 1.0 and q.dtype == torch.int8
    assert q[0].tolist() == [127, -127, 2, 4, 0, 0]  # ties to even
    assert q[1].tolist() == [0] * 6 and scale[1].item() == pytest.approx(1e-12 / 127)


def test_weight_scale_is_per_output_channel():
    w = torch.tensor([[1.0, -127.0], [0.5, 0.25]])
    q, scale = quantize_weight_int8(w)
    torch.testing.assert_close(scale, torch.tensor([1.0, 0.5 / 127]))
    assert q.tolist() == [[1, -127], [127, 64]]  # 63.5 -> 64 (even)


def test_reference_is_the_exact_integer_sum_and_int_mm_matches_it():
    torch.manual_seed(0)
    x = torch.randn(3, 11, 64)
    x[..., 5] = 40.0  # an outlier feature
    w, b = torch.randn(32, 64), torch.randn(32)
    w_q, w_s = quantize_weight_int8(w)
    ref = int8_linear_reference(x, w_q, w_s, b)
    rows = x.reshape(-1, 64)
    x_q, x_s = quantize_rows_int8(rows)
    exact = torch.tensor([[int(sum(int(a) * int(c) for a, c in zip(r.tolist(), col.tolist(), strict=True)))
                           for col in w_q] for r in x_q[:4]], dtype=torch.float64)
    torch.testing.assert_close(ref.reshape(-1, 32)[:4], (exact.float() * x_s[:4] * w_s + b))
    fast = int8_linear(x, w_q, w_s, b)
    torch.testing.assert_close(fast, ref, rtol=1e-6, atol=1e-5)
    relative = (ref - (x @ w.T + b)).norm() / (x @ w.T + b).norm()
    assert 1e-3 < relative < 0.1  # really quantised, and close


def test_module_keeps_dtype_shapes_and_falls_back_for_odd_sizes():
    linear = nn.Linear(48, 32)
    module = INT8Linear(linear)
    out = module(torch.randn(2, 7, 48))
    assert out.shape == (2, 7, 32) and out.dtype == torch.float32 and module.use_int_mm
    assert module.weight_q.dtype == torch.int8 and "torch._int_mm" in repr(module)
    odd = INT8Linear(nn.Linear(30, 20))
    assert not odd.use_int_mm and "reference" in repr(odd)
    assert odd(torch.randn(4, 30)).shape == (4, 20)


@pytest.mark.parametrize("kind", ["wan-t2v", "hunyuan-t2v"])
def test_accelerate_int8_quantises_block_linears_and_restore_is_exact(kind):
    pipe = build(kind)
    before = snapshot(pipe)
    reference = run(pipe, kind)
    turbo.accelerate(pipe, quant="int8")
    swapped = {n for n, m in pipe.transformer.named_modules() if isinstance(m, INT8Linear)}
    assert swapped and not any("norm" in n for n in swapped)
    assert "int8: W8A8 int8" in str(pipe.turbo) and any("INT8 numerics" in w for w in pipe.turbo.warnings)
    quantised = run(pipe, kind)
    error = float(np.abs(quantised - reference).mean())
    assert np.isfinite(quantised).all() and 0 < error < 0.02
    turbo.restore(pipe)
    assert_same_snapshot(before, snapshot(pipe))
    np.testing.assert_array_equal(run(pipe, kind), reference)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_int_mm_matches_the_reference():
    torch.manual_seed(0)
    for rows in (300, 5):  # 5 rows: padded to what torch._int_mm takes
        x = torch.randn(rows, 1536, device="cuda", dtype=torch.bfloat16)
        w, b = torch.randn(8960, 1536, device="cuda"), torch.randn(8960, device="cuda", dtype=torch.bfloat16)
        w_q, w_s = quantize_weight_int8(w)
        fast = int8_linear(x, w_q, w_s, b).float()
        ref = int8_linear_reference(x, w_q, w_s, b).float()
        assert float((fast - ref).norm() / ref.norm()) < 1e-2
