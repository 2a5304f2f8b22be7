"""Distillation data caches (turbo.distill.data): teacher latents, a video folder, ToyWorld clips; reading them back."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import types

import numpy as np
import pytest
import torch

from tests import pipes
from turbo.distill.data import (
    MANIFEST_FILE,
    NEGATIVE_FILE,
    LatentCache,
    LatentCacheError,
    cache_teacher_latents,
    cache_toyworld,
    cache_video_folder,
    encode_videos,
)
from turbo.errors import TurboError, UnsupportedModelError

SIZE = {"height": 64, "width": 64, "num_frames": 9}  # latents [16, 3, 8, 8]
PROMPTS = ["a red circle moving left on a gray background", "a blue square moving up", "a green triangle"]


def _one_sentence(message: str) -> bool:
    return "\n" not in message and message.count(". ") == 0


@pytest.fixture(scope="module")
def pipe():
    return pipes.build("wan-t2v")


@pytest.fixture(scope="module")
def teacher_cache(pipe, tmp_path_factory):
    directory = tmp_path_factory.mktemp("teacher") / "cache"
    out = cache_teacher_latents(pipe, PROMPTS, directory, num_inference_steps=2, guidance_scale=5.0, seed=7,
                                shard_size=2, dtype=torch.float32, progress=False, **SIZE)
    assert out == directory
    return directory


def test_teacher_latents_round_trip(pipe, teacher_cache):
    cache = LatentCache(teacher_cache)
    assert len(cache) == 3 and cache.prompts == PROMPTS
    for i in range(3):
        item = cache[i]
        assert set(item) == {"latents", "prompt_embeds", "index"} and item["index"] == i
        assert item["latents"].shape == (16, 3, 8, 8) and item["latents"].dtype == torch.float32
        assert item["prompt_embeds"].shape == (512, 32)  # padded to WanPipeline's max_sequence_length
    m = cache.manifest
    assert m["count"] == 3 and m["source"] == "teacher" and m["pipeline"] == "WanPipeline"
    assert m["negative_prompt"] == "" and m["skipped"]["count"] == 0 and m["dtype"] == "float32"
    assert [s["count"] for s in m["shards"]] == [2, 1] and m["shapes"]["latents"] == [16, 3, 8, 8]
    assert m["settings"]["num_inference_steps"] == 2 and m["settings"]["guidance_scale"] == 5.0

    # the stored embeddings are the pipeline's own, and clip 1 is what the teacher draws from seed 7 + 1
    embeds, negative = pipe.encode_prompt(PROMPTS[1], negative_prompt="", max_sequence_length=512)
    assert cache.negative_prompt_embeds.shape == (1, 512, 32)
    torch.testing.assert_close(cache.negative_prompt_embeds, negative)
    torch.testing.assert_close(cache[1]["prompt_embeds"], embeds[0])
    ref = pipe(prompt=PROMPTS[1], num_inference_steps=2, guidance_scale=5.0, output_type="latent",
               generator=torch.Generator().manual_seed(8), **SIZE).frames[0]
    torch.testing.assert_close(cache[1]["latents"], ref, atol=1e-5, rtol=1e-4)

    # a DataLoader batches it; the dataset survives pickling (worker processes reopen the shards)
    batch = next(iter(torch.utils.data.DataLoader(cache, batch_size=2)))
    assert batch["latents"].shape == (2, 16, 3, 8, 8) and batch["index"].tolist() == [0, 1]
    clone = pickle.loads(pickle.dumps(cache))
    torch.testing.assert_close(clone[2]["latents"], cache[2]["latents"])
    assert cache[-1]["index"] == 2
    with pytest.raises(IndexError):
        cache[3]


def test_latents_follow_the_pipeline_decode_convention(pipe):
    """WanPipeline decodes with ``latents / (1 / latents_std) + latents_mean``: that must give back the VAE's z."""
    video = torch.rand(1, 3, 9, 64, 64) * 2 - 1
    latents = encode_videos(pipe, video)
    z = pipe.vae.encode(video).latent_dist.mode()
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std_inv = 1.0 / torch.tensor(pipe.vae.config.latents_std).view(1, 16, 1, 1, 1)
    torch.testing.assert_close(latents / std_inv + mean, z, atol=1e-5, rtol=1e-5)


def test_corrupted_shard_is_named(teacher_cache, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(teacher_cache, broken)
    shard = broken / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(LatentCacheError) as err:
        LatentCache(broken)
    assert str(shard) in str(err.value) and _one_sentence(str(err.value))


def test_not_a_cache(tmp_path, teacher_cache):
    for directory in (tmp_path / "missing", tmp_path):
        with pytest.raises(TurboError) as err:
            LatentCache(directory)
        assert str(directory) in str(err.value) and "not a latent cache" in str(err.value)
        assert _one_sentence(str(err.value))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(teacher_cache / MANIFEST_FILE, unfinished / MANIFEST_FILE)
    with pytest.raises(LatentCacheError, match="unfinished"):
        LatentCache(unfinished)


def test_refuses_to_overwrite_and_bad_pipelines(pipe, teacher_cache):
    with pytest.raises(LatentCacheError, match="overwrite=True"):
        cache_teacher_latents(pipe, ["x"], teacher_cache, num_inference_steps=1, guidance_scale=1.0, **SIZE)
    for bad in (object(), types.SimpleNamespace(transformer=pipe.transformer, encode_prompt=pipe.encode_prompt)):
        with pytest.raises(UnsupportedModelError) as err:
            cache_toyworld(bad, 1, teacher_cache / "never")
        assert "supported: a text-to-video WanPipeline" in str(err.value) and _one_sentence(str(err.value))
    with pytest.raises(LatentCacheError, match="multiples of 16"):
        cache_toyworld(pipe, 1, teacher_cache / "never", height=60, width=64, num_frames=9)


def _write_video(path, frames: int, height: int, width: int, seed: int) -> None:
    import imageio.v2 as imageio

    rng = np.random.default_rng(seed)
    video = [rng.integers(0, 255, (height, width, 3), dtype=np.uint8) for _ in range(frames)]
    if path.suffix == ".gif":
        imageio.mimsave(path, video, duration=0.1)
    else:
        imageio.mimsave(path, video, fps=8)


def _has_ffmpeg() -> bool:
    try:
        import imageio_ffmpeg

        return bool(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception:  # noqa: BLE001
        return False


def test_video_folder_skips_and_reports_bad_files(pipe, tmp_path, caplog):
    folder = tmp_path / "videos"
    folder.mkdir()
    _write_video(folder / "red_ball.gif", 10, 40, 56, seed=0)  # caption: the stem
    second = folder / ("b.mp4" if _has_ffmpeg() else "b.gif")
    _write_video(second, 12, 48, 80, seed=1)
    (folder / "b.txt").write_text("a blue square\n")  # caption: the sidecar
    (folder / "broken.mp4").write_bytes(b"not a video" * 50)
    (folder / "notes.md").write_text("ignored: not a video extension")
    with caplog.at_level(logging.WARNING, logger="turbo"):
        directory = cache_video_folder(pipe, folder, tmp_path / "cache", batch_size=2, progress=False, **SIZE)
    cache = LatentCache(directory)
    assert len(cache) == 2 and cache.prompts == ["a blue square", "red_ball"]
    assert cache[0]["latents"].shape == (16, 3, 8, 8) and cache[0]["latents"].dtype == torch.bfloat16
    skipped = cache.manifest["skipped"]
    assert skipped["count"] == 1 and skipped["items"][0]["name"] == "broken.mp4"
    assert "unreadable" in skipped["items"][0]["reason"]
    assert cache.manifest["files"] == [second.name, "red_ball.gif"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipped 1 video" in w and "broken.mp4" in w for w in warnings)
    # captions from a dict win over sidecars; too-short clips are skipped too
    _write_video(folder / "short.gif", 3, 40, 56, seed=2)
    directory = cache_video_folder(pipe, folder, tmp_path / "cache", captions={"red_ball": "a red circle"},
                                   overwrite=True, progress=False, **SIZE)
    cache = LatentCache(directory)
    assert cache.prompts == ["a blue square", "a red circle"]
    assert sorted(s["name"] for s in cache.manifest["skipped"]["items"]) == ["broken.mp4", "short.gif"]


def test_video_folder_with_nothing_usable_fails_in_one_sentence(pipe, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "broken.gif").write_bytes(b"GIF89a garbage")
    with pytest.raises(LatentCacheError) as err:
        cache_video_folder(pipe, folder, tmp_path / "cache", progress=False, **SIZE)
    assert "nothing was cached (1 inputs skipped" in str(err.value) and _one_sentence(str(err.value))
    assert not (tmp_path / "cache" / MANIFEST_FILE).exists()


def test_toyworld_cache(pipe, tmp_path):
    from turbo.toyworld.videos import parse_caption, sample_videos

    directory = cache_toyworld(pipe, 2, tmp_path / "toy", seed=3, batch_size=1, progress=False, **SIZE)
    cache = LatentCache(directory)
    assert len(cache) == 2 and cache.manifest["source"] == "toyworld"
    assert cache.prompts == sample_videos(3, 2, 9, 64, 64)[2]  # the same draws as the ToyWorld trainer's data
    for prompt in cache.prompts:
        parsed = parse_caption(prompt)
        assert parsed.background is not None and all(o.shape and o.colour and o.motion for o in parsed.objects)
    assert cache[1]["latents"].shape == (16, 3, 8, 8) and cache[1]["prompt_embeds"].shape == (512, 32)
    assert (directory / NEGATIVE_FILE).is_file()
    assert json.loads((directory / MANIFEST_FILE).read_text())["settings"]["seed"] == 3
