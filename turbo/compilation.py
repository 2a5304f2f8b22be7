"""The `compile` section: `torch.compile` applied by `turbo.accelerate`, and undone by `turbo.restore`.

Modes: "regional" compiles each repeated transformer block (diffusers' `compile_repeated_blocks` idea: one graph
serves every block, compile time of one block), "full" compiles the whole transformer. `cudagraphs=True` uses
torch's "reduce-overhead" mode (CUDA graphs; for fixed shapes and few-step loops; with compile="full": the step
hook then starts a new CUDA-graph step before each forward and hands out a copy of the output, so the cond output
of a CFG pair survives the uncond call). turbo's hooks and processors are
compile-clean: step, branch and warm-up decisions run in the transformer-level hook outside compilation, so a whole
generation compiles once (plus one graph for dense warm-up steps)."""

from __future__ import annotations

from dataclasses import dataclass

from .config import option, validate_options
from .errors import TurboConfigError
from .registry import Feature, register_feature

COMPILE_MODES = ("off", "regional", "full")


@dataclass(frozen=True)
class CompileConfig:
    """torch.compile of the accelerated transformers."""

    recommended = "regional"

    mode: str = option("off", "torch.compile: regional = each repeated block (recommended), full = whole model",
                       choices=COMPILE_MODES)
    cudagraphs: bool = option(False, "CUDA graphs (torch mode 'reduce-overhead'): fixed shapes, few-step loops")
    fullgraph: bool = option(False, "fail on any graph break instead of falling back to eager between graphs")
    backend: str = option("inductor", "torch.compile backend (inductor; aot_eager / eager for debugging)")

    def __post_init__(self):
        validate_options(self, "compile")
        if self.cudagraphs and self.mode != "full":
            raise TurboConfigError(
                "compile_cudagraphs needs compile='full': one CUDA graph per transformer forward (regional graphs are "
                "replayed once per block and would overwrite each other's outputs)."
            )

    def torch_kwargs(self) -> dict:
        return {"mode": "reduce-overhead" if self.cudagraphs else None, "fullgraph": self.fullgraph,
                "backend": self.backend}


class CompileFeature(Feature):
    name = "compile"
    config_cls = CompileConfig
    order = 90  # after everything that changes modules, so the compiled code sees them

    def check(self, context, section: CompileConfig) -> None:
        if section.mode == "regional":
            for target in context.targets:
                if not target.adapter.repeated_blocks(target.model):
                    raise TurboConfigError(
                        f"compile='regional' found no repeated blocks in {type(target.model).__name__}; "
                        "use compile='full'."
                    )

    def install(self, context, section: CompileConfig) -> list:
        compiled = []
        kwargs = section.torch_kwargs()
        try:
            for target in context.targets:
                modules = target.adapter.repeated_blocks(target.model) if section.mode == "regional" else [target.model]
                for module in modules:
                    module.compile(**kwargs)
                    compiled.append(module)
                target.step_hook.cudagraphs = section.cudagraphs
        except BaseException:
            self.undo(context, compiled)
            raise
        return compiled

    def undo(self, context, compiled: list) -> None:
        for module in compiled:
            module._compiled_call_impl = None
        for target in context.targets:
            if target.step_hook is not None:
                target.step_hook.cudagraphs = False

    def describe(self, section: CompileConfig) -> str:
        return f"torch.compile {section.mode}" + (" + CUDA graphs" if section.cudagraphs else "") + (
            ", fullgraph" if section.fullgraph else "")


register_feature(CompileFeature())
