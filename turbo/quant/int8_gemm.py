"""Triton INT8 GEMM with the W8A8 scale epilogue fused: out[m, n] = x_scale[m] · w_scale[n] · Σ_k x_q[m, k] · w_q[n, k]
(+ bias[n]), int32 accumulation, written in the output dtype in one pass.

`torch._int_mm` (cuBLASLt IMMA) returns the int32 product, and the scales then cost a second full read + write of
[M, N] int32 — at Wan shapes that pass is as long as a third of the GEMM. Here the scales, the bias and the cast are
applied to the accumulator in registers. Both operands are read K-contiguous (x [M, K] and w [N, K] row-major), the
layout Hopper's 8-bit tensor-core instructions want. Tiles are autotuned on CUDA over a few Hopper-sized configs
(keyed on M, N, K); under the Triton interpreter (CPU tests) one small config runs.

`int8_scaled_mm` is the `torch.library` custom op (fake implementation included, so `torch.compile` traces through
it and fuses the activation quantisation in front of it); `int8_scaled_mm_reference` is its specification in plain
PyTorch (exact integer sum in float64).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from .gemm_tiles import grouped_tile

_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=5),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=4, num_stages=4),
]
_INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2}


@triton.jit
def _int8_gemm_kernel(x_ptr, w_ptr, xs_ptr, ws_ptr, b_ptr, out_ptr, M, N, K,
                      stride_xm, stride_wn, stride_om,
                      HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    rows, cols, safe_rows, safe_cols = grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    ks = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + safe_rows[:, None].to(tl.int64) * stride_xm + ks[None, :]
    w_ptrs = w_ptr + safe_cols[:, None].to(tl.int64) * stride_wn + ks[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_ok = ks[None, :] < K - k * BLOCK_K
        a = tl.load(x_ptrs, mask=k_ok, other=0)
        b = tl.load(w_ptrs, mask=k_ok, other=0)
        acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    x_scale = tl.load(xs_ptr + safe_rows)
    w_scale = tl.load(ws_ptr + safe_cols)
    out = acc.to(tl.float32) * x_scale[:, None] * w_scale[None, :]
    if HAS_BIAS:
        out += tl.load(b_ptr + safe_cols).to(tl.float32)[None, :]
    out_ptrs = out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < M) & (cols[None, :] < N))


_int8_gemm_tuned = triton.autotune(configs=_CONFIGS, key=["M", "N", "K"])(_int8_gemm_kernel)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def int8_scaled_mm_reference(x_q: Tensor, w_q: Tensor, x_scale: Tensor, w_scale: Tensor, bias: Tensor | None,
                             out_dtype: torch.dtype) -> Tensor:
    """x_q [M, K] int8, w_q [N, K] int8, x_scale [M] fp32, w_scale [N] fp32, bias [N] or None -> [M, N] `out_dtype`:
    x_scale[m] · w_scale[n] · Σ_k x_q[m, k] · w_q[n, k] + bias[n], the integer sum exact (float64), the rest fp32."""
    acc = (x_q.to(torch.float64) @ w_q.to(torch.float64).T).to(torch.float32)
    out = acc * x_scale.reshape(-1, 1).float() * w_scale.reshape(1, -1).float()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


def _check(x_q: Tensor, w_q: Tensor, x_scale: Tensor, w_scale: Tensor) -> None:
    if x_q.dtype != torch.int8 or w_q.dtype != torch.int8 or x_q.dim() != 2 or w_q.dim() != 2:
        raise ValueError("int8_scaled_mm needs 2-D int8 x_q [M, K] and w_q [N, K].")
    if x_q.shape[1] != w_q.shape[1] or x_scale.numel() != x_q.shape[0] or w_scale.numel() != w_q.shape[0]:
        raise ValueError(f"int8_scaled_mm shapes do not match: x_q {tuple(x_q.shape)}, w_q {tuple(w_q.shape)}, "
                         f"x_scale {x_scale.numel()}, w_scale {w_scale.numel()}.")


@torch.library.custom_op("turbo::int8_scaled_mm", mutates_args=())
def int8_scaled_mm(x_q: Tensor, w_q: Tensor, x_scale: Tensor, w_scale: Tensor, bias: Tensor | None,
                   out_dtype: torch.dtype) -> Tensor:
    """The Triton kernel: same signature and result as `int8_scaled_mm_reference` (the int32 sum is exact; the fp32
    epilogue may round in another order)."""
    _check(x_q, w_q, x_scale, w_scale)
    x_q, w_q = x_q.contiguous(), w_q.contiguous()
    x_scale = x_scale.reshape(-1).float().contiguous()
    w_scale = w_scale.reshape(-1).float().contiguous()
    (m, k), n = x_q.shape, w_q.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=x_q.device)
    if m == 0 or n == 0:
        return out
    bias_arg = bias.contiguous() if bias is not None else w_scale  # a valid pointer the kernel never reads
    args = (x_q, w_q, x_scale, w_scale, bias_arg, out, m, n, k, x_q.stride(0), w_q.stride(0), out.stride(0))

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    if _interpreted() or not x_q.is_cuda:
        _int8_gemm_kernel[grid](*args, HAS_BIAS=bias is not None, **_INTERPRETER_CONFIG)
    else:
        _int8_gemm_tuned[grid](*args, HAS_BIAS=bias is not None)
    return out


@int8_scaled_mm.register_fake
def _(x_q, w_q, x_scale, w_scale, bias, out_dtype):
    return x_q.new_empty((x_q.shape[0], w_q.shape[0]), dtype=out_dtype)
