"""pipelines.registry: the model presets, offline availability, kinds read without loading, call defaults."""

import json

import pytest

from pipelines import registry

TOYWORLD = ("toyworld-wan-t2v", "toyworld-wan-i2v", "toyworld-hunyuan-t2v")
HUB = ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "Wan-AI/Wan2.1-T2V-14B-Diffusers", "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
       "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers", "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
       "hunyuanvideo-community/HunyuanVideo")


def test_lists_the_shipped_models_first_and_the_real_checkpoints():
    models = registry.list_models()
    assert tuple(m.name for m in models[:3]) == TOYWORLD
    assert models[0].name == registry.DEFAULT_MODEL == registry.get_model("default").name
    assert {m.source for m in models if not m.toyworld} == set(HUB)
    for model in models[:3]:
        assert model.toyworld and registry.is_available(model)
        assert (model.height, model.width, model.frames) == (256, 256, 17)
    assert models[0].steps == 16 and models[1].kind == "i2v" and models[2].family == "hunyuanvideo"
    assert all(m.kind in ("t2v", "i2v") and m.family in ("wan", "wan22", "hunyuanvideo") for m in models)
    wan480 = registry.get_model("wan2.1-i2v-14b-480p")
    assert (wan480.height, wan480.width, wan480.frames, wan480.steps, wan480.guidance) == (480, 832, 81, 50, 5.0)
    hunyuan = registry.get_model("hunyuanvideo")
    assert (hunyuan.height, hunyuan.width, hunyuan.frames, hunyuan.guidance) == (720, 1280, 129, 6.0)


def test_unknown_name_is_one_sentence_listing_the_names():
    with pytest.raises(registry.RegistryError) as error:
        registry.get_model("wan9")
    message = str(error.value)
    assert isinstance(error.value, ValueError) and "\n" not in message and message.count(". ") == 0
    assert all(name in message for name in TOYWORLD)


def test_model_kind_of_dir_reads_model_index_only(tmp_path):
    (tmp_path / "i2v").mkdir()
    (tmp_path / "i2v" / "model_index.json").write_text(json.dumps({"_class_name": "WanImageToVideoPipeline"}))
    assert registry.model_kind_of_dir(tmp_path / "i2v") == "i2v"  # no weights exist: nothing could be loaded
    assert registry.model_kind_of_dir(tmp_path) is None
    assert registry.model_kind_of_dir(registry.TOYWORLD_DIR / "wan-i2v") == "i2v"
    assert registry.model_kind_of_dir(registry.TOYWORLD_DIR / "hunyuan-t2v") == "t2v"
    assert registry.resolve_model(str(registry.TOYWORLD_DIR / "wan-i2v")).name == "toyworld-wan-i2v"
    assert registry.resolve_model(str(tmp_path / "i2v")).kind == "i2v"
    assert registry.resolve_model("Wan-AI/Wan2.2-I2V-A14B-Diffusers").name == "wan2.2-i2v-a14b"


def test_hub_models_are_found_in_the_local_cache_only(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    preset = registry.get_model("wan2.1-t2v-1.3b")
    assert not registry.is_available(preset)
    assert preset.source in registry.how_to_get(preset)
    repo = tmp_path / "models--Wan-AI--Wan2.1-T2V-1.3B-Diffusers"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    index = {"_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"],
             "vae": ["diffusers", "AutoencoderKLWan"], "transformer_2": [None, None]}
    (snapshot / "model_index.json").write_text(json.dumps(index))
    (snapshot / "transformer").mkdir()
    assert not registry.is_available(preset)  # the VAE folder is missing
    (snapshot / "vae").mkdir()
    assert registry.is_available(preset)


def test_call_defaults():
    assert registry.call_defaults(registry.get_model("wan2.1-t2v-1.3b")) == {
        "height": 480, "width": 832, "num_frames": 81, "num_inference_steps": 50, "guidance_scale": 5.0}
    assert registry.call_defaults(registry.get_model("hunyuanvideo"))["guidance_scale"] == 6.0
    toy_hunyuan = registry.call_defaults(registry.get_model("toyworld-hunyuan-t2v"))
    assert toy_hunyuan["true_cfg_scale"] == 5.0 and "guidance_scale" not in toy_hunyuan
    default = registry.call_defaults(registry.get_model("default"))
    assert default["num_inference_steps"] == 16 and default["guidance_scale"] == 5.0
