"""The output tile of a GEMM program, shared by turbo's Triton GEMMs (turbo/quant/int8_gemm.py, nvfp4_gemm.py)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def grouped_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(rows, cols, safe_rows, safe_cols) of this program's [BLOCK_M, BLOCK_N] output tile. Consecutive programs share
    a band of GROUP_M row tiles (the weight tiles they read stay in L2); out-of-range rows / columns are wrapped to 0 in
    safe_rows / safe_cols, so loads need no row or column mask (those results are never stored)."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows, cols, tl.where(rows < M, rows, 0), tl.where(cols < N, cols, 0)
