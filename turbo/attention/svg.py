"""Sparse VideoGen (SVG1): per-call head profiling into spatial / temporal heads, layout permutation of temporal
heads, one band block mask for all heads."""

from __future__ import annotations

import zlib

import torch

from ..config import AttentionConfig
from ..errors import GeometryError
from ..runtime import AttentionCall
from . import reference
from .base import AttentionMethod


class SVGAttention(AttentionMethod):
    """SVG per ALGORITHMS.md §4. The first frame's worth of tokens (in each head's own order) is a sink every query
    sees; text keys (HunyuanVideo) are always attended. Profiling rows are drawn with a generator seeded by
    (layer, step, branch), so a run is reproducible. The measured block density is recorded for the report."""

    name = "svg"

    def __init__(self, config: AttentionConfig):
        super().__init__()
        self.density = config.density
        self.block_q = config.block_q
        self.block_k = config.block_k
        self.profile_rows = config.profile_rows
        self.backend = config.backend
        self._band_cache: dict = {}
        self.last_labels: torch.Tensor | None = None
        self.last_density: float | None = None

    def video_attention(self, q, k, v, call: AttentionCall, tail_k=None, tail_v=None, tail_mask=None):
        geometry = call.geometry
        if q.shape[1] != geometry.num_tokens:
            raise GeometryError(
                f"SVG expected {geometry} video tokens but the attention call has {q.shape[1]}; "
                "the token layout of this model is not the (frame, row, column) grid SVG needs."
            )
        seed = zlib.crc32(f"{call.layer_index}:{call.step_index}:{call.branch}".encode())
        generator = torch.Generator(device=q.device).manual_seed(seed)
        if self.use_kernel(q, tail_k):
            out, labels, density = self.kernel_forward(q, k, v, geometry.frames, geometry.tokens_per_frame, generator,
                                                       tail_k, tail_v, tail_mask)
        else:
            out, labels, density = reference.svg_attention(
                q, k, v, geometry.frames, geometry.tokens_per_frame, self.density, block_q=self.block_q,
                block_k=self.block_k, profile_rows=self.profile_rows, generator=generator,
                tail_k=tail_k, tail_v=tail_v, tail_mask=tail_mask,
            )
        self.last_labels = labels
        self.last_density = density
        return out

    def use_kernel(self, q, tail_k) -> bool:
        """The Triton block-sparse forward on CUDA for inference (gradients use the reference)."""
        return self.backend != "reference" and q.is_cuda and not torch.is_grad_enabled()

    def _band_lut(self, length: int, width: int, sink: int, device):
        key = (length, width, sink, self.block_q, self.block_k, str(device))
        if key not in self._band_cache:
            from .kernels.router import mask_to_lut

            band = reference.svg_band_block_mask(length, self.block_q, self.block_k, width, sink, device)
            lut, count = mask_to_lut(band[None, None])
            density = reference.band_density(band, length, self.block_q, self.block_k)
            self._band_cache[key] = (lut, count, density)
        return self._band_cache[key]

    def kernel_forward(self, q, k, v, frames: int, tokens_per_frame: int, generator, tail_k=None, tail_v=None,
                       tail_mask=None):
        """Same computation as `reference.svg_attention` (labels from the same profiling rows) with the band
        attention on the Triton block-sparse kernel. Returns (out, labels [B, H], density)."""
        from .kernels.sla_forward import sla_forward

        batch, length, heads, _ = q.shape
        width = reference.svg_band_width(self.density, length)
        labels = reference.svg_profile_heads(q, k, v, frames, tokens_per_frame, width, tokens_per_frame,
                                             self.profile_rows, generator, tail_k=tail_k, tail_v=tail_v,
                                             tail_mask=tail_mask)
        temporal = (labels == 1)[:, None, :, None]
        to_token_major = reference.frame_to_token_major(frames, tokens_per_frame, q.device)
        to_frame_major = torch.argsort(to_token_major)
        qp, kp, vp = (torch.where(temporal, x[:, to_token_major], x) for x in (q, k, v))
        lut, count, density = self._band_lut(length, width, tokens_per_frame, q.device)
        lut = lut.expand(batch, heads, -1, -1).contiguous()
        count = count.expand(batch, heads, -1).contiguous()
        out, _ = sla_forward(qp, kp, vp, lut, count, self.block_q, self.block_k, tail_k=tail_k, tail_v=tail_v,
                             tail_mask=tail_mask)
        return torch.where(temporal, out[:, to_frame_major], out), labels, density

    def extra_repr(self) -> str:
        return f"density={self.density}, profile_rows={self.profile_rows}"
