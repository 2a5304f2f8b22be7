"""HunyuanVideo 1.5's joint attention under turbo: the dense path is the stock one bit for bit (its per-row mask
rebuilt only for the rows a call computes), every method ignores padding text tokens (more of them change nothing),
uses the valid ones (changing those changes the video), and the text rows stay exact."""

from __future__ import annotations

import pytest
import torch

import turbo
from turbo.adapters.hunyuan15 import HunyuanVideo15Adapter, TurboHunyuanVideo15AttnProcessor, key_mask

METHODS = {
    "dense": {},
    "sla": {"keep": 0.25, "block_q": 32, "block_k": 16},
    "sla2": {"keep": 0.25, "block_q": 32, "block_k": 16},
    "svg": {"density": 0.3, "block_q": 32, "block_k": 16},
    "svg2": {},
    "lowbit": {"block_q": 32, "block_k": 16},
}


def _model():
    from diffusers import HunyuanVideo15Transformer3DModel

    torch.manual_seed(0)
    return HunyuanVideo15Transformer3DModel(
        in_channels=8, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        num_refiner_layers=1, mlp_ratio=2.0, text_embed_dim=32, text_embed_2_dim=24, image_embed_dim=24,
        rope_axes_dim=(4, 6, 6)).eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, 8:] = 0  # the two samples pad differently
    mask[1, 5:] = 0
    mask_2 = torch.ones(2, 6, dtype=torch.long)
    mask_2[:, 4:] = 0
    return {"hidden_states": torch.randn(2, 8, 3, 16, 16, generator=g), "timestep": torch.tensor([500.0, 500.0]),
            "encoder_hidden_states": torch.randn(2, 12, 32, generator=g), "encoder_attention_mask": mask,
            "encoder_hidden_states_2": torch.randn(2, 6, 24, generator=g), "encoder_attention_mask_2": mask_2,
            "image_embeds": torch.zeros(2, 5, 24), "return_dict": False}


@pytest.fixture(scope="module")
def stock():
    with torch.no_grad():
        return _model()(**_inputs())[0]


@pytest.mark.parametrize("method", list(METHODS))
def test_methods_ignore_padding_text_and_use_the_valid_text(stock, method):
    model = turbo.accelerate(_model(), attention=method, allow_untuned=True, **METHODS[method])
    assert all(isinstance(p, TurboHunyuanVideo15AttnProcessor) for n, p in model.attn_processors.items()
               if n.startswith("transformer_blocks."))
    x = _inputs()
    with torch.no_grad():
        out = model(**x)[0]
        # six more padding tokens (the model zeroes their embeddings; the refiner and the condition-type embedding
        # make them nonzero tokens that only the mask keeps out)
        padded = dict(x, encoder_hidden_states=torch.cat([x["encoder_hidden_states"], torch.randn(2, 6, 32)], 1),
                      encoder_attention_mask=torch.cat([x["encoder_attention_mask"], torch.zeros(2, 6).long()], 1))
        valid = dict(x, encoder_hidden_states=x["encoder_hidden_states"].clone())
        valid["encoder_hidden_states"][:, :2] += 5.0
        # (low-bit: its INT8 key blocks are cut at other places, a rounding-level change)
        torch.testing.assert_close(model(**padded)[0], out, rtol=0, atol=1e-4 if method == "lowbit" else 1e-5)
        assert not torch.allclose(model(**valid)[0], out)
    assert torch.isfinite(out).all()
    if method == "dense":
        assert torch.equal(out, stock)
    else:  # a sparse or low-bit approximation of the same attention
        assert 0 < float((out - stock).abs().max()) < 0.2 * float(stock.abs().max())


def test_dense_mask_is_the_stock_mask_row_for_row():
    text = torch.tensor([[1, 1, 0], [1, 0, 0]])
    keys = key_mask(text, 7)  # 4 video tokens, 3 text
    assert keys.shape == (2, 1, 1, 7) and keys[0, 0, 0].tolist() == [True] * 6 + [False]
    processor = TurboHunyuanVideo15AttnProcessor.__new__(TurboHunyuanVideo15AttnProcessor)
    full = processor._dense_mask(keys, 7)
    stock = keys.view(2, 1, 1, 7).repeat(1, 1, 7, 1)
    assert torch.equal(full, stock & stock.transpose(2, 3))  # diffusers' HunyuanVideo15AttnProcessor2_0 mask
    assert torch.equal(processor._dense_mask(keys, 3), full[:, :, -3:])  # the text rows only


def test_adapter_reports_the_dual_stream_blocks_and_patch():
    model = _model()
    adapter = HunyuanVideo15Adapter()
    sites = adapter.self_attention_sites(model)
    assert [s.name for s in sites] == ["transformer_blocks.0.attn", "transformer_blocks.1.attn"]
    assert adapter.patch_size(model) == (1, 1, 1) and len(adapter.denoising_blocks(model)) == 2
