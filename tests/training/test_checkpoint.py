"""Training checkpoints: round trip with optimizer, EMA and RNG state; a corrupt file named in one sentence; a crash
mid-save leaves the previous checkpoint whole; sealed model directories."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

import turbo.training.checkpoint as C
from turbo.training import (
    ChecksumError,
    PowerEMA,
    capture_rng,
    join_tensors,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    seal_directory,
    split_tensors,
    verify_checksums,
)


def _trained():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = PowerEMA(model, sigma_rel=0.1)
    for _ in range(3):
        model(torch.randn(5, 3)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        ema.update(model)
    return model, opt, ema


def _save(directory, step, model, opt, ema, data_position, **kwargs):
    opt_skeleton, opt_tensors = split_tensors(opt.state_dict(), "optimizer")
    tensors = {**{f"model/{k}": v for k, v in model.state_dict().items()},
               **{f"ema/{k}": v for k, v in ema.state_dict().items()}, **opt_tensors}
    state = {"rng": capture_rng(), "data_position": data_position, "optimizer": opt_skeleton}
    return save_checkpoint(directory, step, tensors, state, **kwargs)


def test_round_trip_restores_model_optimizer_ema_and_rng(tmp_path):
    model, opt, ema = _trained()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = _save(tmp_path, 3, model, opt, ema, data_position=15)
    want = (random.random(), float(np.random.rand()), torch.rand(3))
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.path == path and ckpt.step == 3 and ckpt.state["data_position"] == 15
    model2, opt2, ema2 = _trained()
    for p in model2.parameters():
        p.data.zero_()
    model2.load_state_dict(ckpt.group("model"))
    opt2.load_state_dict(join_tensors(ckpt.state["optimizer"], ckpt.tensors))
    ema2.load_state_dict(ckpt.group("ema"))
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    for i, s in opt.state_dict()["state"].items():
        assert all(torch.equal(s[k], opt2.state_dict()["state"][i][k]) for k in s)
    assert float(ema2.num_updates) == 3 and all(torch.equal(ema.shadow[k], ema2.shadow[k]) for k in ema.shadow)
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng(ckpt.state["rng"])
    got = (random.random(), float(np.random.rand()), torch.rand(3))
    assert got[:2] == want[:2] and torch.equal(got[2], want[2])


def test_named_generator_state_round_trip():
    gen = torch.Generator().manual_seed(5)
    state = json.loads(json.dumps(capture_rng({"data": gen})))
    want = torch.randint(1000, (4,), generator=gen)
    restore_rng(state, {"data": gen})
    assert torch.equal(torch.randint(1000, (4,), generator=gen), want)


def test_corrupt_tensor_file_is_named_in_one_sentence(tmp_path):
    model, opt, ema = _trained()
    path = _save(tmp_path, 1, model, opt, ema, 0)
    tensors_file = tmp_path / json.loads(path.read_text())["tensors_file"]
    data = bytearray(tensors_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tensors_file.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{tensors_file}: sha256 ") and "corrupt" in message and path.name in message
    assert message.count(". ") == 0 and "\n" not in message  # one sentence
    tensors_file.unlink()
    with pytest.raises(ChecksumError, match="missing"):
        load_checkpoint(path)


def test_crash_mid_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    model, opt, ema = _trained()
    first = _save(tmp_path, 10, model, opt, ema, 10)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    real_write = C.atomic_write_text

    def crash(path, text):  # the tensors file is written; the process dies while writing the sidecar
        with C.atomic_path(path) as tmp:
            tmp.write_text(text[: len(text) // 2])
            raise KeyboardInterrupt("killed")

    for step in (11, 10):  # a new step, and the same step again (a SIGTERM save right after a periodic one)
        monkeypatch.setattr(C, "atomic_write_text", crash)
        with pytest.raises(KeyboardInterrupt):
            _save(tmp_path, step, model, opt, ema, step)
        monkeypatch.setattr(C, "atomic_write_text", real_write)
        assert latest_checkpoint(tmp_path) == first
        assert all(p.read_bytes() == before[p.name] for p in tmp_path.iterdir() if p.name in before)
        ckpt = load_checkpoint(tmp_path)
        assert ckpt.step == 10 and ckpt.state["data_position"] == 10
        assert not list(tmp_path.glob(".*.tmp"))  # the half-written sidecar is gone
    # the next good save commits and clears the orphaned tensor files of the crashed ones
    _save(tmp_path, 12, model, opt, ema, 12, keep=1)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".safetensors"]
    assert load_checkpoint(tmp_path).step == 12


def test_keep_prunes_old_checkpoints(tmp_path):
    for step in range(4):
        save_checkpoint(tmp_path, step, {"x": torch.full((2,), float(step))}, {"step": step}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["step-00000002.json", "step-00000003.json"]
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    assert torch.equal(load_checkpoint(tmp_path / "step-00000002.json").tensors["x"], torch.full((2,), 2.0))


def test_sealed_directory_verifies_every_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.safetensors").write_bytes(b"weights")
    sums = seal_directory(tmp_path, {"recipe.json": "{}\n"})
    assert set(sums) == {"sub/w.safetensors", "recipe.json"} and verify_checksums(tmp_path) == sums
    (tmp_path / "sub" / "w.safetensors").write_bytes(b"weightz")
    with pytest.raises(ChecksumError, match="w.safetensors: sha256 .* does not match"):
        verify_checksums(tmp_path)
    (tmp_path / "extra.safetensors").write_bytes(b"")
    seal_directory(tmp_path)
    (tmp_path / "late.safetensors").write_bytes(b"")
    with pytest.raises(ChecksumError, match="late.safetensors: weight file not listed"):
        verify_checksums(tmp_path)
