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
        out, labels, density = reference.svg_attention(
            q, k, v, geometry.frames, geometry.tokens_per_frame, self.density, block_q=self.block_q,
            block_k=self.block_k, profile_rows=self.profile_rows, generator=generator,
            tail_k=tail_k, tail_v=tail_v, tail_mask=tail_mask,
        )
        self.last_labels = labels
        self.last_density = density
        return out

    def extra_repr(self) -> str:
        return f"density={self.density}, profile_rows={self.profile_rows}"
