"""SLA: sparse-linear attention (exact block-sparse softmax on critical blocks + linear attention on the rest)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import AttentionConfig
from ..runtime import AttentionCall
from . import reference
from .base import AttentionMethod


class SLAAttention(AttentionMethod):
    """SLA per ALGORITHMS.md §1. `proj` (d×d, fp32 master weights) is zero-initialised, so an untrained SLA is pure
    block-sparse attention; fine-tuning teaches it to map the linear branch onto the missing attention mass."""

    name = "sla"

    def __init__(self, head_dim: int, config: AttentionConfig):
        super().__init__()
        self.keep = config.keep
        self.block_q = config.block_q
        self.block_k = config.block_k
        self.negligible = config.negligible
        self.proj = nn.Linear(head_dim, head_dim, dtype=torch.float32)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def video_attention(self, q, k, v, call: AttentionCall, tail_k=None, tail_v=None, tail_mask=None):
        return reference.sla_attention(
            q, k, v, self.keep, block_q=self.block_q, block_k=self.block_k, proj=self.proj,
            negligible=self.negligible, tail_k=tail_k, tail_v=tail_v, tail_mask=tail_mask,
        )

    def extra_repr(self) -> str:
        return f"keep={self.keep}, block_q={self.block_q}, block_k={self.block_k}, negligible={self.negligible}"
