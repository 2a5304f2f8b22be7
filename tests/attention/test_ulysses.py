"""Turbo's attention methods under diffusers' Ulysses context parallelism: two `torchrun` processes on the CPU (gloo)
give what one process gives, for every method, with `enable_parallelism` before or after `turbo.accelerate`; the
exchange trades sequence for heads (each rank the whole sequence, half the heads); ring attention, joint text-video
attention and a method without context-parallel support are refused in one sentence; a ToyWorld generation with
SVG and the Temporal Delta Cache skips what one process skips."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import turbo
from turbo.errors import TurboConfigError

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = Path(__file__).with_name("ulysses_cpu_launch.py")


def test_every_method_under_ulysses_gives_the_one_process_output():
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(LAUNCH)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    cases = re.findall(r"^case (\w+) (\w+) (\S+) (\S+) (\d+) (.*)$", proc.stdout, re.M)
    assert len(cases) == 2 * 2 * 6, proc.stdout  # two ranks × two orders × six methods
    for method, order, difference, scale, exchanges, shapes in cases:
        assert float(scale) > 0.1 and float(difference) <= 1e-5 * float(scale), (method, order, difference)
        if method == "dense":  # diffusers' own Ulysses attention
            assert exchanges == "0", (method, order)
        else:  # q, k, v of both layers: 192 tokens (all), 2 of 4 heads
            assert exchanges == "6" and shapes == "[(1, 192, 2, 16)]", (method, order, exchanges, shapes)
    refused = re.findall(r"^refused ring: (.*)$", proc.stdout, re.M)
    assert len(refused) == 2 and all("Ulysses" in r and "ring_degree=2" in r for r in refused), proc.stdout
    # a whole ToyWorld generation: SVG + the Temporal Delta Cache decide and skip as in one process (the cache sees
    # each rank's shard and all-reduces its sums), and the frames agree
    toyworld = re.findall(r"^toyworld (\S+) (\S+) (\d+) (\d+) (\d+) (\d+)$", proc.stdout, re.M)
    assert len(toyworld) == 2, proc.stdout
    for before, after, one, skipped_before, skipped_after, total in toyworld:
        assert 0 < int(one) < int(total) and one == skipped_before == skipped_after, toyworld
        assert float(before) <= 2e-3 and float(after) <= 2e-3, toyworld


def _tiny_wan():
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=4,
                                 out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=1,
                                 rope_max_seq_len=64)


@pytest.mark.parametrize("degrees, method, message", [
    ({"ring_degree": 2}, "sla", "Ulysses context parallelism only (ring_degree=2)"),
    ({"ulysses_degree": 2}, "unsupported", "does not support diffusers context parallelism"),
])
def test_context_parallel_refusals(degrees, method, message, monkeypatch):
    import dataclasses

    from diffusers import ContextParallelConfig
    from diffusers.models._modeling_parallel import ParallelConfig

    from turbo.attention import feature
    from turbo.registry import method_spec

    model = _tiny_wan()
    model._parallel_config = ParallelConfig(context_parallel_config=ContextParallelConfig(**degrees))
    if method == "unsupported":  # a method registered without context-parallel support
        method = "lowbit"
        spec = dataclasses.replace(method_spec(method), context_parallel=False)
        monkeypatch.setattr(feature, "method_spec", lambda name: spec if name == method else method_spec(name))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TurboConfigError, match=re.escape(message)):
        turbo.accelerate(model, attention=method, allow_untuned=True)
    assert not hasattr(model, "turbo") and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    turbo.accelerate(model, attention="dense")  # diffusers' own context-parallel attention: allowed


def test_hunyuan_joint_attention_under_context_parallelism_is_refused():
    from diffusers import ContextParallelConfig
    from diffusers.models._modeling_parallel import ParallelConfig

    from pipelines import tiny

    pipe = tiny.build_hunyuan_t2v()
    pipe.transformer._parallel_config = ParallelConfig(context_parallel_config=ContextParallelConfig(ulysses_degree=2))
    with pytest.raises(TurboConfigError, match="joint text-video attention"):
        turbo.accelerate(pipe, attention="svg")
