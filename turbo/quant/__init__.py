"""Linear-layer quantisation (W8A8 FP8/INT8, NVFP4/INT8 mixed precision).

Not built yet: the `quant` section's modes are in the schema (and the CLI) and raise `NotImplementedMethodError`
naming themselves at `accelerate()` time."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option, validate_options
from ..registry import NotBuiltFeature, register_feature

QUANT_MODES = ("off", "fp8", "int8", "nvfp4-mixed")


@dataclass(frozen=True)
class QuantConfig:
    """Linear-layer quantisation."""

    mode: str = option("off", "linear-layer quantisation", choices=QUANT_MODES)

    def __post_init__(self):
        validate_options(self, "quant")


class QuantFeature(NotBuiltFeature):
    name = "quant"
    config_cls = QuantConfig
    order = 20
    messages = {
        "fp8": "W8A8 FP8 linear quantisation",
        "int8": "W8A8 INT8 linear quantisation",
        "nvfp4-mixed": "NVFP4/INT8 mixed-precision quantisation",
    }


register_feature(QuantFeature())
