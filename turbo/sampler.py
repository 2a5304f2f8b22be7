"""The sampler section: the pipeline's own scheduler, or (not built yet) the rCM few-step sampler.

`sampler="rcm"` raises `NotImplementedMethodError` naming it at `accelerate()` time."""

from __future__ import annotations

from dataclasses import dataclass

from .config import option, validate_options
from .registry import NotBuiltFeature, register_feature

SAMPLER_MODES = ("default", "rcm")


@dataclass(frozen=True)
class SamplerConfig:
    """Sampler / step distillation."""

    mode: str = option("default", "default = the pipeline's own scheduler", choices=SAMPLER_MODES)

    def __post_init__(self):
        validate_options(self, "sampler")


class SamplerFeature(NotBuiltFeature):
    name = "sampler"
    config_cls = SamplerConfig
    order = 40
    messages = {"rcm": "the rCM few-step sampler"}


register_feature(SamplerFeature())
