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
        return self.kernel_ready(q) and not torch.is_grad_enabled()

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
        labels = profile_heads(q, k, v, frames, tokens_per_frame, width, tokens_per_frame, self.profile_rows,
                               generator, tail_k, tail_v, tail_mask)
        to_token_major = reference.frame_to_token_major(frames, tokens_per_frame, q.device)
        order = per_head_order(labels, to_token_major)
        lut, count, density = self._band_lut(length, width, tokens_per_frame, q.device)
        lut = lut.expand(batch, heads, -1, -1).contiguous()
        count = count.expand(batch, heads, -1).contiguous()
        out, _ = sla_forward(gather_tokens(q, order), gather_tokens(k, order), gather_tokens(v, order), lut, count,
                             self.block_q, self.block_k, tail_k=tail_k, tail_v=tail_v, tail_mask=tail_mask)
        return gather_tokens(out, per_head_order(labels, torch.argsort(to_token_major))), labels, density

    def extra_repr(self) -> str:
        return f"density={self.density}, profile_rows={self.profile_rows}"


def per_head_order(labels: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """long [B, S, H]: token order per (batch, head) — `permutation` for temporal heads (label 1), identity else."""
    identity = torch.arange(permutation.numel(), device=permutation.device)
    return torch.where((labels == 1)[:, None, :], permutation[None, :, None], identity[None, :, None])


def gather_tokens(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """x [B, S, H, D] reordered per (batch, head) by order [B, S, H], in one gather pass."""
    batch, _, heads, _ = x.shape
    rows = torch.arange(batch, device=x.device)[:, None, None]
    return x[rows, order, torch.arange(heads, device=x.device)[None, None, :]]


def profile_heads(q, k, v, frames: int, tokens_per_frame: int, width: int, sink_tokens: int, rows: int,
                  generator, tail_k=None, tail_v=None, tail_mask=None) -> torch.Tensor:
    """`reference.svg_profile_heads` (same rows, masks and rule) computed for speed: one score matrix of the
    sampled rows on the tensor cores in the input dtype, reused for the exact, spatial and temporal outputs.
    Returns long [B, H]: 0 spatial, 1 temporal."""
    batch, length, heads, dim = q.shape
    device = q.device
    sample = torch.randperm(length, generator=generator, device=generator.device)[:rows].to(device)
    keys, values = k, v
    if tail_k is not None:
        keys, values = torch.cat([k, tail_k], 1), torch.cat([v, tail_v], 1)
    scores = torch.matmul(q[:, sample].transpose(1, 2), keys.permute(0, 2, 3, 1)).float() * dim ** -0.5
    position = torch.arange(length, device=device)
    token_major = torch.argsort(reference.frame_to_token_major(frames, tokens_per_frame, device))
    spatial = ((sample[:, None] - position[None, :]).abs() <= width) | (position < sink_tokens)[None, :]
    temporal = ((token_major[sample][:, None] - token_major[None, :]).abs() <= width) | (
        token_major < sink_tokens)[None, :]
    tail = None
    if tail_k is not None:
        tail = (torch.ones(batch, tail_k.shape[1], dtype=torch.bool, device=device) if tail_mask is None
                else tail_mask.bool())[:, None, None, :]
    values = values.transpose(1, 2)

    def output(video_mask):
        allowed = torch.ones(1, 1, rows, length, dtype=torch.bool, device=device) if video_mask is None else \
            video_mask[None, None]
        if tail is not None:
            allowed = torch.cat([allowed.expand(batch, 1, -1, -1), tail.expand(-1, 1, rows, -1)], -1)
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        return torch.matmul(probs.to(values.dtype), values).float()

    exact = output(None)
    errors = torch.stack([((output(mask) - exact) ** 2).mean(dim=(2, 3)) for mask in (spatial, temporal)])
    return errors.argmin(0)
