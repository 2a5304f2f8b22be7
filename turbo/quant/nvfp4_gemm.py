"""Triton GEMM with NVFP4 weights dequantised in registers: out[m, n] = s_t · Σ_k x[m, k] · (e2m1(code[n, k]) ·
s_b[n, k // 16]) (+ bias[n]), fp32 accumulation, written in x's dtype (bf16, fp16 or fp32) in one pass.

Hopper has no FP4 tensor cores, so each program loads the packed weight tile (two e2m1 codes per byte along K) and the
e4m3 block scales of its columns, decodes both arithmetically, and feeds (4 · e2m1) · s_b to `tl.dot` in x's dtype;
s_t / 4 is applied to the fp32 accumulator. The tile is exact in bf16/fp16 (a 2-bit times a 4-bit significand, within
2^-8 .. 10752), so the only rounding against the fp32 reference (turbo/quant/nvfp4.py) is the order of the sums. The
weight is read at 0.28× the bytes of bf16 and never materialised in memory.

The product is taken transposed, outᵀ = W'·xᵀ: Hopper's wgmma reads its left operand from registers, where the
dequantised tile already is, and only the right one (x) from shared memory. (The plain order, x·W'ᵀ with the tile as
the right operand, crashed Triton 3.6's TritonGPUOptimizeDotOperands pass on an H200 for bf16 at 128×256×64 tiles.)
Tiles are autotuned on CUDA over a few Hopper-sized configs (keyed on M, N, K); under the Triton interpreter (CPU
tests) one small config runs.

Measured on an H200 (torch 2.11, Triton 3.6, bf16, autotuned; every config matched the reference to rel. 5e-5):
32760×5120→5120 9.79 ms vs 2.13 ms bf16 (0.22×), 32760×1536→8960 4.58 vs 1.24 ms (0.27×), 32760×13824→5120 24.9
vs 6.25 ms (0.25×), 4096×5120→5120 1.27 vs 0.29 ms (0.23×): the per-element decode (and the per-byte scale loads)
is not hidden behind the MMAs. `NVFP4Linear` therefore defaults to dequantise-then-cuBLAS on CUDA (turbo/quant/
nvfp4.py); this kernel is its "triton" backend.

e4m3 block scales: bitcast by Triton (float8e4nv loads) on GPUs with FP8 support (sm_89+); under the interpreter and
on older GPUs they travel as uint8 views and are decoded arithmetically (`_e4m3_to_float`).

`nvfp4_mm` is the `torch.library` custom op (fake implementation included, so `torch.compile` traces through it);
`nvfp4_mm_reference` is its specification in plain PyTorch.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from .gemm_tiles import grouped_tile

_CONFIGS = [  # BLOCK_N is the wgmma M side (weight rows), BLOCK_M the N side (tokens)
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
]
_INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2}
BLOCK = 16  # K values per e4m3 block scale


@triton.jit
def _e4m3_to_float(bits, DTYPE: tl.constexpr):
    """uint8 e4m3fn codes (finite) -> DTYPE: (8 + m) · 2^(e - 10) for e > 0, m · 2^-9 for subnormals."""
    bits = bits.to(tl.int32)
    e = (bits >> 3) & 15
    m = (bits & 7).to(tl.float32)
    value = tl.where(e == 0, m * 0.001953125, (m + 8.0) * ((e + 117) << 23).to(tl.float32, bitcast=True))
    return tl.where((bits & 0x80) != 0, -value, value).to(DTYPE)


@triton.jit
def _e2m1_times4(code):
    """int32 e2m1 codes in [0, 15] -> 4 × their value as int32 (±{0, 2, 4, 6, 8, 12, 16, 24})."""
    e = (code >> 1) & 3
    m = code & 1
    q = tl.where(e == 0, m << 1, (m + 2) << e)
    return tl.where(code >= 8, -q, q)


@triton.jit
def _nvfp4_gemm_kernel(x_ptr, p_ptr, s_ptr, t_ptr, b_ptr, out_ptr, M, N, K,
                       stride_xm, stride_pn, stride_sn, stride_om,
                       HAS_BIAS: tl.constexpr, EMULATE_FP8: tl.constexpr, DOT_PRECISION: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    rows, cols, safe_rows, safe_cols = grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    ks = tl.arange(0, BLOCK_K)
    kb = tl.arange(0, BLOCK_K // 2)  # bytes of packed codes
    x_ptrs = x_ptr + safe_rows[:, None].to(tl.int64) * stride_xm + ks[None, :]
    p_ptrs = p_ptr + safe_cols[:, None].to(tl.int64) * stride_pn + kb[None, :]
    # one scale per 8 bytes: loaded once per byte (repeated addresses), so it lands in the codes' layout
    s_ptrs = s_ptr + safe_cols[:, None].to(tl.int64) * stride_sn + (kb // 8)[None, :]
    dtype = x_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)  # outᵀ: the dequantised tile is the register operand
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        left = K - k * BLOCK_K
        a = tl.load(x_ptrs, mask=ks[None, :] < left, other=0.0)
        w_ok = kb[None, :] < left // 2
        byte = tl.load(p_ptrs, mask=w_ok, other=0).to(tl.int32)
        if EMULATE_FP8:
            scale = _e4m3_to_float(tl.load(s_ptrs, mask=w_ok, other=0), dtype)
        else:
            scale = tl.load(s_ptrs, mask=w_ok, other=0.0).to(dtype)
        # (4 · e2m1) · s_b is exact in x's dtype (6 significant bits), so the product can be taken there
        lo = _e2m1_times4(byte & 15).to(dtype) * scale
        hi = _e2m1_times4(byte >> 4).to(dtype) * scale
        w = tl.join(lo, hi).reshape(BLOCK_N, BLOCK_K)  # interleave: byte j holds k = 2j (low) and 2j + 1 (high)
        acc = tl.dot(w, tl.trans(a), acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K
        p_ptrs += BLOCK_K // 2
        s_ptrs += BLOCK_K // 16  # one scale per 16 K values

    out = tl.trans(acc) * (tl.load(t_ptr) * 0.25)  # the codes entered as 4 · e2m1
    if HAS_BIAS:
        out += tl.load(b_ptr + safe_cols).to(tl.float32)[None, :]
    out_ptrs = out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < M) & (cols[None, :] < N))


_nvfp4_gemm_tuned = triton.autotune(configs=_CONFIGS, key=["M", "N", "K"])(_nvfp4_gemm_kernel)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _has_fp8(device: torch.device) -> bool:
    return device.type == "cuda" and not _interpreted() and torch.cuda.get_device_capability(device) >= (8, 9)


def nvfp4_mm_reference(x: Tensor, packed: Tensor, block_scale: Tensor, tensor_scale: Tensor,
                       bias: Tensor | None) -> Tensor:
    """x [M, K] (bf16 / fp16 / fp32), packed [N, K/2] uint8, block_scale [N, K/16] float8_e4m3fn, tensor_scale
    0-dim fp32, bias [N] or None -> [M, N] in x.dtype: x · dequant(W)ᵀ + bias in fp32 (turbo/quant/nvfp4.py)."""
    from .nvfp4 import nvfp4_linear_reference

    return nvfp4_linear_reference(x, packed, block_scale, tensor_scale, bias)


def _check(x: Tensor, packed: Tensor, block_scale: Tensor, tensor_scale: Tensor) -> None:
    if x.dim() != 2 or packed.dim() != 2 or packed.dtype != torch.uint8 or block_scale.dtype != torch.float8_e4m3fn:
        raise ValueError("nvfp4_mm needs 2-D x [M, K], uint8 packed [N, K/2] and float8_e4m3fn block_scale "
                         "[N, K/16].")
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"nvfp4_mm takes bf16, fp16 or fp32 x, not {x.dtype}.")
    k, n = x.shape[1], packed.shape[0]
    if (k % BLOCK or packed.shape[1] * 2 != k or tuple(block_scale.shape) != (n, k // BLOCK)
            or tensor_scale.numel() != 1):
        raise ValueError(f"nvfp4_mm shapes do not match: x {tuple(x.shape)}, packed {tuple(packed.shape)}, "
                         f"block_scale {tuple(block_scale.shape)}, tensor_scale {tuple(tensor_scale.shape)} "
                         f"(K must be a multiple of {BLOCK}).")


def _launch(x: Tensor, packed: Tensor, block_scale: Tensor, tensor_scale: Tensor, bias: Tensor | None,
            config: dict | None) -> Tensor:
    """Runs the kernel with `config` (a dict of its tile constants), or the autotuned / interpreter one if None."""
    _check(x, packed, block_scale, tensor_scale)
    x = x if x.stride(1) == 1 else x.contiguous()
    packed, block_scale = packed.contiguous(), block_scale.contiguous()
    tensor_scale = tensor_scale.reshape(1).float()
    (m, k), n = x.shape, packed.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    emulate = not _has_fp8(x.device)
    scales = block_scale.view(torch.uint8) if emulate else block_scale
    bias_arg = bias.contiguous() if bias is not None else tensor_scale  # a valid pointer the kernel never reads
    args = (x, packed, scales, tensor_scale, bias_arg, out, m, n, k,
            x.stride(0), packed.stride(0), scales.stride(0), out.stride(0))
    flags = {"HAS_BIAS": bias is not None, "EMULATE_FP8": emulate,
             "DOT_PRECISION": "ieee" if x.dtype == torch.float32 else "tf32"}  # fp32 x: no tf32 rounding of x

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    if config is None and not _interpreted() and x.is_cuda:
        _nvfp4_gemm_tuned[grid](*args, **flags)
    else:
        _nvfp4_gemm_kernel[grid](*args, **flags, **(config or _INTERPRETER_CONFIG))
    return out


@torch.library.custom_op("turbo::nvfp4_mm", mutates_args=())
def nvfp4_mm(x: Tensor, packed: Tensor, block_scale: Tensor, tensor_scale: Tensor, bias: Tensor | None) -> Tensor:
    """The Triton kernel: same signature and result as `nvfp4_mm_reference` up to the order of the fp32 sums."""
    return _launch(x, packed, block_scale, tensor_scale, bias, None)


@nvfp4_mm.register_fake
def _(x, packed, block_scale, tensor_scale, bias):
    return x.new_empty((x.shape[0], packed.shape[0]))
