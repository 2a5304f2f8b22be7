import torch

import turbo
from pipelines.tiny import meta_transformer
from turbo.adapters import adapter_for
from turbo.geometry import TokenGeometry, geometry_from_latents


def test_wan_480p_81_frames_is_32760_tokens_on_the_real_config():
    model = meta_transformer("wan2.1-t2v-1.3b")
    adapter = adapter_for(model)
    sites = adapter.self_attention_sites(model)
    assert len(sites) == 30 and all(s.name.endswith(".attn1") for s in sites)
    assert (sites[0].heads, sites[0].head_dim) == (12, 128)
    # latents of 480×832, 81 frames: 16 × 21 × 60 × 104
    geometry = geometry_from_latents((1, 16, 21, 60, 104), adapter.patch_size(model))
    assert geometry == TokenGeometry(21, 30, 52) and geometry.num_tokens == 32760


def test_meta_forward_reports_the_geometry_to_turbo():
    model = meta_transformer("wan2.1-t2v-1.3b")
    turbo.accelerate(model, attention="dense")
    try:
        latents = torch.empty(1, 16, 21, 60, 104, device="meta")
        text = torch.empty(1, 512, 4096, device="meta")
        with torch.no_grad():
            out = model(hidden_states=latents, timestep=torch.ones(1, device="meta"), encoder_hidden_states=text,
                        return_dict=False)[0]
        assert out.shape == latents.shape
        assert model.turbo.runtime.geometry == TokenGeometry(21, 30, 52)
        assert model.turbo.runtime.stats.calls["dense"] == 30
    finally:
        turbo.restore(model)


def test_hunyuan_real_config_sites_exclude_the_token_refiner():
    model = meta_transformer("hunyuanvideo")
    sites = adapter_for(model).self_attention_sites(model)
    assert len(sites) == 20 + 40
    assert [s.layer_index for s in sites] == list(range(60))
    assert not any("refiner" in s.name for s in sites)
    assert adapter_for(model).patch_size(model) == (1, 2, 2)
