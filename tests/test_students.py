"""The shipped ToyWorld students (models/toyworld/students/, packed against their teacher): their registry presets and
recipes, loading one in place of its teacher's transformer, `turbo generate --compare` against the teacher, and the
judge/PSNR commands that measure it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines import registry

STUDENT = "toyworld-wan-t2v-rcm"


@pytest.mark.parametrize("name, steps, guidance, sampler, attention", [
    ("toyworld-wan-t2v-rcm", 4, 1.0, "rcm", "dense"),
    ("toyworld-wan-t2v-rcm-sla", 4, 1.0, "rcm", "sla"),
    ("toyworld-wan-t2v-sla5", 50, 5.0, "default", "sla"),
])
def test_student_presets_carry_their_recipe_and_unpack_from_their_teacher(name, steps, guidance, sampler, attention):
    preset = registry.get_model(name)
    assert (preset.steps, preset.guidance, preset.baseline) == (steps, guidance, (50, 5.0))
    packed = registry.TOYWORLD_DIR / "students" / Path(preset.student).name
    assert (packed / "turbo_delta.safetensors").stat().st_size < 4_600_000  # the repository's weight budget
    assert not (packed / "diffusion_pytorch_model.safetensors").exists()
    directory = registry.converted_dir(preset)  # unpacked once into $TURBO_HOME
    assert directory != packed and (directory / "diffusion_pytorch_model.safetensors").is_file()
    assert registry.converted_dir(preset) == directory and registry.is_available(preset)
    recipe = json.loads(registry.recipe_file(preset).read_text())
    assert recipe["sampler"]["mode"] == sampler and recipe["attention"]["method"] == attention
    if attention == "sla":  # its trained SLA parts travel with it: turbo.accelerate needs no allow_untuned
        import turbo
        from turbo.distill.pack import student_dir

        transformer = registry.load_transformers(packed, torch.float32)["transformer"]
        assert Path(transformer.config._name_or_path) == student_dir(packed)
        turbo.accelerate(transformer)
        assert transformer.turbo.config.attention.method == "sla"
        assert (transformer.turbo.config.attention.block_q, transformer.turbo.config.attention.block_k) == (32, 16)


def test_load_pipeline_swaps_the_student_in_and_keeps_the_teacher_on_request():
    from safetensors.torch import load_file

    preset = registry.get_model(STUDENT)
    student = registry.load_pipeline(preset, "cpu")
    teacher = registry.load_pipeline(preset, "cpu", own_transformer=True)
    stored = load_file(registry.converted_dir(preset) / "diffusion_pytorch_model.safetensors")
    name = "blocks.0.attn1.to_q.weight"
    assert torch.equal(student.transformer.state_dict()[name], stored[name].float())
    assert not torch.equal(teacher.transformer.state_dict()[name], stored[name].float())
    registry.swap_transformers(teacher, registry.converted_dir(preset))
    assert torch.equal(teacher.transformer.state_dict()[name], stored[name].float())


def test_generate_compare_runs_the_teacher_then_the_student(tmp_path, capsys):
    from pipelines.cli import main

    code = main(["generate", "--model", STUDENT, "--compare", "--height", "64", "--width", "64", "--frames", "5",
                 "--out", str(tmp_path / "s.mp4")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "teacher: " in out and "(50 steps, CFG 5, 100 transformer calls; dense attention, VAE fast)" in out
    assert "(4 steps, no CFG, 4 transformer calls)" in out and "vs the teacher" in out
    assert "sampler    rCM 4 steps" in out and "judge, teacher:" in out and "judge, student:" in out
    assert (tmp_path / "s.mp4").stat().st_size > 0


@pytest.mark.parametrize("steps", [2])
def test_accuracy_judges_a_student_with_its_recipe_and_psnr_compares_saved_videos(tmp_path, steps):
    from pipelines.toyworld import main

    student = str(registry.converted_dir(registry.get_model(STUDENT)))
    common = ["accuracy", "--model", "models/toyworld/wan-t2v", "--prompts", "2", "--frames", "5", "--height", "64",
              "--width", "64", "--batch-size", "2"]
    assert main([*common, "--transformer", student, "--steps", str(steps), "--json", str(tmp_path / "s.json"),
                 "--save-videos", str(tmp_path / "s"), "--save-count", "2"]) == 0
    report = json.loads((tmp_path / "s.json").read_text())[0]
    assert report["transformer"] == student and report["steps"] == steps and report["guidance"] == 1.0
    assert report["prompts"] == 2 and set(report["accuracy"]) >= {"colour", "shape", "motion", "background"}
    assert sorted(p.name for p in (tmp_path / "s" / "cfg1").iterdir()) == [
        "000.npy", "000.png", "001.npy", "001.png", "prompts.txt"]
    assert main(["psnr", str(tmp_path / "s" / "cfg1"), str(tmp_path / "s" / "cfg1"), "--json",
                 str(tmp_path / "p.json")]) == 0
    same = json.loads((tmp_path / "p.json").read_text())
    assert same["videos"] == 2 and same["identical"] == 2
