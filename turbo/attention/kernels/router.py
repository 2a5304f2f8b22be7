"""SLA / SLA2 router for the kernels: Triton block mean-pooling of Q and K (one read of each), block scores as a
small GEMM, per-row top-k → a query-major LUT (int32, ascending key-block order so the sparse loop walks memory
forward) and per-row counts.

Smooth-K is skipped here on purpose: subtracting mean(K) shifts every score of a query-block row by the same constant,
so the top-k selection is the same as `reference.block_scores` (up to ties)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import reference
from .tiles import load_rows, tile_program


@triton.jit
def _block_pool_kernel(X, OUT, stride_b, stride_s, stride_h, seq_len, heads, num_blocks,
                       D: tl.constexpr, BLOCK: tl.constexpr):
    """Grid (nb, B·H): mean of each block's real tokens -> OUT [B·H, nb, D] fp32."""
    blk, bh, b, h, offs_s, offs_d = tile_program(heads, BLOCK, D)
    valid = offs_s < seq_len
    x = load_rows(X, b, h, offs_s, offs_d, stride_b, stride_s, stride_h, valid).to(tl.float32)
    count = tl.minimum(seq_len - blk * BLOCK, BLOCK).to(tl.float32)
    tl.store(OUT + (bh * num_blocks + blk) * D + offs_d, tl.sum(x, 0) / count)


def block_pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """x [B, S, H, D] -> [B, H, nb, D] fp32 block means (like `reference.block_mean_pool`)."""
    if not x.is_cuda and not _interpreting():
        return reference.block_mean_pool(x, block)
    batch, seq_len, heads, dim = x.shape
    nb = triton.cdiv(seq_len, block)
    out = torch.empty(batch, heads, nb, dim, device=x.device, dtype=torch.float32)
    _block_pool_kernel[(nb, batch * heads)](x, out, x.stride(0), x.stride(1), x.stride(2), seq_len, heads, nb,
                                            D=dim, BLOCK=block)
    return out


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def topk_lut(scores: torch.Tensor, keep: float, rule: str = "round") -> tuple[torch.Tensor, torch.Tensor]:
    """scores [B, H, nq, nk] -> (lut int32 [B, H, nq, k], count int32 [B, H, nq]) with
    k = kept_blocks(keep, nk, rule) ("round" or TurboDiffusion's "floor", at least 1 either way)."""
    kk = reference.kept_blocks(keep, scores.shape[-1], rule)
    lut = scores.topk(kk, dim=-1, sorted=False).indices.sort(dim=-1).values.to(torch.int32)
    count = torch.full(scores.shape[:-1], kk, dtype=torch.int32, device=scores.device)
    return lut.contiguous(), count


def sla_router(q, k, block_q: int, block_k: int, keep: float, proj_q=None, proj_k=None, rule: str = "round"):
    """The blocks `reference.sla_attention` selects: top-k of pool(q)·pool(k)ᵀ per query block, optionally through
    SLA2's learnable projections. Returns (lut, count) as `topk_lut`."""
    pooled_q, pooled_k = block_pool(q, block_q), block_pool(k, block_k)
    if proj_q is not None:
        pooled_q = proj_q(pooled_q)
    if proj_k is not None:
        pooled_k = proj_k(pooled_k)
    return topk_lut(torch.matmul(pooled_q, pooled_k.transpose(-1, -2)), keep, rule)


def mask_to_lut(block_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bool [B, H, nq, nk] -> (lut int32 [B, H, nq, max count], count int32 [B, H, nq]); rows padded with 0."""
    count = block_mask.sum(-1).to(torch.int32)
    width = max(int(count.max()), 1)
    order = torch.argsort((~block_mask).to(torch.int8), dim=-1, stable=True)[..., :width]
    return order.to(torch.int32).contiguous(), count
