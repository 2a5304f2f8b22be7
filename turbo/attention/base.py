"""The interface every self-attention method implements, and the split of HunyuanVideo's joint [video; text]
sequence: sparse methods act on video queries × video keys; text keys are always attended and text query rows run
the stock dense attention, so text tokens stay exact."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from ..config import AttentionConfig, option
from ..errors import TurboConfigError
from ..registry import register_method
from ..runtime import AttentionCall, StepInfo


@dataclass(frozen=True)
class NoOptions:
    """A method without options of its own."""


@dataclass(frozen=True)
class BlockOptions:
    """Tile sizes shared by the block-sparse and low-bit methods."""

    block_q: int = option(128, "query block size (tokens)", range=(16, 1024))
    block_k: int = option(64, "key block size (tokens)", range=(16, 1024))

    def validate(self) -> None:
        for name in ("block_q", "block_k"):
            value = getattr(self, name)
            if value <= 0 or value & (value - 1):
                raise TurboConfigError(f"attention.{name}={value} must be a power of two (kernels tile by it).")


@functools.cache
def _capability(device_index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)


class AttentionMethod(nn.Module):
    """Base class: an `nn.Module` installed under the attention module it serves (so learnable parts follow
    `state_dict`, optimizers and `.to()`). Subclasses implement `video_attention` and register with
    `turbo.registry.register_method`; the constructor signature is `(config: AttentionConfig, heads, head_dim)`.

    `prepare` runs once per forward and layer in the transformer-level hook, outside compilation; whatever changes
    per step (seeds, samples, tables) is computed there into buffers, so `forward` reads only fixed Python values
    and tensors."""

    name = "base"
    backend = "auto"
    kernel_capability: tuple[int, int] | None = None  # filled by the registry from the method's spec
    # needs every token on one rank: under context parallelism the processor trades sequence for heads around it
    whole_sequence = True

    def __init__(self, config: AttentionConfig | None = None, heads: int = 1, head_dim: int = 128):
        super().__init__()
        self.backend = config.backend if config is not None else "auto"
        self._kernel_device: tuple | None = None  # (device, kernel supported there) from the last prepare

    def prepare(self, step: StepInfo) -> float | None:
        """Per-forward preparation outside compilation; returns the block density of this layer's next call when it
        is known in advance (for the report), else None."""
        self._note_device(step.device)
        return None

    def _note_device(self, device: torch.device) -> None:
        if self._kernel_device is None or self._kernel_device[0] != device:
            self._kernel_device = (device, self._kernel_supported(device))

    def _kernel_supported(self, device: torch.device) -> bool:
        from ..registry import method_spec

        needed = method_spec(self.name).kernel
        if needed is None or device.type != "cuda":
            return False
        return _capability(device.index if device.index is not None else torch.cuda.current_device()) >= needed

    def kernel_ready(self, q: torch.Tensor) -> bool:
        """Whether this call can take turbo's Triton kernel: backend not forced to the reference, a CUDA tensor on a
        GPU the method's kernel supports, a power-of-two head dim in [16, 128] and a kernel dtype. Anything else runs
        the PyTorch reference instead of failing inside a kernel."""
        if self.backend == "reference" or not q.is_cuda:
            return False
        if self._kernel_device is None or self._kernel_device[0] != q.device:
            self._note_device(q.device)  # a direct call without prepare (eager use, tests, benchmarks)
        return (
            self._kernel_device[1]
            and q.shape[-1] in (16, 32, 64, 128)
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


@register_method("dense", options=NoOptions, context_parallel=True,
                 summary="the model's own attention path (bit-identical)")
class DenseAttention(AttentionMethod):
    """The model's own attention path (bit-identical to the unaccelerated model; under context parallelism,
    diffusers' own ring / Ulysses attention)."""

    whole_sequence = False

    def forward(self, q, k, v, call: AttentionCall) -> torch.Tensor:
        return call.dense(q, k, v)
