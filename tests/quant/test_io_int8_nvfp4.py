"""INT8 and NVFP4 transformers saved once and loaded without their high-precision linears (turbo/quant/io.py): the
same folder format and contract as the FP8 path (tests/test_quant_save_load.py)."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import turbo
from pipelines import tiny
from turbo.errors import TurboConfigError
from turbo.quant.int8 import INT8Linear
from turbo.quant.io import MODE_KEY, MODULES_KEY, QUANT_FILE, STORED
from turbo.quant.nvfp4 import FP8, NVFP4Linear

from ..pipes import run

CLASSES = {"int8": INT8Linear, "nvfp4": NVFP4Linear}
DTYPES = {"int8": {"weight_q": torch.int8, "weight_scale": torch.float32},
          "nvfp4": {"packed": torch.uint8, "block_scale": FP8, "tensor_scale": torch.float32}}
WIDE_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _pipe():
    """A tiny bf16 Wan whose block linears all have K a multiple of 16 (inner dim 32), so nvfp4 quantises them all."""
    pipe = tiny.build_wan_t2v(num_heads=2, head_dim=16, dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module", params=["int8", "nvfp4"])
def saved(request, tmp_path_factory):
    """A tiny Wan accelerated with int8 or nvfp4, its output and state, the original (bf16) linears' shapes and the
    folder it was saved to; the pipeline is restored afterwards (its transformer back to bf16)."""
    mode = request.param
    pipe = _pipe()
    originals = {n: m.weight.shape for n, m in pipe.transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    turbo.accelerate(pipe, quant=mode)
    quantised = {n for n, m in pipe.transformer.named_modules() if isinstance(m, CLASSES[mode])}
    reference = run(pipe, "wan-t2v")
    state = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    directory = tmp_path_factory.mktemp(f"wan-{mode}")
    written = turbo.save_quantized(pipe, directory)
    turbo.restore(pipe)
    return {"mode": mode, "pipe": pipe, "reference": reference, "state": state, "quantised": quantised,
            "shapes": {n: originals[n] for n in quantised}, "dir": directory, "written": written}


def _one_sentence(error) -> str:
    message = str(error.value)
    assert "\n" not in message and message.endswith(".")
    return message


def test_save_writes_the_modes_buffers_metadata_and_recipe(saved):
    mode, folder = saved["mode"], saved["dir"] / "transformer"
    assert saved["written"] == [folder]
    assert len(saved["quantised"]) == 20  # 2 blocks × (4 self + 4 cross attention + 2 feed-forward)
    assert json.loads((folder / "turbo_config.json").read_text())["quant"]["mode"] == mode
    with safe_open(str(folder / QUANT_FILE), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata[MODE_KEY] == mode and set(json.loads(metadata[MODULES_KEY])) == saved["quantised"]
    tensors = load_file(str(folder / QUANT_FILE))
    stored = 0
    for name in saved["quantised"]:
        n, k = saved["shapes"][name]
        assert f"{name}.weight" not in tensors and tensors[f"{name}.bias"].dtype == torch.bfloat16
        for buffer, dtype in DTYPES[mode].items():
            assert tensors[f"{name}.{buffer}"].dtype == dtype
            stored += tensors[f"{name}.{buffer}"].numel() * tensors[f"{name}.{buffer}"].element_size()
    per_weight = {"int8": lambda n, k: n * k + 4 * n, "nvfp4": lambda n, k: n * k // 2 + n * k // 16 + 4}[mode]
    assert stored == sum(per_weight(n, k) for n, k in saved["shapes"].values())
    if mode == "nvfp4":  # the codes, e4m3 block scales and tensor scales against the bf16 weights they replace
        bf16 = sum(2 * n * k for n, k in saved["shapes"].values())
        assert 0.28 <= stored / bf16 < 0.285


class _FloatTensors(TorchDispatchMode):
    """Records the distinct non-meta float tensors (not fp8) that any op produces, by shape."""

    def __init__(self):
        super().__init__()
        self.by_shape = defaultdict(set)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and not tensor.is_meta and tensor.dtype in WIDE_FLOATS:
                self.by_shape[tuple(tensor.shape)].add(tensor.data_ptr())
        return out


def test_loaded_model_never_holds_float_weights_and_runs_bit_identically(saved):
    mode, folder = saved["mode"], saved["dir"] / "transformer"
    file_floats = defaultdict(int)  # float tensors the file itself holds (other linears' weights), by shape
    for tensor in load_file(str(folder / QUANT_FILE)).values():
        if tensor.dtype in WIDE_FLOATS:
            file_floats[tuple(tensor.shape)] += 1
    with _FloatTensors() as seen:
        model = turbo.load_quantized(saved["dir"], device="cpu")
    for shape in {tuple(s) for s in saved["shapes"].values()}:  # no [N, K] float tensor beyond the file's own
        assert len(seen.by_shape[shape]) <= file_floats[shape], shape
    with _FloatTensors() as control:  # the recorder does see a materialised weight
        torch.nn.Linear(32, 32, dtype=torch.bfloat16)
    assert len(control.by_shape[(32, 32)]) >= 1

    quantised = {n for n, m in model.named_modules() if isinstance(m, CLASSES[mode])}
    assert quantised == saved["quantised"]
    for name in quantised:
        module = model.get_submodule(name)
        assert not list(module.parameters()) and f"{name}.weight" not in model.state_dict()
        assert {b: t.dtype for b, t in module.named_buffers() if b != "bias"} == DTYPES[mode]
        assert module.backend == {"int8": "int_mm", "nvfp4": "reference"}[mode]
    assert not any(t.is_meta for t in model.state_dict().values())
    state = model.state_dict()
    assert state.keys() == saved["state"].keys()
    assert all(torch.equal(state[k], saved["state"][k]) for k in state)

    pipe = saved["pipe"]  # restored: its bf16 transformer is replaced by the loaded one
    pipe.transformer = model
    modules = {n: id(model.get_submodule(n)) for n in quantised}
    np.testing.assert_array_equal(run(pipe, "wan-t2v"), saved["reference"])

    turbo.accelerate(pipe)  # the recipe beside the weights: this mode, nothing left to swap
    assert pipe.turbo.config.quant.mode == mode and pipe.turbo.recipe is not None
    assert {n: id(model.get_submodule(n)) for n in quantised} == modules
    assert any(f"loaded already quantised to {mode.upper()}" in w for w in pipe.turbo.warnings)
    np.testing.assert_array_equal(run(pipe, "wan-t2v"), saved["reference"])
    turbo.restore(pipe)  # no original weights to bring back: the loaded linears stay
    assert {n: id(model.get_submodule(n)) for n in quantised} == modules
    assert not any(isinstance(model.get_submodule(n), torch.nn.Linear) for n in quantised)
    other = "fp8" if mode != "fp8" else "int8"
    with pytest.raises(TurboConfigError, match=f"loaded already quantised to {mode.upper()}"):
        turbo.accelerate(pipe, quant=other, allow_untuned=True)


def _rewrite_metadata(folder, **changes) -> None:
    with safe_open(str(folder / QUANT_FILE), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(load_file(str(folder / QUANT_FILE)), str(folder / QUANT_FILE), metadata={**metadata, **changes})


def test_a_corrupted_mode_fails_in_one_sentence(saved, tmp_path):
    mode, other = saved["mode"], tmp_path / "other"
    shutil.copytree(saved["dir"] / "transformer", other)
    wrong = {"int8": "nvfp4", "nvfp4": "int8"}[mode]
    _rewrite_metadata(other, **{MODE_KEY: wrong})
    with pytest.raises(turbo.TurboError, match="does not match its tensors") as error:
        turbo.load_quantized(other, device="cpu")
    missing = next(iter(STORED[wrong]))
    assert f"quantised to '{wrong}'" in _one_sentence(error) and f".{missing} is missing" in str(error.value)

    _rewrite_metadata(other, **{MODE_KEY: "fp8"})  # int8's weight_q has fp8's name and shape, not its dtype
    with pytest.raises(turbo.TurboError, match="does not match its tensors") as error:
        turbo.load_quantized(other, device="cpu")
    _one_sentence(error)
    if mode == "int8":
        assert "weight_q is I8" in str(error.value)

    for unknown in ("int4", "nvfp4-mixed"):
        _rewrite_metadata(other, **{MODE_KEY: unknown})
        with pytest.raises(turbo.TurboError, match=f"holds quant mode '{unknown}'") as error:
            turbo.load_quantized(other, device="cpu")
        assert "'int8'" in _one_sentence(error) and "'nvfp4'" in str(error.value)


def test_another_architecture_fails_in_one_sentence(saved, tmp_path):
    from diffusers import HunyuanVideoTransformer3DModel

    mode, other = saved["mode"], tmp_path / "other"
    shutil.copytree(saved["dir"] / "transformer", other)
    config = json.loads((other / "config.json").read_text())

    with torch.device("meta"):  # a HunyuanVideo config in the folder: the class check
        HunyuanVideoTransformer3DModel(num_attention_heads=2, attention_head_dim=16, num_layers=1,
                                       num_single_layers=1, num_refiner_layers=1).save_config(str(other))
    with pytest.raises(turbo.TurboError, match="different models") as error:
        turbo.load_quantized(other, device="cpu")
    _one_sentence(error)
    _rewrite_metadata(other, **{"turbo.model.class": "HunyuanVideoTransformer3DModel"})  # consistent header too
    with pytest.raises(turbo.TurboError, match="not a linear layer of the HunyuanVideoTransformer3DModel") as error:
        turbo.load_quantized(other, device="cpu")
    _one_sentence(error)
    _rewrite_metadata(other, **{"turbo.model.class": "WanTransformer3DModel"})

    (other / "config.json").write_text(json.dumps({**config, "num_attention_heads": 3}))  # a wider Wan
    with pytest.raises(turbo.TurboError, match="shape mismatch") as error:
        turbo.load_quantized(other, device="cpu")
    _one_sentence(error)

    (other / "config.json").write_text(json.dumps({**config, "attention_head_dim": 12}))  # inner dim 24
    if mode == "nvfp4":  # K = 24 cannot hold NVFP4 blocks of 16
        with pytest.raises(turbo.TurboError, match=r"\(not a multiple of 16\); the files belong to different") as error:
            turbo.load_quantized(other, device="cpu")
    else:
        with pytest.raises(turbo.TurboError, match="shape mismatch") as error:
            turbo.load_quantized(other, device="cpu")
    _one_sentence(error)


def test_nvfp4_mixed_and_a_model_with_two_modes_are_refused_in_one_sentence(tmp_path):
    from turbo.quant import save_calibration
    from turbo.quant.router import model_fingerprint

    pipe = _pipe()
    calibration = tmp_path / "calibration.json"
    save_calibration({"alpha": 0.0, "beta": 0.0, "samples": 2, "r2": 1.0,
                      "model": model_fingerprint(pipe.transformer)}, calibration)
    turbo.accelerate(pipe, quant="nvfp4-mixed", quant_calibration=str(calibration))
    with pytest.raises(turbo.TurboError, match="cannot store quant='nvfp4-mixed'") as error:
        turbo.save_quantized(pipe, tmp_path / "mixed")
    _one_sentence(error)
    turbo.restore(pipe)

    turbo.accelerate(pipe, quant="int8")
    attention = pipe.transformer.blocks[0].attn1
    int8 = attention.to_q
    attention.to_q = NVFP4Linear(torch.nn.Linear(32, 32))  # as if a loaded model got a second mode on top
    try:
        with pytest.raises(turbo.TurboError, match="one quant mode per model") as error:
            turbo.save_quantized(pipe, tmp_path / "two")
        assert "NVFP4Linear (blocks.0.attn1.to_q)" in _one_sentence(error)
    finally:
        attention.to_q = int8
    assert not (tmp_path / "two").exists()  # checked before anything is written
    turbo.restore(pipe)
