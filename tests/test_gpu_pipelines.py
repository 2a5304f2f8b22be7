"""End to end on a CUDA GPU: tiny Wan and HunyuanVideo pipelines in bf16 with every method, through the adapters into
the Triton kernels (the CPU suite only reaches the PyTorch references)."""

import numpy as np
import pytest
import torch

import turbo
from pipelines import tiny

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Triton kernels)")]

CALL = {"prompt": "a red circle moving left on a gray background", "height": 128, "width": 128, "num_frames": 17,
        "num_inference_steps": 3, "output_type": "np"}
KERNEL_METHODS = {"sla", "sla2", "svg"} | ({"lowbit"} if torch.cuda.is_available()
                                           and torch.cuda.get_device_capability() >= (8, 9) else set())


def _pipe(kind):
    pipe = tiny.build_wan_t2v(head_dim=32) if kind == "wan" else tiny.build_hunyuan_t2v(head_dim=32)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cuda", torch.bfloat16)


def _run(pipe, kind):
    extra = tiny.HUNYUAN_CALL_KWARGS if kind == "hunyuan" else {}
    return pipe(**CALL, **extra, generator=torch.Generator().manual_seed(0)).frames[0]


@pytest.mark.parametrize("kind", ["wan", "hunyuan"])
def test_every_method_runs_on_its_kernel_path(kind):
    pipe = _pipe(kind)
    baseline = _run(pipe, kind)
    for method in ["dense", "sla", "sla2", "lowbit", "svg", "svg2"]:
        options = {"sla": {"keep": 0.3}, "sla2": {"keep": 0.3}, "svg": {"density": 0.4},
                   "svg2": {"q_clusters": 8, "k_clusters": 16}}.get(method, {})
        turbo.accelerate(pipe, attention=method, allow_untuned=True, **options)
        try:
            frames = _run(pipe, kind)
            path = pipe.turbo.transformers[0].path
            calls = dict(pipe.turbo.runtime.stats.calls)
        finally:
            turbo.restore(pipe)
        assert np.isfinite(frames).all() and frames.shape == baseline.shape, method
        assert calls.get(method, 0) > 0, (method, calls)
        if method in KERNEL_METHODS:
            assert path == "kernel", (method, path)


@pytest.mark.parametrize("kind", ["wan", "hunyuan"])
def test_sla_with_every_block_kept_matches_dense_in_bf16(kind):
    pipe = _pipe(kind)
    baseline = _run(pipe, kind)
    turbo.accelerate(pipe, attention="sla", keep=1.0, allow_untuned=True)
    try:
        frames = _run(pipe, kind)
    finally:
        turbo.restore(pipe)
    mse = float(np.mean((frames.astype(np.float64) - baseline.astype(np.float64)) ** 2))
    assert mse < 1e-4, mse  # bf16 kernel vs cuDNN: rounding only
