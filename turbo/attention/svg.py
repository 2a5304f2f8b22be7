"""Sparse VideoGen (SVG1): per-call head profiling into spatial / temporal heads, layout permutation of temporal
heads, one band block mask for all heads."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from ..config import AttentionConfig, option
from ..errors import GeometryError
from ..registry import register_method
from ..runtime import AttentionCall, StepInfo
from . import reference
from .base import AttentionMethod, BlockOptions


@dataclass(frozen=True)
class SVGOptions(BlockOptions):
    density: float = option(0.25, "fraction of the attention map computed", range=(0.0, 1.0), open_low=True)
    profile_rows: int = option(64, "query rows sampled to classify heads", range=(1, 100000))


@register_method("svg", context_parallel=True, options=SVGOptions, kernel=(8, 0),
                 summary="Sparse VideoGen: spatial/temporal heads, temporal heads permuted token-major, band mask")
class SVGAttention(AttentionMethod):
    """SVG per ALGORITHMS.md §4. The first frame's worth of tokens (in each head's own order) is a sink every query
    sees; text keys (HunyuanVideo) are always attended.

    `prepare` (outside compilation, once per forward) builds the band block mask and its kernel table for the token
    grid, and draws this call's profiling rows with a generator seeded by (layer, step, branch), so a run is
    reproducible; it writes them into buffers (in place, so CUDA graphs see fixed addresses) and returns the band's
    block density for the report. `forward` only reads them."""

    def __init__(self, config: AttentionConfig, heads: int = 1, head_dim: int = 128):
        super().__init__(config, heads, head_dim)
        self.density = config.density
        self.block_q = config.block_q
        self.block_k = config.block_k
        self.profile_rows = config.profile_rows
        self._grid: tuple | None = None  # (length, sink, device) the band buffers were built for
        self.band_width = 0
        self.band_density_value = 0.0
        for name in ("band", "band_lut", "band_count", "profile_sample"):
            self.register_buffer(name, None, persistent=False)

    def prepare(self, step: StepInfo) -> float:
        super().prepare(step)
        self._build_band(step.geometry.num_tokens, step.geometry.tokens_per_frame, step.device)
        seed = zlib.crc32(f"{step.layer_index}:{step.step_index}:{step.branch}".encode())
        sample = reference.profile_sample(step.geometry.num_tokens, self.profile_rows,
                                          torch.Generator(device=step.device).manual_seed(seed)).to(step.device)
        if self.profile_sample is not None and self.profile_sample.shape == sample.shape:
            self.profile_sample.copy_(sample)
        else:
            self.profile_sample = sample
        return self.band_density_value

    def _build_band(self, length: int, sink: int, device) -> None:
        if self._grid == (length, sink, device):
            return
        from .kernels.router import mask_to_lut

        width = reference.svg_band_width(self.density, length)
        band = reference.svg_band_block_mask(length, self.block_q, self.block_k, width, sink, device)
        self.band = band
        self.band_lut, self.band_count = mask_to_lut(band[None, None])
        self.band_width = width
        self.band_density_value = reference.band_density(band, length, self.block_q, self.block_k)
        self._grid = (length, sink, device)

    def video_attention(self, q, k, v, call: AttentionCall, tail_k=None, tail_v=None, tail_mask=None):
        geometry = call.geometry
        if q.shape[1] != geometry.num_tokens:
            raise GeometryError(
                f"SVG expected {geometry} video tokens but the attention call has {q.shape[1]}; "
                "the token layout of this model is not the (frame, row, column) grid SVG needs."
            )
        if self._grid != (q.shape[1], geometry.tokens_per_frame, q.device) or self.profile_sample is None:
            # a direct call without the hook (eager use): prepare as layer 0, step 0
            self.prepare(StepInfo(0, "default", 0, geometry, q.device))
        if self.use_kernel(q, tail_k):
            out, _ = self.kernel_forward(q, k, v, geometry.frames, geometry.tokens_per_frame, None, tail_k, tail_v,
                                         tail_mask, sample=self.profile_sample)
            return out
        out, _ = reference.svg_band_attention(
            q, k, v, geometry.frames, geometry.tokens_per_frame, self.band, self.band_width,
            geometry.tokens_per_frame, self.block_q, self.block_k, profile_rows=self.profile_rows,
            tail_k=tail_k, tail_v=tail_v, tail_mask=tail_mask, sample=self.profile_sample,
        )
        return out

    def use_kernel(self, q, tail_k) -> bool:
        """The Triton block-sparse forward on CUDA for inference (gradients use the reference)."""
        return self.kernel_ready(q) and not torch.is_grad_enabled()

    def kernel_forward(self, q, k, v, frames: int, tokens_per_frame: int, generator, tail_k=None, tail_v=None,
                       tail_mask=None, sample=None):
        """Same computation as `reference.svg_attention` (labels from the same profiling rows: `sample`, or drawn
        with `generator`) with the band attention on the Triton block-sparse kernel. Returns (out, labels [B, H])."""
        from .kernels.sla_forward import sla_forward

        batch, length, heads, _ = q.shape
        self._build_band(length, tokens_per_frame, q.device)
        if sample is None:
            sample = reference.profile_sample(length, self.profile_rows, generator).to(q.device)
        labels = profile_heads(q, k, v, frames, tokens_per_frame, self.band_width, tokens_per_frame,
                               self.profile_rows, None, tail_k, tail_v, tail_mask, sample=sample)
        to_token_major = reference.frame_to_token_major(frames, tokens_per_frame, q.device)
        order = per_head_order(labels, to_token_major)
        lut = self.band_lut.expand(batch, heads, -1, -1).contiguous()
        count = self.band_count.expand(batch, heads, -1).contiguous()
        out, _ = sla_forward(gather_tokens(q, order), gather_tokens(k, order), gather_tokens(v, order), lut, count,
                             self.block_q, self.block_k, tail_k=tail_k, tail_v=tail_v, tail_mask=tail_mask)
        return gather_tokens(out, per_head_order(labels, torch.argsort(to_token_major))), labels

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
                  generator, tail_k=None, tail_v=None, tail_mask=None, sample=None) -> torch.Tensor:
    """`reference.svg_profile_heads` (same rows, masks and rule) computed for speed: one score matrix of the
    sampled rows on the tensor cores in the input dtype, reused for the exact, spatial and temporal outputs.
    Returns long [B, H]: 0 spatial, 1 temporal."""
    batch, length, heads, dim = q.shape
    device = q.device
    if sample is None:
        sample = reference.profile_sample(length, rows, generator).to(device)
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
