"""Packed students (`turbo.distill.pack`): pack / unpack round trip within bf16's own rounding error, 4 bits for a
small fine-tune, the bits chosen by the error bound, unpacking once into the cache, and the refusals (missing or
changed base, not a transformer directory, not a pack)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from turbo.distill.pack import BF16_ERROR, PACK_FILE, PackError, is_packed, pack_student, student_dir, unpack_student

WEIGHTS = "diffusion_pytorch_model.safetensors"


def _model_dir(path, tensors):
    path.mkdir(parents=True)
    save_file(tensors, str(path / WEIGHTS))
    (path / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    return path


@pytest.fixture()
def pair(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = {"a.weight": (torch.randn(96, 64, generator=g) * 0.05).bfloat16(),
            "b.weight": (torch.randn(200, generator=g) * 0.05).bfloat16(),
            "table": torch.randn(4, 8, generator=g)}  # fp32 (kept in fp32): stored as it is
    student = {"a.weight": (base["a.weight"].float() + torch.randn(96, 64, generator=g) * 2e-4).bfloat16(),
               "b.weight": (base["b.weight"].float() + torch.randn(200, generator=g) * 0.005).bfloat16(),
               "table": base["table"] + 0.1, "new.bias": torch.ones(3, dtype=torch.bfloat16)}
    s = _model_dir(tmp_path / "student", student)
    (s / "turbo_config.json").write_text("{}")
    (s / "README.md").write_text("# card\n")
    return _model_dir(tmp_path / "teacher", base), s, student


def _error(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_round_trip_within_bf16_rounding_and_bits_by_the_error_bound(pair, tmp_path):
    base, student_path, student = pair
    report = pack_student(student_path, base, tmp_path / "packed")
    packed = tmp_path / "packed"
    assert is_packed(packed) and not (packed / WEIGHTS).exists()
    assert (packed / "turbo_config.json").is_file() and "## Packed" in (packed / "README.md").read_text()
    info = json.loads(__import__("safetensors").safe_open(str(packed / PACK_FILE), "pt").metadata()["tensors"])
    assert info["a.weight"]["bits"] == 4  # a small fine-tune: 4 bits meet the bound
    assert info["b.weight"]["bits"] == 8  # a large change needs 8
    assert info["table"]["bits"] == 0 and info["new.bias"]["bits"] == 0  # fp32 / no base tensor: as it is
    assert report["bits"] == {0: 2, 4: 1, 8: 1} and report["error"] <= BF16_ERROR
    out = unpack_student(packed, cache=tmp_path / "cache")
    back = load_file(str(out / WEIGHTS))
    assert set(back) == set(student) and all(back[k].dtype == student[k].dtype for k in student)
    for name in ("a.weight", "b.weight"):
        assert _error(back[name], student[name]) <= BF16_ERROR
    assert torch.equal(back["table"], student["table"]) and torch.equal(back["new.bias"], student["new.bias"])
    assert (out / "turbo_config.json").is_file() and not (out / PACK_FILE).exists()
    # once: a second call returns the same directory without writing it again
    stamp = (out / WEIGHTS).stat().st_mtime_ns
    assert unpack_student(packed, cache=tmp_path / "cache") == out and (out / WEIGHTS).stat().st_mtime_ns == stamp
    assert student_dir(student_path) == student_path  # not packed: itself
    (packed / "turbo_config.json").write_text('{"vae": {"mode": "fast"}}')  # a changed recipe: unpacked afresh
    again = unpack_student(packed, cache=tmp_path / "cache")
    assert again != out and (again / "turbo_config.json").read_text() == '{"vae": {"mode": "fast"}}'


def test_a_tighter_bound_stores_more_bits(pair, tmp_path):
    base, student_path, _ = pair
    loose = pack_student(student_path, base, tmp_path / "loose")
    tight = pack_student(student_path, base, tmp_path / "tight", max_error=1e-9)
    assert tight["bits"] == {0: 4} and tight["bytes"] > loose["bytes"]


def test_refusals(pair, tmp_path):
    base, student_path, _ = pair
    with pytest.raises(PackError, match="no diffusion_pytorch_model.safetensors"):
        pack_student(tmp_path, base, tmp_path / "x")
    with pytest.raises(PackError, match="not a packed student"):
        unpack_student(student_path, cache=tmp_path / "cache")
    pack_student(student_path, base, tmp_path / "packed")
    weights = load_file(str(base / WEIGHTS))
    save_file({**weights, "a.weight": weights["a.weight"] * 2}, str(base / WEIGHTS))
    with pytest.raises(PackError, match="SHA-256 differs"):
        unpack_student(tmp_path / "packed", cache=tmp_path / "cache")
    (base / WEIGHTS).unlink()
    with pytest.raises(PackError, match="missing"):
        unpack_student(tmp_path / "packed", cache=tmp_path / "cache")
