"""The GPU training recipe's parts on a CPU at tiny sizes: time-budgeted step plans and the cosine schedule, the
latent pool with mixed clip lengths, VAE-only save/load, batched judging (same videos as one at a time) and the
`vae` -> `train` -> `accuracy` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from turbo.eval.harness import judge_prompts, prompt_set
from turbo.toyworld.models import ToyWorldSizes, build_pipeline, build_vae, sampling_kwargs
from turbo.toyworld.train import (
    FlowTask,
    StepPlan,
    ToyWorldWeightsError,
    TrainConfig,
    VAETask,
    _optimizer,
    load_vae,
    save_vae,
    train_pipeline,
    train_vae,
)

TINY = ToyWorldSizes.tiny()
TINY_CLIP = dict(frames=5, height=32, width=32, calibrate_count=1)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_step_plan_fixed_and_timed():
    plan = StepPlan(7)
    assert [s for s in range(20) if not plan.stop(s)] == list(range(7))
    timed = StepPlan(None, minutes=0.01, probe=8)  # 0.6 s budget, steps of ~0 s: many steps, fixed after the probe
    steps = 0
    while not timed.stop(steps):
        steps += 1
        if steps > 10**7:
            break
    assert timed.total == steps and steps > 8
    capped = StepPlan(12, minutes=5.0, probe=4)
    assert sum(1 for s in range(100) if not capped.stop(s)) == 12
    with pytest.raises(ValueError, match="steps, minutes"):
        StepPlan(None)


def test_step_plan_slowing_down_still_ends_on_time():
    """Fast probe steps, then slow ones (another process took the GPU): the plan re-estimates and ends by the clock."""
    import time

    plan = StepPlan(None, minutes=0.005, probe=4)  # 0.3 s
    start, step = time.perf_counter(), 0
    while not plan.stop(step):
        time.sleep(0.001 if step < 4 else 0.02)
        step += 1
    assert time.perf_counter() - start < 0.45 and plan.total == step and step < 100


def test_cosine_schedule_ends_at_min_lr_on_the_planned_step():
    module = torch.nn.Linear(2, 2)
    plan = StepPlan(50)
    _, opt, sched = _optimizer(module, TrainConfig(steps=50, lr=1.0, warmup=5, schedule="cosine", min_lr=0.1), plan)
    lrs = []
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.2) and max(lrs) == pytest.approx(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[5:-1], lrs[6:], strict=True))


def test_pool_and_mixed_clip_lengths_train():
    pipe = build_pipeline("wan-i2v", TINY, seed=0)
    train_vae(pipe.vae, TrainConfig(steps=1, batch_size=1, lr=1e-3, show_progress=False), VAETask(**TINY_CLIP))
    config = TrainConfig(steps=4, batch_size=2, lr=1e-3, schedule="cosine", ema_decay=0.9, show_progress=False)
    losses = train_pipeline(pipe, "wan-i2v", config, FlowTask(frames=(5, 9), height=32, width=32, pool_size=3))
    assert len(losses) == 4 and np.isfinite(losses).all()


def test_vae_save_load_and_corruption(tmp_path):
    vae = build_vae(TINY, seed=0)
    train_vae(vae, TrainConfig(steps=1, batch_size=1, lr=1e-3, show_progress=False), VAETask(**TINY_CLIP))
    save_vae(vae, tmp_path / "v", recipe={"command": "test"})
    loaded = load_vae(tmp_path / "v")
    assert loaded.config.latents_std == vae.config.latents_std
    for a, b in zip(vae.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    weights = tmp_path / "v" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(ToyWorldWeightsError, match="diffusion_pytorch_model.safetensors: sha256"):
        load_vae(tmp_path / "v")


@pytest.mark.parametrize("kind", ["wan-t2v", "hunyuan-t2v"])
def test_batched_judging_makes_the_same_videos(kind):
    pipe = build_pipeline(kind, TINY, seed=0)
    prompts = prompt_set(3, seed=4)
    kwargs = {"height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2, **sampling_kwargs(pipe, 2.0)}
    if kind == "hunyuan-t2v":
        kwargs["max_sequence_length"] = TINY.hunyuan_max_sequence_length
    batched = judge_prompts(pipe, prompts, kwargs, batch_size=3, progress=False)
    single = judge_prompts(pipe, prompts, kwargs, batch_size=1, progress=False)
    assert len(batched.results) == 3
    assert batched.flicker == pytest.approx(single.flicker, rel=1e-4, abs=1e-6)
    assert [r.accuracy() for r in batched.results] == [r.accuracy() for r in single.results]
    data = batched.to_dict()
    assert data["prompts"] == 3 and set(data["accuracy"]) >= {"colour", "shape", "motion", "all"}
    assert "| colour | shape | motion |" in batched.markdown()


def test_recipe_commands_vae_train_accuracy(tmp_path, capsys):
    from pipelines.toyworld import main

    vae_dir, model = tmp_path / "vae", tmp_path / "m"
    common = ["--sizes", "tiny", "--seed", "2", "--batch-size", "1", "--log-every", "1"]
    assert main(["vae", "--family", "wan", "--out", str(vae_dir), "--steps", "2", "--frames", "5", *common]) == 0
    recipe = json.loads((vae_dir / "toyworld_recipe.json").read_text())
    assert recipe["steps_run"] == 2 and recipe["reproduce"].endswith("--steps 2")
    assert main(["train", "--kind", "wan-t2v", "--vae", str(vae_dir), "--out", str(model), "--minutes", "0.02",
                 "--frames", "5", "--pool-size", "2", *common]) == 0
    recipe = json.loads((model / "toyworld_recipe.json").read_text())
    assert "--minutes" not in recipe["reproduce"] and recipe["reproduce"].endswith(f"--steps {recipe['steps_run']}")
    assert recipe["vae_from"] == str(vae_dir) and recipe["steps_run"] >= 30
    out_json = tmp_path / "acc.json"
    assert main(["accuracy", "--model", str(model), "--prompts", "2", "--steps", "2", "--guidance", "1", "3",
                 "--json", str(out_json)]) == 0
    reports = json.loads(out_json.read_text())
    assert [r["guidance"] for r in reports] == [1.0, 3.0] and all(r["prompts"] == 2 for r in reports)
    assert "| colour | shape | motion |" in capsys.readouterr().out
    quant_json = tmp_path / "acc-int8.json"
    assert main(["accuracy", "--model", str(model), "--prompts", "1", "--steps", "1", "--guidance", "1",
                 "--quant", "int8", "--json", str(quant_json)]) == 0
    assert json.loads(quant_json.read_text())[0]["quant"] == "int8"
    assert "quant int8" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="does not combine"):
        main(["accuracy", "--model", str(model), "--quant", "fp8", "--transformer", str(model / "transformer")])


def test_residual_wan_vae_trains_and_generates(tmp_path):
    """The Wan2.2-style residual AutoencoderKLWan: trains (unclamped decode), reloads and runs in WanPipeline."""
    import dataclasses

    sizes = dataclasses.replace(TINY, vae_residual=True)
    vae = build_vae(sizes)
    losses = train_vae(vae, TrainConfig(steps=2, batch_size=1, lr=1e-3, show_progress=False),
                       VAETask(frames=5, height=32, width=32, crop=16, long_frames=9, long_every=2, num_objects=(2, 3),
                               calibrate_count=1))
    assert len(losses) == 2 and np.isfinite(losses).all()
    save_vae(vae, tmp_path / "vae")
    pipe = build_pipeline("wan-t2v", TINY, vae=load_vae(tmp_path / "vae"))
    assert pipe.vae.config.is_residual
    video = pipe("a red circle moving left on a gray background", height=32, width=32, num_frames=5,
                 num_inference_steps=1, output_type="np", generator=torch.Generator().manual_seed(0)).frames[0]
    assert video.shape == (5, 32, 32, 3) and np.isfinite(video).all()


def test_training_keeps_no_batch_alive(monkeypatch):
    """No step's latents, targets or text embeddings outlive the step (GPU memory grew with the steps once; this pins
    down that the Python side holds nothing — the CPU part of that hunt)."""
    import gc
    import weakref

    import turbo.toyworld.train as T

    refs = []
    original = T._flow_batch

    def spy(*args, **kwargs):
        xt, timestep, target, cond = out = original(*args, **kwargs)
        refs.append([weakref.ref(t) for t in (xt, target, args[1]["x0"], *cond.values())])
        return out

    monkeypatch.setattr(T, "_flow_batch", spy)
    pipe = build_pipeline("hunyuan-t2v", TINY, seed=0)
    train_pipeline(pipe, "hunyuan-t2v", TrainConfig(steps=6, batch_size=2, ema_decay=0.9, show_progress=False),
                   FlowTask(frames=(5, 9), height=32, width=32, pool_size=3))
    gc.collect()
    assert len(refs) == 6 and all(r() is None for step in refs for r in step)


def test_decoder_only_vae_training_keeps_the_latents():
    vae = build_vae(TINY, seed=0)
    train_vae(vae, TrainConfig(steps=2, batch_size=1, lr=1e-3, show_progress=False), VAETask(**TINY_CLIP))
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    stats = (list(vae.config.latents_mean), list(vae.config.latents_std))
    train_vae(vae, TrainConfig(steps=3, batch_size=1, lr=1e-2, seed=1, show_progress=False),
              VAETask(frames=5, height=32, width=32, decoder_only=True))
    changed = {n for n, p in vae.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all(n.startswith(("decoder.", "post_quant_conv.")) for n in changed)
    assert (list(vae.config.latents_mean), list(vae.config.latents_std)) == stats
    assert all(p.requires_grad for p in vae.parameters())


def test_i2v_transformer_starts_from_the_t2v_one():
    from turbo.toyworld.train import init_from

    t2v, i2v = build_pipeline("wan-t2v", TINY, seed=0).transformer, build_pipeline("wan-i2v", TINY, seed=1).transformer
    left = init_from(i2v, t2v)
    assert left and all("image_embedder" in n or "added" in n or "add_" in n for n in left)
    patch = i2v.patch_embedding.weight
    assert torch.equal(patch[:, :16], t2v.patch_embedding.weight) and not patch[:, 16:].any()
    theirs = t2v.state_dict()
    grown = {"patch_embedding.weight"}
    assert all(torch.equal(v, theirs[k]) for k, v in i2v.state_dict().items() if k not in left and k not in grown)
