"""Where a ToyWorld distillation step's time goes on a GPU: N steps of each mode under torch.profiler (CPU + CUDA),
after warm-up steps; prints wall s/step and the top ops by self CPU and by self CUDA time.

    python3 benchmarks/distill_toyworld_profile.py --cache DIR [--modes sla,rcm] [--steps 10]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", required=True)
    parser.add_argument("--modes", default="sla,rcm")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    from diffusers import WanPipeline

    from turbo.distill.config import DistillConfig
    from turbo.distill.trainer import distill

    pipe = WanPipeline.from_pretrained("models/toyworld/wan-t2v", dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    for mode in args.modes.split(","):
        over = dict(mode=mode, batch_size=args.batch_size, save_every=0, log_every=0, show_progress=False,
                    tangent_warmup=3, student_update_freq=2, lr=2e-5)
        if mode == "sla":
            over["attention"] = {"method": "sla", "keep": 0.05}
        times: list[float] = []

        def tick(step, record):
            torch.cuda.synchronize()
            times.append(time.perf_counter())

        out = Path(f"/tmp/profile-{mode}")
        shutil.rmtree(out, ignore_errors=True)
        distill(pipe, DistillConfig(**over, steps=8), args.cache, out, export=False, callback=tick)
        per = (times[-1] - times[2]) / (len(times) - 3)
        print(f"{mode}: {per * 1000:.1f} ms/step (eager, steps 3-8, batch {args.batch_size})", flush=True)
        shutil.rmtree(out, ignore_errors=True)
        import cProfile
        import pstats

        prof_py = cProfile.Profile()
        prof_py.enable()
        distill(pipe, DistillConfig(**over, steps=6), args.cache, out, export=False)
        prof_py.disable()
        pstats.Stats(prof_py).sort_stats("tottime").print_stats(25)
        shutil.rmtree(out, ignore_errors=True)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            distill(pipe, DistillConfig(**over, steps=args.steps), args.cache, out, export=False)
        table = prof.key_averages()
        print(table.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60), flush=True)
        print(table.table(sort_by="self_cuda_time_total", row_limit=20, max_name_column_width=60), flush=True)
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
