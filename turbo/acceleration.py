"""`turbo.accelerate(pipe)` and `turbo.restore(pipe)`: compose adapters and methods from a `TurboConfig`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .adapters import METHOD_ATTR, adapter_for, find_transformers
from .adapters.step_hook import install_step_hook, remove_step_hook
from .attention import build_method
from .capabilities import Capabilities, detect
from .config import PRESETS, TurboConfig, resolve_config
from .errors import TurboConfigError, TurboError
from .report import TransformerReport, TurboReport
from .runtime import TurboRuntime

logger = logging.getLogger("turbo")

REPORT_ATTR = "turbo"


@dataclass
class _Installed:
    """Everything needed to undo one transformer's acceleration."""

    model: nn.Module
    hook_undo: dict
    sites: list = field(default_factory=list)  # (attention module, original processor)


def default_config() -> TurboConfig:
    """The config `accelerate(pipe)` uses without arguments: safe on a stock checkpoint (training-free methods only)
    and only a method this machine runs faster than dense attention.

    The training-free candidates are `lowbit` (near-lossless) and `svg` (lossy, so it stays opt-in as the
    "balanced" preset). The low-bit kernel measured 0.99× cuDNN SDPA at Wan 480p on an H100 with 64-key tiles and
    1.14–1.19× with 128-key tiles (docs/BENCHMARKS.md, 2026-11-25), not yet checked end to end on a real checkpoint,
    so the default is dense on every machine until it has been."""
    return TurboConfig()


def accelerate(pipe, config: TurboConfig | str | dict | None = None, **overrides: Any):
    """Accelerate a diffusers video pipeline (or a transformer) in place and return it.

    Args:
        pipe: `WanPipeline`, `WanImageToVideoPipeline`, a Wan2.2 pipeline with `transformer_2`, `HunyuanVideoPipeline`,
            or a `WanTransformer3DModel` / `HunyuanVideoTransformer3DModel`.
        config: a `TurboConfig`, a preset name ("quality", "balanced", "fast", "max"), a dict, or None for
            `default_config()`.
        **overrides: section replacements (`attention="sla"`) or flat options (`keep=0.05`, `dense_steps=10`).

    Returns the same object with `.turbo` (a report; `print(pipe.turbo)`). Accelerating an accelerated pipeline raises
    `TurboError`: call `turbo.restore(pipe)` first. Unsupported objects raise `UnsupportedModelError`; invalid or not
    yet built options raise before anything is changed."""
    targets = find_transformers(pipe)
    if getattr(pipe, REPORT_ATTR, None) is not None or any(
        hasattr(site.module, METHOD_ATTR) for _, m in targets for site in adapter_for(m).self_attention_sites(m)
    ):
        raise TurboError("this pipeline is already accelerated by turbo; call turbo.restore(pipe) first.")
    capabilities = detect()
    config, preset = resolve_config(config, default_config(), **overrides)
    config.check_built()
    method = config.attention.method
    path = _attention_path(config, capabilities)
    warnings = _warnings(config, preset, path)
    for _, model in targets:
        _check_composable(model, config)

    runtime = TurboRuntime(config.attention.dense_steps, config.attention.dense_layers)
    installed, reports = [], []
    for component, model in targets:
        adapter = adapter_for(model)
        record = _Installed(model, install_step_hook(model, runtime, adapter.patch_size(model)))
        learnable = 0
        for site in adapter.self_attention_sites(model):
            module = build_method(config.attention, site.heads, site.head_dim)
            device = next(site.module.parameters()).device
            module.to(device=device)
            learnable += sum(p.numel() for p in module.parameters())
            original = site.module.processor
            site.module.add_module(METHOD_ATTR, module)
            site.module.set_processor(adapter.make_processor(site, runtime, original))
            record.sites.append((site.module, original))
        installed.append(record)
        reports.append(TransformerReport(
            component=component, class_name=type(model).__name__, family=adapter.family,
            self_attention_layers=len(record.sites), method=method, path=path,
            learnable_parameters=learnable,
        ))
    machine = capabilities.gpu or "CPU"
    report = TurboReport(config, preset, machine, reports, runtime, warnings, installed)
    setattr(pipe, REPORT_ATTR, report)
    for message in warnings:
        logger.warning(message)
    logger.info("%s", report)
    return pipe


def restore(pipe):
    """Undo `accelerate`: original processors back, turbo submodules and hooks removed, `pipe.turbo` deleted.
    Returns the same object. Raises `TurboError` if it is not accelerated."""
    report = getattr(pipe, REPORT_ATTR, None)
    if not isinstance(report, TurboReport):
        raise TurboError("this object was not accelerated by turbo (no .turbo report); nothing to restore.")
    for record in report.installed:
        for module, original in record.sites:
            module.set_processor(original)
            delattr(module, METHOD_ATTR)
        remove_step_hook(record.model, record.hook_undo)
    delattr(pipe, REPORT_ATTR)
    return pipe


def _attention_path(config: TurboConfig, capabilities: Capabilities) -> str:
    method, backend = config.attention.method, config.attention.backend
    state = capabilities.methods[method]
    if backend == "reference":
        return "stock" if method == "dense" else "reference"
    if backend == "triton" and state not in ("kernel", "stock"):
        reason = "turbo has no Triton kernel for it yet" if capabilities.cuda else "this machine has no CUDA GPU"
        raise TurboConfigError(
            f"attention.backend='triton' for method '{method}' is unavailable ({reason}); use backend='auto' to run "
            "the PyTorch reference instead."
        )
    return state


def _warnings(config: TurboConfig, preset: str | None, path: str) -> list[str]:
    out = []
    if preset is not None and PRESETS[preset].needs_finetuned:
        out.append(
            f"preset '{preset}' expects turbo-fine-tuned weights ({PRESETS[preset].description}); "
            "on a stock checkpoint expect visibly lower quality."
        )
    if path == "reference":
        out.append(
            f"attention '{config.attention.method}' runs on its PyTorch reference here (correct, but not faster than "
            "dense attention); the Triton kernels need a CUDA GPU."
        )
    return out


def _check_composable(model: nn.Module, config: TurboConfig) -> None:
    if config.attention.method == "dense":
        return
    processors = getattr(model, "attn_processors", {})
    if any(getattr(p, "_parallel_config", None) is not None for p in processors.values()):
        raise TurboConfigError(
            f"attention '{config.attention.method}' does not support diffusers context parallelism yet; accelerate "
            "before enable_parallelism with method='dense', or run on one GPU."
        )
