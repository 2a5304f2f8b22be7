"""Low-bit dense attention (SageAttention-style INT8 Q·Kᵀ, FP8 P·V) for layers and steps kept dense."""

from __future__ import annotations

import torch

from ..config import AttentionConfig
from ..registry import register_method
from ..runtime import AttentionCall
from . import reference
from .base import AttentionMethod, BlockOptions


@register_method("lowbit", context_parallel=True, options=BlockOptions, kernel=(8, 9),
                 summary="dense attention with INT8 Q·Kᵀ and FP8 P·V numerics")
class LowBitAttention(AttentionMethod):
    """Dense attention with INT8 QK and FP8 PV numerics; text tokens (HunyuanVideo) take part like any other
    token, with the stock key-padding mask (padding text rows attend the valid keys; nothing attends them)."""

    def __init__(self, config: AttentionConfig, heads: int, head_dim: int):
        super().__init__(config, heads, head_dim)
        self.block_q = config.block_q
        self.block_k = config.block_k

    def use_kernel(self, q) -> bool:
        """The Triton kernel on CUDA (forward only; with gradients the reference runs)."""
        return self.kernel_ready(q) and not torch.is_grad_enabled()

    def forward(self, q, k, v, call: AttentionCall):
        mask = call.key_mask
        if self.use_kernel(q):
            from .kernels.lowbit_forward import lowbit_attention

            return lowbit_attention(q, k, v, block_q=self.block_q, block_k=self.block_k, attn_mask=mask)
        return reference.lowbit_attention(q, k, v, block_q=self.block_q, block_k=self.block_k, attn_mask=mask)
