"""The attention feature: installs one method module and turbo's processor on every self-attention site, and puts
the original processors back on undo. Always installed (method "dense" routes through turbo's processor, which is
bit-identical to the stock one and lets q/k/v capture and the step plan work)."""

from __future__ import annotations

from ..config import AttentionConfig
from ..errors import TurboConfigError
from ..registry import Feature, method_spec
from . import parts


class AttentionFeature(Feature):
    name = "attention"
    config_cls = AttentionConfig
    order = 10

    def active(self, section: AttentionConfig) -> bool:
        return True

    def check(self, context, section: AttentionConfig) -> None:
        spec = method_spec(section.method)
        context.attention_path = _attention_path(section, context.capabilities)
        for target in context.targets:
            _check_context_parallel(target, section.method, spec.context_parallel)
        context.attention_parts = {target.component: parts.find_parts(target.model, section.method)
                                   for target in context.targets}
        untuned = [t.component for t in context.targets if context.attention_parts[t.component] is None]
        if spec.needs_finetuned and untuned and not context.allow_untuned:
            raise TurboConfigError(
                f"attention '{section.method}' needs turbo-fine-tuned weights and {', '.join(untuned)} has none "
                f"(no {parts.PARTS_FILE} for '{section.method}' beside its weights); pass allow_untuned=True "
                "(CLI: --allow-untuned) to try it anyway, or pick a training-free method."
            )
        if spec.needs_finetuned and untuned:
            context.warnings.append(
                f"attention '{section.method}' runs with untrained turbo parts on {', '.join(untuned)} "
                "(allow_untuned): expect visibly lower quality than a turbo-fine-tuned model."
            )

    def install(self, context, section: AttentionConfig) -> list:
        from ..adapters import METHOD_ATTR
        from ..report import TransformerReport
        from . import build_method

        installed = []  # (attention module, original processor)
        try:
            for target in context.targets:
                layers, learnable = [], 0
                for site in target.adapter.self_attention_sites(target.model):
                    module = build_method(section, site.heads, site.head_dim)
                    module.to(device=next(site.module.parameters()).device)
                    learnable += sum(p.numel() for p in module.parameters())
                    original = site.module.processor
                    site.module.add_module(METHOD_ATTR, module)
                    installed.append((site.module, original))
                    site.module.set_processor(target.adapter.make_processor(site, context.runtime, original))
                    layers.append((site.layer_index, module))
                target.step_hook.method = section.method
                target.step_hook.layers = layers
                found = context.attention_parts[target.component]
                if found is not None:
                    parts.load_parts(target.model, found)
                context.transformer_reports.append(TransformerReport(
                    component=target.component, class_name=type(target.model).__name__,
                    family=target.adapter.family, self_attention_layers=len(layers), method=section.method,
                    path=context.attention_path, learnable_parameters=learnable,
                    turbo_parts=None if found is None else str(found),
                ))
        except BaseException:
            self.undo(context, installed)
            raise
        return installed

    def undo(self, context, installed: list) -> None:
        from ..adapters import METHOD_ATTR

        for module, original in reversed(installed):
            module.set_processor(original)
            if hasattr(module, METHOD_ATTR):
                delattr(module, METHOD_ATTR)
        for target in context.targets:
            target.step_hook.layers = []

    def describe(self, section: AttentionConfig) -> str:
        options = ", ".join(f"{k}={v}" for k, v in vars(section.options).items())
        warm = []
        if section.dense_steps:
            warm.append(f"first {section.dense_steps} steps dense")
        if section.dense_layers:
            warm.append(f"first {section.dense_layers} blocks dense")
        return section.method + (f" ({options})" if options else "") + (f"; {', '.join(warm)}" if warm else "")


def _attention_path(config: AttentionConfig, capabilities) -> str:
    """'stock', 'kernel' or 'reference': what runs this method's attention on this machine."""
    method, backend = config.method, config.backend
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


def _check_context_parallel(target, method: str, supported: bool) -> None:
    """Under diffusers context parallelism (`enable_parallelism` before `accelerate`) turbo's methods run with
    Ulysses on Wan's video self-attention (`turbo.attention.ulysses`); ring attention and HunyuanVideo's joint
    text-video attention are refused. (After `accelerate`, the processor refuses them at the first call.)"""
    parallel = getattr(target.model, "_parallel_config", None)
    config = getattr(parallel, "context_parallel_config", None)
    if config is None or method == "dense":
        return
    if not supported:
        raise TurboConfigError(f"attention '{method}' does not support diffusers context parallelism; use "
                               "method 'dense' or run on one GPU.")
    if config.ring_degree > 1:
        raise TurboConfigError(f"attention '{method}' runs under Ulysses context parallelism only (ring_degree="
                               f"{config.ring_degree}); use ContextParallelConfig(ulysses_degree=N).")
    if target.adapter.family != "wan":
        raise TurboConfigError(f"attention '{method}' under context parallelism is built for Wan's video-only "
                               f"self-attention, not {target.adapter.family}'s joint text-video attention; use "
                               "method 'dense' or run on one GPU.")
