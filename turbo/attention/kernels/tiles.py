"""Shared Triton prologue for kernels launched on a grid (row tiles, B·H) over [B, S, H, D] tensors."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def tile_program(heads, BLOCK: tl.constexpr, D: tl.constexpr):
    """(tile, bh, b, h, offs [BLOCK] token indices of this tile, offs_d [D]) of a grid (tiles, B·H) program."""
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    return tile, bh, bh // heads, bh % heads, tile * BLOCK + tl.arange(0, BLOCK), tl.arange(0, D)


@triton.jit
def load_rows(PTR, b, h, offs, offs_d, stride_b, stride_s, stride_h, row_mask):
    """Rows `offs` of head `h`, batch `b` of a [B, S, H, D] tensor (unit last stride) -> [len(offs), D];
    rows outside `row_mask` read 0."""
    return tl.load(PTR + b * stride_b + h * stride_h + offs[:, None] * stride_s + offs_d[None, :],
                   mask=row_mask[:, None], other=0.0)
