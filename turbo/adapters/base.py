"""What a transformer family looks like to turbo: its self-attention modules, block order and patch size.

Adapters are the only code that knows diffusers class names and module paths."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from torch import nn

from ..attention.ulysses import head_range, heads_to_sequence, sequence_to_heads
from ..errors import TurboError
from ..runtime import AttentionCall, TurboRuntime

METHOD_ATTR = "turbo_attention"  # name of the method submodule installed under each self-attention module


def model_class(module: nn.Module) -> type:
    """The module's own class, also under FSDP2: `fully_shard` swaps a module's class for a generated subclass
    named ``FSDP<Name>`` (bases ``FSDPModule``, the original class)."""
    for cls in type(module).__mro__:
        if not cls.__name__.startswith("FSDP"):
            return cls
    return type(module)


def class_name(module: nn.Module) -> str:
    """`model_class(module).__name__` (``WanTransformer3DModel`` for an FSDP-sharded one too)."""
    return model_class(module).__name__


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
        return class_name(model) in self.class_names

    def self_attention_sites(self, model: nn.Module) -> list[SelfAttentionSite]:
        raise NotImplementedError

    def patch_size(self, model: nn.Module) -> tuple[int, int, int]:
        raise NotImplementedError

    def make_processor(self, site: SelfAttentionSite, runtime: TurboRuntime, original):
        raise NotImplementedError

    def repeated_blocks(self, model: nn.Module) -> list[nn.Module]:
        """The blocks regional compilation compiles (the classes named by the model's `_repeated_blocks`)."""
        names = set(getattr(model, "_repeated_blocks", None) or ())
        return [m for m in model.modules() if class_name(m) in names]

    def denoising_blocks(self, model: nn.Module) -> list[nn.Module]:
        """The main transformer blocks over the video tokens (what quantisation and caching act on); by default the
        repeated blocks."""
        return self.repeated_blocks(model)


class TurboProcessorMixin:
    """Shared core of turbo's attention processors: route one self-attention call to dense warm-up or the method
    installed under the attention module. Keeps `_attention_backend` / `_parallel_config` from the processor it
    replaces, so `set_attention_backend` keeps working for the dense path.

    Runs inside the (possibly compiled) blocks: it reads the runtime's frozen `ForwardPlan` and this layer's fixed
    `dense_layer` flag, mutates no Python state, and reads no per-step value (step, branch, layer number)."""

    def _init_turbo(self, runtime: TurboRuntime, layer_index: int, original) -> None:
        self.runtime = runtime
        self.layer_index = layer_index
        self.dense_layer = layer_index < runtime.dense_layers
        self.original = original
        self._attention_backend = getattr(original, "_attention_backend", None)
        self._parallel_config = getattr(original, "_parallel_config", None)

    def _dense_mask(self, attn_mask: torch.Tensor, rows: int) -> torch.Tensor:
        """The mask the stock processor gives the last `rows` query rows of the sequence: `attn_mask` itself here; a
        family whose stock mask differs per query row overrides it."""
        return attn_mask

    def _dense(self, q, k, v, *, attn_mask=None, local: bool = False):
        """The stock attention path (q: the last q.shape[1] rows of the sequence); `local`: on the tensors as they
        are (inside turbo's own Ulysses exchange)."""
        if attn_mask is not None:
            attn_mask = self._dense_mask(attn_mask, q.shape[1])
        return dispatch_attention_fn(
            q, k, v, attn_mask=attn_mask, dropout_p=0.0, is_causal=False, backend=self._attention_backend,
            parallel_config=None if local else self._parallel_config,
        )

    def _ulysses(self):
        """(process group, degree, rank) of diffusers' context parallelism when it splits the sequence across ranks
        (`enable_parallelism` sets `_parallel_config` on this processor, before or after `turbo.accelerate`); None
        without it. Ring attention is refused: a sparse method needs every key of its rows on one rank."""
        config = getattr(self._parallel_config, "context_parallel_config", None)
        if config is None or config._world_size in (None, 1):
            return None
        if config.ring_degree > 1:
            raise TurboError(
                f"turbo attention runs under diffusers' Ulysses context parallelism only (ring_degree="
                f"{config.ring_degree}); use ContextParallelConfig(ulysses_degree=N) or attention 'dense'."
            )
        return config._ulysses_mesh.get_group(), config.ulysses_degree, config._ulysses_local_rank

    def _self_attention(self, attn: nn.Module, q, k, v, attention_mask=None, num_video: int | None = None):
        """q, k, v: [B, S, H, D] (video tokens first, then text). Returns [B, S, H, D]."""
        plan = self.runtime.plan
        if plan is None or plan.geometry is None:
            raise TurboError(
                "turbo attention ran outside a transformer forward (no token geometry); call the whole transformer."
            )
        num_video = q.shape[1] if num_video is None else num_video
        dense = plan.dense or self.dense_layer
        ulysses = None if dense or not getattr(attn, METHOD_ATTR).whole_sequence else self._ulysses()
        if ulysses is not None and (plan.capture or attention_mask is not None or num_video < q.shape[1]):
            raise TurboError(
                "turbo attention under context parallelism runs video-only self-attention without a mask (Wan); "
                "q/k/v capture (turbo fit) and joint text-video attention run on one process."
            )
        if plan.capture:
            self.runtime.record_capture(self.layer_index, q, k, v, num_video, attention_mask)
        if dense:
            return self._dense(q, k, v, attn_mask=attention_mask)
        if ulysses is None:
            return self._method(attn, q, k, v, attention_mask, num_video)
        group, world, rank = ulysses
        q, k, v = (sequence_to_heads(x, group, world) for x in (q, k, v))
        out = self._method(attn, q, k, v, None, q.shape[1], heads=head_range(rank, world, q.shape[2] * world))
        return heads_to_sequence(out, group, world)

    def _method(self, attn: nn.Module, q, k, v, attention_mask, num_video: int, heads: slice | None = None):
        """The installed method on q/k/v [B, S, H', D] (H' = the heads in `heads`, all by default)."""
        dense = functools.partial(self._dense, attn_mask=attention_mask, local=heads is not None)
        key_mask = text_mask = None
        if attention_mask is not None:
            key_mask = attention_mask.reshape(attention_mask.shape[0], -1)
            if num_video < q.shape[1]:
                text_mask = key_mask[:, num_video:].bool()
        call = AttentionCall(geometry=self.runtime.plan.geometry, num_video=num_video, dense=dense,
                             attn_mask=attention_mask, text_mask=text_mask, key_mask=key_mask, heads=heads)
        return getattr(attn, METHOD_ATTR)(q, k, v, call)


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
