"""turbo::nvfp4_dequant (the one-pass Triton dequantisation before cuBLAS) and NVFP4Linear's "fp8" backend, on the CPU
through the Triton interpreter (conftest sets TRITON_INTERPRET=1; bf16 is broken there, so fp16/fp32)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import turbo
from turbo.errors import TurboConfigError
from turbo.quant.fp8 import fp8_linear_reference, quantize_rows
from turbo.quant.nvfp4 import NVFP4Linear, dequantize_nvfp4, nvfp4_fp8_reference, quantize_weight_nvfp4
from turbo.quant.nvfp4_dequant import FP8, fp8_row_scale, nvfp4_dequant, nvfp4_dequant_reference

from ..pipes import assert_quantised_then_restored, build, run, snapshot


def _weights(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    w[0] = 0.0  # an all-zero row: s_b = 0 everywhere, row scale 1
    w[1, :16] *= 1e-5  # a block far below the tensor's amax: a zero or subnormal e4m3 scale
    w[2, 5] = 50.0  # an outlier that sets the tensor scale
    return w


@pytest.mark.parametrize("n, k", [(40, 96), (17, 272), (33, 512)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel_is_bit_identical_to_the_reference(n, k, dtype):
    """Ragged N (16-row programs) and K (256-column programs): every written element equals the reference's."""
    packed, block_scale, tensor_scale = quantize_weight_nvfp4(_weights(n, k, n + k))
    got = nvfp4_dequant(packed, block_scale, tensor_scale, None, dtype)
    want = nvfp4_dequant_reference(packed, block_scale, tensor_scale, None, dtype)
    assert got.dtype == dtype and got.shape == (n, k)
    assert torch.equal(got, want)
    assert torch.equal(want, dequantize_nvfp4(packed, block_scale, tensor_scale, dtype))


@pytest.mark.parametrize("n, k", [(40, 96), (33, 512)])
def test_fp8_output_is_bit_identical_and_within_one_e4m3_rounding(n, k):
    w = _weights(n, k, 7)
    packed, block_scale, tensor_scale = quantize_weight_nvfp4(w)
    row_scale = fp8_row_scale(block_scale, tensor_scale)
    got = nvfp4_dequant(packed, block_scale, tensor_scale, row_scale, FP8)
    want = nvfp4_dequant_reference(packed, block_scale, tensor_scale, row_scale, FP8)
    assert got.dtype == FP8 and torch.equal(got.view(torch.uint8), want.view(torch.uint8))
    exact = dequantize_nvfp4(packed, block_scale, tensor_scale)
    assert row_scale[0] == 1.0 and not got[0].float().any()  # the zero row
    top = exact.abs().amax(dim=1)
    assert (top <= row_scale * 448 * (1 + 1e-6)).all()  # no clamping: 6 · max s_b · s_t bounds every row
    # the normal e4m3 range keeps 4 significant bits: relative error ≤ 2^-4 where |W'| / row_scale ≥ 2^-6
    back = got.float() * row_scale[:, None]
    normal = exact.abs() >= row_scale[:, None] * 2 ** -6
    assert ((back - exact).abs()[normal] <= exact.abs()[normal] * 2 ** -4).all()
    assert float((back - exact).abs().sum() / exact.abs().sum()) < 0.05


def test_kernel_rejects_bad_inputs():
    packed, block_scale, tensor_scale = quantize_weight_nvfp4(torch.randn(8, 32))
    with pytest.raises(ValueError, match="row_scale"):
        nvfp4_dequant(packed, block_scale, tensor_scale, None, FP8)
    with pytest.raises(ValueError, match="writes bf16"):
        nvfp4_dequant(packed, block_scale, tensor_scale, None, torch.int8)
    with pytest.raises(ValueError, match="block_scale"):
        nvfp4_dequant(packed, block_scale.float(), tensor_scale, None, torch.float32)


def test_fp8_backend_is_fp8_w8a8_on_the_requantised_weight_and_compiles_without_breaks():
    linear = nn.Linear(256, 48)
    module = NVFP4Linear(linear, backend="fp8")
    assert "FP8 W8A8" in repr(module)
    x = torch.randn(3, 5, 256)
    want = nvfp4_fp8_reference(x, module.packed, module.block_scale, module.tensor_scale, module.bias)
    assert torch.equal(module(x), want) and want.shape == (3, 5, 48)
    # the same as FP8 W8A8 on the e4m3 weight the kernel writes
    row_scale = fp8_row_scale(module.block_scale, module.tensor_scale)
    w_q = nvfp4_dequant(module.packed, module.block_scale, module.tensor_scale, row_scale, FP8)
    torch.testing.assert_close(fp8_linear_reference(x, w_q, row_scale, module.bias), want, rtol=0, atol=0)
    x_q, x_scale = quantize_rows(x.reshape(-1, 256))
    assert x_q.dtype == FP8 and x_scale.shape == (15, 1)
    with torch.no_grad():
        exact = linear(x)
    weight_only = NVFP4Linear(linear)(x)
    assert 0.01 < float((want - exact).norm() / exact.norm()) < 0.2  # NVFP4 + e4m3 rounding, not garbage
    assert float((want - weight_only).norm() / exact.norm()) < 0.1
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("eager")
    args = (module.packed, module.block_scale, module.tensor_scale)
    compiled = torch.compile(lambda p, b, t: nvfp4_dequant(p, b, t, None, torch.float16), backend=counter,
                             fullgraph=True)
    assert torch.equal(compiled(*args), nvfp4_dequant_reference(*args, None, torch.float16))
    assert counter.frame_count == 1


def test_accelerate_nvfp4_fp8_compute_on_a_tiny_wan_and_restore_is_exact():
    kind = "wan-t2v"
    pipe = build(kind)
    before = snapshot(pipe)
    reference = run(pipe, kind)
    turbo.accelerate(pipe, quant="nvfp4", quant_nvfp4_compute="fp8", quant_fast_accum=True)
    modules = [m for m in pipe.transformer.modules() if isinstance(m, NVFP4Linear)]
    assert modules and all(m.backend == "fp8" and m.fast_accum for m in modules)
    assert "re-rounded to e4m3 per output channel" in str(pipe.turbo)
    assert_quantised_then_restored(pipe, kind, before, reference)


def test_nvfp4_fp8_compute_needs_fp8_tensor_cores(monkeypatch):
    pipe = build("wan-t2v")
    monkeypatch.setattr("turbo.quant._device_of", lambda model: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    with pytest.raises(TurboConfigError, match="FP8 tensor cores"):
        turbo.accelerate(pipe, quant="nvfp4", quant_nvfp4_compute="fp8")
    turbo.accelerate(pipe, quant="nvfp4")  # bf16 compute runs on an A100
