"""Multi-process distillation on the CPU: `torchrun --nproc_per_node 2 -m turbo.distill` forms a gloo group through
accelerate (DDP), each process trains on its own shard of the latent cache, one checkpoint and one export are written,
and the export's card counts both processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
TEACHER = ROOT / "models" / "toyworld" / "wan-t2v"


def test_two_process_rcm_run_with_torchrun(tmp_path):
    from diffusers import DiffusionPipeline

    from turbo.distill.data import cache_toyworld

    pipe = DiffusionPipeline.from_pretrained(str(TEACHER), dtype=torch.float32)
    cache_toyworld(pipe, 4, tmp_path / "cache", height=64, width=64, num_frames=9, seed=0, batch_size=4,
                   progress=False)
    sets = {"teacher": str(TEACHER), "data": str(tmp_path / "cache"), "steps": "2", "batch_size": "2",
            "mixed_precision": "no", "show_progress": "false", "sample_every": "0", "save_every": "2",
            "log_every": "1", "tangent_warmup": "1", "student_update_freq": "1"}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "turbo.distill", "--config", str(ROOT / "examples" / "distill_toyworld.yaml"),
            "--out", str(tmp_path / "run"),
            *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    first = re.findall(r"step 1/2 student loss (\S+)", log)
    assert len(first) == 2 and first[0] != first[1]  # two processes, each on its own data
    assert len(list((tmp_path / "run" / "checkpoints").glob("step-*.json"))) == 1
    assert log.count("student exported to") == 1
    card = (tmp_path / "run" / "student" / "README.md").read_text()
    assert "x 2 processes" in card
