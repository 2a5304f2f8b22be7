"""Step-to-step block caching (Temporal Delta Cache).

Not built yet: `cache="tdc"` raises `NotImplementedMethodError` naming it at `accelerate()` time."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option, validate_options
from ..registry import NotBuiltFeature, register_feature

CACHE_MODES = ("off", "tdc")


@dataclass(frozen=True)
class CacheConfig:
    """Step-to-step block caching."""

    mode: str = option("off", "block residual cache", choices=CACHE_MODES)

    def __post_init__(self):
        validate_options(self, "cache")


class CacheFeature(NotBuiltFeature):
    name = "cache"
    config_cls = CacheConfig
    order = 30
    messages = {"tdc": "the Temporal Delta Cache"}


register_feature(CacheFeature())
