"""`pipe.turbo`: what `turbo.accelerate` changed, and what the accelerated runs did since."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import TurboConfig
from .registry import features
from .runtime import TurboRuntime


@dataclass
class TransformerReport:
    component: str  # "transformer" or "transformer_2"
    class_name: str
    family: str
    self_attention_layers: int  # one per transformer block
    method: str
    path: str  # "stock", "kernel" or "reference"
    learnable_parameters: int
    turbo_parts: str | None = None  # the fine-tuned attention parts file loaded, if any


@dataclass
class TurboReport:
    config: TurboConfig
    preset: str | None
    machine: str
    transformers: list[TransformerReport]
    runtime: TurboRuntime
    warnings: list[str] = field(default_factory=list)
    # what `turbo.restore` needs: the install context and (feature, undo token) pairs, in install order
    context: Any = field(default=None, repr=False)
    installed: list = field(default_factory=list, repr=False)
    recipe: str | None = None  # the model's turbo_config.json the config started from, if any
    default: bool = False  # the config is `turbo.default_config(pipe)` (a no-argument accelerate)

    @property
    def processors_installed(self) -> int:
        return sum(t.self_attention_layers for t in self.transformers)

    def models(self) -> list[tuple[str, Any]]:
        """(component, transformer) pairs that were accelerated."""
        return [(t.component, t.model) for t in self.context.targets]

    def __str__(self) -> str:
        name = (f"preset '{self.preset}'" if self.preset else f"recipe {self.recipe}" if self.recipe
                else "default config" if self.default else "custom config")
        lines = [f"turbo: {name} on {self.machine}"]
        registered = features()
        sections = self.config.sections
        lines.append(f"  attention  {registered['attention'].describe(sections['attention'])}")
        for t in self.transformers:
            lines.append(
                f"  {t.component:<13} {t.class_name}: {t.self_attention_layers} self-attention layers "
                f"→ {t.method} [{t.path}]" + (f", +{t.learnable_parameters:,} learnable params"
                                                     if t.learnable_parameters else "")
                + (f", fine-tuned parts from {t.turbo_parts}" if t.turbo_parts else "")
            )
        off = []
        for section_name, feature in registered.items():
            if section_name == "attention":
                continue
            section = sections[section_name]
            if feature.active(section):
                lines.append(f"  {section_name:<10} {feature.describe(section)}")
            else:
                off.append(f"{section_name} {getattr(section, 'mode', 'off')}")
        if off:
            lines.append("  " + ", ".join(off))
        stats = self.runtime.stats
        if stats.calls:
            calls = ", ".join(f"{k} {v}" for k, v in sorted(stats.calls.items()))
            lines.append(f"  since then: {stats.requests} request(s); attention calls: {calls}")
            if self.runtime.geometry is not None:
                lines.append(f"  last video grid {self.runtime.geometry}")
            if stats.mean_density is not None:
                lines.append(f"  measured block density {stats.mean_density:.1%} (after block rounding)")
        for feature, token in self.installed:
            line = feature.activity(self.context, token)
            if line:
                lines.append(f"  {line}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)
