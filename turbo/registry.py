"""The two extension points of turbo: attention methods and features.

* An **attention method** is an `AttentionMethod` subclass registered with `@register_method(name, options=...)`:
  its options dataclass becomes the method's part of `AttentionConfig`, the CLI flags and the app's panel; its kernel
  capability feeds `turbo info` and the backend choice.
* A **feature** is one config section (attention, quant, cache, sampler, compile, ...) with the protocol
  check → install → undo. `turbo.accelerate` checks every feature before changing anything, installs them in order,
  rolls the installed ones back if one fails, and `turbo.restore` undoes them in reverse.

Adding a method or a feature is one new module that registers itself; no list elsewhere is edited. The built-in ones
register when their modules are imported (`_load_builtins`)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import TurboConfigError, TurboError

_BUILTIN_MODULES = ("turbo.attention", "turbo.quant", "turbo.cache", "turbo.sampler", "turbo.vae", "turbo.compilation")
_loaded = False


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)


# ------------------------------------------------------------------------------------------------ attention methods


@dataclass(frozen=True)
class MethodSpec:
    """One registered attention method.

    `factory(config: AttentionConfig, heads, head_dim)` builds the per-layer module; `options` is the frozen dataclass
    of its options (fields made with `turbo.config.option`); `kernel` the minimum CUDA compute capability of its
    Triton kernel (None: PyTorch reference only); `context_parallel` whether it works under diffusers' Ulysses
    context parallelism (per head, given the whole sequence: turbo's processor makes the exchange);
    `needs_finetuned` whether it needs turbo-fine-tuned weights for good quality."""

    name: str
    factory: Callable[..., Any]
    options: type
    kernel: tuple[int, int] | None = None
    context_parallel: bool = False
    needs_finetuned: bool = False
    summary: str = ""


_METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, *, options: type, kernel: tuple[int, int] | None = None,
                    context_parallel: bool = False, needs_finetuned: bool = False, summary: str = ""):
    """Class decorator registering an attention method under `name` (see `MethodSpec`). An option name shared with
    another method must have the same type there (it is one CLI flag)."""

    def decorate(cls):
        if name in _METHODS and _METHODS[name].factory is not cls:
            raise TurboError(f"attention method '{name}' is already registered by {_METHODS[name].factory.__name__}.")
        from .config import option_fields

        for field_ in option_fields(options):
            for other in _METHODS.values():
                for theirs in option_fields(other.options):
                    if theirs.name == field_.name and type(theirs.default) is not type(field_.default):
                        raise TurboError(
                            f"option '{field_.name}' of attention method '{name}' is a "
                            f"{type(field_.default).__name__} but '{other.name}' declares it as "
                            f"{type(theirs.default).__name__}; rename one of them."
                        )
        cls.name = name
        _METHODS[name] = MethodSpec(name, cls, options, kernel, context_parallel, needs_finetuned, summary)
        return cls

    return decorate


def unregister_method(name: str) -> None:
    """Remove a registered method (tests register throw-away methods)."""
    _METHODS.pop(name, None)


def attention_methods() -> dict[str, MethodSpec]:
    """Every registered attention method, in registration order."""
    _load_builtins()
    return dict(_METHODS)


def method_spec(name: str) -> MethodSpec:
    """The registered method `name`; a one-sentence `TurboConfigError` listing the methods otherwise."""
    methods = attention_methods()
    if name not in methods:
        raise TurboConfigError(f"attention.method='{name}' is not one of {', '.join(methods)}.")
    return methods[name]


# --------------------------------------------------------------------------------------------------------- features


class Feature:
    """One config section and what `accelerate` does with it.

    Subclasses set `name` (the section name in `TurboConfig`), `config_cls` (a frozen dataclass whose fields are made
    with `turbo.config.option`; a `mode` field with an "off" choice when the feature can be off), `order` (install
    order) and implement the protocol. `check` raises before anything is changed; `install` changes the pipeline and
    returns whatever `undo` needs (if it raises, it first takes back its own partial changes; `accelerate` then undoes
    the features installed before it, in reverse); `undo` must put back exactly what `install` changed."""

    name: str = ""
    config_cls: type = type(None)
    order: int = 100

    def active(self, section) -> bool:
        """Whether this section asks for any change (an inactive feature is not installed)."""
        return getattr(section, "mode", "off") not in ("off", "default")

    def check_config(self, section) -> None:
        """Machine- and model-independent checks (e.g. a mode that is not built yet); raise a `TurboError`."""

    def check(self, context, section) -> None:
        """Checks against the pipeline and this machine; raise a `TurboError`, change nothing."""

    def install(self, context, section) -> Any:
        raise NotImplementedError(f"feature '{self.name}' must implement install")

    def undo(self, context, token) -> None:
        raise NotImplementedError(f"feature '{self.name}' must implement undo")

    def describe(self, section) -> str:
        """One line for `pipe.turbo`."""
        return ", ".join(f"{k} {v}" for k, v in vars(section).items())

    def activity(self, context, token) -> str | None:
        """What the installed feature has done since `accelerate` (one line for `pipe.turbo` after a run), or None."""
        return None


_FEATURES: dict[str, Feature] = {}


def register_feature(feature: Feature) -> Feature:
    """Register a feature instance; its section appears in `TurboConfig`, the CLI and the app."""
    if not feature.name:
        raise TurboError(f"{type(feature).__name__} has no name.")
    _FEATURES[feature.name] = feature
    return feature


def unregister_feature(name: str) -> None:
    _FEATURES.pop(name, None)


def features() -> dict[str, Feature]:
    """Every registered feature, in install order."""
    _load_builtins()
    return dict(sorted(_FEATURES.items(), key=lambda item: item[1].order))


class NotBuiltFeature(Feature):
    """A section whose non-off modes are in the schema but not implemented yet: they fail with a
    `NotImplementedMethodError` naming the mode, at config-check time (before anything is changed)."""

    messages: dict[str, str] = {}

    def check_config(self, section) -> None:
        from .errors import NotImplementedMethodError

        mode = section.mode
        if mode in self.messages:
            raise NotImplementedMethodError(
                f"{self.name}.mode='{mode}': {self.messages[mode]} is not implemented yet; choose another "
                f"{self.name}.mode."
            )
