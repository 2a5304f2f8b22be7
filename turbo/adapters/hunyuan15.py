"""HunyuanVideo 1.5 (`HunyuanVideo15Transformer3DModel`, diffusers' `HunyuanVideo15Pipeline` and
`HunyuanVideo15ImageToVideoPipeline`): self-attention is the joint [video; text] `attn` of the dual-stream
`transformer_blocks` (there are no single-stream blocks); the token refiner inside `context_embedder` keeps its own
processors.

The text part is [image, ByT5, MLLM] tokens, valid ones first, with a key mask the stock processor turns into a
[B, 1, S, S] mask (padding tokens neither attend nor are attended); turbo's dense calls get that mask for the rows
they compute (so the dense path is the stock one), and methods get the video rows with the valid text keys as their
tail — without the S × S mask, which at 480p (S ≈ 50 k) is 2.4 GB.

diffusers registers no block metadata for this model (its own caches do not support it); this module registers it
(hidden states and the text stream are the block's outputs 0 and 1), so block hooks — turbo's Temporal Delta Cache,
and diffusers' FirstBlockCache / MagCache — can wrap its blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_hunyuan_video15 import (
    HunyuanVideo15AttnProcessor2_0,
    HunyuanVideo15TransformerBlock,
)

from .base import ModelAdapter, SelfAttentionSite, TurboProcessorMixin, find_module_list
from .hunyuan import _heads, append_text_stream, split_joint_output


def _register_block_metadata() -> None:
    try:
        TransformerBlockRegistry.get(HunyuanVideo15TransformerBlock)
    except ValueError:
        TransformerBlockRegistry.register(
            HunyuanVideo15TransformerBlock,
            TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=1),
        )


_register_block_metadata()


def key_mask(text_mask: torch.Tensor, length: int) -> torch.Tensor:
    """`text_mask` [B, L] (nonzero = real token) padded with True for the video tokens in front: bool [B, 1, 1, S]
    (S = `length`), which keys may be attended."""
    keys = F.pad(text_mask, (length - text_mask.shape[1], 0), value=True).bool()
    return keys.view(keys.shape[0], 1, 1, length)


class TurboHunyuanVideo15AttnProcessor(TurboProcessorMixin, HunyuanVideo15AttnProcessor2_0):
    """Joint video+text attention exactly as stock (per-head QK-norm, RoPE on the video tokens), then turbo's method
    over [video; text] with video tokens first. Parameters are declared explicitly: diffusers' `Attention.forward`
    drops keyword arguments a processor does not name."""

    def __init__(self, runtime, layer_index: int, original):
        super().__init__()
        self._init_turbo(runtime, layer_index, original)

    def _dense_mask(self, attn_mask: torch.Tensor, rows: int) -> torch.Tensor:
        """The stock mask of the last `rows` query rows, bool [B, 1, rows, S]: valid query row & valid key column (a
        padding token attends nothing). Built only for the rows a dense call computes — the stock processor builds
        all S × S of it."""
        return attn_mask & attn_mask[..., -rows:].transpose(-1, -2)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        query = attn.norm_q(_heads(attn.to_q(hidden_states), attn.heads))
        key = attn.norm_k(_heads(attn.to_k(hidden_states), attn.heads))
        value = _heads(attn.to_v(hidden_states), attn.heads)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        num_video = query.shape[1]
        if encoder_hidden_states is not None:
            query, key, value = append_text_stream(attn, query, key, value, encoder_hidden_states)
        mask = key_mask(attention_mask, query.shape[1])
        hidden_states = self._self_attention(attn, query, key, value, mask, num_video=num_video)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        return split_joint_output(attn, hidden_states, encoder_hidden_states, num_video)


class HunyuanVideo15Adapter(ModelAdapter):
    family = "hunyuanvideo15"
    class_names = ("HunyuanVideo15Transformer3DModel",)

    def denoising_blocks(self, model):
        """The dual-stream blocks (not the patch embedding or the token refiner, which are also repeated blocks for
        compilation)."""
        return list(find_module_list(model, "transformer_blocks"))

    def self_attention_sites(self, model):
        blocks = find_module_list(model, "transformer_blocks")
        return [SelfAttentionSite(f"transformer_blocks.{i}.attn", b.attn, i) for i, b in enumerate(blocks)]

    def patch_size(self, model):
        return (model.config.patch_size_t, model.config.patch_size, model.config.patch_size)

    def make_processor(self, site, runtime, original):
        return TurboHunyuanVideo15AttnProcessor(runtime, site.layer_index, original)
