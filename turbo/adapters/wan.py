"""Wan2.1 / Wan2.2 (`WanTransformer3DModel`): self-attention is `blocks.N.attn1`; `attn2` (text, and the I2V image
branch) stays on the stock processor."""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from .base import ModelAdapter, SelfAttentionSite, TurboProcessorMixin, find_module_list


def apply_wan_rotary_emb(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's RoPE on [B, S, H, D] with interleaved pairs, op for op like the stock processor (bit-identical)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def wan_query_key_value(attn, hidden_states: torch.Tensor, context: torch.Tensor | None = None, rotary_emb=None,
                        rope=apply_wan_rotary_emb) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Wan attention inputs as the stock processor builds them: projections (fused or not), QK-norm across heads,
    heads split, RoPE (`rope`, e.g. an out-of-place variant for forward-mode AD). hidden_states [B, S, C]; context
    [B, L, C] for cross-attention (None: self-attention). Returns q [B, S, H, D], k and v [B, L or S, H, D]."""
    if attn.fused_projections:
        if context is None:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query = attn.to_q(hidden_states)
            key, value = attn.to_kv(context).chunk(2, dim=-1)
    else:
        source = hidden_states if context is None else context
        query, key, value = attn.to_q(hidden_states), attn.to_k(source), attn.to_v(source)
    query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
    key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
    value = value.unflatten(2, (attn.heads, -1))
    if rotary_emb is not None:
        query = rope(query, *rotary_emb)
        key = rope(key, *rotary_emb)
    return query, key, value


class TurboWanAttnProcessor(TurboProcessorMixin, WanAttnProcessor):
    """Wan self-attention: projections, QK-norm across heads, RoPE exactly as stock, then turbo's method."""

    def __init__(self, runtime, layer_index: int, original):
        super().__init__()
        self._init_turbo(runtime, layer_index, original)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None or attn.add_k_proj is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        query, key, value = wan_query_key_value(attn, hidden_states, rotary_emb=rotary_emb)
        hidden_states = self._self_attention(attn, query, key, value, attention_mask)
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


class WanAdapter(ModelAdapter):
    family = "wan"
    class_names = ("WanTransformer3DModel",)

    def self_attention_sites(self, model):
        blocks = find_module_list(model, "blocks")
        return [SelfAttentionSite(f"blocks.{i}.attn1", block.attn1, i) for i, block in enumerate(blocks)]

    def patch_size(self, model):
        return tuple(model.config.patch_size)

    def make_processor(self, site, runtime, original):
        return TurboWanAttnProcessor(runtime, site.layer_index, original)
