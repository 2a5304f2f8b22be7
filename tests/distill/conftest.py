"""Shared fixtures of the distillation trainer tests: tiny Wan T2V and HunyuanVideo T2V teachers, each with a 4-clip
ToyWorld latent cache."""

import pytest
import torch


def _tiny_pipe(build):
    pipe = build()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tiny_cache(pipe, directory, max_sequence_length):
    """4 ToyWorld clips at 64×64, 9 frames: the size the trainer tests use (their HEIGHT, WIDTH, FRAMES)."""
    from turbo.distill.data import LatentCache, cache_toyworld

    cache_toyworld(pipe, 4, directory, height=64, width=64, num_frames=9, max_sequence_length=max_sequence_length,
                   dtype=torch.float32, progress=False, overwrite=True)
    return LatentCache(directory)


@pytest.fixture(scope="module")
def pipe():
    from pipelines import tiny

    return _tiny_pipe(tiny.build_wan_t2v)


@pytest.fixture(scope="module")
def cache(pipe, tmp_path_factory):
    return _tiny_cache(pipe, tmp_path_factory.mktemp("cache"), 32)


@pytest.fixture(scope="module")
def hunyuan():
    """A tiny HunyuanVideo T2V teacher with true CFG and no guidance embedding (as the ToyWorld one)."""
    from pipelines import tiny

    return _tiny_pipe(lambda: tiny.build_hunyuan_t2v(guidance_embeds=False))


@pytest.fixture(scope="module")
def hunyuan_cache(hunyuan, tmp_path_factory):
    return _tiny_cache(hunyuan, tmp_path_factory.mktemp("hcache"), 16)
