"""One-pass Triton dequantisation of NVFP4 weights (turbo/quant/nvfp4.py) for the GEMMs that follow it.

`nvfp4_dequant(packed, block_scale, tensor_scale, row_scale, out_dtype)` writes W' [N, K] in one read of the packed
codes (0.28× the bf16 bytes) and one write:
- out_dtype bf16 / fp16 / fp32: W'[n, k] = (e2m1(code[n, k]) · s_b[n, k // 16]) · s_t, computed in fp32 and rounded
  once to out_dtype — bit-identical to `dequantize_nvfp4(..., dtype=out_dtype)`; `row_scale` is ignored;
- out_dtype float8_e4m3fn: e4m3(W'[n, k] / row_scale[n]) (round to nearest even, clamped to ±448), for an FP8 GEMM
  with `row_scale` [N] fp32 as its per-output-channel weight scale (`fp8_row_scale` gives the smallest scale that
  needs no clamp: 6 · max_b s_b[n, b] · s_t / 448). e4m3 has one significant bit fewer than (e2m1 · s_b), so this
  output rounds the weight once more (the reference: `nvfp4_dequant_reference`).

Why: Hopper has no FP4 tensor cores, and the GEMM that decodes the codes in registers (turbo/quant/nvfp4_gemm.py)
is 0.22–0.27× bf16; a dequantising pass before cuBLAS costs one write of the weight (bandwidth-bound, ~0.03 ms for
a 5120 × 5120 weight on an H200) against a GEMM of milliseconds at video sequence lengths, while the dequantised
weight lives only for the duration of one call. Measured numbers: docs/BENCHMARKS.md (issue 13).

`nvfp4_dequant` is a `torch.library` custom op with a fake implementation (torch.compile traces through it); it runs
on CUDA and under the Triton interpreter (CPU tests); `nvfp4_dequant_reference` is its specification.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .nvfp4_gemm import _e2m1_times4, _e4m3_to_float, _has_fp8

BLOCK = 16  # K values per e4m3 block scale
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
E2M1_MAX = 6.0
_ROWS, _GROUPS = 16, 16  # a program writes 16 rows × 256 columns


@triton.jit
def _dequant_kernel(p_ptr, s_ptr, t_ptr, r_ptr, out_ptr, N, K,
                    EMULATE_FP8: tl.constexpr, OUT_FP8: tl.constexpr, ROWS: tl.constexpr, GROUPS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    groups = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)  # block-scale index along K
    byte = tl.arange(0, 8)  # the 8 bytes (16 codes) of one block
    ok = (rows < N)[:, None] & (groups < K // 16)[None, :]  # [ROWS, GROUPS]
    row64 = rows.to(tl.int64)
    codes = tl.load(p_ptr + row64[:, None, None] * (K // 2) + groups[None, :, None] * 8 + byte[None, None, :],
                    mask=ok[:, :, None], other=0).to(tl.int32)  # [ROWS, GROUPS, 8]
    s_ptrs = s_ptr + row64[:, None] * (K // 16) + groups[None, :]
    if EMULATE_FP8:
        scale = _e4m3_to_float(tl.load(s_ptrs, mask=ok, other=0), tl.float32)
    else:
        scale = tl.load(s_ptrs, mask=ok, other=0.0).to(tl.float32)
    t = tl.load(t_ptr)
    # the reference's order of products: (e2m1 · s_b) · s_t in fp32 (4 · e2m1 · 0.25 is exact)
    lo = ((_e2m1_times4(codes & 15).to(tl.float32) * 0.25) * scale[:, :, None]) * t
    hi = ((_e2m1_times4(codes >> 4).to(tl.float32) * 0.25) * scale[:, :, None]) * t
    w = tl.join(lo, hi).reshape(ROWS, GROUPS * 16)  # byte j holds k = 2j (low nibble) and 2j + 1 (high)
    if OUT_FP8:
        row_scale = tl.load(r_ptr + rows, mask=rows < N, other=1.0)
        w = tl.minimum(tl.maximum(tl.math.div_rn(w, row_scale[:, None]), -448.0), 448.0)  # IEEE division
    cols = tl.program_id(1) * (GROUPS * 16) + tl.arange(0, GROUPS * 16)
    tl.store(out_ptr + row64[:, None] * K + cols[None, :], w.to(out_ptr.dtype.element_ty),
             mask=(rows < N)[:, None] & (cols < K)[None, :])


def fp8_row_scale(block_scale: Tensor, tensor_scale: Tensor) -> Tensor:
    """block_scale [N, K/16] e4m3, tensor_scale 0-dim fp32 -> [N] fp32: per output channel, the largest |W'| the
    NVFP4 codes can hold (6 · max s_b · s_t) / 448 (1 for an all-zero row), the FP8 weight scale that needs no clamp."""
    top = block_scale.to(torch.float32).amax(dim=1) * E2M1_MAX * tensor_scale.to(torch.float32) / FP8_MAX
    return torch.where(top > 0, top, torch.ones_like(top))


def nvfp4_dequant_reference(packed: Tensor, block_scale: Tensor, tensor_scale: Tensor, row_scale: Tensor | None,
                            out_dtype: torch.dtype) -> Tensor:
    """packed [N, K/2] uint8, block_scale [N, K/16] e4m3, tensor_scale 0-dim fp32, row_scale [N] fp32 (float8 output
    only, else None) -> W' [N, K] in out_dtype, per the module docstring (plain PyTorch, any device)."""
    from .nvfp4 import dequantize_nvfp4

    w = dequantize_nvfp4(packed, block_scale, tensor_scale)
    if out_dtype == FP8:
        return (w / row_scale.to(torch.float32)[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return w.to(out_dtype)


def _launch(packed: Tensor, block_scale: Tensor, tensor_scale: Tensor, row_scale: Tensor | None,
            out_dtype: torch.dtype) -> Tensor:
    n, k = packed.shape[0], packed.shape[1] * 2
    if packed.dtype != torch.uint8 or block_scale.dtype != FP8 or tuple(block_scale.shape) != (n, k // BLOCK):
        raise ValueError(f"nvfp4_dequant needs uint8 packed [N, K/2] and float8_e4m3fn block_scale [N, K/16], got "
                         f"{packed.dtype} {tuple(packed.shape)} and {block_scale.dtype} {tuple(block_scale.shape)}.")
    out_fp8 = out_dtype == FP8
    if out_dtype not in (torch.bfloat16, torch.float16, torch.float32, FP8) or (out_fp8 and row_scale is None):
        raise ValueError(f"nvfp4_dequant writes bf16, fp16, fp32 or float8_e4m3fn (with row_scale), not {out_dtype}.")
    if n == 0 or k == 0:
        return torch.empty((n, k), dtype=out_dtype, device=packed.device)
    emulate = not _has_fp8(packed.device)
    scales = block_scale.contiguous()
    scales = scales.view(torch.uint8) if emulate else scales
    t = tensor_scale.reshape(1).float()
    rows = row_scale.float().contiguous() if out_fp8 else t  # a valid pointer the kernel never reads
    if out_fp8 and emulate:  # no e4m3 stores under the interpreter / before sm_89: write fp32, round in torch
        wide = torch.empty((n, k), dtype=torch.float32, device=packed.device)
        _run(packed, scales, t, rows, wide, n, k, emulate, True)
        return wide.to(FP8)
    out = torch.empty((n, k), dtype=out_dtype, device=packed.device)
    _run(packed, scales, t, rows, out, n, k, emulate, out_fp8)
    return out


def _run(packed, scales, t, rows, out, n, k, emulate, out_fp8) -> None:
    grid = (triton.cdiv(n, _ROWS), triton.cdiv(k // BLOCK, _GROUPS))
    _dequant_kernel[grid](packed.contiguous(), scales, t, rows, out, n, k, EMULATE_FP8=emulate, OUT_FP8=out_fp8,
                          ROWS=_ROWS, GROUPS=_GROUPS)


@torch.library.custom_op("turbo::nvfp4_dequant", mutates_args=())
def nvfp4_dequant(packed: Tensor, block_scale: Tensor, tensor_scale: Tensor, row_scale: Tensor | None,
                  out_dtype: torch.dtype) -> Tensor:
    """The Triton kernel: same signature and result as `nvfp4_dequant_reference` (bit-identical)."""
    return _launch(packed, block_scale, tensor_scale, row_scale, out_dtype)


@nvfp4_dequant.register_fake
def _(packed, block_scale, tensor_scale, row_scale, out_dtype):
    return packed.new_empty((packed.shape[0], packed.shape[1] * 2), dtype=out_dtype)
