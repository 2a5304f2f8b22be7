"""HunyuanVideo (`HunyuanVideoTransformer3DModel`): self-attention is the joint [video; text] `attn` of the dual-stream
`transformer_blocks` and single-stream `single_transformer_blocks` (one chain of layers); the token refiner inside
`context_embedder` keeps its own processors."""

from __future__ import annotations

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

from .base import ModelAdapter, SelfAttentionSite, TurboProcessorMixin, find_module_list


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(2, (heads, -1))


def append_text_stream(attn, query, key, value, encoder_hidden_states):
    """[video; text] q, k, v [B, S, H, D]: the text stream's own projections and QK-norms (dual-stream blocks),
    appended after the video tokens as the stock processors do."""
    encoder_query = _heads(attn.add_q_proj(encoder_hidden_states), attn.heads)
    encoder_key = _heads(attn.add_k_proj(encoder_hidden_states), attn.heads)
    encoder_value = _heads(attn.add_v_proj(encoder_hidden_states), attn.heads)
    if attn.norm_added_q is not None:
        encoder_query = attn.norm_added_q(encoder_query)
    if attn.norm_added_k is not None:
        encoder_key = attn.norm_added_k(encoder_key)
    return (torch.cat([query, encoder_query], dim=1), torch.cat([key, encoder_key], dim=1),
            torch.cat([value, encoder_value], dim=1))


def split_joint_output(attn, hidden_states, encoder_hidden_states, num_video: int):
    """The attention output [B, S, H·D] back to (video, text) streams through their output projections, as stock."""
    if encoder_hidden_states is not None:
        hidden_states, encoder_hidden_states = hidden_states[:, :num_video], hidden_states[:, num_video:]
        if getattr(attn, "to_out", None) is not None:
            hidden_states = attn.to_out[0](hidden_states)
            hidden_states = attn.to_out[1](hidden_states)
        if getattr(attn, "to_add_out", None) is not None:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
    return hidden_states, encoder_hidden_states


class TurboHunyuanVideoAttnProcessor(TurboProcessorMixin, HunyuanVideoAttnProcessor2_0):
    """Joint video+text attention exactly as stock (RoPE on the video part only), then turbo's method over
    [video; text] with video tokens first. Parameters are declared explicitly: diffusers' `Attention.forward`
    drops keyword arguments a processor does not name."""

    def __init__(self, runtime, layer_index: int, original):
        super().__init__()
        self._init_turbo(runtime, layer_index, original)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        single_stream = attn.add_q_proj is None and encoder_hidden_states is not None
        if single_stream:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        query = _heads(attn.to_q(hidden_states), attn.heads)
        key = _heads(attn.to_k(hidden_states), attn.heads)
        value = _heads(attn.to_v(hidden_states), attn.heads)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            if single_stream:
                text = encoder_hidden_states.shape[1]
                query = torch.cat([apply_rotary_emb(query[:, :-text], image_rotary_emb, sequence_dim=1),
                                   query[:, -text:]], dim=1)
                key = torch.cat([apply_rotary_emb(key[:, :-text], image_rotary_emb, sequence_dim=1),
                                 key[:, -text:]], dim=1)
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            query, key, value = append_text_stream(attn, query, key, value, encoder_hidden_states)

        num_text = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        num_video = query.shape[1] - num_text
        hidden_states = self._self_attention(attn, query, key, value, attention_mask, num_video=num_video)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        return split_joint_output(attn, hidden_states, encoder_hidden_states, num_video)


class HunyuanVideoAdapter(ModelAdapter):
    family = "hunyuanvideo"
    class_names = ("HunyuanVideoTransformer3DModel",)

    def denoising_blocks(self, model):
        """The dual- and single-stream blocks (not the patch embedding or the token refiner, which are also repeated
        blocks for compilation)."""
        return [*find_module_list(model, "transformer_blocks"), *find_module_list(model, "single_transformer_blocks")]

    def self_attention_sites(self, model):
        dual = find_module_list(model, "transformer_blocks")
        single = find_module_list(model, "single_transformer_blocks")
        sites = [SelfAttentionSite(f"transformer_blocks.{i}.attn", b.attn, i) for i, b in enumerate(dual)]
        offset = len(dual)  # single-stream blocks continue the layer numbering after the dual-stream ones
        sites += [
            SelfAttentionSite(f"single_transformer_blocks.{i}.attn", b.attn, offset + i) for i, b in enumerate(single)
        ]
        return sites

    def patch_size(self, model):
        return (model.config.patch_size_t, model.config.patch_size, model.config.patch_size)

    def make_processor(self, site, runtime, original):
        return TurboHunyuanVideoAttnProcessor(runtime, site.layer_index, original)
