"""Temporal Delta Cache (`cache="tdc"`) on tiny offline pipelines: skips with a permissive threshold and stays close to
the uncached output, threshold 0 is bit-identical, never skips in the first/last steps, caps skip runs, resets per
call, keeps per-branch state, aligns decisions across CFG branches, skips whole spans, extrapolates residuals exactly
when they are linear in the step, caps and reports the residual memory, restores exactly, composes with sparse
attention, the rCM sampler and regional compilation."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch._dynamo import register_backend

import turbo
from turbo.cache import cache_stats
from turbo.cache.tdc import HOOK_NAME, TDCSettings, TransformerCache, make_spans, may_skip

from .pipes import assert_same_snapshot, build, run, snapshot, transformers_of

STEPS = 8
# HunyuanVideo: the tiny pipeline's frames are all NaN with negative_prompt "" (true CFG), hence "blurry"
CFG = {"wan-t2v": {"guidance_scale": 5.0},
       "wan22-t2v": {"guidance_scale": 5.0},
       "hunyuan-t2v": {"true_cfg_scale": 5.0, "negative_prompt": "blurry", "guidance_scale": 1.0},
       "hunyuan15-t2v": {}}  # CFG through the pipeline's guider (scale 6), cache contexts pred_cond / pred_uncond
BRANCHES = {"hunyuan15-t2v": ("pred_cond", "pred_uncond")}
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
            "cache_final_steps", "cache_span", "cache_aligned", "cache_extrapolate", "cache_max_memory_gb"} <= keys
    with pytest.raises(turbo.TurboConfigError, match="cache.threshold"):
        turbo.TurboConfig().replace(cache="tdc", cache_threshold=-1.0)
    with pytest.raises(turbo.TurboConfigError, match="cache.max_skips"):
        turbo.TurboConfig().replace(cache="tdc", cache_max_skips=0)


@pytest.mark.parametrize("kind", ["wan-t2v", "hunyuan-t2v", "hunyuan15-t2v"])
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


@pytest.mark.parametrize("kind", ["wan-t2v", "hunyuan-t2v", "hunyuan15-t2v"])
def test_permissive_threshold_skips_and_stays_close(pipes, uncached, kind):
    pipe = _pipe(pipes, kind)
    turbo.accelerate(pipe, **PERMISSIVE)
    try:
        out = _generate(pipe, kind)
        stats = cache_stats(pipe)
        assert "tdc" in str(pipe.turbo)
    finally:
        turbo.restore(pipe)
    assert set(stats["transformer"]) == set(BRANCHES.get(kind, ("cond", "uncond")))
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


@pytest.mark.parametrize("aligned", [False, True])
def test_state_is_separate_per_branch(pipes, aligned):
    """A steady cond stream and a changing uncond stream, interleaved like CFG. Decisions per branch: cond skips,
    uncond never does (a shared state would see the alternating inputs and skip neither), and cond's skipped output
    is its own. Aligned decisions: uncond's error vetoes both, so neither skips."""
    pipe = _pipe(pipes, "wan-t2v")
    model = pipe.transformer
    generator = torch.Generator().manual_seed(0)
    latent_shape = (1, model.config.in_channels, 3, 8, 8)
    cond_latents = torch.randn(latent_shape, generator=generator)
    text = torch.randn(1, 8, model.config.text_dim, generator=generator)
    timestep = torch.tensor([500.0])
    # cond repeats its input (Γ = 0 exactly), uncond draws new latents each step (Γ far above 0.01)
    turbo.accelerate(pipe, **{**PERMISSIVE, "cache_threshold": 0.01, "cache_warmup_steps": 0, "cache_final_steps": 0,
                              "cache_aligned": aligned})
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
    assert (stats["cond"]["skipped"] > 0) != aligned
    for output in cond_outputs[1:]:
        torch.testing.assert_close(output, cond_outputs[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["wan-t2v", "hunyuan-t2v", "wan22-t2v", "hunyuan15-t2v"])
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


def test_make_spans():
    assert make_spans(6, 0) == [(0, 5)]
    assert make_spans(6, 1) == [(i, i) for i in range(6)]
    assert make_spans(5, 2) == [(0, 1), (2, 3), (4, 4)]
    assert make_spans(3, 10) == [(0, 2)]


@pytest.mark.parametrize("kind, span", [("wan-t2v", 0), ("wan-t2v", 1), ("hunyuan-t2v", 0), ("hunyuan-t2v", 2),
                                        ("hunyuan15-t2v", 0)])
def test_spans_skip_whole_and_aligned(pipes, uncached, kind, span):
    """A skipped span skips all of its blocks at that step; aligned decisions skip the same (step, block)s in both
    CFG branches; the video stays close to the uncached one."""
    pipe = _pipe(pipes, kind)
    turbo.accelerate(pipe, **PERMISSIVE, cache_span=span)
    try:
        out = _generate(pipe, kind)
        (cache,) = _caches(pipe)
        skipped_at = {branch: sorted(at) for branch, at in cache.skipped_at.items()}
        spans = cache.spans
    finally:
        turbo.restore(pipe)
    cond, uncond = BRANCHES.get(kind, ("cond", "uncond"))
    assert skipped_at[cond] and skipped_at[cond] == skipped_at[uncond]
    for step in {s for s, _ in skipped_at[cond]}:
        blocks = {b for s, b in skipped_at[cond] if s == step}
        assert all(set(range(a, b + 1)) <= blocks or not set(range(a, b + 1)) & blocks for a, b in spans)
    if span == 0:
        assert len(spans) == 1
    assert _relative_error(out, uncached(kind)) < 0.05


class RampBlock(torch.nn.Module):
    """A block whose residual grows linearly with the step: hidden_states + (1 + step) · v."""

    def __init__(self, clock, v):
        super().__init__()
        self.clock = clock
        self.v = v

    def forward(self, hidden_states):
        return hidden_states + (1.0 + self.clock.step_index) * self.v


class FlickerBlock(RampBlock):
    """A block whose residual is constant up to a flicker drawn afresh every step (the noise of, e.g., quantised
    activations): hidden_states + v + 0.01 · |v| · n_step, n_step ~ N(0, 1) seeded by the step. Extrapolating from
    two noisy residuals misses by about √3 × what holding the last one misses."""

    def forward(self, hidden_states):
        noise = torch.randn(self.v.shape, generator=torch.Generator().manual_seed(self.clock.step_index))
        return hidden_states + self.v + 0.01 * self.v.abs() * noise


def _ramp(settings, steps=10, block_cls=RampBlock):
    """Run 3 `block_cls` blocks for `steps` steps (one branch) through a TransformerCache; (outputs, exact outputs
    of RampBlocks, cache)."""
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

    TransformerBlockRegistry.register(block_cls, TransformerBlockMetadata(return_hidden_states_index=0))
    clock = SimpleNamespace(step_index=0, branch="cond", stats=SimpleNamespace(requests=1))
    generator = torch.Generator().manual_seed(0)
    blocks = torch.nn.ModuleList(block_cls(clock, torch.randn(2, 5, 4, generator=generator)) for _ in range(3))
    model = torch.nn.Module()
    model.blocks = blocks
    cache = TransformerCache(model, list(blocks), settings, clock, lambda: steps)
    cache.install()
    x = torch.randn(2, 5, 4, generator=generator)
    outputs, exact = [], []
    try:
        for step in range(steps):
            clock.step_index = step
            h = x
            for block in blocks:
                h = block(h)
            outputs.append(h)
            exact.append(x + (1.0 + step) * sum(b.v for b in blocks))
    finally:
        cache.remove()
    return outputs, exact, cache


def test_extrapolation_is_exact_on_linear_residuals():
    """The residual is linear in the step: extrapolation predicts it exactly (ε = 0, so only max_skips and the
    first/last steps stop skipping) and the skipped outputs equal the computed ones; holding is off by the drift."""
    settings = TDCSettings(threshold=0.01, max_error=0.05, max_skips=3, warmup_steps=2, final_steps=1)
    outputs, exact, cache = _ramp(settings)
    skipped = sorted({step for step, _ in cache.skipped_at["cond"]})
    assert skipped == [3, 4, 5, 7, 8]  # computed 0, 1, 2 (ε known from step 2), 6 (max_skips), 9 (last)
    for out, ref in zip(outputs, exact, strict=True):
        torch.testing.assert_close(out, ref)
    held, exact, cache = _ramp(TDCSettings(threshold=10.0, max_error=100.0, max_skips=3, warmup_steps=2,
                                           final_steps=1, extrapolate=False))
    assert cache.skipped_at["cond"]
    assert max(float((h - e).abs().max()) for h, e in zip(held, exact, strict=True)) > 0.1


def test_flickering_residual_is_held_not_extrapolated():
    """When holding the residual missed less than extrapolating it at the last computation (a flicker drawn afresh
    every step, as quantisation noise is), the cache holds it and judges stability by the hold miss: it skips at a
    threshold the extrapolation miss never passes, and a held skip returns input + the last computed residual."""
    import turbo.cache.tdc as tdc

    # per-step misses one step ahead on these blocks (measured): holding 0.007–0.011, extrapolating 0.011–0.018
    settings = TDCSettings(threshold=0.015, max_error=0.1, max_skips=1, warmup_steps=2, final_steps=1)
    outputs, _, cache = _ramp(settings, steps=16, block_cls=FlickerBlock)
    state = cache.states.for_branch("cond")
    skipped = sorted({step for step, _ in cache.skipped_at["cond"]})
    assert len(skipped) >= 5 and state.hold[0]
    for step in skipped[1:]:  # the first skip follows a tie (no extrapolation checked yet): it extrapolates
        last = max(s for s in range(step) if s not in skipped)
        torch.testing.assert_close(outputs[step], outputs[last])  # held (the input is the same every step)
    original = tdc.BranchCache.resolve_pending

    def extrapolate_only(self):  # the choice switched off: every rate is the extrapolation miss
        pending = {span: (torch.cat([sums[:2], sums[:2]]), gap) for span, (sums, gap) in self.pending.items()}
        self.pending = pending
        original(self)

    tdc.BranchCache.resolve_pending = extrapolate_only
    try:
        assert len(_ramp(settings, steps=16, block_cls=FlickerBlock)[2].skipped_at["cond"]) <= 3  # ≤ 1 step
    finally:
        tdc.BranchCache.resolve_pending = original


def test_memory_cap_and_report(pipes, uncached):
    """The residual memory is reported; a cap below one span's residual keeps nothing (no skips, bit-identical
    output) and says so; per block, a cap of a few spans keeps some, never more than the cap."""
    pipe = _pipe(pipes, "wan-t2v")
    turbo.accelerate(pipe, **PERMISSIVE)
    try:
        _generate(pipe, "wan-t2v")
        (cache,) = _caches(pipe)
        peak = cache.peak_bytes
        report = str(pipe.turbo)
    finally:
        turbo.restore(pipe)
    assert peak > 0 and "residual memory peak transformer" in report
    span_bytes = peak // 4  # one span, two branches, residual + slope each
    turbo.accelerate(pipe, **PERMISSIVE, cache_max_memory_gb=span_bytes / 2**30)
    try:
        out = _generate(pipe, "wan-t2v")
        (cache,) = _caches(pipe)
        stats, refused, report = cache_stats(pipe), cache.refused, str(pipe.turbo)
    finally:
        turbo.restore(pipe)
    assert _skipped(stats) == 0 and refused > 0 and "refused" in report
    np.testing.assert_array_equal(out, uncached("wan-t2v"))
    cap = 5 * span_bytes  # per block: room for 2.5 blocks' residual + slope in two branches
    turbo.accelerate(pipe, **PERMISSIVE, cache_span=1, cache_max_memory_gb=cap / 2**30)
    try:
        _generate(pipe, "wan-t2v")
        (cache,) = _caches(pipe)
        stats, peak, refused = cache_stats(pipe), cache.peak_bytes, cache.refused
    finally:
        turbo.restore(pipe)
    assert _skipped(stats) > 0 and refused > 0 and 0 < peak <= cap
