"""Shared fixtures of the distillation trainer tests: a tiny Wan T2V teacher and a 4-clip ToyWorld latent cache."""

import pytest
import torch


@pytest.fixture(scope="module")
def pipe():
    from pipelines import tiny

    pipe = tiny.build_wan_t2v()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def cache(pipe, tmp_path_factory):
    """64×64, 9 frames, 32 text tokens: the size the trainer tests use (their HEIGHT, WIDTH, FRAMES)."""
    from turbo.distill.data import LatentCache, cache_toyworld

    directory = tmp_path_factory.mktemp("cache")
    cache_toyworld(pipe, 4, directory, height=64, width=64, num_frames=9, max_sequence_length=32,
                   dtype=torch.float32, progress=False, overwrite=True)
    return LatentCache(directory)
