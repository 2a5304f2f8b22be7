"""Self-attention methods: dense | sla | sla2 | lowbit | svg | svg2.

`build_method(config, heads, head_dim)` returns the `AttentionMethod` module for one attention layer. The pure
PyTorch math lives in `reference.py` (the spec, the CPU path and the kernels' test oracle)."""

from __future__ import annotations

from ..config import AttentionConfig
from .base import AttentionMethod, DenseAttention
from .lowbit import LowBitAttention
from .sla import SLAAttention
from .sla2 import SLA2Attention
from .svg import SVGAttention
from .svg2 import SVG2Attention

__all__ = [
    "AttentionMethod",
    "DenseAttention",
    "LowBitAttention",
    "SLAAttention",
    "SLA2Attention",
    "SVGAttention",
    "SVG2Attention",
    "build_method",
]


def build_method(config: AttentionConfig, heads: int, head_dim: int) -> AttentionMethod:
    """One method module for a self-attention layer with `heads` heads of size `head_dim`."""
    if config.method == "dense":
        return DenseAttention()
    if config.method == "sla":
        return SLAAttention(head_dim, config)
    if config.method == "sla2":
        return SLA2Attention(head_dim, heads, config)
    if config.method == "lowbit":
        return LowBitAttention(config)
    if config.method == "svg":
        return SVGAttention(config)
    if config.method == "svg2":
        return SVG2Attention(config)
    raise ValueError(f"no attention method '{config.method}'")
