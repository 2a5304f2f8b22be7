"""Full (unsharded) state of models, optimizers and EMAs that may be sharded by FSDP2 (``fully_shard``, what
``accelerate launch --use_fsdp --fsdp_version 2`` applies).

Checkpoints and exports are written in one format whatever the launch: full tensors keyed by parameter name (the
optimizer state keyed by parameter name too, as ``torch.distributed.checkpoint.state_dict`` gives it), so a run
started on one GPU resumes under DDP or FSDP and the other way round. Under FSDP the gathers are collectives: every
process calls them, in the same order; only the main process gets the tensors (``cpu_offload``), the others an empty
dict.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["is_sharded", "full_tensor", "shard_like", "full_model_state", "full_optimizer_state",
           "load_model_state", "load_optimizer_state", "reshard", "unsharded"]


def is_sharded(module: torch.nn.Module) -> bool:
    """True when `module` (or one of its submodules) was sharded by FSDP2's ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor shard (an all-gather: every process calls it), or `t` itself."""
    return t.full_tensor() if _is_dtensor(t) else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `like` is: this process's shard (no communication: every process holds `full`) when `like`
    is a DTensor, else `full` on `like`'s device and dtype."""
    if _is_dtensor(like):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements,
                                 src_data_rank=None)
    return full.to(like.device, like.dtype)


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{name: full tensor on the CPU} of `model`'s state dict (names as in the unsharded model); under FSDP only the
    main process receives the tensors."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=_options(cpu_offload=True))


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """`optimizer`'s state with full tensors keyed by `model`'s parameter names (``{"state": {name: {...}},
    "param_groups": [{"params": [names], ...}]}``), on the CPU; under FSDP only the main process receives it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer),
                                    options=_options(cpu_offload=True))


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict (every process holds it) into `model`, sharded or not."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    if not is_sharded(model):
        model.load_state_dict(state)
        return
    set_model_state_dict(model, state, options=_options())


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a `full_optimizer_state` dict (every process holds it) into `optimizer` of `model`, sharded or not."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), state, options=_options())


@contextlib.contextmanager
def unsharded(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`model` with every FSDP2 unit all-gathered on entry and kept whole until exit (then resharded, each unit's
    reshard-after-forward setting put back); a no-op for a model that is not sharded.

    For passes that must not run FSDP's collectives and storage frees inside them: ``torch.func.jvp`` wraps the
    tensors it sees, and FSDP's hooks cannot free or all-gather the storage of such wrappers on CUDA."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield model
        return
    resharding = []
    for unit in units:
        group = unit._get_fsdp_state()._fsdp_param_group  # None for a unit without parameters of its own
        resharding.append(group is not None and group.post_forward_mesh_info is not None)
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield model
    finally:
        for unit, reshard in zip(units, resharding, strict=True):
            unit.reshard()
            unit.set_reshard_after_forward(reshard, recurse=False)


def reshard(model: torch.nn.Module) -> None:
    """Free every FSDP2 unit's all-gathered parameters (back to this process's shards); no-op elsewhere."""
    from torch.distributed.fsdp import FSDPModule

    for unit in model.modules():
        if isinstance(unit, FSDPModule):
            unit.reshard()
