"""The distillation trainer on a tiny Wan (CPU): rCM run whose sCM residual goes down, SIGTERM + resume equals an
uninterrupted run, resume with a changed config refused, NaN stops naming the step, export loads and generates with
its own sampler, SLA fine-tuning reduces the velocity error, rcm+sla runs with the dense-JVP note, unsupported teacher,
config / command-line bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal

import pytest
import torch

from turbo.distill.config import DistillConfig, tiny_toyworld
from turbo.distill.trainer import distill
from turbo.errors import TurboConfigError, TurboError, UnsupportedModelError

RCM_STEPS = 16
SCM_WARMUP = 10  # sCM-only steps (the tangent warm-up), checkpointed at its end
HEIGHT = WIDTH = 64
FRAMES = 9


def _rcm_config(**overrides) -> DistillConfig:
    return tiny_toyworld(**{"mode": "rcm", "steps": RCM_STEPS, "lr": 1e-3, "tangent_warmup": SCM_WARMUP,
                            "save_every": SCM_WARMUP, **overrides})


@pytest.fixture(scope="module")
def rcm_run(pipe, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("rcm")
    return distill(pipe, _rcm_config(), cache, out)


def _probe(cache, seed=0):
    from turbo.distill.trigflow import trig_noise

    item = cache[0]
    x0 = item["latents"].float()[None].expand(3, -1, -1, -1, -1)
    theta = torch.tensor([0.4, 0.9, 1.3], dtype=torch.float64)
    x_t = trig_noise(x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)), theta).float()
    cond = {"encoder_hidden_states": item["prompt_embeds"].float()[None].expand(3, -1, -1)}
    uncond = {"encoder_hidden_states": cache.negative_prompt_embeds.float().expand(3, -1, -1)}
    return x_t, theta, cond, uncond


def _scm_residual(student_net, teacher_net, cache, guidance=5.0) -> float:
    """Mean ‖g‖ (the unnormalised sCM target at r = 1) on a fixed probe: 0 for a consistency model of the teacher."""
    from turbo.distill import losses as L
    from turbo.distill.jvp_attention import using_jvp_attention
    from turbo.distill.trigflow import TrigFlowModel

    x_t, theta, cond, uncond = _probe(cache)
    teacher, student = TrigFlowModel(teacher_net), TrigFlowModel(student_net)
    with torch.no_grad():
        F_T = L.cfg_combine(teacher(x_t, theta, **cond), teacher(x_t, theta, **uncond), guidance)
        t_x, t_theta = L.scm_tangents(F_T, theta)
        with using_jvp_attention(student_net):
            F, t_F = student.F_and_tangent(x_t, theta, t_x, t_theta, **cond)
        return float(L.scm_target(F, F_T, t_F, x_t, theta, 1.0).flatten(1).norm(dim=1).mean())


def test_rcm_run_alternates_and_reduces_the_scm_residual(rcm_run, pipe, cache):
    import copy

    from turbo.training import load_checkpoint

    kinds = [h["kind"] for h in rcm_run.history]
    assert rcm_run.steps_done == RCM_STEPS and not rcm_run.interrupted
    assert kinds[:SCM_WARMUP] == ["student"] * SCM_WARMUP  # tangent warm-up: sCM only, every step
    assert kinds[SCM_WARMUP:] == ["student", "fake"] * ((RCM_STEPS - SCM_WARMUP) // 2)  # then every 2nd iteration
    assert "dmd" not in rcm_run.history[SCM_WARMUP - 1] and "dmd" in rcm_run.history[SCM_WARMUP]
    assert all(math.isfinite(h["loss"]) for h in rcm_run.history)
    assert int(rcm_run.ema.num_updates) == kinds.count("student")
    # the sCM phase: the student's consistency residual ‖g‖ on a fixed probe falls (the normalised loss itself
    # stays ≈ loss_scale while ‖g‖ ≫ 0.1, so it is not the measure)
    after_scm = copy.deepcopy(pipe.transformer)
    after_scm.load_state_dict(load_checkpoint(rcm_run.output_dir / "checkpoints" /
                                              f"step-{SCM_WARMUP:08d}.json").group("student"))
    before = _scm_residual(pipe.transformer, pipe.transformer, cache)
    after = _scm_residual(after_scm, pipe.transformer, cache)
    print(f"SLA velocity MSE vs the dense teacher: {before:.3g} -> {after:.3g}")
    assert after < 0.95 * before, (before, after)


def test_sigterm_then_resume_matches_an_uninterrupted_run(pipe, cache, rcm_run, tmp_path):
    def kill(step, record):
        if step == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    first = distill(pipe, _rcm_config(), cache, tmp_path, callback=kill)
    assert first.interrupted and first.steps_done == 7 and first.export_dir is None
    assert first.checkpoint is not None and first.checkpoint.name == "step-00000007.json"
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back
    second = distill(pipe, _rcm_config(), cache, tmp_path, resume=True)
    assert second.steps_done == RCM_STEPS and [h["step"] for h in second.history][0] == 7
    pairs = zip(second.student.state_dict().items(), rcm_run.student.state_dict().items(), strict=True)
    for (name, a), (_, b) in pairs:
        assert torch.equal(a, b), name
    for name, shadow in rcm_run.ema.shadow.items():
        assert torch.equal(second.ema.shadow[name], shadow), name

    # a changed config is refused, naming the keys
    with pytest.raises(TurboConfigError) as info:
        distill(pipe, _rcm_config(guidance=3.0, lr=2e-3), cache, tmp_path, resume=True)
    message = str(info.value)
    assert "guidance" in message and "lr" in message and "\n" not in message
    with pytest.raises(TurboConfigError, match="resume"):  # a fresh run into a used directory
        distill(pipe, _rcm_config(), cache, tmp_path)


def test_export_loads_and_generates_with_its_sampler(rcm_run, pipe):
    from diffusers import WanPipeline, WanTransformer3DModel

    import turbo

    directory = rcm_run.export_dir
    recipe = json.loads((directory / "turbo_config.json").read_text())
    assert recipe["sampler"]["mode"] == "rcm" and recipe["sampler"]["steps"] == 4
    card = (directory / "README.md").read_text()
    assert "rCM 4 steps" in card and '"seed": 0' in card
    from safetensors.torch import load_file

    stored = load_file(str(directory / "diffusion_pytorch_model.safetensors"))
    assert stored["proj_out.weight"].dtype == torch.bfloat16  # bf16, except _keep_in_fp32_modules
    assert stored["blocks.0.scale_shift_table"].dtype == torch.float32
    transformer = WanTransformer3DModel.from_pretrained(directory)
    student = WanPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                          scheduler=pipe.scheduler, transformer=transformer.float())
    student.set_progress_bar_config(disable=True)
    turbo.accelerate(student)
    assert student.turbo.config.sampler.mode == "rcm"
    frames = student("a red circle moving left on a gray background", height=HEIGHT, width=WIDTH,
                     num_frames=FRAMES, num_inference_steps=4, guidance_scale=1.0, output_type="np",
                     generator=torch.Generator().manual_seed(0)).frames[0]
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and torch.isfinite(torch.as_tensor(frames)).all()
    turbo.restore(student)


def _velocity_mse(student_net, teacher_net, cache) -> float:
    item = cache[1]
    x0 = item["latents"].float()[None].expand(3, -1, -1, -1, -1)
    t = torch.tensor([0.3, 0.6, 0.9])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    x_t = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * eps
    kw = dict(timestep=t * 1000, encoder_hidden_states=item["prompt_embeds"].float()[None].expand(3, -1, -1),
              return_dict=False)
    with torch.no_grad():
        return float(((student_net(hidden_states=x_t, **kw)[0] - teacher_net(hidden_states=x_t, **kw)[0]) ** 2)
                     .mean())


def test_sla_fine_tune_reduces_the_velocity_error_and_exports_its_parts(pipe, cache, tmp_path):
    import copy

    from diffusers import WanTransformer3DModel

    import turbo

    config = tiny_toyworld(mode="sla", steps=20, batch_size=4, save_every=100)
    untrained = turbo.accelerate(copy.deepcopy(pipe.transformer), {"attention": config.attention},
                                 allow_untuned=True)
    before = _velocity_mse(untrained, pipe.transformer, cache)
    result = distill(pipe, config, cache, tmp_path)
    after = _velocity_mse(result.student, pipe.transformer, cache)
    print(f"SLA velocity MSE vs the dense teacher: {before:.3g} -> {after:.3g}")
    assert after < 0.95 * before, (before, after)
    assert (result.export_dir / "turbo_attention.safetensors").is_file()
    recipe = json.loads((result.export_dir / "turbo_config.json").read_text())
    assert recipe["attention"]["method"] == "sla" and recipe["sampler"]["mode"] == "default"
    loaded = WanTransformer3DModel.from_pretrained(result.export_dir).float()
    turbo.accelerate(loaded)  # sla from the recipe, its parts found beside the weights: no allow_untuned needed
    assert loaded.turbo.config.attention.method == "sla" and loaded.turbo.config.attention.keep == 0.25

    # continuing from the export: the student starts from its weights and its SLA proj (one step at lr ~0 later,
    # the velocity error is the trained one, not the untrained one); other tiles leave the proj untrained, noted
    again = distill(pipe, dataclasses.replace(config, steps=1, lr=1e-12, lr_warmup=0,
                                              student_from=str(result.export_dir)), cache, tmp_path / "again")
    assert _velocity_mse(again.student, pipe.transformer, cache) == pytest.approx(after, rel=0.02)
    assert any("attention parts (sla) started from" in note for note in again.notes)
    other = dataclasses.replace(config, steps=1, student_from=str(result.export_dir),
                                attention={**config.attention, "block_k": 32})
    assert any("were not loaded" in note and "block_k=16" in note
               for note in distill(pipe, other, cache, tmp_path / "other").notes)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(pipe, cache, tmp_path):
    from turbo.training import latest_checkpoint, load_checkpoint

    def poison(step, record):
        if step == 3:
            with torch.no_grad():
                next(p for p in result_student() if p.requires_grad).fill_(float("nan"))

    holder = {}

    def result_student():
        return holder["student"].parameters()

    import turbo.distill.trainer as trainer

    original = trainer._Run.__init__

    def capture(self, *args, **kwargs):
        original(self, *args, **kwargs)
        holder["student"] = self.student_net

    trainer._Run.__init__ = capture
    try:
        with pytest.raises(TurboError) as info:
            distill(pipe, tiny_toyworld(mode="sla", steps=8, save_every=3), cache, tmp_path, callback=poison)
    finally:
        trainer._Run.__init__ = original
    message = str(info.value)
    assert "at step 4" in message and "step-00000003.json" in message and "\n" not in message
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-00000003.json"
    saved = load_checkpoint(tmp_path / "checkpoints")
    assert all(torch.isfinite(t).all() for t in saved.group("student").values())


def test_student_from_loads_a_student_export_and_refuses_other_architectures(rcm_run, pipe, tmp_path):
    import copy

    from diffusers import WanTransformer3DModel

    from turbo.distill.trainer import _load_student_weights

    student = copy.deepcopy(pipe.transformer).float()
    _load_student_weights(student, str(rcm_run.export_dir))
    exported = WanTransformer3DModel.from_pretrained(rcm_run.export_dir, dtype=torch.float32).state_dict()
    assert all(torch.equal(exported[k], v) for k, v in student.state_dict().items())
    assert not torch.equal(student.proj_out.weight, pipe.transformer.proj_out.weight.float())
    with pytest.raises(TurboConfigError, match="no config.json"):
        _load_student_weights(student, str(tmp_path))
    other = WanTransformer3DModel(**{**dict(pipe.transformer.config), "num_layers": 1})
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(TurboConfigError, match="num_layers"):
        _load_student_weights(student, str(tmp_path / "other"))


def test_rcm_with_sla_student_runs_with_a_dense_jvp_note(pipe, cache, rcm_run, tmp_path):
    result = distill(pipe, tiny_toyworld(mode="rcm+sla", steps=4, tangent_warmup=2, save_every=100, sample_every=4,
                                         student_from=str(rcm_run.export_dir)), cache, tmp_path)
    video = tmp_path / "samples" / "step-00000004.mp4"
    assert video.is_file() and video.stat().st_size > 0  # the EMA student, rCM 4 steps, first cached prompt
    assert [h["kind"] for h in result.history] == ["student", "student", "student", "fake"]
    assert "dmd" in result.history[2]
    card = (result.export_dir / "README.md").read_text()
    assert "JVP" in card and "dense" in card and f"started from the weights of {rcm_run.export_dir}" in card
    recipe = json.loads((result.export_dir / "turbo_config.json").read_text())
    assert recipe["sampler"]["mode"] == "rcm" and recipe["attention"]["method"] == "sla"


def test_unsupported_teacher_is_one_sentence(cache, tmp_path):
    from pipelines import tiny

    hunyuan = tiny.build_hunyuan_t2v()
    with pytest.raises(UnsupportedModelError) as info:
        distill(hunyuan, tiny_toyworld(), cache, tmp_path)
    message = str(info.value)
    assert "HunyuanVideoPipeline" in message and "WanPipeline" in message and message.count(". ") == 0


def test_launches_the_trainer_does_not_run_are_refused_in_one_sentence(pipe, cache, tmp_path):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    refused = [(SimpleNamespace(distributed_type=DistributedType.DEEPSPEED), tiny_toyworld(), "DEEPSPEED"),
               (SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=False), tiny_toyworld(),
                "--fsdp_version 2"),
               (SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True),
                tiny_toyworld(mode="sla2-stage1"), "launch it with DDP")]
    for i, (accelerator, config, words) in enumerate(refused):
        with pytest.raises(TurboConfigError) as info:
            distill(pipe, config, cache, tmp_path / str(i), accelerator=accelerator)
        message = str(info.value)
        assert words in message and message.count(". ") == 0, message
        assert not (tmp_path / str(i)).exists()


def test_config_files_and_command_line_bad_input(tmp_path, capsys):
    from turbo.distill.__main__ import main

    good = tmp_path / "ok.yaml"
    good.write_text("preset: tiny-toyworld\nmode: sla\nsteps: 3\n")
    config = DistillConfig.load(good)
    assert config.mode == "sla" and config.steps == 3 and config.lr == 1e-4
    assert DistillConfig().lr == 2e-6 and DistillConfig().beta1 == 0.0 and DistillConfig(mode="sla").lr == 1e-5
    assert DistillConfig.from_dict(config.to_dict()) == config
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: rcm\nlearning_rate: 1\n")
    with pytest.raises(TurboConfigError, match="learning_rate"):
        DistillConfig.load(bad)
    for argv in (["--config", str(tmp_path / "missing.yaml")], ["--config", str(bad)], []):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("turbo: "), err
    assert main(["--config", str(good), "--out", str(tmp_path / "run")]) == 2  # no teacher
    assert "teacher" in capsys.readouterr().err


def test_command_line_run(pipe, cache, tmp_path, capsys):
    from turbo.distill.__main__ import main

    teacher = tmp_path / "teacher"
    pipe.save_pretrained(teacher)
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"preset": "tiny-toyworld", "mode": "sla", "steps": 2, "teacher": str(teacher),
                                  "data": str(cache.directory)}))
    assert main(["--config", str(config), "--out", str(tmp_path / "run")]) == 0
    assert "student exported to" in capsys.readouterr().out
    assert (tmp_path / "run" / "student" / "turbo_attention.safetensors").is_file()
    assert main(["--config", str(config), "--out", str(tmp_path / "run")]) == 2  # used directory, no --resume
    assert "resume" in capsys.readouterr().err


def test_samples_without_a_video_writer_are_refused_before_training(pipe, cache, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "imageio_ffmpeg" else
                        real(name, *a))
    with pytest.raises(TurboConfigError, match="imageio_ffmpeg to write the sample mp4s") as info:
        distill(pipe, tiny_toyworld(sample_every=5), cache, tmp_path / "run")
    assert "sample_every: 0" in str(info.value) and not (tmp_path / "run").exists()
