"""CPU smoke tests of the ToyWorld builders, training loops, checksummed save/load and recipe CLI (tiny sizes)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from turbo.toyworld.models import KINDS, ToyWorldSizes, build_pipeline, build_vae, param_report, video_tokens
from turbo.toyworld.tokenizer import UNK_ID, caption_tokenizer, encode_prompts
from turbo.toyworld.train import (
    FlowTask,
    ToyWorldWeightsError,
    TrainConfig,
    VAETask,
    load_toyworld,
    save_toyworld,
    train_pipeline,
    train_transformer,
    train_vae,
)

TINY = ToyWorldSizes.tiny()
SHAPE = dict(frames=5, height=32, width=32)
PROMPT = "a red circle moving left on a gray background"


def _max_len(kind: str) -> int:
    return TINY.hunyuan_max_sequence_length if kind == "hunyuan-t2v" else TINY.max_sequence_length


def _generate(pipe, kind: str, seed: int = 0) -> np.ndarray:
    kw = dict(prompt=PROMPT, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(seed),
              max_sequence_length=_max_len(kind), **{"num_frames": 5, "height": 32, "width": 32})
    if kind == "wan-i2v":
        from PIL import Image

        kw["image"] = Image.fromarray(np.full((32, 32, 3), 128, np.uint8))
    if kind == "hunyuan-t2v":
        kw.update(prompt_template={"template": "{}", "crop_start": 0}, true_cfg_scale=2.0, negative_prompt="")
    return pipe(**kw).frames


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine OpenMP spin-waiting makes them
    up to 50x slower; run this module single-threaded and restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(_one_thread):
    """One tiny pipeline per kind: VAE 2 steps, transformer 3 steps."""
    torch.manual_seed(0)
    out = {}
    for kind in KINDS:
        pipe = build_pipeline(kind, TINY, seed=0)
        train_vae(pipe.vae, TrainConfig(steps=2, batch_size=1, seed=0, lr=1e-3, show_progress=False),
                  VAETask(**SHAPE, calibrate_count=2))
        losses = train_pipeline(pipe, kind, TrainConfig(steps=3, batch_size=2, seed=0, lr=1e-3, show_progress=False),
                                FlowTask(**SHAPE, max_sequence_length=_max_len(kind)))
        out[kind] = (pipe, losses)
    return out


# ---------------------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_ids_unknown_words_and_save(tmp_path):
    tok = caption_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids, mask = encode_prompts(tok, [PROMPT], 16)  # known words: no warning
    assert UNK_ID not in ids[0].tolist() and ids[0, int(mask.sum()) - 1] == 1
    with pytest.warns(UserWarning, match="zebra"):
        ids, _ = encode_prompts(tok, "a purple Zebra moving left", 16)
    assert ids[0].tolist().count(UNK_ID) == 2  # purple, zebra
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(PROMPT).input_ids == tok(PROMPT).input_ids == tok(PROMPT.upper()).input_ids


# -------------------------------------------------------------------------------------------------------------- sizes


def test_sizes_tokens_and_budget():
    sizes = ToyWorldSizes()
    assert sizes.video_tokens == video_tokens(33, 256, 256) == 2304 >= 2048
    assert sizes.demo_video_tokens == 1280
    total_mb = 0.0
    for kind in KINDS:
        with torch.device("meta"):
            pipe = build_pipeline(kind, sizes)
        total_mb += sum(mb for _, mb in param_report(pipe).values())
    assert total_mb <= 40.0, total_mb


# ----------------------------------------------------------------------------------------------------------- training


def test_vae_overfits_fixed_batch():
    vae = build_vae(TINY, seed=0)
    losses = train_vae(vae, TrainConfig(steps=20, batch_size=1, seed=3, lr=3e-3, warmup=0, show_progress=False),
                       VAETask(**SHAPE, fixed_batch=True, calibrate_count=2))
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert len(vae.config.latents_mean) == 16 and all(s > 0 for s in vae.config.latents_std)


def test_t2v_transformer_overfits_fixed_batch(trained):
    pipe, _ = trained["wan-t2v"]
    transformer = build_pipeline("wan-t2v", TINY, seed=1).transformer
    config = TrainConfig(steps=20, batch_size=2, seed=5, lr=2e-3, warmup=0, show_progress=False)
    losses = train_transformer(transformer, pipe.vae, pipe.text_encoder, pipe.tokenizer, "wan-t2v", config,
                               FlowTask(**SHAPE, fixed_batch=True))
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_trains_and_generates(trained, kind):
    pipe, losses = trained[kind]
    assert len(losses) == 3 and all(np.isfinite(losses))
    frames = _generate(pipe, kind)
    assert frames.shape == (1, 5, 32, 32, 3) and np.isfinite(frames).all()


# -------------------------------------------------------------------------------------------------------- save / load


def test_save_load_round_trip_bit_identical(trained, tmp_path):
    kind = "wan-i2v"
    pipe, _ = trained[kind]
    sums = save_toyworld(pipe, tmp_path / "m", recipe={"command": "test"})
    assert "transformer/diffusion_pytorch_model.safetensors" in sums
    assert pipe.transformer.proj_out.weight.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    loaded = load_toyworld(tmp_path / "m")
    assert type(loaded) is type(pipe)
    for name in ("transformer", "text_encoder", "vae", "image_encoder"):
        a, b = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (name, key)
    assert loaded.vae.config.latents_std == pipe.vae.config.latents_std
    np.testing.assert_array_equal(_generate(pipe, kind, seed=1), _generate(loaded, kind, seed=1))


def test_corrupt_or_missing_file_raises_named_error(trained, tmp_path):
    pipe, _ = trained["wan-t2v"]
    sums = save_toyworld(pipe, tmp_path / "m")
    rel = "transformer/diffusion_pytorch_model.safetensors"
    path = tmp_path / "m" / rel
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ToyWorldWeightsError, match=rel) as err:
        load_toyworld(tmp_path / "m")
    assert sums[rel] in str(err.value)
    path.unlink()
    with pytest.raises(ToyWorldWeightsError, match="missing") as err:
        load_toyworld(tmp_path / "m")
    assert rel in str(err.value) and sums[rel] in str(err.value)
    (tmp_path / "m" / "checksums.json").unlink()
    with pytest.raises(ToyWorldWeightsError, match="checksums.json"):
        load_toyworld(tmp_path / "m")


# ---------------------------------------------------------------------------------------------------------------- CLI


def test_recipe_cli_tiny(tmp_path, capsys):
    from pipelines.toyworld import main

    out = tmp_path / "cli"
    argv = ["train", "--kind", "hunyuan-t2v", "--out", str(out), "--steps", "2", "--vae-steps", "1",
            "--batch-size", "1", "--seed", "3", "--sizes", "tiny", "--log-every", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "python -m pipelines.toyworld train --kind hunyuan-t2v" in text and "wall time" in text
    recipe = json.loads((out / "toyworld_recipe.json").read_text())
    assert recipe["seed"] == 3 and recipe["command"].endswith("--log-every 1")
    pipe = load_toyworld(out, dtype=torch.float32)
    assert _generate(pipe, "hunyuan-t2v").shape == (1, 5, 32, 32, 3)


def test_all_runs_the_recipe_stage_after_stage_tiny(tmp_path, capsys):
    """`all` at tiny sizes on the CPU with two steps per stage: every stage's output and the accuracy records appear,
    the Wan I2V stage starts from the Wan T2V transformer and the Wan VAE stage 2 trains its decoder only."""
    from pipelines.toyworld import main

    out = tmp_path / "all"
    argv = ["all", "--out", str(out), "--device", "cpu", "--sizes", "tiny", "--minutes", "1", "--batch-size", "1",
            "--pool-size", "2", "--frames", "5", "--eval-prompts", "1", "--eval-steps", "2", "--extra", "--steps 2",
            "--vae-extra", "--steps 2 --batch-size 1 --frames 5 --long-frames 9 --crop 0 --check 1"]
    assert main(argv) == 0
    for name in ("vae-wan-base", "vae-wan", "vae-hunyuan", "wan-t2v", "wan-i2v", "hunyuan-t2v"):
        assert (out / name / "checksums.json").is_file(), name
    for kind in ("wan-t2v", "wan-i2v", "hunyuan-t2v"):
        assert json.loads((out / f"{kind}-accuracy.json").read_text())[0]["prompts"] == 1
    i2v = json.loads((out / "wan-i2v" / "toyworld_recipe.json").read_text())
    assert i2v["initialised_from"] == str(out / "wan-t2v") and i2v["steps_run"] == 2
    assert json.loads((out / "vae-wan" / "toyworld_recipe.json").read_text())["decoder_only"] is True
    sizes = json.loads((out / "wan-t2v" / "toyworld_recipe.json").read_text())["sizes"]
    assert sizes["vae_base_dim"] == 16 and sizes["vae_residual"] is True  # the VAE it has, not the defaults
