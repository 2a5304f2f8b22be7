"""A diffusers `ModelHook` on each transformer that tells the shared `TurboRuntime` which step, CFG branch and token
geometry the coming forward has. Stateful, so `cache_context("cond"/"uncond")` reaches it through its StateManager."""

from __future__ import annotations

from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

from ..geometry import geometry_from_latents
from ..runtime import TurboRuntime
from .base import to_float_timestep

HOOK_NAME = "turbo.step"


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class StepHook(ModelHook):
    _is_stateful = True

    def __init__(self, runtime: TurboRuntime, patch: tuple[int, int, int]):
        super().__init__()
        self.runtime = runtime
        self.patch = patch
        # Only used to receive the pipeline's CacheContext (name = CFG branch, step_index when the pipeline gives it).
        self.context_receiver = StateManager(_NoState)

    def pre_forward(self, module, *args, **kwargs):
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        timestep = kwargs["timestep"] if "timestep" in kwargs else (args[1] if len(args) > 1 else None)
        context = self.context_receiver._context
        self.runtime.begin_forward(
            geometry_from_latents(tuple(hidden_states.shape), self.patch),
            to_float_timestep(timestep),
            branch=context.name if context is not None else None,
            step_index=context.step_index if context is not None else None,
        )
        return args, kwargs

    def reset_state(self, module):
        self.runtime.reset()
        return module


def install_step_hook(model, runtime: TurboRuntime, patch: tuple[int, int, int]) -> dict:
    """Register the hook; return what `remove_step_hook` needs to put the module back exactly."""
    undo = {"had_registry": hasattr(model, "_diffusers_hook"), "had_forward_attr": "forward" in vars(model)}
    registry = HookRegistry.check_if_exists_or_initialize(model)
    registry.register_hook(StepHook(runtime, patch), HOOK_NAME)
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
