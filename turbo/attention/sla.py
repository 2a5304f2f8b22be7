"""SLA: sparse-linear attention (exact block-sparse softmax on critical blocks + linear attention on the rest)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import AttentionConfig, option
from ..errors import TurboConfigError
from ..registry import register_method
from ..runtime import AttentionCall
from . import reference
from .base import AttentionMethod, BlockOptions


@dataclass(frozen=True)
class SLAOptions(BlockOptions):
    keep: float = option(0.1, "fraction of key blocks computed exactly", range=(0.0, 1.0), open_low=True)
    negligible: float = option(0.0, "fraction of lowest-scored key blocks dropped from the linear branch",
                               range=(0.0, 1.0))
    linear: str = option("complement", "linear branch over: complement = the non-selected key blocks (SLA paper); "
                         "all = every key (TurboDiffusion's released checkpoints)", choices=("complement", "all"))
    topk_rule: str = option("round", "key blocks kept per row: round(keep × blocks), or floor as TurboDiffusion's "
                            "int(keep × blocks) (at least 1 either way)", choices=("round", "floor"))

    def validate(self) -> None:
        super().validate()
        if self.keep + self.negligible > 1.0:
            raise TurboConfigError(
                f"attention.negligible={self.negligible} must be in [0, 1 - keep) so that keep + negligible <= 1."
            )
        if self.linear == "all" and self.negligible > 0:
            raise TurboConfigError(
                f"attention.negligible={self.negligible} needs linear='complement' (linear='all' sums every key): "
                "set negligible=0 or linear='complement'."
            )


@register_method("sla", options=SLAOptions, kernel=(8, 0), needs_finetuned=True, context_parallel=True,
                 summary="SLA: block-sparse softmax on the top-keep key blocks + linear attention over the rest")
class SLAAttention(AttentionMethod):
    """SLA per ALGORITHMS.md §1. `proj` (d×d, fp32 master weights) is zero-initialised, so an untrained SLA is pure
    block-sparse attention; fine-tuning teaches it to map the linear branch onto the missing attention mass.

    `linear` / `topk_rule` pick the variant: "complement" / "round" is the SLA paper (linear attention over the
    non-selected blocks, gated to rows that have some); "all" / "floor" reproduces TurboDiffusion's released SLA
    (linear attention over every key with a 1e-5 eps in the denominator, proj added to every row, int(keep × blocks)
    key blocks per row, clamped to at least 1), so its checkpoints' proj weights load and mean the same thing. Both
    run the Triton kernels forward and backward (linear="all": its linear-branch backward is batched PyTorch algebra,
    `sla_backward.all_linear_backward`)."""

    def __init__(self, config: AttentionConfig, heads: int, head_dim: int):
        super().__init__(config, heads, head_dim)
        self.keep = config.keep
        self.block_q = config.block_q
        self.block_k = config.block_k
        self.negligible = config.negligible
        self.linear = config.linear
        self.topk_rule = config.topk_rule
        self.proj = nn.Linear(head_dim, head_dim, dtype=torch.float32)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def use_kernel(self, q, tail_k) -> bool:
        """Triton kernels on CUDA (forward, and backward without text tail); the negligible class and gradients
        through HunyuanVideo's text tail run the reference."""
        return self.kernel_ready(q) and self.negligible == 0.0 and (tail_k is None or not torch.is_grad_enabled())

    def video_attention(self, q, k, v, call: AttentionCall, tail_k=None, tail_v=None, tail_mask=None):
        if self.use_kernel(q, tail_k):
            from .kernels import ops
            from .kernels.router import topk_lut

            ops.check_sla_inputs(q, k, v, self.block_q, self.block_k)
            pooled_q = torch.ops.turbo.block_pool(q, self.block_q)
            pooled_k = torch.ops.turbo.block_pool(k, self.block_k)
            lut, count = topk_lut(torch.matmul(pooled_q, pooled_k.transpose(-1, -2)), self.keep, self.topk_rule)
            out, _ = torch.ops.turbo.sla_forward(q, k, v, lut, count, self.proj.weight, self.proj.bias,
                                                 self.block_q, self.block_k, q.shape[-1] ** -0.5, tail_k, tail_v,
                                                 tail_mask, self.linear == "all")
            return out
        return reference.sla_attention(
            q, k, v, self.keep, block_q=self.block_q, block_k=self.block_k, proj=self.proj,
            negligible=self.negligible, tail_k=tail_k, tail_v=tail_v, tail_mask=tail_mask, linear=self.linear,
            topk_rule=self.topk_rule,
        )

    def extra_repr(self) -> str:
        return (f"keep={self.keep}, block_q={self.block_q}, block_k={self.block_k}, negligible={self.negligible}, "
                f"linear={self.linear}, topk_rule={self.topk_rule}")
