"""One named diffusers `ModelHook` per transformer block: the hook base, installing and removing them (each block left
exactly as it was), and the relative-L1 sums both users read (the Temporal Delta Cache, turbo/cache/tdc.py, and the
nvfp4-mixed router, turbo/quant/router.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.hooks.hooks import HookRegistry, ModelHook
from diffusers.utils.torch_utils import unwrap_module
from torch import nn

_CONTEXT_PARALLEL_HOOKS = ("cp_input---", "cp_output---")  # diffusers.hooks.context_parallel's hook names
Installed = list[tuple[nn.Module, bool, bool]]  # (block, it had a hook registry, it had an instance `forward`)


def install_block_hooks(model: nn.Module, blocks: list[nn.Module], make_hook: Callable[[int], ModelHook], name: str,
                        installed: Installed) -> None:
    """Register `make_hook(index)` under `name` on every block, appending to `installed` as it goes (so a failure
    part-way can be undone by `remove_block_hooks`)."""
    try:
        for index, block in enumerate(blocks):
            had_registry, had_forward = hasattr(block, "_diffusers_hook"), "forward" in vars(block)
            registry = HookRegistry.check_if_exists_or_initialize(block)
            installed.append((block, had_registry, had_forward))
            _register_inside_context_parallel(registry, make_hook(index), name)
    finally:
        HookRegistry.check_if_exists_or_initialize(model).invalidate_child_registries_cache()


def _register_inside_context_parallel(registry: HookRegistry, hook: ModelHook, name: str) -> None:
    """Register `hook` inside diffusers' context-parallel hooks of this block (``cp_input---…``, e.g. Wan's sequence
    split at ``blocks.0``; the hook registered last runs first), so turbo's block hooks see each rank's shard of
    the sequence as the blocks do when `enable_parallelism` came before `turbo.accelerate`. The hooks from the first
    context-parallel one on are taken off from the last (the only removal that rewires a chain of `new_forward`
    hooks correctly) and put back in their order, the context-parallel ones last."""
    order = registry._hook_order
    first = next((i for i, n in enumerate(order) if n.startswith(_CONTEXT_PARALLEL_HOOKS)), None)
    if first is None:
        registry.register_hook(hook, name)
        return
    moved = [(n, registry.hooks[n]) for n in order[first:]]
    for n, _ in reversed(moved):
        registry.remove_hook(n, recurse=False)
    for n, h in [m for m in moved if not m[0].startswith(_CONTEXT_PARALLEL_HOOKS)]:
        registry.register_hook(h, n)
    registry.register_hook(hook, name)
    for n, h in [m for m in moved if m[0].startswith(_CONTEXT_PARALLEL_HOOKS)]:
        registry.register_hook(h, n)


def remove_block_hooks(model: nn.Module, name: str, installed: Installed) -> None:
    """Remove the hooks `install_block_hooks` registered; a block left without hooks loses the registry and the
    instance `forward` diffusers added, if it had none before. Empties `installed`."""
    for block, had_registry, had_forward in reversed(installed):
        registry = block._diffusers_hook
        registry.remove_hook(name, recurse=False)
        if not registry.hooks:
            if not had_registry:
                del block._diffusers_hook
            if not had_forward and "forward" in vars(block):
                del block.forward
    installed.clear()
    if hasattr(model, "_diffusers_hook"):
        model._diffusers_hook.invalidate_child_registries_cache()


class BlockHook(ModelHook):
    """A stateful per-block hook of block `index`, owned by `owner` (whose `states` StateManager becomes this hook's
    `states` attribute, so diffusers' `cache_context` sets its context); reads the block class's diffusers metadata
    (argument names, return layout) at initialisation."""

    _is_stateful = True

    def __init__(self, owner, index: int):
        super().__init__()
        self.index = index
        self.states = owner.states
        self._metadata = None

    def initialize_hook(self, module):
        self._metadata = TransformerBlockRegistry.get(unwrap_module(module).__class__)
        return module


def l1_sums(new: Sequence[torch.Tensor], old: Sequence[torch.Tensor]) -> torch.Tensor:
    """[Σ|new − old|, Σ|old|] in fp32 over every stream (shape [2], detached); stays on the device."""
    delta = sum(torch.sum((a - b).abs(), dtype=torch.float32) for a, b in zip(new, old, strict=True))
    norm = sum(torch.sum(b.abs(), dtype=torch.float32) for b in old)
    return torch.stack([delta, norm]).detach()
