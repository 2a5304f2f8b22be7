"""SLA2: learnable router, learnable sparse/linear mix α, optional low-bit (QAT) sparse branch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import AttentionConfig, option
from ..registry import register_method
from ..runtime import AttentionCall
from . import reference
from .base import AttentionMethod, BlockOptions


@dataclass(frozen=True)
class SLA2Options(BlockOptions):
    keep: float = option(0.1, "fraction of key blocks computed exactly", range=(0.0, 1.0), open_low=True)
    alpha_init: float = option(0.9, "initial sparse/linear mix alpha (1.0 = pure sparse branch)", range=(0.0, 1.0),
                               open_low=True)
    alpha_bins: int = option(256, "alpha values per head; query blocks map onto them by relative position",
                             range=(1, 65536))
    soft_topk: bool = option(False, "SoftTop-k routing (SLA2 stage-1 router training)")
    tau: float = option(0.1, "SoftTop-k temperature", range=(0.0, 10.0))
    quantized: bool = option(False, "low-bit (INT8 QK, FP8 PV) sparse branch with QAT")


@register_method("sla2", options=SLA2Options, kernel=(8, 0), needs_finetuned=True, context_parallel=True,
                 summary="SLA2: learnable router and alpha-mix of sparse and linear attention")
class SLA2Attention(AttentionMethod):
    """SLA2 per ALGORITHMS.md §2: out = α·O^s + (1−α)·O^l_c.

    α is a sigmoid of a learnable logit per (head, α-bin); query block i of n maps to bin ⌊i·bins/n⌋, so with
    `alpha_bins` equal to the training resolution's query-block count α is exactly per (head, query block), and other
    resolutions reuse it by relative position. `alpha_init=1.0` gives α = 1 exactly (pure sparse branch).
    proj_q / proj_k are identity-initialised (= SLA's heuristic router)."""

    def __init__(self, config: AttentionConfig, heads: int, head_dim: int):
        super().__init__(config, heads, head_dim)
        self.keep = config.keep
        self.block_q = config.block_q
        self.block_k = config.block_k
        self.soft = config.soft_topk
        self.tau = config.tau
        self.quantized = config.quantized
        self.proj_q = nn.Linear(head_dim, head_dim, bias=False, dtype=torch.float32)
        self.proj_k = nn.Linear(head_dim, head_dim, bias=False, dtype=torch.float32)
        nn.init.eye_(self.proj_q.weight)
        nn.init.eye_(self.proj_k.weight)
        init = math.inf if config.alpha_init >= 1.0 else math.log(config.alpha_init / (1.0 - config.alpha_init))
        self.alpha_logit = nn.Parameter(torch.full((heads, config.alpha_bins), init, dtype=torch.float32))

    def alpha(self, num_query_blocks: int) -> torch.Tensor:
        """α per (head, query block): [H, nq] in (0, 1]."""
        bins = self.alpha_logit.shape[1]
        index = torch.arange(num_query_blocks, device=self.alpha_logit.device) * bins // num_query_blocks
        return torch.sigmoid(self.alpha_logit[:, index])

    def use_kernel(self, q, tail_k) -> bool:
        """Triton kernels on CUDA with hard top-k: bf16 forward + backward (not through HunyuanVideo's text tail), or,
        with `quantized`, the INT8/FP8 forward for inference (FP8 needs sm_89+; no text tail). SoftTop-k (router
        training) and QAT training run the reference."""
        if not self.kernel_ready(q) or self.soft:
            return False
        if self.quantized:
            return (tail_k is None and not torch.is_grad_enabled()
                    and torch.cuda.get_device_capability(q.device) >= (8, 9))
        return tail_k is None or not torch.is_grad_enabled()

    def video_attention(self, q, k, v, call: AttentionCall, tail_k=None, tail_v=None, tail_mask=None):
        alpha = self.alpha(reference.num_blocks(q.shape[1], self.block_q))
        if call.heads is not None:
            alpha = alpha[call.heads]
        if self.use_kernel(q, tail_k):
            from .kernels import ops
            from .kernels.router import topk_lut

            ops.check_sla_inputs(q, k, v, self.block_q, self.block_k)
            pooled_q = self.proj_q(torch.ops.turbo.block_pool(q, self.block_q))
            pooled_k = self.proj_k(torch.ops.turbo.block_pool(k, self.block_k))
            # softmax(·/√d) is monotone per row: the top-k of the raw scores is the top-k of P_c
            lut, count = topk_lut(torch.matmul(pooled_q, pooled_k.transpose(-1, -2)), self.keep)
            scale = q.shape[-1] ** -0.5
            if self.quantized:
                return torch.ops.turbo.sla2_lowbit_forward(q, k, v, lut, count, alpha, self.block_q, self.block_k,
                                                           scale)[0]
            out, _ = torch.ops.turbo.sla2_forward(q, k, v, lut, count, alpha, self.block_q, self.block_k, scale,
                                                  tail_k, tail_v, tail_mask)
            return out
        return reference.sla2_attention(
            q, k, v, self.keep, alpha, block_q=self.block_q, block_k=self.block_k, proj_q=self.proj_q,
            proj_k=self.proj_k, soft=self.soft, tau=self.tau, quantized=self.quantized,
            tail_k=tail_k, tail_v=tail_v, tail_mask=tail_mask,
        )

    def extra_repr(self) -> str:
        return f"keep={self.keep}, soft_topk={self.soft}, quantized={self.quantized}"
