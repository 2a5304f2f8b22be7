"""Per-token FP8 activation quantisation in one Triton kernel, for eager (uncompiled) W8A8 FP8 linears.

`quantize_rows_fp8(x)`: x [M, K] (bf16 / fp16 / fp32, rows contiguous) -> (x_q [M, K] float8_e4m3fn, scale [M, 1]
fp32), bit-identical to `turbo.quant.fp8.quantize_rows` (the reference): s[m] = max(amax|x[m, :]|, 1e-12) / 448,
x_q = e4m3(clamp(x / s, ±448)) with round to nearest even.

Each program owns ROWS rows and walks K twice in BLOCK_K chunks: the amax pass, then the quantising pass, whose
re-read of the same rows is served from L2 (ROWS · K · 2 bytes per program), so DRAM sees one read of x and one
write of x_q. Measured on an H200 (bf16 rows, benchmarks/fp8_rows_tune.py, 2026-11-30): 32,760 × 5120 in 0.195 ms
(2.6 TB/s effective; the torch ops compiled by inductor, alone, 0.247 ms), × 1536 0.051 ms (0.098), × 13824 0.464 ms
(0.553); holding whole rows in registers (one pass, BLOCK_K = next power of two ≥ K) was 1.2–2.4× slower at K ≥ 5120.
Under `torch.compile` FP8Linear keeps the torch-ops reference, which inductor fuses into the producer of x (the norm,
the GELU) inside a model (turbo/quant/fp8.py); this kernel is for the eager path, where the torch ops cost several
passes (0.58 ms at 32,760 × 1536).
`quantize_rows_fp8` is a `torch.library` custom op with a fake implementation; it runs on CUDA GPUs with FP8 stores
(sm_89+)."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

FP8 = torch.float8_e4m3fn


def _tiles(k: int) -> tuple[int, int, int]:
    """(rows per program, BLOCK_K, warps) for rows of width k: the fastest of 17 settings on an H200
    (benchmarks/fp8_rows_tune.py, 2026-11-30; raw in benchmarks/results/2026-11-30-h200-fp8-rows/)."""
    if k <= 2048:
        return 4, 512, 4
    return 1, 2048, 8 if k >= 12288 else 4


@triton.jit
def _quantize_rows_kernel(x_ptr, q_ptr, s_ptr, M, K, stride_x, stride_q,
                          ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < M
    ks = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_x
    amax = tl.zeros((ROWS,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ok = row_ok[:, None] & ((k0 + ks) < K)[None, :]
        x = tl.load(x_rows + k0 + ks[None, :], mask=ok, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
    scale = tl.maximum(amax, 1e-12) / 448.0
    tl.store(s_ptr + rows, scale, mask=row_ok)
    q_rows = q_ptr + rows.to(tl.int64)[:, None] * stride_q
    for k0 in range(0, K, BLOCK_K):
        ok = row_ok[:, None] & ((k0 + ks) < K)[None, :]
        x = tl.load(x_rows + k0 + ks[None, :], mask=ok, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(tl.math.div_rn(x, scale[:, None]), -448.0), 448.0)
        tl.store(q_rows + k0 + ks[None, :], q.to(q_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _quantize_whole_rows_kernel(x_ptr, q_ptr, s_ptr, M, K, stride_x, stride_q,
                                ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """The one-pass variant: BLOCK_K ≥ K, each row is held in registers between the amax and the stores."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    ks = tl.arange(0, BLOCK_K)
    ok = (rows < M)[:, None] & (ks < K)[None, :]
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_x + ks[None, :], mask=ok, other=0.0).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-12) / 448.0
    tl.store(s_ptr + rows, scale, mask=rows < M)
    q = tl.minimum(tl.maximum(tl.math.div_rn(x, scale[:, None]), -448.0), 448.0)
    tl.store(q_ptr + rows.to(tl.int64)[:, None] * stride_q + ks[None, :], q.to(q_ptr.dtype.element_ty), mask=ok)


def launch(x: Tensor, rows: int | None = None, block_k: int | None = None, warps: int | None = None,
           whole_rows: bool = False) -> tuple[Tensor, Tensor]:
    """`quantize_rows_fp8` with explicit tile settings (benchmarks/fp8_rows_tune.py; None: `_tiles`' choice);
    `whole_rows` runs the one-pass kernel with BLOCK_K = the next power of two ≥ K."""
    if x.dim() != 2 or x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"quantize_rows_fp8 takes a 2-D bf16 / fp16 / fp32 x, not {x.dtype} {tuple(x.shape)}.")
    x = x if x.stride(1) == 1 else x.contiguous()
    m, k = x.shape
    tuned = _tiles(k)
    rows, block_k, warps = rows or tuned[0], block_k or tuned[1], warps or tuned[2]
    # the Triton interpreter (CPU tests) truncates on e4m3 stores: there the kernel writes fp32 and torch rounds
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    q = torch.empty((m, k), dtype=torch.float32 if interpreted else FP8, device=x.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if m and k:
        grid = (triton.cdiv(m, rows),)
        if whole_rows:
            _quantize_whole_rows_kernel[grid](x, q, scale, m, k, x.stride(0), q.stride(0), ROWS=rows,
                                              BLOCK_K=triton.next_power_of_2(k), num_warps=warps)
        else:
            _quantize_rows_kernel[grid](x, q, scale, m, k, x.stride(0), q.stride(0), ROWS=rows, BLOCK_K=block_k,
                                        num_warps=warps)
    return q.to(FP8), scale


@torch.library.custom_op("turbo::quantize_rows_fp8", mutates_args=())
def quantize_rows_fp8(x: Tensor) -> tuple[Tensor, Tensor]:
    """The Triton kernel: same signature and result as `turbo.quant.fp8.quantize_rows` (bit-identical)."""
    return launch(x)


@quantize_rows_fp8.register_fake
def _(x):
    return x.new_empty(x.shape, dtype=FP8), x.new_empty((x.shape[0], 1), dtype=torch.float32)
