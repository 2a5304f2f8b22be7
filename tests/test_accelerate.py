import imageio.v3 as iio
import numpy as np
import pytest
import torch
from diffusers.utils import export_to_video

import turbo
from turbo.adapters import METHOD_ATTR
from turbo.adapters.base import TurboProcessorMixin

from .pipes import BUILDERS, assert_same_snapshot, build, run, snapshot, transformers_of

KINDS = list(BUILDERS)
METHODS = ["dense", "sla", "sla2", "lowbit", "svg", "svg2"]
SMALL_BLOCKS = {"block_q": 16, "block_k": 16}


@pytest.fixture(scope="module")
def pipes():
    return {kind: build(kind) for kind in KINDS}


@pytest.fixture(scope="module")
def baselines(pipes):
    return {kind: run(pipes[kind], kind) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_dense_is_bit_identical_and_restore_is_exact(pipes, baselines, kind):
    pipe = pipes[kind]
    before = snapshot(pipe)
    turbo.accelerate(pipe, attention="dense")
    assert np.array_equal(run(pipe, kind), baselines[kind])
    turbo.restore(pipe)
    assert not hasattr(pipe, "turbo")
    assert_same_snapshot(before, snapshot(pipe))
    assert np.array_equal(run(pipe, kind), baselines[kind])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "method, options",
    [("sla", {"keep": 1.0}), ("sla2", {"keep": 1.0, "alpha_init": 1.0}), ("svg", {"density": 1.0}),
     ("svg2", {"top_p": 1.0, "q_clusters": 4, "k_clusters": 8})],
)
def test_full_keep_equals_dense(pipes, baselines, kind, method, options):
    pipe = pipes[kind]
    blocks = {} if method == "svg2" else SMALL_BLOCKS
    turbo.accelerate(pipe, attention=method, allow_untuned=True, **options, **blocks)
    try:
        if method == "sla":  # a trained (non-zero) proj must not matter when every block is exact
            for model in transformers_of(pipe):
                for module in model.modules():
                    if isinstance(getattr(module, METHOD_ATTR, None), turbo.attention.SLAAttention):
                        torch.nn.init.normal_(getattr(module, METHOD_ATTR).proj.weight)
        out = run(pipe, kind)
    finally:
        turbo.restore(pipe)
    np.testing.assert_allclose(out, baselines[kind], atol=2e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_end_to_end_and_writes_mp4(pipes, baselines, kind, method, tmp_path):
    pipe = pipes[kind]
    options = {"sla": {"keep": 0.25}, "sla2": {"keep": 0.25}, "svg": {"density": 0.3},
               "svg2": {"top_p": 0.5, "q_clusters": 4, "k_clusters": 8}}.get(method, {})
    blocks = SMALL_BLOCKS if method in ("sla", "sla2", "svg", "lowbit") else {}
    turbo.accelerate(pipe, attention=method, allow_untuned=True, **options, **blocks)
    try:
        frames = run(pipe, kind)
        calls = pipe.turbo.runtime.stats.calls
        assert calls[method] > 0 and set(calls) == {method}
        assert "turbo:" in str(pipe.turbo)
    finally:
        turbo.restore(pipe)
    assert frames.shape == baselines[kind].shape and np.isfinite(frames).all()
    path = tmp_path / f"{kind}-{method}.mp4"
    export_to_video(list(frames), str(path), fps=8)
    video = iio.imread(path)
    assert video.shape[0] == frames.shape[0] and video.shape[1:3] == frames.shape[1:3]


def _turbo_processors(model):
    return {name: p for name, p in model.attn_processors.items()
            if isinstance(p, TurboProcessorMixin)}


@pytest.mark.parametrize("kind", KINDS)
def test_processors_land_on_self_attention_only(pipes, kind):
    pipe = pipes[kind]
    turbo.accelerate(pipe, attention="sla", allow_untuned=True)
    try:
        for model in transformers_of(pipe):
            names = set(_turbo_processors(model))
            if kind.startswith("wan"):
                expected = {f"blocks.{i}.attn1.processor" for i in range(len(model.blocks))}
            else:
                expected = {f"transformer_blocks.{i}.attn.processor" for i in range(len(model.transformer_blocks))}
                expected |= {f"single_transformer_blocks.{i}.attn.processor"  # (HunyuanVideo 1.5 has none)
                             for i in range(len(getattr(model, "single_transformer_blocks", ())))}
                assert not any("token_refiner" in n for n in names)
            assert names == expected
            assert not any("attn2" in n for n in names)
        report = pipe.turbo
        assert report.processors_installed == sum(len(_turbo_processors(m)) for m in transformers_of(pipe))
        assert [t.component for t in report.transformers] == (
            ["transformer", "transformer_2"] if kind == "wan22-t2v" else ["transformer"])
    finally:
        turbo.restore(pipe)


def test_wan22_experts_share_one_step_counter(pipes):
    pipe = pipes["wan22-t2v"]
    steps = 4
    turbo.accelerate(pipe, attention="sla", dense_steps=2, allow_untuned=True, **SMALL_BLOCKS)
    try:
        run(pipe, "wan22-t2v", num_inference_steps=steps)
        calls = pipe.turbo.runtime.stats.calls
    finally:
        turbo.restore(pipe)
    layers = len(pipe.transformer.blocks)
    # CFG: two transformer calls per step; the first two steps (whichever expert runs them) are dense.
    assert calls["dense warm-up"] == 2 * 2 * layers
    assert calls["sla"] == (steps - 2) * 2 * layers


def test_dense_layers_and_steps_warmup(pipes):
    pipe = pipes["hunyuan-t2v"]  # embedded guidance: one call per step, 2 layers (dual + single)
    turbo.accelerate(pipe, attention="svg", dense_steps=1, dense_layers=1, **SMALL_BLOCKS)
    try:
        run(pipe, "hunyuan-t2v", num_inference_steps=3)
        calls = dict(pipe.turbo.runtime.stats.calls)
    finally:
        turbo.restore(pipe)
    assert calls == {"dense warm-up": 2 + 2, "svg": 2}


def test_accelerate_a_transformer_directly(pipes, baselines):
    pipe = pipes["wan-t2v"]
    model = turbo.accelerate(pipe.transformer, attention="dense")
    assert model is pipe.transformer and model.turbo.transformers[0].family == "wan"
    assert np.array_equal(run(pipe, "wan-t2v"), baselines["wan-t2v"])
    turbo.restore(model)
    assert not _turbo_processors(model)


def test_learnable_parts_live_under_attention_and_round_trip_safetensors(pipes, tmp_path):
    from safetensors.torch import load_file, save_file

    pipe = pipes["wan-t2v"]
    turbo.accelerate(pipe, "max", allow_untuned=True)  # sla2: proj_q, proj_k, alpha_logit per layer
    try:
        state = pipe.transformer.state_dict()
        keys = [k for k in state if METHOD_ATTR in k]
        assert {k.rsplit(".", 2)[-2] + "." + k.rsplit(".", 1)[-1] for k in keys} >= {
            "proj_q.weight", "proj_k.weight"}
        assert all(k.startswith("blocks.") and ".attn1." in k for k in keys)
        trained = {k: torch.randn_like(state[k]) for k in keys}
        save_file(trained, str(tmp_path / "turbo.safetensors"))
        pipe.transformer.load_state_dict(load_file(str(tmp_path / "turbo.safetensors")), strict=False)
        assert all(torch.equal(pipe.transformer.state_dict()[k], trained[k]) for k in keys)
        optimizer_params = [n for n, p in pipe.transformer.named_parameters() if METHOD_ATTR in n]
        assert len(optimizer_params) == len(keys)
    finally:
        turbo.restore(pipe)


def test_fused_qkv_projections_stay_bit_identical():
    pipe = build("wan-t2v")
    pipe.transformer.fuse_qkv_projections()
    assert pipe.transformer.blocks[0].attn1.fused_projections
    baseline = run(pipe, "wan-t2v")
    turbo.accelerate(pipe, attention="dense")
    try:
        assert np.array_equal(run(pipe, "wan-t2v"), baseline)
    finally:
        turbo.restore(pipe)
