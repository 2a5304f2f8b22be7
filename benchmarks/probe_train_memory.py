"""Find what grows the GPU memory of ToyWorld transformer training (~10 MB per step at batch 24 on an H100).

Runs `train_pipeline` for a few hundred steps in variants (autocast on/off, EMA on/off, latent pool on/off) and prints
the allocated memory growth per step of each. Usage: python benchmarks/probe_train_memory.py [--steps 200]
"""

from __future__ import annotations

import argparse
import contextlib
import logging

import torch

import turbo.toyworld.train as T
from turbo.toyworld.models import ToyWorldSizes, build_pipeline


def run(kind: str, steps: int, autocast: bool, ema: bool, pool: int, batch: int) -> float:
    original = T._autocast
    if not autocast:
        T._autocast = lambda device: contextlib.nullcontext()
    marks = []
    log = T._log

    def spy(name, step, plan, losses, log_every):
        if step in (steps // 4, steps - 1):
            torch.cuda.synchronize()
            marks.append((step, torch.cuda.memory_allocated()))
        return log(name, step, plan, losses, log_every)

    T._log = spy
    try:
        pipe = build_pipeline(kind, ToyWorldSizes(), seed=0)
        T.train_pipeline(pipe, kind, steps, batch_size=batch, frames=(33, 17), device="cuda", pool_size=pool,
                         ema_decay=0.99 if ema else None, show_progress=False, log_every=10**9)
    finally:
        T._autocast, T._log = original, log
    (s0, m0), (s1, m1) = marks
    del pipe
    torch.cuda.empty_cache()
    return (m1 - m0) / (s1 - s0) / 2**20


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--kind", default="hunyuan-t2v")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for autocast, ema, pool in ((True, True, 64), (False, True, 64), (True, False, 64), (True, True, 0)):
        growth = run(args.kind, args.steps, autocast, ema, pool, args.batch)
        print(f"{args.kind} batch {args.batch}: autocast={autocast} ema={ema} pool={pool}: "
              f"{growth:.2f} MiB allocated per step", flush=True)


if __name__ == "__main__":
    main()
