"""turbo: make diffusers video transformers (Wan2.1/2.2, HunyuanVideo) generate faster.

    import turbo
    turbo.accelerate(pipe)            # safe default for stock checkpoints
    turbo.accelerate(pipe, "fast")    # a preset; print(pipe.turbo) shows what changed
    turbo.restore(pipe)               # undo

    turbo.save_quantized(pipe, "wan-fp8")          # after accelerate(pipe, quant="fp8")
    transformer = turbo.load_quantized("wan-fp8/transformer", device="cuda")  # never holds the bf16 linears

`accelerate`, `restore`, `default_config`, `convert_checkpoint`, `save_quantized` and `load_quantized` are imported on
first use, so the kernels and the config can be used without importing diffusers.
"""

from .cache import CacheConfig
from .capabilities import detect as capabilities
from .compilation import CompileConfig
from .config import PRESETS, AttentionConfig, TurboConfig, option_specs
from .errors import (
    GeometryError,
    NotImplementedMethodError,
    TurboConfigError,
    TurboError,
    UnsupportedModelError,
)
from .quant import QuantConfig
from .registry import Feature, register_feature, register_method
from .sampler import SamplerConfig

__version__ = "0.1.0"

_LAZY = {"accelerate", "restore", "default_config", "save_attention_parts"}

__all__ = [
    "PRESETS",
    "AttentionConfig",
    "CacheConfig",
    "CompileConfig",
    "Feature",
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
    "convert_checkpoint",
    "default_config",
    "load_quantized",
    "option_specs",
    "register_feature",
    "register_method",
    "restore",
    "save_attention_parts",
    "save_quantized",
]


def __getattr__(name: str):
    if name == "convert_checkpoint":  # TurboDiffusion / rCM checkpoints → diffusers (turbo.convert)
        from .convert import convert_checkpoint

        return convert_checkpoint
    if name in ("save_quantized", "load_quantized"):  # quantised transformers saved once, loaded without bf16 weights
        from .quant import io

        return getattr(io, name)
    if name in _LAZY:
        import importlib

        module = importlib.import_module(".acceleration", __name__)
        globals().update({lazy: getattr(module, lazy) for lazy in _LAZY})
        return globals()[name]
    raise AttributeError(f"module 'turbo' has no attribute {name!r}")
