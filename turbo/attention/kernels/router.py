"""SLA / SLA2 router for the kernels: block scores → per-row top-k → a query-major LUT (int32, ascending key-block
order so the sparse loop walks memory forward) and per-row counts."""

from __future__ import annotations

import torch

from .. import reference


def topk_lut(scores: torch.Tensor, keep: float) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [B, H, nq, nk] -> (lut int32 [B, H, nq, k], count int32 [B, H, nq]) with k = kept_blocks(keep, nk)."""
    kk = reference.kept_blocks(keep, scores.shape[-1])
    lut = scores.topk(kk, dim=-1, sorted=False).indices.sort(dim=-1).values.to(torch.int32)
    count = torch.full(scores.shape[:-1], kk, dtype=torch.int32, device=scores.device)
    return lut.contiguous(), count


def sla_router(q, k, block_q: int, block_k: int, keep: float, proj_q=None, proj_k=None):
    """The LUT `reference.sla_attention` selects: top-k of pool(q)·pool(smooth k)ᵀ per query block."""
    return topk_lut(reference.block_scores(q, k, block_q, block_k, proj_q, proj_k), keep)


def mask_to_lut(block_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bool [B, H, nq, nk] -> (lut int32 [B, H, nq, max count], count int32 [B, H, nq]); rows padded with 0."""
    count = block_mask.sum(-1).to(torch.int32)
    width = max(int(count.max()), 1)
    order = torch.argsort((~block_mask).to(torch.int8), dim=-1, stable=True)[..., :width]
    return order.to(torch.int32).contiguous(), count
