"""The app's acceleration panel as data: which controls exist, which are visible for a method, the values a preset
puts in them, and the `TurboConfig` the values mean. Built from the option specs of `turbo.config` (through
`pipelines.options.acceleration_specs`), so a new method, option or feature appears in the panel with no change here.
No gradio here; `pipelines.app` turns each spec into a control.

    values = panel_values("balanced")                   # {spec.key: value} as the panel shows the preset
    config, name = panel_config("balanced", values)     # == PRESETS["balanced"].config, "balanced"
"""

from __future__ import annotations

from typing import Any

from pipelines import options

__all__ = ["OFF", "DEFAULT", "applies", "method_spec", "panel_config", "panel_overrides", "panel_values",
           "preset_choices", "specs"]

OFF = "off"  # unaccelerated: turbo.accelerate is not called
DEFAULT = "default"  # turbo.default_config() (training-free, fast on this machine)


def specs() -> list:
    """The acceleration option specs (key, flag, section, name, type, default, choices, range, help, methods)."""
    return list(options.acceleration_specs())


def method_spec(all_specs: list | None = None):
    """The spec of the attention method choice (its value decides which attention options are shown)."""
    for spec in all_specs if all_specs is not None else specs():
        if spec.section == "attention" and spec.name == "method":
            return spec
    raise LookupError("the option specs have no attention method")


def applies(spec, method: str | None) -> bool:
    """Whether `spec` is shown (and sent) for the attention `method`: options without methods always apply."""
    return not spec.methods or method in spec.methods


def preset_choices() -> list[str]:
    """Preset dropdown entries: off (unaccelerated), default (turbo's default config), then `turbo.config.PRESETS`."""
    from turbo.config import PRESETS

    return [OFF, DEFAULT, *PRESETS]


def _config_of(preset: str):
    import turbo
    from turbo.config import PRESETS

    if preset in (OFF, DEFAULT, None, ""):
        return turbo.default_config()
    if preset not in PRESETS:
        raise options.RequestError(f"unknown preset {preset!r}; choose one of {', '.join(preset_choices())}.")
    return PRESETS[preset].config


def _spec_value(config, spec) -> Any:
    section = getattr(config, spec.section, None)
    value = getattr(section, spec.name, None) if section is not None else None
    if value is None and spec.default is not None:
        value = spec.default
    return value


def panel_values(preset: str, all_specs: list | None = None) -> dict[str, Any]:
    """{spec.key: value} the panel shows for `preset` (off and default show turbo's default config); None where the
    value depends on the method and the config does not hold one."""
    config = _config_of(preset)
    return {spec.key: _spec_value(config, spec) for spec in (all_specs if all_specs is not None else specs())}


def _coerce(spec, value):
    if value is None or value == "":
        return None
    if spec.type is bool:
        return bool(value)
    if spec.type is int:
        if isinstance(value, float) and not value.is_integer():
            raise options.RequestError(f"{spec.key} must be a whole number, got {value}.")
        return int(value)
    if spec.type is float:
        return float(value)
    return str(value)


def panel_overrides(values: dict[str, Any], all_specs: list | None = None, base: str | None = None) -> dict[str, Any]:
    """{spec.key: value} to pass to `turbo.accelerate` for the panel `values`: only options that apply to the chosen
    method, None (method-dependent default) left out, numbers cast to the spec's type. With `base` (the preset the
    panel was last filled from), only values that differ from what that preset put in the panel are kept, so an
    untouched panel means exactly the chosen preset (API callers leave the panel at its start values)."""
    all_specs = all_specs if all_specs is not None else specs()
    method = values.get(method_spec(all_specs).key)
    filled = panel_values(base, all_specs) if base is not None else {}
    out = {}
    for spec in all_specs:
        if spec.key in values and applies(spec, method):
            value = _coerce(spec, values[spec.key])
            if value is None:
                continue
            if base is not None and value == _coerce(spec, filled.get(spec.key)):
                continue
            out[spec.key] = value
    return out


def panel_config(preset: str, values: dict[str, Any], allow_untuned: bool = False, all_specs: list | None = None,
                 base: str | None = None):
    """(TurboConfig, preset name or None) the panel means, checked by `options.validate_acceleration` (one-sentence
    `turbo.TurboError` for invalid, unbuilt or untuned choices); (None, None) for "off" (unaccelerated). `base`: see
    `panel_overrides`."""
    if preset == OFF:
        return None, None
    name = None if preset in (DEFAULT, None, "") else preset
    overrides = panel_overrides(values, all_specs, base)
    return options.validate_acceleration(name, overrides, allow_untuned=allow_untuned)
