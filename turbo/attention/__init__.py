"""Self-attention methods, each registered with `turbo.registry.register_method`: dense | sla | sla2 | lowbit | svg |
svg2 (+ any method a user registers).

`build_method(config, heads, head_dim)` returns the `AttentionMethod` module for one attention layer. The pure
PyTorch math lives in `reference.py` (the spec, the CPU path and the kernels' test oracle)."""

from __future__ import annotations

from ..config import AttentionConfig
from ..registry import method_spec, register_feature
from .base import AttentionMethod, DenseAttention
from .feature import AttentionFeature
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

register_feature(AttentionFeature())


def build_method(config: AttentionConfig, heads: int, head_dim: int) -> AttentionMethod:
    """One method module for a self-attention layer with `heads` heads of size `head_dim`."""
    return method_spec(config.method).factory(config, heads, head_dim)
