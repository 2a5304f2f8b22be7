"""The interface every self-attention method implements, and the split of HunyuanVideo's joint [video; text]
sequence: sparse methods act on video queries × video keys; text keys are always attended and text query rows run
the stock dense attention, so text tokens stay exact."""

from __future__ import annotations

import torch
from torch import nn

from ..runtime import AttentionCall


class AttentionMethod(nn.Module):
    """Base class: an `nn.Module` installed under the attention module it serves (so learnable parts follow
    `state_dict`, optimizers and `.to()`). Subclasses implement `video_attention`."""

    name = "base"
    backend = "auto"

    def kernel_ready(self, q: torch.Tensor) -> bool:
        """Whether this call can take turbo's Triton kernel: backend not forced to the reference, a CUDA tensor on a
        GPU the method's kernel supports, a power-of-two head dim in [16, 128] and a kernel dtype. Anything else runs
        the PyTorch reference instead of failing inside a kernel."""
        if self.backend == "reference" or not q.is_cuda:
            return False
        from ..capabilities import ATTENTION_KERNELS

        needed = ATTENTION_KERNELS.get(self.name)
        dim = q.shape[-1]
        return (
            needed is not None
            and torch.cuda.get_device_capability(q.device) >= needed
            and dim in (16, 32, 64, 128)
            and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
        )

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: AttentionCall) -> torch.Tensor:
        """q, k, v: [B, S, H, D] after QK-norm and RoPE; returns [B, S, H, D] in q.dtype."""
        nv = call.num_video
        if nv == q.shape[1]:
            return self.video_attention(q, k, v, call)
        video = self.video_attention(
            q[:, :nv], k[:, :nv], v[:, :nv], call, tail_k=k[:, nv:], tail_v=v[:, nv:], tail_mask=call.text_mask
        )
        text = call.dense(q[:, nv:], k, v)
        return torch.cat([video.to(text.dtype), text], dim=1)

    def video_attention(self, q, k, v, call: AttentionCall, tail_k=None, tail_v=None, tail_mask=None) -> torch.Tensor:
        """Video queries [B, S_video, H, D] over video keys plus the always-attended tail keys [B, L, H, D]
        (`tail_mask` [B, L] True = real token). Returns [B, S_video, H, D]."""
        raise NotImplementedError(f"{type(self).__name__} must implement video_attention")


class DenseAttention(AttentionMethod):
    """The model's own attention path (bit-identical to the unaccelerated model)."""

    name = "dense"

    def forward(self, q, k, v, call: AttentionCall) -> torch.Tensor:
        return call.dense(q, k, v)
