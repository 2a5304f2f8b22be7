"""`TurboConfig`: one frozen dataclass tree describing what `turbo.accelerate` does.

Each sub-config has an "off"-like choice. Fields carry metadata (`help`, `methods`, `choices`, `range`) so the CLI and
the app can build their controls from the schema. Field names are unique across sub-configs, which lets
`TurboConfig.replace(keep=0.05)` and `accelerate(pipe, keep=0.05)` route a flat keyword to its sub-config.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import NotImplementedMethodError, TurboConfigError

ATTENTION_METHODS = ("dense", "sla", "sla2", "lowbit", "svg", "svg2")
ATTENTION_BACKENDS = ("auto", "reference", "triton")
QUANT_MODES = ("off", "fp8", "int8", "nvfp4-mixed")
CACHE_MODES = ("off", "tdc")
SAMPLER_MODES = ("default", "rcm")

# Methods in the schema that are not built yet, with the capability that will deliver them.
NOT_BUILT = {
    ("quant.mode", "fp8"): "W8A8 FP8 linear quantisation is not implemented yet",
    ("quant.mode", "int8"): "W8A8 INT8 linear quantisation is not implemented yet",
    ("quant.mode", "nvfp4-mixed"): "NVFP4/INT8 mixed-precision quantisation is not implemented yet",
    ("cache.mode", "tdc"): "the Temporal Delta Cache is not implemented yet",
    ("sampler.mode", "rcm"): "the rCM few-step sampler is not implemented yet",
}


def _opt(default, help: str, *, methods: tuple[str, ...] = (), choices: tuple = (), range: tuple = ()):
    meta = {"help": help, "methods": methods, "choices": choices, "range": range}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class AttentionConfig:
    """Self-attention method and its parameters (cross-attention always stays dense)."""

    method: str = _opt("dense", "self-attention method", choices=ATTENTION_METHODS)
    backend: str = _opt(
        "auto", "auto = Triton kernel on CUDA when one exists, else the PyTorch reference", choices=ATTENTION_BACKENDS
    )
    keep: float = _opt(0.1, "fraction of key blocks computed exactly", methods=("sla", "sla2"), range=(0.0, 1.0))
    block_q: int = _opt(128, "query block size (tokens)", methods=("sla", "sla2", "lowbit", "svg"), range=(16, 1024))
    block_k: int = _opt(64, "key block size (tokens)", methods=("sla", "sla2", "lowbit", "svg"), range=(16, 1024))
    negligible: float = _opt(
        0.0, "fraction of lowest-scored key blocks dropped from the linear branch", methods=("sla",), range=(0.0, 1.0)
    )
    alpha_init: float = _opt(
        0.9, "initial sparse/linear mix alpha (1.0 = pure sparse branch)", methods=("sla2",), range=(0.0, 1.0)
    )
    alpha_bins: int = _opt(
        256, "alpha values per head; query blocks map onto them by relative position", methods=("sla2",),
        range=(1, 65536),
    )
    soft_topk: bool = _opt(False, "SoftTop-k routing (SLA2 stage-1 router training)", methods=("sla2",))
    tau: float = _opt(0.1, "SoftTop-k temperature", methods=("sla2",), range=(0.0, 10.0))
    quantized: bool = _opt(False, "low-bit (INT8 QK, FP8 PV) sparse branch with QAT", methods=("sla2",))
    density: float = _opt(0.25, "fraction of the attention map computed", methods=("svg",), range=(0.0, 1.0))
    profile_rows: int = _opt(64, "query rows sampled to classify heads", methods=("svg",), range=(1, 100000))
    q_clusters: int = _opt(256, "k-means clusters of the queries, per head", methods=("svg2",), range=(1, 100000))
    k_clusters: int = _opt(1024, "k-means clusters of the keys, per head", methods=("svg2",), range=(1, 100000))
    top_p: float = _opt(0.9, "attention mass of the key clusters kept per query cluster", methods=("svg2",),
                        range=(0.0, 1.0))
    kmeans_iters: int = _opt(2, "Lloyd iterations per step (warm-started per CFG branch)", methods=("svg2",),
                             range=(1, 1000))
    dense_steps: int = _opt(0, "first N denoising steps run dense attention", range=(0, 100000))
    dense_layers: int = _opt(0, "first N transformer blocks run dense attention", range=(0, 100000))

    def validate(self) -> None:
        _check_choice("attention.method", self.method, ATTENTION_METHODS)
        _check_choice("attention.backend", self.backend, ATTENTION_BACKENDS)
        _check_ranges(self, "attention")
        for name in ("keep", "density", "top_p"):
            value = getattr(self, name)
            if not (0.0 < value <= 1.0):
                raise TurboConfigError(f"attention.{name}={value} must be in (0, 1]; e.g. {name}=0.1 computes 10%.")
        if self.method == "sla" and self.keep + self.negligible > 1.0:
            raise TurboConfigError(
                f"attention.negligible={self.negligible} must be in [0, 1 - keep) so that keep + negligible <= 1."
            )
        if self.method == "sla2" and not (0.0 < self.alpha_init <= 1.0):
            raise TurboConfigError(f"attention.alpha_init={self.alpha_init} must be in (0, 1].")
        for name in ("block_q", "block_k"):
            value = getattr(self, name)
            if value & (value - 1):
                raise TurboConfigError(f"attention.{name}={value} must be a power of two (kernels tile by it).")


@dataclass(frozen=True)
class QuantConfig:
    """Linear-layer quantisation."""

    mode: str = _opt("off", "linear quantisation", choices=QUANT_MODES)

    def validate(self) -> None:
        _check_choice("quant.mode", self.mode, QUANT_MODES)


@dataclass(frozen=True)
class CacheConfig:
    """Step-to-step block caching."""

    mode: str = _opt("off", "block residual cache", choices=CACHE_MODES)

    def validate(self) -> None:
        _check_choice("cache.mode", self.mode, CACHE_MODES)


@dataclass(frozen=True)
class SamplerConfig:
    """Sampler / step distillation."""

    mode: str = _opt("default", "default = the pipeline's own scheduler", choices=SAMPLER_MODES)

    def validate(self) -> None:
        _check_choice("sampler.mode", self.mode, SAMPLER_MODES)


SECTIONS = {"attention": AttentionConfig, "quant": QuantConfig, "cache": CacheConfig, "sampler": SamplerConfig}


@dataclass(frozen=True)
class TurboConfig:
    """Everything `turbo.accelerate` applies. Frozen; derive variants with `replace`."""

    attention: AttentionConfig = field(default_factory=AttentionConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def __post_init__(self):
        for name, cls in SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                raise TurboConfigError(f"TurboConfig.{name} must be a {cls.__name__}, got {type(value).__name__}.")
            value.validate()

    def check_built(self) -> None:
        """Raise `NotImplementedMethodError` if the config asks for a method that does not exist yet."""
        for (path, value), message in NOT_BUILT.items():
            section, name = path.split(".")
            if getattr(getattr(self, section), name) == value:
                raise NotImplementedMethodError(f"{path}='{value}': {message}; choose another {path}.")

    def replace(self, **overrides: Any) -> TurboConfig:
        """Return a copy with overrides. Keys are section names (a sub-config, a dict, or for `attention` a method
        name string) or flat field names such as `keep=0.05` or `method="sla"`."""
        sections = {name: getattr(self, name) for name in SECTIONS}
        for key, value in overrides.items():
            if key in SECTIONS:
                sections[key] = _coerce_section(key, value, sections[key])
                continue
            owner = FIELD_OWNER.get(key)
            if owner is None:
                raise TurboConfigError(
                    f"unknown option '{key}'; options are {', '.join(sorted(SECTIONS))} or one of "
                    f"{', '.join(sorted(FIELD_OWNER))}."
                )
            sections[owner] = _replace_checked(sections[owner], owner, {key: value})
        return TurboConfig(**sections)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TurboConfig:
        unknown = set(data) - set(SECTIONS)
        if unknown:
            raise TurboConfigError(f"unknown config sections {sorted(unknown)}; expected {sorted(SECTIONS)}.")
        return cls(**{name: _coerce_section(name, data.get(name, {}), SECTIONS[name]()) for name in SECTIONS})

    @classmethod
    def from_json(cls, text: str) -> TurboConfig:
        return cls.from_dict(json.loads(text))


FIELD_OWNER = {f.name: section for section, cls in SECTIONS.items() for f in fields(cls)}
# `mode` exists in three sections; flat `mode=` would be ambiguous, so it must be given per section.
for _ambiguous in ("mode",):
    FIELD_OWNER.pop(_ambiguous, None)


def _coerce_section(name: str, value: Any, current: Any) -> Any:
    cls = SECTIONS[name]
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return _replace_checked(cls(), name, value)
    if isinstance(value, str):
        key = "method" if name == "attention" else "mode"
        return _replace_checked(current, name, {key: value})
    raise TurboConfigError(f"{name}= expects a {cls.__name__}, a dict or a string, got {type(value).__name__}.")


def _replace_checked(section: Any, name: str, values: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(section)}
    for key, value in values.items():
        if key not in known:
            raise TurboConfigError(f"{name} has no option '{key}'; options: {', '.join(known)}.")
        expected = type(known[key].default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise TurboConfigError(f"{name}.{key} expects {expected.__name__}, got {value!r}.")
    return dataclasses.replace(section, **values)


def _check_choice(path: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise TurboConfigError(f"{path}='{value}' is not one of {', '.join(choices)}.")


def _check_ranges(section: Any, name: str) -> None:
    for f in fields(section):
        bounds = f.metadata.get("range")
        value = getattr(section, f.name)
        if bounds and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value) or not (bounds[0] <= value <= bounds[1]):
                raise TurboConfigError(f"{name}.{f.name}={value} is outside [{bounds[0]}, {bounds[1]}].")


@dataclass(frozen=True)
class Preset:
    """A named configuration with a one-line description and whether it needs turbo-fine-tuned weights."""

    name: str
    config: TurboConfig
    description: str
    needs_finetuned: bool


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "quality",
            TurboConfig(attention=AttentionConfig(method="lowbit", block_k=128)),
            "training-free: dense attention with INT8 QK / FP8 PV numerics (cos >= 0.9995 on real-ish Q/K/V; "
            "128-key tiles: 1.14-1.19x cuDNN on H100)",
            False,
        ),
        Preset(
            "balanced",
            TurboConfig(attention=AttentionConfig(method="svg", density=0.25, dense_steps=10, dense_layers=1)),
            "training-free: Sparse VideoGen spatial/temporal heads at 25% density, first 10 steps and block 0 dense",
            False,
        ),
        Preset(
            "fast",
            TurboConfig(attention=AttentionConfig(method="sla", keep=0.1)),
            "SLA sparse-linear attention at 10% keep; needs SLA-fine-tuned weights (stock weights lose detail)",
            True,
        ),
        Preset(
            "max",
            TurboConfig(attention=AttentionConfig(method="sla2", keep=0.03)),
            "SLA2 learnable routing and α-mix at 3% keep; needs SLA2-fine-tuned weights",
            True,
        ),
    )
}


def resolve_config(config: TurboConfig | str | dict | None, default: TurboConfig, **overrides: Any) -> tuple[
    TurboConfig, str | None
]:
    """Turn what a user passed (None, a preset name, a dict, a TurboConfig) plus flat overrides into a TurboConfig.

    Returns the config and the preset name it came from (None if not a preset)."""
    preset_name = None
    if config is None:
        base = default
    elif isinstance(config, TurboConfig):
        base = config
    elif isinstance(config, str):
        if config not in PRESETS:
            raise TurboConfigError(f"unknown preset '{config}'; presets are {', '.join(PRESETS)}.")
        base, preset_name = PRESETS[config].config, config
    elif isinstance(config, dict):
        base = TurboConfig.from_dict(config)
    else:
        raise TurboConfigError(
            f"config must be a TurboConfig, a preset name or a dict, got {type(config).__name__}."
        )
    return (base.replace(**overrides) if overrides else base), preset_name
