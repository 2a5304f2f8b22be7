"""W8A8 INT8 linears (turbo/quant/int8.py): numerics against closed forms, torch._int_mm against the exact reference,
the swap inside transformer blocks, restore."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import turbo
from turbo.quant.int8 import INT8Linear, int8_linear, int8_linear_reference, quantize_rows_int8, quantize_weight_int8

from .pipes import assert_quantised_then_restored, build, run, snapshot


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
    assert out.shape == (2, 7, 32) and out.dtype == torch.float32 and module.backend == "int_mm"
    assert module.weight_q.dtype == torch.int8 and "torch._int_mm" in repr(module)
    odd = INT8Linear(nn.Linear(30, 20))
    assert odd.backend == "reference" and "reference" in repr(odd)
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
    assert_quantised_then_restored(pipe, kind, before, reference)


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


@pytest.mark.parametrize("m, n, k, bias", [(5, 32, 64, True), (37, 48, 70, False), (16, 32, 32, True)])
def test_triton_int8_gemm_matches_reference(m, n, k, bias):
    """turbo's fused Triton INT8 GEMM (TRITON_INTERPRET=1 on CPU) against its float64 specification: ragged M, N, K
    (wrapped rows / columns never stored, masked K tail), with and without bias, on extreme codes."""
    from turbo.quant.int8_gemm import int8_scaled_mm, int8_scaled_mm_reference

    g = torch.Generator().manual_seed(m * n + k)
    x_q = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    w_q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    x_q[0] = 127  # the largest sums
    w_q[0] = -127
    x_scale, w_scale = torch.rand(m, generator=g) + 0.1, torch.rand(n, generator=g) * 1e-3 + 1e-4
    b = torch.randn(n, generator=g) if bias else None
    want = int8_scaled_mm_reference(x_q, w_q, x_scale, w_scale, b, torch.float32)
    got = int8_scaled_mm(x_q, w_q, x_scale, w_scale, b, torch.float32)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    half = int8_scaled_mm(x_q, w_q, x_scale, w_scale, b, torch.float16)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), want, rtol=2e-3, atol=2e-3)


def test_triton_int8_linear_equals_the_reference_and_compiles_without_breaks():
    linear = nn.Linear(64, 32)
    module = INT8Linear(linear, backend="triton")
    x = torch.randn(3, 5, 64)
    want = int8_linear_reference(x, module.weight_q, module.weight_scale, module.bias)
    torch.testing.assert_close(module(x), want, rtol=1e-5, atol=1e-5)
    assert "Triton" in repr(module)
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("eager")
    torch.testing.assert_close(torch.compile(module, backend=counter, fullgraph=True)(x), want, rtol=1e-5, atol=1e-5)
    assert counter.frame_count == 1
    with pytest.raises(ValueError, match="backend"):
        INT8Linear(linear, backend="cublas")
