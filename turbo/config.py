"""`TurboConfig`: one frozen tree describing what `turbo.accelerate` does.

Sections come from the feature registry (`turbo.registry`): attention, quant, cache, sampler, compile, plus any
registered feature. `AttentionConfig` holds the settings every method shares (method, backend, dense warm-up) and the
chosen method's own options dataclass (registered with the method), so methods never collide on option names.
Every option is a dataclass field made with `option(...)`; its metadata (help, choices, range) drives validation, the
CLI flags and the app's controls through `option_specs()`.

Flat keywords (`accelerate(pipe, "fast", keep=0.05)`) route to their section: attention's shared fields and the
current method's options by name, other sections by `<section>_<field>` (or the bare field name when it is unique).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from .errors import TurboConfigError
from .registry import attention_methods, features, method_spec

CONFIG_VERSION = 1
ATTENTION_BACKENDS = ("auto", "reference", "triton")
ATTENTION_SHARED = ("method", "backend", "dense_steps", "dense_layers")


def option(default, help: str, *, choices: tuple = (), range: tuple = (), open_low: bool = False):
    """A config field with its metadata: `choices` (allowed values), `range` (inclusive (lo, hi); `open_low` makes
    the lower bound exclusive)."""
    return field(default=default, metadata={"help": help, "choices": choices, "range": range, "open_low": open_low})


def option_fields(cls) -> list[dataclasses.Field]:
    """The option fields of a section or options dataclass (fields made with `option`)."""
    return [f for f in fields(cls) if "help" in f.metadata]


def validate_options(obj, path: str) -> None:
    """Check every option field of `obj` against its choices and range; one-sentence `TurboConfigError`."""
    for f in option_fields(obj):
        value = getattr(obj, f.name)
        choices, bounds = f.metadata["choices"], f.metadata["range"]
        if choices and value not in choices:
            raise TurboConfigError(f"{path}.{f.name}={value!r} is not one of {', '.join(map(str, choices))}.")
        if bounds and isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = bounds
            if f.metadata["open_low"]:
                if not (math.isfinite(value) and low < value <= high):
                    raise TurboConfigError(
                        f"{path}.{f.name}={value} must be in ({low:g}, {high:g}]; e.g. {f.name}=0.1 computes 10%."
                    )
            elif not math.isfinite(value) or not (low <= value <= high):
                raise TurboConfigError(f"{path}.{f.name}={value} is outside [{low}, {high}].")


def _typed(path: str, f: dataclasses.Field, value: Any) -> Any:
    expected = type(f.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise TurboConfigError(f"{path}.{f.name} expects {expected.__name__}, got {value!r}.")
    return value


def replace_options(obj, path: str, values: dict[str, Any]):
    """`dataclasses.replace` with type checks and a one-sentence error for unknown names."""
    known = {f.name: f for f in fields(obj)}
    checked = {}
    for key, value in values.items():
        if key not in known:
            raise TurboConfigError(f"{path} has no option '{key}'; options: {', '.join(known) or 'none'}.")
        checked[key] = _typed(path, known[key], value)
    return dataclasses.replace(obj, **checked)


# ---------------------------------------------------------------------------------------------------------- attention


@dataclass(frozen=True, init=False)
class AttentionConfig:
    """Self-attention: the method, its backend, dense warm-up, and the method's own options (`options`, a frozen
    dataclass registered with the method). Method options read as attributes: `config.attention.keep`.

    `AttentionConfig(method="sla", keep=0.05, dense_steps=10)` builds one; an option the method does not have is an
    error naming the methods that have it."""

    method: str = option("dense", "self-attention method")
    backend: str = option(
        "auto", "auto = Triton kernel on CUDA when one exists, else the PyTorch reference", choices=ATTENTION_BACKENDS
    )
    dense_steps: int = option(0, "first N denoising steps run dense attention", range=(0, 100000))
    dense_layers: int = option(0, "first N transformer blocks run dense attention", range=(0, 100000))
    options: Any = None

    def __init__(self, method: str = "dense", backend: str = "auto", dense_steps: int = 0, dense_layers: int = 0,
                 options: Any = None, **method_options: Any):
        spec = method_spec(method)
        base = options if type(options) is spec.options else spec.options()
        if method_options:
            base = _method_options(base, method, method_options)
        shared = {f.name: f for f in fields(AttentionConfig)}
        for name, value in (("method", method), ("backend", backend), ("dense_steps", dense_steps),
                            ("dense_layers", dense_layers)):
            object.__setattr__(self, name, _typed("attention", shared[name], value))
        object.__setattr__(self, "options", base)
        validate_options(self, "attention")
        validate_options(base, "attention")
        validate = getattr(base, "validate", None)
        if validate is not None:
            validate()

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "options":
            raise AttributeError(name)
        try:
            return getattr(object.__getattribute__(self, "options"), name)
        except AttributeError:
            raise AttributeError(f"attention method '{self.method}' has no option '{name}'") from None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ATTENTION_SHARED} | dataclasses.asdict(self.options)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttentionConfig:
        return cls(**data)


def _method_options(base, method: str, values: dict[str, Any]):
    own = {f.name for f in fields(base)}
    for key in values:
        if key not in own:
            owners = [name for name, spec in attention_methods().items()
                      if key in {f.name for f in fields(spec.options)}]
            if owners:
                raise TurboConfigError(
                    f"attention method '{method}' has no option '{key}' (it belongs to {', '.join(owners)}); "
                    f"choose the method too, e.g. attention='{owners[0]}', {key}=...."
                )
    return replace_options(base, f"attention ({method})", values)


# ------------------------------------------------------------------------------------------------------------ config


def _section_dict(section) -> dict[str, Any]:
    return section.to_dict() if hasattr(section, "to_dict") else dataclasses.asdict(section)


def _section_from(name: str, value: Any, current: Any):
    """A section from what a user passed: an instance, a dict (fresh from defaults), a string (the attention
    method / the section's mode) or a bool (a section with a mode: True = its `recommended` mode, False = off)."""
    cls = features()[name].config_cls
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls.from_dict(value) if hasattr(cls, "from_dict") else replace_options(cls(), name, value)
    if isinstance(value, str):
        if cls is AttentionConfig:
            return AttentionConfig(method=value, backend=current.backend, dense_steps=current.dense_steps,
                                   dense_layers=current.dense_layers)
        return replace_options(current, name, {"mode": value})
    if isinstance(value, bool) and "mode" in {f.name for f in fields(cls)}:
        return replace_options(current, name, {"mode": getattr(cls, "recommended", "on") if value else "off"})
    raise TurboConfigError(f"{name}= expects a {cls.__name__}, a dict or a string, got {type(value).__name__}.")


class TurboConfig:
    """Everything `turbo.accelerate` applies: one section per registered feature (`config.attention`,
    `config.quant`, ...). Frozen; derive variants with `replace`; JSON round trip with `to_json` / `from_json`
    (carrying `version`)."""

    __slots__ = ("_sections",)
    version = CONFIG_VERSION

    def __init__(self, **sections: Any):
        known = features()
        unknown = set(sections) - set(known)
        if unknown:
            raise TurboConfigError(f"unknown config sections {sorted(unknown)}; expected {sorted(known)}.")
        values = {}
        for name, feature in known.items():
            value = sections.get(name)
            if value is None:
                value = feature.config_cls()
            elif not isinstance(value, feature.config_cls):
                raise TurboConfigError(
                    f"TurboConfig.{name} must be a {feature.config_cls.__name__}, got {type(value).__name__}."
                )
            values[name] = value
        object.__setattr__(self, "_sections", MappingProxyType(values))

    def __getattr__(self, name: str):
        sections = object.__getattribute__(self, "_sections")
        if name in sections:
            return sections[name]
        raise AttributeError(f"TurboConfig has no section '{name}'; sections: {', '.join(sections)}.")

    def __setattr__(self, name: str, value: Any):
        raise dataclasses.FrozenInstanceError(f"cannot assign to field '{name}' (TurboConfig is frozen; use replace)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TurboConfig) and dict(self._sections) == dict(other._sections)

    def __hash__(self) -> int:
        return hash(tuple(self._sections.items()))

    def __repr__(self) -> str:
        return f"TurboConfig({', '.join(f'{k}={v!r}' for k, v in self._sections.items())})"

    @property
    def sections(self) -> dict[str, Any]:
        return dict(self._sections)

    def check_built(self) -> None:
        """Raise `NotImplementedMethodError` if a section asks for a mode that does not exist yet."""
        for name, feature in features().items():
            feature.check_config(self._sections[name])

    def replace(self, **overrides: Any) -> TurboConfig:
        """A copy with overrides: section names (a section object, a dict, a string = the attention method or the
        section's mode, a bool for on/off sections), or flat option keys as listed by `option_specs()`:
        `method`, `backend`, `dense_steps`, `dense_layers`, the current method's options (`keep=0.05`), and
        `<section>_<field>` (or a bare field name unique among the other sections)."""
        sections = dict(self._sections)
        pending = dict(overrides)
        for key in [k for k in pending if k in sections]:
            sections[key] = _section_from(key, pending.pop(key), sections[key])
        if "method" in pending:
            sections["attention"] = _section_from("attention", pending.pop("method"), sections["attention"])
        attention_values, section_values = {}, {}
        for key, value in pending.items():
            owner, name = _route(key, sections)
            if owner == "attention":
                attention_values[name] = value
            else:
                section_values.setdefault(owner, {})[name] = value
        if attention_values:
            current = sections["attention"]
            shared = {k: attention_values.pop(k) for k in list(attention_values) if k in ATTENTION_SHARED}
            args = {name: getattr(current, name) for name in ATTENTION_SHARED} | shared
            sections["attention"] = AttentionConfig(**args, options=current.options, **attention_values)
        for owner, values in section_values.items():
            sections[owner] = replace_options(sections[owner], owner, values)
        return TurboConfig(**sections)

    def to_dict(self) -> dict[str, Any]:
        return {"version": CONFIG_VERSION} | {name: _section_dict(s) for name, s in self._sections.items()}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TurboConfig:
        data = dict(data)
        version = data.pop("version", CONFIG_VERSION)
        if not isinstance(version, int) or version > CONFIG_VERSION:
            raise TurboConfigError(
                f"this config has version {version!r}, newer than this turbo understands ({CONFIG_VERSION}); "
                "upgrade turbo."
            )
        known = features()
        unknown = set(data) - set(known)
        if unknown:
            raise TurboConfigError(f"unknown config sections {sorted(unknown)}; expected {sorted(known)}.")
        return cls(**{name: _section_from(name, value, known[name].config_cls()) for name, value in data.items()})

    @classmethod
    def from_json(cls, text: str) -> TurboConfig:
        return cls.from_dict(json.loads(text))


def _route(key: str, sections: dict[str, Any]) -> tuple[str, str]:
    """(section, field) a flat keyword belongs to."""
    attention = sections["attention"]
    method_option_names = {f.name for spec in attention_methods().values() for f in fields(spec.options)}
    if key in ATTENTION_SHARED or key in method_option_names:
        return "attention", key
    others = {name: {f.name for f in fields(s)} for name, s in sections.items() if name != "attention"}
    for name, names in others.items():
        prefix = name + "_"
        if key.startswith(prefix) and key[len(prefix):] in names:
            return name, key[len(prefix):]
    owners = [name for name, names in others.items() if key in names and key != "mode"]
    if len(owners) == 1:
        return owners[0], key
    if len(owners) > 1:
        raise TurboConfigError(
            f"option '{key}' exists in sections {', '.join(owners)}; write it as {owners[0]}_{key}=... ."
        )
    del attention
    keys = sorted({s.key for s in option_specs()})
    raise TurboConfigError(f"unknown option '{key}'; options are {', '.join(keys)}.")


# ------------------------------------------------------------------------------------------------------ option specs


@dataclass(frozen=True)
class OptionSpec:
    """One user-facing option, for the CLI and the app. `key` is the keyword `turbo.accelerate` and
    `TurboConfig.replace` accept; `methods` lists the attention methods it applies to (empty: always); `default` is
    None when it depends on the method."""

    key: str
    flag: str
    section: str
    name: str
    type: type
    default: Any
    choices: tuple
    range: tuple
    help: str
    methods: tuple[str, ...] = ()


def _spec(key: str, section: str, f: dataclasses.Field, default: Any, methods: tuple = (),
          choices: tuple | None = None) -> OptionSpec:
    meta = f.metadata
    return OptionSpec(key, "--" + key.replace("_", "-"), section, f.name, type(f.default), default,
                      meta["choices"] if choices is None else choices, meta["range"], meta["help"], methods)


def option_specs() -> list[OptionSpec]:
    """Every option of every registered section and attention method, in a stable order (attention first)."""
    out = []
    methods = attention_methods()
    for f in option_fields(AttentionConfig):
        key = "attention" if f.name == "method" else f.name
        out.append(_spec(key, "attention", f, f.default, choices=tuple(methods) if f.name == "method" else None))
    by_name: dict[str, list] = {}
    for name, spec in methods.items():
        for f in option_fields(spec.options):
            by_name.setdefault(f.name, []).append((name, f))
    for name, entries in by_name.items():
        defaults = {f.default for _, f in entries}
        first = entries[0][1]
        out.append(_spec(name, "attention", first, first.default if len(defaults) == 1 else None,
                         tuple(method for method, _ in entries)))
    for section, feature in features().items():
        if section == "attention":
            continue
        for f in option_fields(feature.config_cls):
            key = section if f.name == "mode" else f"{section}_{f.name}"
            out.append(_spec(key, section, f, f.default))
    return out


def needs_finetuned(config: TurboConfig) -> bool:
    """Whether the config's attention method needs turbo-fine-tuned weights for good quality."""
    return method_spec(config.attention.method).needs_finetuned


# ----------------------------------------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """A named configuration with a one-line description and whether it needs turbo-fine-tuned weights."""

    name: str
    config: TurboConfig
    description: str
    needs_finetuned: bool


def _build_presets() -> dict[str, Preset]:
    presets = (
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
    return {p.name: p for p in presets}


def __getattr__(name: str):
    # PRESETS is built on first use: its configs need the registered methods, whose modules import this one.
    if name == "PRESETS":
        globals()["PRESETS"] = presets = _build_presets()
        return presets
    raise AttributeError(f"module 'turbo.config' has no attribute {name!r}")


def resolve_config(config: TurboConfig | str | dict | None, default: TurboConfig, **overrides: Any) -> tuple[
    TurboConfig, str | None
]:
    """Turn what a user passed (None, a preset name, a dict, a TurboConfig) plus flat overrides into a TurboConfig.

    Returns the config and the preset name it came from (None if not a preset)."""
    presets = __getattr__("PRESETS") if "PRESETS" not in globals() else globals()["PRESETS"]
    preset_name = None
    if config is None:
        base = default
    elif isinstance(config, TurboConfig):
        base = config
    elif isinstance(config, str):
        if config not in presets:
            raise TurboConfigError(f"unknown preset '{config}'; presets are {', '.join(presets)}.")
        base, preset_name = presets[config].config, config
    elif isinstance(config, dict):
        base = TurboConfig.from_dict(config)
    else:
        raise TurboConfigError(
            f"config must be a TurboConfig, a preset name or a dict, got {type(config).__name__}."
        )
    return (base.replace(**overrides) if overrides else base), preset_name
