"""turbo: make diffusers video transformers (Wan2.1/2.2, HunyuanVideo) generate faster.

    import turbo
    turbo.accelerate(pipe)            # safe default for stock checkpoints
    turbo.accelerate(pipe, "fast")    # a preset; print(pipe.turbo) shows what changed
    turbo.restore(pipe)               # undo
"""

from .accelerate import accelerate, default_config, restore
from .capabilities import detect as capabilities
from .config import PRESETS, AttentionConfig, CacheConfig, QuantConfig, SamplerConfig, TurboConfig
from .errors import (
    GeometryError,
    NotImplementedMethodError,
    TurboConfigError,
    TurboError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "AttentionConfig",
    "CacheConfig",
    "GeometryError",
    "NotImplementedMethodError",
    "QuantConfig",
    "SamplerConfig",
    "TurboConfig",
    "TurboConfigError",
    "TurboError",
    "UnsupportedModelError",
    "accelerate",
    "capabilities",
    "default_config",
    "restore",
]
