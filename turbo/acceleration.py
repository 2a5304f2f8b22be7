"""`turbo.accelerate(pipe)` and `turbo.restore(pipe)`: compose adapters and registered features from a `TurboConfig`.

The protocol (`turbo.registry.Feature`): every feature's `check_config` and `check` run first (nothing changed yet);
then the step hooks go on each transformer and the active features `install` in order; if one raises, everything
installed so far is undone in reverse and the error propagates, leaving the pipeline exactly as it was. `restore`
undoes the features in reverse, then the hooks."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .adapters import METHOD_ATTR, ModelAdapter, adapter_for, find_transformers
from .adapters.step_hook import install_step_hook, remove_step_hook
from .attention.parts import save_attention_parts  # noqa: F401  (re-exported as turbo.save_attention_parts)
from .capabilities import Capabilities, detect
from .config import PRESETS, TurboConfig, resolve_config
from .errors import TurboError
from .recipe import find_recipe
from .registry import features
from .report import TurboReport
from .runtime import TurboRuntime

logger = logging.getLogger("turbo")

REPORT_ATTR = "turbo"


@dataclass
class Target:
    """One transformer to accelerate: its pipeline component name, module, adapter and step hook."""

    component: str
    model: nn.Module
    adapter: ModelAdapter
    step_hook: Any = None
    hook_undo: dict | None = None


@dataclass
class InstallContext:
    """What features see while checking and installing (and later undoing)."""

    pipe: Any
    targets: list[Target]
    config: TurboConfig
    runtime: TurboRuntime
    capabilities: Capabilities
    allow_untuned: bool = False
    warnings: list[str] = field(default_factory=list)
    transformer_reports: list = field(default_factory=list)
    attention_path: str = "stock"
    attention_parts: dict = field(default_factory=dict)


def default_config(pipe=None) -> TurboConfig:
    """The config `accelerate(pipe)` uses without arguments: safe on a stock checkpoint (training-free only), each
    part kept because it measured faster end to end and within the ToyWorld quality bars (docs/BENCHMARKS.md,
    2026-11-30). Keyword options (`accelerate(pipe, attention="svg")`) start from the stock config instead.

    That is the Temporal Delta Cache (`cache="tdc"`, turbo/cache/tdc.py) for a pipeline with one transformer whose
    blocks diffusers' hook registry knows (Wan T2V/I2V, HunyuanVideo; HunyuanVideo 1.5, whose block metadata turbo
    registers, untested on trained weights): on ToyWorld, 200 prompts, 50 steps + CFG on an
    H200, it skipped 58 % of the block evaluations, ran the whole call 1.43× faster, kept 44.4 dB same-seed PSNR and
    every judged attribute within 0.5 point; on the Wan2.1-1.3B architecture with random weights it skipped nothing
    and cost nothing measurable (+0.5 GiB). It never skips in the first 5 or the last 2 steps, so a few-step (e.g.
    rCM) call is unchanged. A transformer alone (no pipeline call to count steps in), a Wan2.2 pair of transformers
    (not measured) or unknown blocks get the dense config: nothing changes. `pipe=None`: the pipeline default.

    Not in it: FP8 linears (within the bars, 1.13–1.16× on an eager Wan-14B 480p forward, but not faster on an eager
    Wan-1.3B generation and slower on ToyWorld), low-bit attention (1.02× on a Wan-1.3B forward), `compile` (1.18×
    per forward, but a first call that compiles for seconds to minutes); `cache="off"` turns the cache off."""
    dense = TurboConfig()
    if pipe is None:
        return dense.replace(cache="tdc")
    if getattr(pipe, "scheduler", None) is None or getattr(pipe, "transformer_2", None) is not None:
        return dense
    from diffusers.hooks._helpers import TransformerBlockRegistry

    found = find_transformers(pipe)
    try:
        for _, model in found:
            for block in adapter_for(model).denoising_blocks(model):
                TransformerBlockRegistry.get(type(block))
    except (ValueError, TurboError):
        return dense
    return dense.replace(cache="tdc") if found else dense


def accelerate(pipe, config: TurboConfig | str | dict | None = None, *, allow_untuned: bool = False,
               **overrides: Any):
    """Accelerate a diffusers video pipeline (or a transformer) in place and return it.

    Args:
        pipe: `WanPipeline`, `WanImageToVideoPipeline`, a Wan2.2 pipeline with `transformer_2`, `HunyuanVideoPipeline`,
            or a `WanTransformer3DModel` / `HunyuanVideoTransformer3DModel`.
        config: a `TurboConfig`, a preset name ("quality", "balanced", "fast", "max"), a dict, or None: the recipe
            saved beside the transformers' weights (`turbo_config.json`, written by `turbo convert` and the
            distillation export) if there is one, else `default_config()`.
        allow_untuned: run a method that needs turbo-fine-tuned weights (sla, sla2) on a transformer without them.
        **overrides: section replacements (`attention="sla"`, `compile="regional"`, `compile=True`) or flat options
            (`keep=0.05`, `dense_steps=10`); `turbo.option_specs()` lists them.

    Returns the same object with `.turbo` (a report; `print(pipe.turbo)`). Accelerating an accelerated pipeline raises
    `TurboError`: call `turbo.restore(pipe)` first. Unsupported objects raise `UnsupportedModelError`; invalid,
    not-yet-built or unsafe options raise before anything is changed."""
    found = find_transformers(pipe)
    targets = [Target(component, model, adapter_for(model)) for component, model in found]
    if getattr(pipe, REPORT_ATTR, None) is not None or any(
        hasattr(site.module, METHOD_ATTR) for t in targets for site in t.adapter.self_attention_sites(t.model)
    ):
        raise TurboError("this pipeline is already accelerated by turbo; call turbo.restore(pipe) first.")
    recipe = find_recipe([t.model for t in targets]) if config is None else None
    # keyword options describe a config of their own: they start from the stock config, not from the default's cache
    start = recipe[0] if recipe else default_config(pipe) if not overrides else TurboConfig()
    recipe_notes = []
    if recipe and start.sampler.mode != "default" and getattr(pipe, "scheduler", None) is None:
        start = start.replace(sampler="default")  # a transformer alone has no scheduler to swap
        recipe_notes.append(f"the recipe's {recipe[0].sampler.mode} sampler is for the pipeline; accelerate the "
                            "pipeline to use it (call it with its steps and guidance 1)")
    config, preset = resolve_config(config, start, **overrides)
    config.check_built()
    attention = config.attention
    context = InstallContext(pipe, targets, config, TurboRuntime(attention.dense_steps, attention.dense_layers),
                             detect(), allow_untuned, warnings=recipe_notes)
    registered = features()
    active = [(f, config.sections[name]) for name, f in registered.items() if f.active(config.sections[name])]
    for feature, section in active:
        feature.check(context, section)

    installed: list[tuple] = []
    try:
        for target in targets:
            target.hook_undo = install_step_hook(target.model, context.runtime, target.adapter.patch_size(target.model))
            target.step_hook = target.hook_undo["hook"]
        for feature, section in active:
            installed.append((feature, feature.install(context, section)))
    except BaseException:
        _undo(context, installed)
        raise
    if preset is not None and PRESETS[preset].needs_finetuned and not any(context.attention_parts.values()):
        context.warnings.insert(0, f"preset '{preset}' expects turbo-fine-tuned weights "
                                   f"({PRESETS[preset].description}).")
    if context.attention_path == "reference" and attention.method != "dense":
        context.warnings.append(
            f"attention '{attention.method}' runs on its PyTorch reference here (correct, but not faster than dense "
            "attention); the Triton kernels need a CUDA GPU."
        )
    report = TurboReport(config, preset, context.capabilities.gpu or "CPU", context.transformer_reports,
                         context.runtime, context.warnings, context, installed,
                         recipe=None if recipe is None else str(recipe[1]),
                         default=recipe is None and preset is None and config == default_config(pipe))
    setattr(pipe, REPORT_ATTR, report)
    for message in context.warnings:
        logger.warning(message)
    logger.info("%s", report)
    return pipe


def restore(pipe):
    """Undo `accelerate`: every feature undone in reverse (original processors back, turbo submodules, compiled
    wrappers and hooks removed), `pipe.turbo` deleted. Returns the same object. Raises `TurboError` if it is not
    accelerated."""
    report = getattr(pipe, REPORT_ATTR, None)
    if not isinstance(report, TurboReport):
        raise TurboError("this object was not accelerated by turbo (no .turbo report); nothing to restore.")
    _undo(report.context, report.installed)
    delattr(pipe, REPORT_ATTR)
    return pipe


def _undo(context: InstallContext, installed: list[tuple]) -> None:
    for feature, token in reversed(installed):
        feature.undo(context, token)
    for target in context.targets:
        if target.hook_undo is not None:
            remove_step_hook(target.model, target.hook_undo)
            target.hook_undo = target.step_hook = None
