"""Tests of turbo/distill (TrigFlow wrapper, JVP attention, rCM losses). Tiny Wan transformers come from
pipelines.tiny (random weights, offline)."""

from __future__ import annotations

import torch

TEXT_DIM = 32
LATENT = (16, 3, 8, 8)  # C, T, H, W: 3·4·4 = 48 video tokens after the (1, 2, 2) patch


def tiny_wan(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A 2-layer, 2-head (head_dim 12) `WanTransformer3DModel` with random weights, eval mode."""
    from pipelines import tiny

    model = tiny._wan_transformer(num_layers=2, num_heads=2, head_dim=12, text_dim=TEXT_DIM, seed=seed)
    return model if dtype == torch.float32 else model.to(dtype)
