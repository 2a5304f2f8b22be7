"""FSDP2 distillation on the CPU: two `torchrun` processes shard the student and the fake score with accelerate's
FSDP2 preparation (gloo), and train the same thing as DDP does: after the same steps (tangent warm-up, student sCM +
DMD steps, fake-score steps, gradient accumulation) the FSDP export equals the DDP export; a DDP checkpoint resumes
under FSDP and ends where the uninterrupted run ends (checkpoints hold full tensors keyed by name)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
TEACHER = ROOT / "models" / "toyworld" / "wan-t2v"
LAUNCH = Path(__file__).with_name("fsdp_cpu_launch.py")
# what `accelerate launch --use_fsdp --fsdp_version 2` (accelerate 1.15, defaults) puts in the environment
ACCELERATE_FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_SHARDING_STRATEGY": "FULL_SHARD",
                       "FSDP_RESHARD_AFTER_FORWARD": "true", "FSDP_OFFLOAD_PARAMS": "false",
                       "FSDP_MIN_NUM_PARAMS": "100000000", "FSDP_USE_ORIG_PARAMS": "true",
                       "FSDP_CPU_RAM_EFFICIENT_LOADING": "true", "FSDP_SYNC_MODULE_STATES": "true",
                       "FSDP_ACTIVATION_CHECKPOINTING": "false"}


def _launch(tmp_path, out: Path, *, fsdp: bool, resume: bool = False, extra: dict | None = None) -> str:
    sets = {"teacher": str(TEACHER), "steps": "4", "lr": "1e-3", "fake_lr": "1e-3", "lr_warmup": "0",
            "batch_size": "1", "grad_accum": "2", "mixed_precision": "no",
            "show_progress": "false", "sample_every": "0", "save_every": "2", "keep_checkpoints": "3",
            "log_every": "1", "tangent_warmup": "1", "student_update_freq": "2", "gradient_checkpointing": "true",
            **(extra or {})}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(LAUNCH),
            str(ROOT / "examples" / "distill_toyworld.yaml"), str(tmp_path / "cache"), str(out),
            *(["--fsdp"] if fsdp else []), *(["--resume"] if resume else []),
            *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(ACCELERATE_FSDP_ENV if fsdp else {})}
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:  # each rank's first error lines, then the tail (a crashing rank is not the last to print)
        log = proc.stdout + proc.stderr
        firsts = [line for line in log.splitlines() if re.search(r"Error|error:|Abort|terminate|what\(\)", line)][:20]
        raise AssertionError("\n".join(firsts) + "\n...\n" + log[-3000:])
    return proc.stdout + proc.stderr


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "diffusion_pytorch_model.safetensors"))


def _assert_close(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=0, atol=2e-2, msg=k)  # bf16 export


def _checkpoint(run: Path, step: int):
    from turbo.training import load_checkpoint

    return load_checkpoint(run / "checkpoints" / f"step-{step:08d}.json")


def _relative_difference(a: dict, b: dict, init: dict) -> float:
    """‖a − b‖ / ‖a − init‖ over the tensors `init` has (parameters: how different the two updates are)."""
    num = sum(float((a[k] - b[k]).float().norm()) ** 2 for k in init if k in a)
    den = sum(float((a[k] - init[k]).float().norm()) ** 2 for k in init if k in a)
    assert den > 0  # it trained
    return (num / den) ** 0.5


def test_fsdp_trains_what_ddp_trains_and_resumes_ddp_checkpoints(tmp_path):
    from diffusers import DiffusionPipeline, WanTransformer3DModel

    from turbo.distill.data import cache_toyworld

    pipe = DiffusionPipeline.from_pretrained(str(TEACHER), dtype=torch.float32)
    cache_toyworld(pipe, 4, tmp_path / "cache", height=64, width=64, num_frames=9, seed=0, batch_size=4,
                   progress=False)
    log = _launch(tmp_path, tmp_path / "fsdp", fsdp=True)
    assert log.count("sharded=True") == 1 and "fake loss" in log  # one export; fake-score steps ran
    _launch(tmp_path, tmp_path / "ddp", fsdp=False)
    # step 2: a warm-up sCM update and an sCM + DMD update. Later steps are compared loosely: Adam's first update of
    # a fresh optimizer (the fake score's at step 3) is lr·sign(g), and the reduction order (reduce-scatter vs
    # all-reduce) flips the sign of gradients that are rounding noise (e.g. attention key biases).
    init = pipe.transformer.state_dict()
    for step, groups, tolerance in ((2, ("student", "ema"), 1e-4), (4, ("student", "ema", "fake"), 0.1)):
        fsdp, ddp = (_checkpoint(tmp_path / run, step) for run in ("fsdp", "ddp"))
        for group in groups:
            a, b = fsdp.group(group), ddp.group(group)
            assert a.keys() == b.keys() and len(a) > 0
            assert _relative_difference(a, b, init) < tolerance, (step, group)
    assert fsdp.state["student_iter"] == ddp.state["student_iter"] == 3
    _assert_close(_weights(tmp_path / "fsdp" / "student"), _weights(tmp_path / "ddp" / "student"))
    WanTransformer3DModel.from_pretrained(str(tmp_path / "fsdp" / "student"))  # a plain diffusers directory

    for source in ("fsdp", "ddp"):  # resume under FSDP from its own checkpoint and from a DDP one
        resumed = tmp_path / f"resumed-{source}"
        (resumed / "checkpoints").mkdir(parents=True)
        for f in (tmp_path / source / "checkpoints").glob("step-00000002*"):
            shutil.copy(f, resumed / "checkpoints" / f.name)
        assert "resumed from" in _launch(tmp_path, resumed, fsdp=True, resume=True)
        again, uninterrupted = _checkpoint(resumed, 4), _checkpoint(tmp_path / source, 4)
        for group in ("student", "ema", "fake"):
            limit = 1e-5 if source == "fsdp" else 0.1
            assert _relative_difference(again.group(group), uninterrupted.group(group), init) < limit, group


def test_fsdp_bf16_run_with_gradient_checkpointing_samples_and_exports(tmp_path):
    """Under FSDP's bf16 parameters (autocast, units' inputs not cast) with diffusers' gradient checkpointing: the
    blocks recompute in backward, every process runs the sample pipeline, the main one writes the mp4 and the export."""
    from diffusers import DiffusionPipeline

    from turbo.distill.data import cache_toyworld

    pipe = DiffusionPipeline.from_pretrained(str(TEACHER), dtype=torch.float32)
    cache_toyworld(pipe, 2, tmp_path / "cache", height=64, width=64, num_frames=9, seed=0, batch_size=2,
                   progress=False)
    log = _launch(tmp_path, tmp_path / "run", fsdp=True, extra={"mixed_precision": "bf16", "steps": "2",
                                                                 "grad_accum": "1", "sample_every": "2"})
    assert log.count("sharded=True") == 1
    assert len(list((tmp_path / "run" / "samples").glob("*.mp4"))) == 1
    assert (tmp_path / "run" / "student" / "diffusion_pytorch_model.safetensors").is_file()
    assert "x 2 processes (FSDP2)" in (tmp_path / "run" / "student" / "README.md").read_text()
