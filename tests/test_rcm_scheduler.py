"""The rCM few-step sampler: grid values, save/load, step semantics, and the `sampler="rcm"` feature in tiny Wan
pipelines (transformer calls, timesteps, Wan2.2 expert switch, exact restore) plus one-sentence refusals."""

import math

import numpy as np
import pytest
import torch

import turbo
from turbo.schedulers import RCMScheduler, rcm_rf_times

from .pipes import build, run

PUBLISHED_80 = [0.9877, 0.9338, 0.8529, 0.6090]  # TurboDiffusion's 4-step RF times for sigma_max 80


def test_grid_matches_the_published_rf_times():
    times = rcm_rf_times(4, 80.0)
    assert times[-1] == 0.0 and len(times) == 5
    assert [round(t, 4) for t in times[:4]] == PUBLISHED_80
    assert round(rcm_rf_times(4, 200.0)[0], 4) == 0.9950 and round(rcm_rf_times(4, 120.0)[0], 4) == 0.9917
    assert rcm_rf_times(1, 80.0) == [pytest.approx(80 / 81), 0.0]  # 1 step: a single jump from sigma_max
    scheduler = RCMScheduler()
    assert scheduler.timesteps.dtype == torch.float32 and scheduler.rf_times.dtype == torch.float64
    assert scheduler.timesteps.tolist() == [988.0, 932.0, 852.0, 608.0]  # 1000·t in bf16, as rCM's models saw it
    exact = RCMScheduler(bf16_timesteps=False)
    assert torch.allclose(exact.timesteps.double(), torch.tensor(times[:4], dtype=torch.float64) * 1000)
    assert scheduler.init_noise_sigma == pytest.approx(80 / 81)


def test_save_pretrained_round_trip(tmp_path):
    scheduler = RCMScheduler(num_steps=3, sigma_max=200.0, mid_t=[1.3, 1.0, 0.6], stochastic=False, noise_seed=7)
    scheduler.save_pretrained(tmp_path)
    loaded = RCMScheduler.from_pretrained(tmp_path)
    def public(config):
        return {k: v for k, v in config.items() if not k.startswith("_")}

    assert public(loaded.config) == public(scheduler.config)
    assert torch.equal(loaded.timesteps, scheduler.timesteps)
    assert list(loaded.config.mid_t) == [1.3, 1.0, 0.6]


def _sample_run(scheduler, seed=0, generator=None):
    """A fake 3-step generation with a fixed 'velocity model' on a [1, 4, 2, 4, 4] float32 latent."""
    x = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(seed))
    scheduler.set_timesteps(scheduler.config.num_steps)
    scheduler.set_begin_index(0)
    for t in scheduler.timesteps:
        v = torch.tanh(x) * (t / 1000)
        x = scheduler.step(v, t, x, generator=generator, return_dict=False)[0]
    return x


def test_stochastic_steps_are_reproducible_and_the_ode_variant_is_deterministic():
    stochastic = RCMScheduler(num_steps=3)
    a, b, c = _sample_run(stochastic), _sample_run(stochastic), _sample_run(stochastic, seed=1)
    assert a.dtype == torch.float32 and torch.equal(a, b) and not torch.allclose(a, c)
    # a passed generator is the noise source; a fixed noise_seed makes the draws independent of the latents
    g1 = _sample_run(stochastic, generator=torch.Generator().manual_seed(5))
    g2 = _sample_run(stochastic, generator=torch.Generator().manual_seed(5))
    g3 = _sample_run(stochastic, generator=torch.Generator().manual_seed(6))
    assert torch.equal(g1, g2) and not torch.equal(g1, g3)
    ode = RCMScheduler(num_steps=3, stochastic=False)
    assert torch.equal(_sample_run(ode), _sample_run(ode))
    assert not torch.allclose(_sample_run(ode), a)


def test_step_math_in_float64():
    scheduler = RCMScheduler(num_steps=2, stochastic=False)
    scheduler.set_timesteps(2)
    t0, t1 = scheduler.rf_times[:2].tolist()
    x = torch.randn(1, 2, 1, 2, 2)
    v = torch.randn(1, 2, 1, 2, 2)
    out, x0 = scheduler.step(v, scheduler.timesteps[0], x, return_dict=False)
    assert torch.allclose(x0, (x.double() - t0 * v.double()).float())
    assert torch.allclose(out, (x.double() - (t0 - t1) * v.double()).float())
    last, x0_last = scheduler.step(v, scheduler.timesteps[1], out, return_dict=False)
    assert torch.equal(last, x0_last)  # the last step returns x0
    stochastic = RCMScheduler(num_steps=2, noise_seed=3)
    stochastic.set_timesteps(2)
    out = stochastic.step(v, stochastic.timesteps[0], x).prev_sample
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    expected = (1 - t1) * (x.double() - t0 * v.double()) + t1 * noise.double()
    assert torch.allclose(out, expected.float())


def test_the_scheduler_runs_the_calls_count_up_to_len_mid_t_plus_one_and_refuses_more():
    scheduler = RCMScheduler(num_steps=4)
    scheduler.set_timesteps(2)
    assert scheduler.sigmas.tolist() == pytest.approx(rcm_rf_times(2, 80.0))
    scheduler.set_timesteps(None)
    assert len(scheduler.timesteps) == 4
    for count in (0, 5, 50):
        with pytest.raises(ValueError, match=f"1 to 4 steps.*num_inference_steps={count}.*=4") as error:
            scheduler.set_timesteps(count)
        assert "\n" not in str(error.value)
    for kwargs, words in [({"num_steps": 0}, "between 1 and 4"), ({"num_steps": 5}, "between 1 and 4"),
                          ({"sigma_max": 0.0}, "> 0"), ({"sigma_max": 10.0}, "decrease strictly"),
                          ({"noise_seed": -1}, "noise_seed")]:
        with pytest.raises(ValueError, match=words):
            RCMScheduler(**kwargs)


# ------------------------------------------------------------------------------------------------ the sampler feature


@pytest.fixture(scope="module")
def pipe():
    return build("wan-t2v")


def _bf16_timesteps(steps: int, sigma_max: float) -> list[float]:
    """1000·t of the rCM grid rounded to bf16: the timesteps rCM's models were trained and sampled with."""
    return [float(torch.tensor(1000 * t, dtype=torch.float64).to(torch.bfloat16)) for t in
            rcm_rf_times(steps, sigma_max)[:steps]]


def _timesteps_seen(model, calls):
    return model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(float(kwargs["timestep"][0])),
                                           with_kwargs=True)


def test_rcm_generates_in_a_stock_wan_pipeline_and_restores_exactly(pipe):
    original = pipe.scheduler
    stock_before = run(pipe, "wan-t2v")
    turbo.accelerate(pipe, sampler="rcm", sampler_steps=4)
    try:
        assert isinstance(pipe.scheduler, RCMScheduler) and "rCM 4 steps" in str(pipe.turbo)
        calls = []
        handle = _timesteps_seen(pipe.transformer, calls)
        try:
            frames = run(pipe, "wan-t2v", num_inference_steps=4, guidance_scale=1.0)
            again = run(pipe, "wan-t2v", num_inference_steps=4, guidance_scale=1.0)
            other_seed = run(pipe, "wan-t2v", seed=1, num_inference_steps=4, guidance_scale=1.0)
        finally:
            handle.remove()
        assert calls[:4] == [988.0, 932.0, 852.0, 608.0]
        assert len(calls) == 12  # exactly 4 transformer calls per generation
        assert np.isfinite(frames).all()
        assert np.array_equal(frames, again) and not np.array_equal(frames, other_seed)
        with pytest.raises(ValueError, match="1 to 4 steps"):
            run(pipe, "wan-t2v", num_inference_steps=50, guidance_scale=1.0)
        calls.clear()
        handle = _timesteps_seen(pipe.transformer, calls)
        try:
            run(pipe, "wan-t2v", num_inference_steps=1, guidance_scale=1.0)  # e.g. the CLI's warm-up call
        finally:
            handle.remove()
        assert calls == [988.0]  # 1000 * 80 / 81 in bf16
    finally:
        turbo.restore(pipe)
    assert pipe.scheduler is original
    assert pipe.config.scheduler[1] == type(original).__name__
    assert np.array_equal(run(pipe, "wan-t2v"), stock_before)


def test_bare_steps_key_and_ode_variant_route_to_the_section():
    config = turbo.TurboConfig().replace(sampler="rcm", steps=2, sampler_stochastic=False, sampler_sigma_max=200)
    assert (config.sampler.steps, config.sampler.stochastic, config.sampler.sigma_max) == (2, False, 200.0)
    assert turbo.TurboConfig.from_json(config.to_json()) == config
    assert {"sampler_steps", "sampler_sigma_max", "sampler_mid_t", "sampler_stochastic", "sampler_noise_seed"} <= {
        spec.key for spec in turbo.option_specs()}


@pytest.mark.parametrize("boundary_ratio, sigma_max", [(None, 80.0), (0.9, 200.0)])
def test_wan22_switches_expert_at_its_boundary(boundary_ratio, sigma_max):
    """build("wan22-t2v") has boundary_ratio 0.875; 0.9 with sigma_max 200 is TurboDiffusion's Wan2.2 I2V setting:
    2 high-noise steps (0.995, 0.934), then 2 low-noise steps (0.853, 0.609)."""
    from pipelines import tiny

    pipe = build("wan22-t2v") if boundary_ratio is None else tiny.build_wan22_t2v(boundary_ratio=boundary_ratio)
    pipe.set_progress_bar_config(disable=True)
    high, low = [], []
    handles = [_timesteps_seen(pipe.transformer, high), _timesteps_seen(pipe.transformer_2, low)]
    turbo.accelerate(pipe, sampler="rcm", steps=4, sampler_sigma_max=sigma_max)
    try:
        frames = run(pipe, "wan22-t2v", num_inference_steps=4, guidance_scale=1.0)
    finally:
        turbo.restore(pipe)
        for handle in handles:
            handle.remove()
    times = _bf16_timesteps(4, sigma_max)
    assert high == times[:2] and low == times[2:]
    assert np.isfinite(frames).all()


@pytest.mark.parametrize(
    "overrides, words",
    [({"steps": 0}, "outside [1, 100]"), ({"steps": 5}, "steps <= 4"), ({"sampler_sigma_max": 0}, "must be > 0"),
     ({"sampler_sigma_max": -3.0}, "must be > 0"), ({"sampler_mid_t": "1.5,x"}, "comma-separated"),
     ({"sampler_sigma_max": 10.0}, "decrease strictly")],
)
def test_bad_sampler_configs_fail_with_one_sentence(overrides, words):
    with pytest.raises(turbo.TurboConfigError) as error:
        turbo.TurboConfig().replace(sampler="rcm", **overrides)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_a_transformer_alone_is_refused_and_hunyuanvideo_samples_its_steps(pipe):
    with pytest.raises(turbo.TurboConfigError, match="has none; accelerate the pipeline") as error:
        turbo.accelerate(pipe.transformer, sampler="rcm")
    assert "\n" not in str(error.value)
    hunyuan = build("hunyuan-t2v")
    original = hunyuan.scheduler
    turbo.accelerate(hunyuan, sampler="rcm", steps=3)
    calls = []
    handle = hunyuan.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
    try:  # HunyuanVideoPipeline passes its own sigma grid: rCM keeps its step count (3), not its values
        frames = run(hunyuan, "hunyuan-t2v", num_inference_steps=3)
    finally:
        handle.remove()
    assert len(calls) == 3 and np.isfinite(frames).all() and frames.std() > 0
    with pytest.raises(ValueError, match="1 to 4 steps"):
        run(hunyuan, "hunyuan-t2v", num_inference_steps=50)
    turbo.restore(hunyuan)
    assert hunyuan.scheduler is original


def test_pipeline_save_and_load_keeps_the_rcm_scheduler(pipe, tmp_path):
    from diffusers import WanPipeline

    turbo.accelerate(pipe, sampler="rcm", steps=3, sampler_stochastic=False)
    try:
        assert tuple(pipe.config.scheduler) == ("turbo.schedulers.rcm", "RCMScheduler")
        pipe.save_pretrained(tmp_path)
        frames = run(pipe, "wan-t2v", num_inference_steps=3, guidance_scale=1.0)
    finally:
        turbo.restore(pipe)
    loaded = WanPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, RCMScheduler) and loaded.scheduler.config.num_steps == 3
    assert math.isclose(loaded.scheduler.init_noise_sigma, 80 / 81)
    assert np.array_equal(run(loaded, "wan-t2v", num_inference_steps=3, guidance_scale=1.0), frames)


def _reference_rcm(inputs, velocities, steps, sigma_max, seed, stochastic):
    """TurboDiffusion's sampler written out (float64 state, x0 = x − t·v, fresh noise or Euler), driven by the
    velocities the transformer returned; returns the states it would feed the model and the final x0."""
    times = rcm_rf_times(steps, sigma_max)
    generator = torch.Generator().manual_seed(seed)
    x = inputs[0].double()
    states = [x]
    for i in range(steps):
        v = velocities[i].double()
        x0 = x - times[i] * v
        if times[i + 1] == 0:
            x = x0
        elif stochastic:
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).double()
            x = (1 - times[i + 1]) * x0 + times[i + 1] * noise
        else:
            x = x - (times[i] - times[i + 1]) * v
        states.append(x)
    return states


@pytest.mark.parametrize("stochastic", [True, False])
def test_pipeline_follows_the_reference_sampler_from_the_exact_start(pipe, stochastic):
    """With latents = init_noise_sigma·ε (TurboDiffusion's start t₀·ε), the model inputs and the returned latents are
    the reference recurrence applied to the model's own velocities."""
    inputs, velocities = [], []

    def record(module, args, kwargs, output):
        inputs.append(kwargs["hidden_states"].detach().clone())
        velocities.append(output[0].detach().clone())

    turbo.accelerate(pipe, sampler="rcm", steps=3, sampler_sigma_max=200, sampler_noise_seed=11,
                     sampler_stochastic=stochastic)
    handle = pipe.transformer.register_forward_hook(record, with_kwargs=True)
    try:
        noise = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        latents = run(pipe, "wan-t2v", num_inference_steps=3, guidance_scale=1.0, output_type="latent",
                      latents=pipe.scheduler.init_noise_sigma * noise)
    finally:
        handle.remove()
        turbo.restore(pipe)
    assert len(inputs) == 3 and torch.equal(inputs[0], (rcm_rf_times(3, 200.0)[0] * noise).float())
    states = _reference_rcm(inputs, velocities, 3, 200.0, 11, stochastic)
    for got, expected in zip(inputs[1:], states[1:3], strict=True):
        assert torch.allclose(got.double(), expected, atol=1e-6)
    assert torch.allclose(latents.double(), states[3], atol=1e-6)


def test_rcm_runs_in_the_stock_image_to_video_pipeline():
    i2v = build("wan-i2v")
    calls = []
    handle = _timesteps_seen(i2v.transformer, calls)
    turbo.accelerate(i2v, sampler="rcm", steps=2, sampler_sigma_max=200)
    try:
        frames = run(i2v, "wan-i2v", num_inference_steps=2, guidance_scale=1.0)
    finally:
        turbo.restore(i2v)
        handle.remove()
    assert calls == _bf16_timesteps(2, 200.0)
    assert np.isfinite(frames).all()
