"""Sparse VideoGen 2: k-means routing (semantic-aware permutation) with per-CFG-branch warm starts."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from ..config import AttentionConfig, option
from ..registry import register_method
from ..runtime import AttentionCall, StepInfo
from . import reference
from .base import AttentionMethod


@dataclass(frozen=True)
class SVG2Options:
    q_clusters: int = option(256, "k-means clusters of the queries, per head", range=(1, 100000))
    k_clusters: int = option(1024, "k-means clusters of the keys, per head", range=(1, 100000))
    top_p: float = option(0.9, "attention mass of the key clusters kept per query cluster", range=(0.0, 1.0),
                          open_low=True)
    kmeans_iters: int = option(2, "Lloyd iterations per step (warm-started per CFG branch)", range=(1, 1000))


@register_method("svg2", context_parallel=True, options=SVG2Options,
                 summary="SVG2: per-head k-means of Q and K, query clusters attend the top-p key clusters")
class SVG2Attention(AttentionMethod):
    """SVG2 per ALGORITHMS.md §4: each call clusters Q and K per head (k-means warm-started from this layer's previous
    step of the same CFG branch; a step-0 call starts fresh), routes query clusters to the key clusters holding
    `top_p` of the centroid-level attention mass (at least 10 % of the non-empty clusters), and attends exactly over
    those keys (+ text keys). Runs the PyTorch reference (no kernel yet: the k-means is the part that needs one).

    Its per-branch centroids and measured density are Python state, so `video_attention` runs outside compilation
    (one graph break per layer under torch.compile; `prepare` hands it the step, branch and layer)."""

    def __init__(self, config: AttentionConfig, heads: int = 1, head_dim: int = 128):
        super().__init__(config, heads, head_dim)
        self.q_clusters = config.q_clusters
        self.k_clusters = config.k_clusters
        self.top_p = config.top_p
        self.iters = config.kmeans_iters
        self.centroids: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # per CFG branch
        self.step = StepInfo(0, "default", 0, None, torch.device("cpu"))
        self.last_density: float | None = None

    def prepare(self, step: StepInfo) -> None:
        super().prepare(step)
        self.step = step
        return None

    @torch.compiler.disable
    def video_attention(self, q, k, v, call: AttentionCall, tail_k=None, tail_v=None, tail_mask=None):
        step = self.step
        state = None if step.step_index == 0 else self.centroids.get(step.branch)
        if state is not None and state[0].shape[0] != q.shape[0]:
            state = None  # batch size changed: start fresh
        seed = zlib.crc32(f"{step.layer_index}:{step.step_index}:{step.branch}".encode())
        generator = torch.Generator(device=q.device).manual_seed(seed)
        out, state, density = reference.svg2_attention(
            q, k, v, self.q_clusters, self.k_clusters, self.top_p, self.iters, state, generator,
            tail_k=tail_k, tail_v=tail_v, tail_mask=tail_mask,
        )
        self.centroids[step.branch] = tuple(c.detach() for c in state)
        self.last_density = density
        if step.record_density is not None:
            step.record_density(density)
        return out

    def extra_repr(self) -> str:
        return f"q_clusters={self.q_clusters}, k_clusters={self.k_clusters}, top_p={self.top_p}, iters={self.iters}"
