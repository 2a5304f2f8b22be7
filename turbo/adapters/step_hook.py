"""A diffusers `ModelHook` on each transformer that tells the shared `TurboRuntime` which step, CFG branch and token
geometry the coming forward has. Stateful, so `cache_context("cond"/"uncond")` reaches it through its StateManager.

This is the compile boundary (as diffusers' FirstBlockCache / MagCache head hooks): `pre_forward` runs outside
compilation, decides the forward's plan, counts statistics and lets each attention method prepare its per-step inputs
(SVG's profiling rows, its band table), so the blocks read only the frozen plan and tensors."""

from __future__ import annotations

import torch
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

from ..geometry import geometry_from_latents
from ..runtime import StepInfo, TurboRuntime
from .base import to_float_timestep

HOOK_NAME = "turbo.step"


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class StepHook(ModelHook):
    _is_stateful = True

    def __init__(self, runtime: TurboRuntime, patch: tuple[int, int, int], method: str = "dense",
                  layers: list | None = None):
        super().__init__()
        self.runtime = runtime
        self.patch = patch
        self.method = method
        self.layers = layers or []  # (layer index, method module) of this transformer's self-attention sites
        self.cudagraphs = False  # set by the compile feature when the forward replays a CUDA graph
        # Only used to receive the pipeline's CacheContext (name = CFG branch, step_index when the pipeline gives it).
        self.context_receiver = StateManager(_NoState)

    @torch.compiler.disable
    def pre_forward(self, module, *args, **kwargs):
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        timestep = kwargs["timestep"] if "timestep" in kwargs else (args[1] if len(args) > 1 else None)
        context = self.context_receiver._context
        runtime = self.runtime
        geometry = geometry_from_latents(tuple(hidden_states.shape), self.patch)
        runtime.begin_forward(
            geometry,
            lambda: to_float_timestep(timestep),
            branch=context.name if context is not None else None,
            step_index=context.step_index if context is not None else None,
        )
        runtime.count_calls(self.method, [layer for layer, _ in self.layers])
        for layer, method in self.layers:
            if not runtime.layer_is_dense(layer):
                info = StepInfo(runtime.step_index, runtime.branch, layer, geometry, hidden_states.device,
                                runtime.stats.record_density)
                density = method.prepare(info)
                if density is not None:
                    runtime.stats.record_density(density)
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        return args, kwargs

    def post_forward(self, module, output):
        if self.cudagraphs:  # the graph's output buffers are reused by the next replay: hand out a copy
            return _copy_outputs(output)
        return output

    def reset_state(self, module):
        self.runtime.reset()
        return module


@torch.compiler.disable
def _copy_outputs(output):
    return torch.utils._pytree.tree_map_only(torch.Tensor, torch.clone, output)


def install_step_hook(model, runtime: TurboRuntime, patch: tuple[int, int, int]) -> dict:
    """Register the hook; return what `remove_step_hook` needs to put the module back exactly (and the hook, whose
    `method` / `layers` the attention feature fills in)."""
    undo = {"had_registry": hasattr(model, "_diffusers_hook"), "had_forward_attr": "forward" in vars(model)}
    registry = HookRegistry.check_if_exists_or_initialize(model)
    undo["hook"] = hook = StepHook(runtime, patch)
    registry.register_hook(hook, HOOK_NAME)
    registry.invalidate_child_registries_cache()
    return undo


def remove_step_hook(model, undo: dict) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(model)
    registry.remove_hook(HOOK_NAME, recurse=False)
    registry.invalidate_child_registries_cache()
    if not registry.hooks:
        if not undo["had_registry"]:
            del model._diffusers_hook
        if not undo["had_forward_attr"] and "forward" in vars(model):
            del model.forward
