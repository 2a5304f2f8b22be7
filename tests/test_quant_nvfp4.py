"""Weight-only NVFP4 linears (turbo/quant/nvfp4.py, turbo/quant/nvfp4_gemm.py): e2m1 / e4m3 numerics against closed
forms, the Triton GEMM (TRITON_INTERPRET=1 on CPU) against the reference, the swap inside transformer blocks, restore,
compile."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import turbo
from turbo.quant.nvfp4 import (
    FP8,
    NVFP4Linear,
    dequantize_nvfp4,
    e2m1_codes,
    e2m1_values,
    nvfp4_linear_reference,
    quantize_weight_nvfp4,
    unpack_codes,
)
from turbo.quant.nvfp4_gemm import _launch, nvfp4_mm, nvfp4_mm_reference

from .pipes import assert_quantised_then_restored, build, run, snapshot

GRID = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]  # e2m1 magnitudes of codes 0..7


def _closed_form_value(code: int) -> float:
    sign, exponent, mantissa = code >> 3, (code >> 1) & 3, code & 1
    magnitude = mantissa * 0.5 if exponent == 0 else (1 + mantissa / 2) * 2.0 ** (exponent - 1)
    return -magnitude if sign else magnitude


def _nearest_even_code(v: float) -> int:
    """Brute force: the nearest e2m1 magnitude (after the ±6 clamp), ties to the even code; the sign bit unless 0."""
    a = min(abs(v), 6.0)
    distances = [abs(a - g) for g in GRID]
    best = min(distances)
    code = min((c for c, d in enumerate(distances) if d == best), key=lambda c: (c % 2, c))
    return code | 8 if v < 0 and code else code


def test_e2m1_bit_patterns_and_round_to_nearest_even():
    assert e2m1_values(torch.arange(16, dtype=torch.uint8)).tolist() == [_closed_form_value(c) for c in range(16)]
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -1.25, -5.0])
    assert e2m1_codes(ties).tolist() == [0, 2, 2, 4, 4, 6, 6, 0, 10, 14]  # every tie to the even code
    edges = torch.tensor([0.0, 0.26, 5.01, 6.0, 7.5, -100.0, -0.1, 1e-30])
    assert e2m1_codes(edges).tolist() == [0, 1, 7, 7, 7, 15, 0, 0]  # clamp to ±6, never -0
    g = torch.Generator().manual_seed(0)
    v = torch.cat([torch.randn(2000, generator=g) * 3, torch.arange(-28, 29) * 0.25])  # random + every quarter tie
    assert e2m1_codes(v).tolist() == [_nearest_even_code(x) for x in v.tolist()]


def test_block_scales_are_e4m3_with_zero_and_outlier_blocks():
    w = torch.zeros(2, 64)
    w[0, 0] = 2688.0  # tensor amax 6 · 448: tensor scale exactly 1
    w[0, 16:32] = torch.linspace(-7.0, 7.0, 16)  # amax 7: s_b = e4m3(7 / 6) = 1.125 (rounded down), codes clamp at 6
    w[0, 48:64] = 1e-3  # far below the tensor amax: s_b underflows e4m3 to 0
    w[1, :16] = torch.tensor([6.0, -3.0, 1.5, -0.5] * 4)  # exact on the grid with s_b = 1
    packed, block_scale, tensor_scale = quantize_weight_nvfp4(w)
    assert packed.shape == (2, 32) and packed.dtype == torch.uint8 and block_scale.dtype == FP8
    assert tensor_scale.dim() == 0 and tensor_scale.dtype == torch.float32 and tensor_scale.item() == 1.0
    assert block_scale.float().tolist() == [[448.0, 1.125, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
    codes = unpack_codes(packed)
    assert torch.equal(packed, codes[:, 0::2] | (codes[:, 1::2] << 4))  # even k in the low nibble
    assert codes[0, 16].item() == 15 and codes[0, 31].item() == 7  # ±7 / 1.125 clamped to ±6
    deq = dequantize_nvfp4(packed, block_scale, tensor_scale)
    assert torch.isfinite(deq).all()
    assert torch.equal(deq[0, 32:], torch.zeros(32)) and torch.equal(deq[1, 16:], torch.zeros(48))  # zero / tiny
    assert torch.equal(deq[1, :16], w[1, :16]) and deq[0, 0].item() == 2688.0
    zero = dequantize_nvfp4(*quantize_weight_nvfp4(torch.zeros(3, 32)))
    assert torch.equal(zero, torch.zeros(3, 32))


def test_dequantised_weights_stay_within_the_block_bound_and_an_outlier_stays_in_its_block():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 256, generator=g)
    w[5, 40] = 80.0  # an outlier: only its block's scale grows
    packed, block_scale, tensor_scale = quantize_weight_nvfp4(w)
    deq = dequantize_nvfp4(packed, block_scale, tensor_scale)
    expected = (e2m1_values(unpack_codes(packed)).reshape(64, 16, 16) * block_scale.float()[..., None]
                * tensor_scale).reshape(64, 256)
    assert torch.equal(deq, expected)
    # per element |error| <= half the coarsest grid step (2) times the scale, and s_b is amax / 6 to e4m3's 1/16
    block_amax = w.abs().reshape(64, 16, 16).amax(-1, keepdim=True)
    assert ((deq - w).abs().reshape(64, 16, 16) <= block_amax / 6 * (1 + 1 / 16) + 1e-6).all()
    others = torch.ones(64, 256, dtype=torch.bool)
    others[5, 32:48] = False
    relative = ((deq - w)[others].norm() / w[others].norm()).item()
    assert 0.05 < relative < 0.12  # 4-bit values: really quantised, and the outlier did not spoil the other blocks
    assert deq.dtype == torch.float32 and dequantize_nvfp4(packed, block_scale, tensor_scale, torch.float16).dtype \
        == torch.float16


def _weights(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    w[0, :16] = 0.0  # a zero block
    w[1] *= 3e-4  # small rows next to a large tensor amax: subnormal e4m3 block scales
    w[2, 3] = 40.0  # an outlier
    return w


@pytest.mark.parametrize("m, n, k, bias", [(5, 32, 64, True), (37, 48, 48, False), (16, 40, 96, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_nvfp4_gemm_matches_reference(m, n, k, bias, dtype):
    """Ragged M and N (wrapped rows / columns never stored), K = 48 not a multiple of the 32-wide K tile (masked
    tail), with and without bias, through the custom op and with another tile config (K tile 64)."""
    packed, block_scale, tensor_scale = quantize_weight_nvfp4(_weights(n, k, m + n + k))
    bits = block_scale.view(torch.uint8)
    assert (((bits & 0x78) == 0) & ((bits & 7) > 0)).any()  # subnormal scales are exercised
    g = torch.Generator().manual_seed(k)
    x = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g) if bias else None
    want = nvfp4_mm_reference(x, packed, block_scale, tensor_scale, b)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3}[dtype]
    got = nvfp4_mm(x, packed, block_scale, tensor_scale, b)
    assert got.dtype == dtype and got.shape == (m, n)
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
    wide = _launch(x, packed, block_scale, tensor_scale, b, {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 64, "GROUP_M": 1})
    torch.testing.assert_close(wide.float(), want.float(), rtol=tol, atol=tol)


def test_triton_decodes_every_e4m3_block_scale():
    """One block per row, all codes 1.0 (0x22), row n's block scale = e4m3 code n: out = 16 · s_b exactly."""
    codes = torch.tensor([c for c in range(256) if c & 0x7F != 0x7F], dtype=torch.uint8)  # every finite code
    n = codes.numel()
    packed = torch.full((n, 8), 0x22, dtype=torch.uint8)
    block_scale = codes.view(FP8).reshape(n, 1)
    out = nvfp4_mm(torch.ones(1, 16), packed, block_scale, torch.tensor(1.0), None)
    assert torch.equal(out[0], 16 * block_scale.float()[:, 0])


def test_gemm_rejects_k_not_a_multiple_of_16():
    with pytest.raises(ValueError, match="multiple of 16"):
        nvfp4_mm(torch.ones(2, 24), torch.zeros(4, 12, dtype=torch.uint8), torch.zeros(4, 1, dtype=FP8),
                 torch.tensor(1.0), None)


def test_module_matches_the_reference_compiles_without_breaks_and_is_small():
    linear = nn.Linear(256, 48)
    module = NVFP4Linear(linear)
    assert module.backend == "reference" and "reference" in repr(module)
    x = torch.randn(3, 5, 256)
    args = (module.packed, module.block_scale, module.tensor_scale, module.bias)
    want = nvfp4_linear_reference(x, *args)
    assert torch.equal(module(x), want) and want.shape == (3, 5, 48)
    exact = linear(x)
    assert 0.01 < ((want - exact).norm() / exact.norm()).item() < 0.15
    triton_module = NVFP4Linear(linear, backend="triton")
    assert "Triton" in repr(triton_module)
    torch.testing.assert_close(triton_module(x), want, rtol=1e-5, atol=1e-5)
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(triton_module, backend=counter, fullgraph=True)
    torch.testing.assert_close(compiled(x), want, rtol=1e-5, atol=1e-5)
    assert counter.frame_count == 1
    dequant = NVFP4Linear(linear, backend="dequant")
    assert "dequantised to the input dtype" in repr(dequant)
    torch.testing.assert_close(dequant(x), want, rtol=1e-5, atol=1e-5)
    half = x.half()
    torch.testing.assert_close(dequant(half).float(), nvfp4_linear_reference(half, *args).float(), rtol=1e-2,
                               atol=1e-2)
    bf16_bytes = linear.weight.numel() * 2
    assert module.weight_bytes() == 48 * 128 + 48 * 16 + 4 and module.weight_bytes() / bf16_bytes <= 0.30
    with pytest.raises(ValueError, match="multiple of 16"):
        NVFP4Linear(nn.Linear(24, 8))
    with pytest.raises(ValueError, match="backend"):
        NVFP4Linear(linear, backend="cublas")


@pytest.mark.parametrize("kind", ["wan-t2v", "hunyuan-t2v"])
def test_accelerate_nvfp4_quantises_block_linears_with_whole_blocks_and_restore_is_exact(kind):
    pipe = build(kind)
    before = snapshot(pipe)
    reference = run(pipe, kind)
    model = pipe.transformer
    blocks = model.blocks if kind == "wan-t2v" else model.transformer_blocks
    prefix = "blocks" if kind == "wan-t2v" else "transformer_blocks"
    expected = {f"{prefix}.{i}.{name}" for i, block in enumerate(blocks) for name, m in block.named_modules()
                if isinstance(m, nn.Linear) and "norm" not in name and m.in_features % 16 == 0}
    turbo.accelerate(pipe, quant="nvfp4")
    swapped = {n for n, m in model.named_modules() if isinstance(m, NVFP4Linear)}
    assert swapped and swapped == expected  # every block linear with whole 16-blocks, wide inputs included
    if kind == "hunyuan-t2v":
        ffn_down = model.get_submodule("transformer_blocks.0.ff.net.2")  # FP8 / INT8 leave this wide-input linear
        assert isinstance(ffn_down, NVFP4Linear) and ffn_down.in_features >= 4 * ffn_down.out_features
    assert "nvfp4: weight-only NVFP4" in str(pipe.turbo) and any("NVFP4 numerics" in w for w in pipe.turbo.warnings)
    assert_quantised_then_restored(pipe, kind, before, reference)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("rows", [300, 5])
def test_gpu_gemm_matches_the_reference(rows):
    torch.manual_seed(0)
    x = torch.randn(rows, 1536, device="cuda", dtype=torch.bfloat16)
    w, b = torch.randn(8960, 1536, device="cuda"), torch.randn(8960, device="cuda", dtype=torch.bfloat16)
    packed, block_scale, tensor_scale = quantize_weight_nvfp4(w)
    fast = nvfp4_mm(x, packed, block_scale, tensor_scale, b).float()
    ref = nvfp4_mm_reference(x, packed, block_scale, tensor_scale, b).float()
    assert float((fast - ref).norm() / ref.norm()) < 1e-2
