"""FP8 transformers saved once and loaded without their high-precision linears (turbo/quant/io.py)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import turbo
from turbo.quant.fp8 import FP8, FP8Linear
from turbo.quant.io import FORMAT_KEY, MODULES_KEY, QUANT_FILE

from .pipes import build, run


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny Wan accelerated with fp8, its output, its state and the folder it was saved to."""
    pipe = build("wan-t2v")
    turbo.accelerate(pipe, quant="fp8")
    reference = run(pipe, "wan-t2v")
    state = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    quantised = {n for n, m in pipe.transformer.named_modules() if isinstance(m, FP8Linear)}
    directory = tmp_path_factory.mktemp("wan-fp8")
    written = turbo.save_quantized(pipe, directory)
    return {"reference": reference, "state": state, "quantised": quantised, "dir": directory, "written": written}


def test_save_writes_a_diffusers_folder_with_fp8_tensors_metadata_and_recipe(saved):
    folder = saved["dir"] / "transformer"
    assert saved["written"] == [folder]
    assert json.loads((folder / "config.json").read_text())["_class_name"] == "WanTransformer3DModel"
    assert json.loads((folder / "turbo_config.json").read_text())["quant"]["mode"] == "fp8"
    with safe_open(str(folder / QUANT_FILE), framework="pt") as handle:
        metadata = handle.metadata()
        keys = set(handle.keys())
    assert metadata[FORMAT_KEY] == "1" and metadata["turbo.quant.mode"] == "fp8"
    assert set(json.loads(metadata[MODULES_KEY])) == saved["quantised"]
    tensors = load_file(str(folder / QUANT_FILE))
    name = "blocks.0.attn1.to_q"
    assert tensors[f"{name}.weight_q"].dtype == FP8 and tensors[f"{name}.weight_scale"].dtype == torch.float32
    assert f"{name}.weight" not in keys
    assert {"rope.freqs_cos", "rope.freqs_sin"} <= keys  # non-persistent buffers travel too


def test_loaded_model_is_fp8_without_original_weights_and_runs_bit_identically(saved, caplog):
    model = turbo.load_quantized(saved["dir"], device="cpu")  # a pipeline folder: finds transformer/
    quantised = {n for n, m in model.named_modules() if isinstance(m, FP8Linear)}
    assert quantised == saved["quantised"]
    for name in quantised:
        module = model.get_submodule(name)
        assert "weight" not in dict(module.named_parameters()) and "weight" not in dict(module.named_buffers())
        with pytest.raises(turbo.TurboConfigError, match="no high-precision weight"):  # turbo/quant/lora.py
            _ = module.weight
        assert module.weight_q.dtype == FP8 and not module.use_gemm
    assert not any(t.is_meta for t in model.state_dict().values())
    state = model.state_dict()
    assert state.keys() == saved["state"].keys()
    assert all(torch.equal(state[k], saved["state"][k]) for k in state)

    pipe = build("wan-t2v")
    pipe.transformer = model
    fp8_modules = {n: id(model.get_submodule(n)) for n in quantised}
    np.testing.assert_array_equal(run(pipe, "wan-t2v"), saved["reference"])

    turbo.accelerate(pipe)  # the recipe beside the weights: quant fp8, nothing left to swap
    assert pipe.turbo.config.quant.mode == "fp8" and pipe.turbo.recipe is not None
    assert {n: id(model.get_submodule(n)) for n in quantised} == fp8_modules
    assert not any(isinstance(m, torch.nn.Linear) for n, m in model.named_modules() if n in quantised)
    assert any("loaded already quantised" in w and "restore" in w for w in pipe.turbo.warnings)
    np.testing.assert_array_equal(run(pipe, "wan-t2v"), saved["reference"])

    with caplog.at_level(logging.WARNING, logger="turbo"):
        turbo.restore(pipe)
    assert "keeps" in caplog.text and "FP8" in caplog.text
    assert {n: id(model.get_submodule(n)) for n in quantised} == fp8_modules
    np.testing.assert_array_equal(run(pipe, "wan-t2v"), saved["reference"])


def _one_sentence(error) -> str:
    message = str(error.value)
    assert "\n" not in message and message.endswith(".")
    return message


def test_bad_folders_fail_with_one_sentence(saved, tmp_path):
    import shutil

    with pytest.raises(turbo.TurboError, match="holds no turbo_quantized") as error:
        turbo.load_quantized(tmp_path, device="cpu")
    _one_sentence(error)

    source = saved["dir"] / "transformer"
    other = tmp_path / "other"
    shutil.copytree(source, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "_class_name": "HunyuanVideoTransformer3DModel"}))
    with pytest.raises(turbo.TurboError, match="different models") as error:
        turbo.load_quantized(other, device="cpu")
    _one_sentence(error)

    (other / "config.json").write_text(json.dumps({**config, "ffn_dim": config["ffn_dim"] * 2}))
    with pytest.raises(turbo.TurboError, match="shape mismatch") as error:
        turbo.load_quantized(other, device="cpu")
    _one_sentence(error)

    (other / "config.json").write_text(json.dumps({**config, "num_layers": config["num_layers"] + 1}))
    with pytest.raises(turbo.TurboError, match="missing") as error:
        turbo.load_quantized(other, device="cpu")
    _one_sentence(error)

    (other / "config.json").write_text(json.dumps(config))
    with safe_open(str(other / QUANT_FILE), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(load_file(str(other / QUANT_FILE)), str(other / QUANT_FILE), metadata={**metadata, FORMAT_KEY: "2"})
    with pytest.raises(turbo.TurboError, match="newer than this turbo") as error:
        turbo.load_quantized(other, device="cpu")
    _one_sentence(error)


def test_a_transformer_alone_saves_into_the_folder_and_unquantised_models_are_refused(tmp_path):
    pipe = build("wan-t2v")
    turbo.accelerate(pipe)
    with pytest.raises(turbo.TurboError, match="quant='fp8'") as error:
        turbo.save_quantized(pipe, tmp_path)
    _one_sentence(error)
    turbo.restore(pipe)
    with pytest.raises(turbo.TurboError, match="not accelerated") as error:
        turbo.save_quantized(pipe, tmp_path)
    _one_sentence(error)

    turbo.accelerate(pipe.transformer, quant="fp8")
    assert turbo.save_quantized(pipe.transformer, tmp_path) == [tmp_path]
    model = turbo.load_quantized(tmp_path, device="cpu")
    latents = torch.randn(1, 16, 3, 8, 8)
    text = torch.randn(1, 7, model.config.text_dim)
    timestep = torch.tensor([500])
    with torch.no_grad():
        expected = pipe.transformer(latents, timestep, text, return_dict=False)[0]
        np.testing.assert_array_equal(model(latents, timestep, text, return_dict=False)[0].numpy(), expected.numpy())
