"""Sparse VideoGen 2: k-means routing (semantic-aware permutation) with per-CFG-branch warm starts."""

from __future__ import annotations

import zlib

import torch

from ..config import AttentionConfig
from ..runtime import AttentionCall
from . import reference
from .base import AttentionMethod


class SVG2Attention(AttentionMethod):
    """SVG2 per ALGORITHMS.md §4: each call clusters Q and K per head (k-means warm-started from this layer's previous
    step of the same CFG branch; a step-0 call starts fresh), routes query clusters to the key clusters holding
    `top_p` of the centroid-level attention mass (at least 10 % of the non-empty clusters), and attends exactly over
    those keys (+ text keys). Runs the PyTorch reference (no kernel yet: the k-means is the part that needs one)."""

    name = "svg2"

    def __init__(self, config: AttentionConfig):
        super().__init__()
        self.q_clusters = config.q_clusters
        self.k_clusters = config.k_clusters
        self.top_p = config.top_p
        self.iters = config.kmeans_iters
        self.centroids: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # per CFG branch
        self.last_density: float | None = None

    def video_attention(self, q, k, v, call: AttentionCall, tail_k=None, tail_v=None, tail_mask=None):
        state = None if call.step_index == 0 else self.centroids.get(call.branch)
        if state is not None and state[0].shape[0] != q.shape[0]:
            state = None  # batch size changed: start fresh
        seed = zlib.crc32(f"{call.layer_index}:{call.step_index}:{call.branch}".encode())
        generator = torch.Generator(device=q.device).manual_seed(seed)
        out, state, density = reference.svg2_attention(
            q, k, v, self.q_clusters, self.k_clusters, self.top_p, self.iters, state, generator,
            tail_k=tail_k, tail_v=tail_v, tail_mask=tail_mask,
        )
        self.centroids[call.branch] = tuple(c.detach() for c in state)
        self.last_density = density
        return out

    def extra_repr(self) -> str:
        return f"q_clusters={self.q_clusters}, k_clusters={self.k_clusters}, top_p={self.top_p}, iters={self.iters}"
