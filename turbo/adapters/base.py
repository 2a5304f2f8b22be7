"""What a transformer family looks like to turbo: its self-attention modules, block order and patch size.

Adapters are the only code that knows diffusers class names and module paths."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import TurboError
from ..runtime import AttentionCall, TurboRuntime

METHOD_ATTR = "turbo_attention"  # name of the method submodule installed under each self-attention module


@dataclass
class SelfAttentionSite:
    """One self-attention module, its path in the transformer and its block position (layer index)."""

    name: str
    module: nn.Module
    layer_index: int

    @property
    def heads(self) -> int:
        return self.module.heads

    @property
    def head_dim(self) -> int:
        return self.module.inner_dim // self.module.heads


class ModelAdapter:
    """Base adapter. Subclasses set `family`, `class_names` and implement the three lookups."""

    family = "base"
    class_names: tuple[str, ...] = ()

    def matches(self, model: nn.Module) -> bool:
        return type(model).__name__ in self.class_names

    def self_attention_sites(self, model: nn.Module) -> list[SelfAttentionSite]:
        raise NotImplementedError

    def patch_size(self, model: nn.Module) -> tuple[int, int, int]:
        raise NotImplementedError

    def make_processor(self, site: SelfAttentionSite, runtime: TurboRuntime, original):
        raise NotImplementedError


class TurboProcessorMixin:
    """Shared core of turbo's attention processors: route one self-attention call to dense warm-up or the method
    installed under the attention module. Keeps `_attention_backend` / `_parallel_config` from the processor it
    replaces, so `set_attention_backend` keeps working for the dense path."""

    def _init_turbo(self, runtime: TurboRuntime, layer_index: int, original) -> None:
        self.runtime = runtime
        self.layer_index = layer_index
        self.original = original
        self._attention_backend = getattr(original, "_attention_backend", None)
        self._parallel_config = getattr(original, "_parallel_config", None)

    def _dense(self, q, k, v, *, attn_mask=None):
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        return dispatch_attention_fn(
            q, k, v, attn_mask=attn_mask, dropout_p=0.0, is_causal=False, backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )

    def _self_attention(self, attn: nn.Module, q, k, v, attention_mask=None, num_video: int | None = None):
        """q, k, v: [B, S, H, D] (video tokens first, then text). Returns [B, S, H, D]."""
        runtime = self.runtime
        dense = functools.partial(self._dense, attn_mask=attention_mask)
        if runtime.capture is not None:
            runtime.capture.record(self.layer_index, runtime.step_index, runtime.branch, q, k, v,
                                   q.shape[1] if num_video is None else num_video, attention_mask, runtime.geometry)
        if runtime.use_dense(self.layer_index):
            runtime.stats.calls["dense warm-up"] += 1
            return dense(q, k, v)
        if runtime.geometry is None:
            raise TurboError(
                "turbo attention ran outside a transformer forward (no token geometry); call the whole transformer."
            )
        num_video = q.shape[1] if num_video is None else num_video
        text_mask = None
        if attention_mask is not None and num_video < q.shape[1]:
            text_mask = attention_mask.reshape(attention_mask.shape[0], -1)[:, num_video:].bool()
        call = AttentionCall(
            geometry=runtime.geometry, num_video=num_video, step_index=runtime.step_index,
            layer_index=self.layer_index, branch=runtime.branch, dense=dense, attn_mask=attention_mask,
            text_mask=text_mask,
        )
        method = getattr(attn, METHOD_ATTR)
        out = method(q, k, v, call)
        runtime.stats.calls[method.name] += 1
        density = getattr(method, "last_density", None)
        if density is not None:
            runtime.stats.record_density(density)
            method.last_density = None
        return out


def find_module_list(model: nn.Module, name: str) -> nn.ModuleList:
    blocks = getattr(model, name, None)
    if not isinstance(blocks, nn.ModuleList):
        raise TurboError(f"{type(model).__name__} has no '{name}' block list; this diffusers version is unsupported.")
    return blocks


def to_float_timestep(timestep) -> float | None:
    if timestep is None:
        return None
    if isinstance(timestep, torch.Tensor):
        if timestep.device.type == "meta":
            return None
        # Wan2.2 TI2V passes per-token timesteps; the largest is the step's noise level.
        return float(timestep.detach().float().max())
    return float(timestep)
