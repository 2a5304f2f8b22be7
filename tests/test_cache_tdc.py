"""Temporal Delta Cache (`cache="tdc"`) on tiny offline pipelines: skips with a permissive threshold and stays close to
the uncached output, threshold 0 is bit-identical, never skips in the first/last steps, caps skip runs, resets per
call, keeps per-branch state, restores exactly, composes with sparse attention, the rCM sampler and regional
compilation."""

import numpy as np
import pytest
import torch
from torch._dynamo import register_backend

import turbo
from turbo.cache import cache_stats
from turbo.cache.tdc import HOOK_NAME, TDCSettings, may_skip

from .pipes import assert_same_snapshot, build, run, snapshot, transformers_of

STEPS = 8
# HunyuanVideo: the tiny pipeline's frames are all NaN with negative_prompt "" (true CFG), hence "blurry"
CFG = {"wan-t2v": {"guidance_scale": 5.0},
       "wan22-t2v": {"guidance_scale": 5.0},
       "hunyuan-t2v": {"true_cfg_scale": 5.0, "negative_prompt": "blurry", "guidance_scale": 1.0}}
PERMISSIVE = {"cache": "tdc", "cache_threshold": 10.0, "cache_max_error": 100.0, "cache_warmup_steps": 2,
              "cache_final_steps": 1}


@pytest.fixture(scope="module")
def pipes():
    return {}


def _pipe(pipes, kind):
    if kind not in pipes:
        pipes[kind] = build(kind)
    return pipes[kind]


@pytest.fixture(scope="module")
def uncached(pipes):
    out = {}

    def get(kind):
        if kind not in out:
            out[kind] = run(_pipe(pipes, kind), kind, num_inference_steps=STEPS, **CFG[kind])
        return out[kind]

    return get


def _generate(pipe, kind, steps=STEPS, **extra):
    return run(pipe, kind, num_inference_steps=steps, **{**CFG[kind], **extra})


def _caches(pipe):
    return [token for feature, token in pipe.turbo.installed if feature.name == "cache"][0]


def _skipped(stats) -> int:
    return sum(c["skipped"] for branches in stats.values() for c in branches.values())


def _relative_error(out, ref) -> float:
    return float(np.abs(out - ref).mean() / np.abs(ref).mean())


def test_skip_rule():
    s = TDCSettings(threshold=0.1, max_error=0.15, max_skips=2, warmup_steps=2, final_steps=1)
    assert may_skip(s, 3, 10, 0.05, 0, 0.0)
    assert not may_skip(s, 1, 10, 0.05, 0, 0.0)  # warm-up
    assert not may_skip(s, 9, 10, 0.05, 0, 0.0)  # final steps
    assert not may_skip(s, 3, 10, None, 0, 0.0)  # Γ unknown (fewer than two computed steps)
    assert not may_skip(s, 3, 10, 0.1, 0, 0.0)  # not stable: Γ must be < threshold
    assert not may_skip(s, 3, 10, 0.05, 2, 0.0)  # skip cap
    assert not may_skip(s, 3, 10, 0.05, 1, 0.11)  # accumulated error would pass max_error
    assert not may_skip(TDCSettings(0.0, 100.0, 2, 0, 0), 3, 10, 0.0, 0, 0.0)  # threshold 0 never skips


def test_options_in_schema_and_validated():
    keys = {spec.key for spec in turbo.option_specs()}
    assert {"cache", "cache_threshold", "cache_max_error", "cache_max_skips", "cache_warmup_steps",
            "cache_final_steps"} <= keys
    with pytest.raises(turbo.TurboConfigError, match="cache.threshold"):
        turbo.TurboConfig().replace(cache="tdc", cache_threshold=-1.0)
    with pytest.raises(turbo.TurboConfigError, match="cache.max_skips"):
        turbo.TurboConfig().replace(cache="tdc", cache_max_skips=0)


@pytest.mark.parametrize("kind", ["wan-t2v", "hunyuan-t2v"])
def test_threshold_zero_is_bit_identical(pipes, uncached, kind):
    pipe = _pipe(pipes, kind)
    turbo.accelerate(pipe, cache="tdc", cache_threshold=0.0, cache_warmup_steps=0, cache_final_steps=0)
    try:
        out = _generate(pipe, kind)
        stats = cache_stats(pipe)
    finally:
        turbo.restore(pipe)
    assert _skipped(stats) == 0
    assert sum(c["computed"] for c in stats["transformer"].values()) > 0
    np.testing.assert_array_equal(out, uncached(kind))


@pytest.mark.parametrize("kind", ["wan-t2v", "hunyuan-t2v"])
def test_permissive_threshold_skips_and_stays_close(pipes, uncached, kind):
    pipe = _pipe(pipes, kind)
    turbo.accelerate(pipe, **PERMISSIVE)
    try:
        out = _generate(pipe, kind)
        stats = cache_stats(pipe)
        assert "tdc" in str(pipe.turbo)
    finally:
        turbo.restore(pipe)
    assert set(stats["transformer"]) == {"cond", "uncond"}
    for counts in stats["transformer"].values():
        assert counts["skipped"] > 0 and counts["computed"] > 0
    assert _relative_error(out, uncached(kind)) < 0.05


@pytest.mark.parametrize("max_skips", [1, 3])
def test_forbidden_steps_and_skip_cap(pipes, max_skips):
    warmup, final = 2, 2
    pipe = _pipe(pipes, "wan-t2v")
    turbo.accelerate(pipe, **{**PERMISSIVE, "cache_warmup_steps": warmup, "cache_final_steps": final,
                              "cache_max_skips": max_skips})
    try:
        _generate(pipe, "wan-t2v")
        (cache,) = _caches(pipe)
        skipped_at = {branch: list(at) for branch, at in cache.skipped_at.items()}
    finally:
        turbo.restore(pipe)
    assert set(skipped_at) == {"cond", "uncond"}
    for at in skipped_at.values():
        assert at and all(warmup <= step < STEPS - final for step, _ in at)
        for block in {b for _, b in at}:
            steps = sorted(step for step, b in at if b == block)
            run_length = longest = 1
            for a, b in zip(steps, steps[1:], strict=False):
                run_length = run_length + 1 if b == a + 1 else 1
                longest = max(longest, run_length)
            assert longest == max_skips  # reached (permissive threshold) and never passed


def test_state_resets_between_calls(pipes):
    pipe = _pipe(pipes, "wan-t2v")
    turbo.accelerate(pipe, **PERMISSIVE)
    try:
        first = _generate(pipe, "wan-t2v")
        (cache,) = _caches(pipe)
        first_skips = {b: list(at) for b, at in cache.skipped_at.items()}
        second = _generate(pipe, "wan-t2v")
        second_skips = {b: list(at) for b, at in cache.skipped_at.items()}
        stats = cache_stats(pipe)
    finally:
        turbo.restore(pipe)
    np.testing.assert_array_equal(first, second)
    assert first_skips == second_skips
    assert all(c["skipped"] == 2 * len(first_skips[b]) for b, c in stats["transformer"].items())  # both calls


def test_state_is_separate_per_branch(pipes):
    """A steady cond stream and a changing uncond stream, interleaved like CFG: cond skips, uncond never does (a
    shared state would see the alternating inputs and skip neither), and cond's skipped output is its own."""
    pipe = _pipe(pipes, "wan-t2v")
    model = pipe.transformer
    generator = torch.Generator().manual_seed(0)
    latent_shape = (1, model.config.in_channels, 3, 8, 8)
    cond_latents = torch.randn(latent_shape, generator=generator)
    text = torch.randn(1, 8, model.config.text_dim, generator=generator)
    timestep = torch.tensor([500.0])
    # cond repeats its input (Γ = 0 exactly), uncond draws new latents each step (Γ far above 0.01)
    turbo.accelerate(pipe, **{**PERMISSIVE, "cache_threshold": 0.01, "cache_warmup_steps": 0, "cache_final_steps": 0})
    try:
        cond_outputs = []
        with torch.no_grad():
            for step in range(6):
                with model.cache_context("cond", step_index=step, num_inference_steps=6):
                    cond_outputs.append(model(hidden_states=cond_latents, timestep=timestep,
                                              encoder_hidden_states=text, return_dict=False)[0])
                with model.cache_context("uncond", step_index=step, num_inference_steps=6):
                    model(hidden_states=torch.randn(latent_shape, generator=generator) * (step + 1) ** 2,
                          timestep=timestep, encoder_hidden_states=text, return_dict=False)
        stats = cache_stats(pipe)["transformer"]
    finally:
        turbo.restore(pipe)
    assert stats["uncond"]["skipped"] == 0
    assert stats["cond"]["skipped"] > 0
    for output in cond_outputs[1:]:
        torch.testing.assert_close(output, cond_outputs[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["wan-t2v", "hunyuan-t2v", "wan22-t2v"])
def test_restore_is_exact(pipes, kind):
    pipe = _pipe(pipes, kind)
    before = snapshot(pipe)
    blocks = [b for m in transformers_of(pipe) for b in m.modules() if b is not m]
    block_state = [(hasattr(b, "_diffusers_hook"), "forward" in vars(b)) for b in blocks]
    turbo.accelerate(pipe, **PERMISSIVE)
    hooked = [b for b in blocks if HOOK_NAME in getattr(getattr(b, "_diffusers_hook", None), "hooks", {})]
    assert hooked
    _generate(pipe, kind, steps=4)
    turbo.restore(pipe)
    assert_same_snapshot(before, snapshot(pipe))
    assert [(hasattr(b, "_diffusers_hook"), "forward" in vars(b)) for b in blocks] == block_state


def test_wan22_caches_both_experts(pipes, uncached):
    pipe = _pipe(pipes, "wan22-t2v")
    turbo.accelerate(pipe, **PERMISSIVE)
    try:
        out = _generate(pipe, "wan22-t2v")
        stats = cache_stats(pipe)
    finally:
        turbo.restore(pipe)
    assert set(stats) == {"transformer", "transformer_2"}
    assert _skipped(stats) > 0
    assert _relative_error(out, uncached("wan22-t2v")) < 0.05


@pytest.mark.parametrize("method, options", [
    ("svg", {"density": 0.5, "block_q": 16, "block_k": 16}),
    ("sla", {"keep": 0.5, "block_q": 16, "block_k": 16}),
])
def test_composes_with_sparse_attention(pipes, method, options):
    pipe = _pipe(pipes, "wan-t2v")
    turbo.accelerate(pipe, attention=method, allow_untuned=True, **options)
    try:
        reference = _generate(pipe, "wan-t2v")
    finally:
        turbo.restore(pipe)
    turbo.accelerate(pipe, attention=method, allow_untuned=True, **options, **PERMISSIVE)
    try:
        out = _generate(pipe, "wan-t2v")
        stats = cache_stats(pipe)
    finally:
        turbo.restore(pipe)
    assert _skipped(stats) > 0
    assert np.isfinite(out).all()
    assert _relative_error(out, reference) < 0.05


def test_composes_with_rcm_sampler(pipes):
    pipe = _pipe(pipes, "wan-t2v")
    turbo.accelerate(pipe, sampler="rcm", sampler_steps=4, **{**PERMISSIVE, "cache_warmup_steps": 1,
                                                               "cache_final_steps": 1})
    try:
        out = run(pipe, "wan-t2v", num_inference_steps=4, guidance_scale=1.0)
        (cache,) = _caches(pipe)
        skipped_at = dict(cache.skipped_at)
        stats = cache_stats(pipe)["transformer"]
    finally:
        turbo.restore(pipe)
    assert np.isfinite(out).all()
    assert set(stats) == {"cond"} and stats["cond"]["computed"] + stats["cond"]["skipped"] == 4 * 2
    # Γ needs two computed steps (0 and 1), the last step (3) is kept: step 2 is the only one that may skip
    assert all(step == 2 for step, _ in skipped_at["cond"])


def test_regional_compile_keeps_blocks_compiled(pipes):
    graphs = []

    @register_backend
    def tdc_test_backend(gm, example_inputs):
        graphs.append(len(gm.graph.nodes))
        return gm.forward

    pipe = _pipe(pipes, "wan-t2v")
    turbo.accelerate(pipe, **PERMISSIVE)
    try:
        eager = _generate(pipe, "wan-t2v")
        eager_stats = cache_stats(pipe)
    finally:
        turbo.restore(pipe)
    torch._dynamo.reset()
    turbo.accelerate(pipe, compile="regional", compile_backend="tdc_test_backend", **PERMISSIVE)
    try:
        compiled = _generate(pipe, "wan-t2v")
        stats = cache_stats(pipe)
    finally:
        turbo.restore(pipe)
        torch._dynamo.reset()
    assert stats == eager_stats and _skipped(stats) > 0
    np.testing.assert_allclose(compiled, eager, atol=1e-5)
    assert max(graphs) > 50  # the block's own forward is a compiled graph (the hook's frame stays outside it)
