"""Training steps per second of the ToyWorld models, eager vs CUDA-graph replay, on one GPU.

For each (model, batch size): run `--steps` training steps eagerly, with CUDA graphs and (transformers, `--compile`)
with CUDA graphs around a torch.compile'd forward (default ToyWorld sizes,
256 x 256, the recipe's clip lengths) and time steps ``--skip`` .. end (after warm-up and capture) with a CUDA sync at
both ends. Prints one line per run and the speed-up. Usage:

    python benchmarks/toyworld_train_speed.py --steps 40 --skip 16 --vae-batch 24 --batch 24 96
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

import turbo.toyworld.train as T
from turbo.toyworld.models import ToyWorldSizes, build_pipeline, build_vae


def _timed(run, steps: int, skip: int) -> float:
    """Seconds per step over steps `skip`..`steps - 1` of `run(steps)` (which calls `T.check_and_log` once per step)."""
    marks = {}
    log = T.check_and_log

    def spy(name, step, plan, losses, log_every):
        if step in (skip, steps - 1):
            torch.cuda.synchronize()
            marks[step] = time.perf_counter()
        return log(name, step, plan, losses, log_every)

    T.check_and_log = spy
    try:
        run(steps)
    finally:
        T.check_and_log = log
    return (marks[steps - 1] - marks[skip]) / (steps - 1 - skip)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip", type=int, default=16)
    p.add_argument("--vae-batch", type=int, nargs="*", default=[24])
    p.add_argument("--batch", type=int, nargs="*", default=[24, 96])
    p.add_argument("--kinds", nargs="*", default=["wan-t2v", "hunyuan-t2v"])
    p.add_argument("--compile", action="store_true", help="also time graphed + torch.compile'd transformers")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.backends.cudnn.benchmark = True
    sizes = ToyWorldSizes(vae_base_dim=16, vae_residual=True)
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    runs = [("wan-vae", b) for b in args.vae_batch] + [(k, b) for k in args.kinds for b in args.batch]
    for model, batch in runs:
        per_step = {}
        variants = [(False, False), (True, False)] + ([(True, True)] if model != "wan-vae" and args.compile else [])
        for graphs, compiled in variants:
            if model == "wan-vae":
                def run(steps, graphs=graphs, batch=batch):
                    config = T.TrainConfig(steps=steps, batch_size=batch, device="cuda", lr=1e-3, cuda_graphs=graphs,
                                           show_progress=False, log_every=10**9)
                    T.train_vae(build_vae(sizes), config, T.VAETask(frames=9, long_frames=33, long_every=4, crop=128,
                                                                    calibrate=False, sample_scale=0.0, fg_weight=10.0,
                                                                    mse_weight=1.0, num_objects=(2, 3, 4)))
            else:
                def run(steps, graphs=graphs, compiled=compiled, batch=batch, model=model):
                    pipe = build_pipeline(model, sizes)
                    config = T.TrainConfig(steps=steps, batch_size=batch, device="cuda", ema_decay=0.998,
                                           cuda_graphs=graphs, compile=compiled, show_progress=False, log_every=10**9)
                    T.train_pipeline(pipe, model, config, T.FlowTask(frames=(33, 17), pool_size=max(64, batch)))
            key = ("eager", "graphed", "graphed+compiled")[graphs + compiled]
            per_step[key] = _timed(run, args.steps, args.skip)
            torch.cuda.empty_cache()
            print(f"{model} batch {batch} {key}: {per_step[key] * 1e3:.1f} ms/step ({1 / per_step[key]:.1f} steps/s), "
                  f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)
            torch.cuda.reset_peak_memory_stats()
        print(f"{model} batch {batch}: " + ", ".join(f"{k} {per_step['eager'] / v:.2f}x" for k, v in per_step.items()
                                                     if k != "eager"), flush=True)


if __name__ == "__main__":
    main()
