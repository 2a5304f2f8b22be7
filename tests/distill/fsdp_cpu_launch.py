"""Run `turbo.distill.distill` in a `torchrun` process on the CPU, with accelerate's FSDP2 or DDP.

accelerate applies FSDP only to GPU launches (its CPU state is always MULTI_CPU), so for ``--fsdp`` this sets the
state that ``accelerate launch --use_fsdp --fsdp_version 2`` sets on GPUs; accelerate's own FSDP2 preparation
(``fully_shard`` per block, the optimizer's parameters swapped for DTensors) then runs on gloo. The plugin reads the
``FSDP_*`` environment variables as under ``accelerate launch`` (`ACCELERATE_FSDP_ENV` in the test sets them).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distill/fsdp_cpu_launch.py CONFIG CACHE OUT
        [--fsdp] [--resume] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch


def main() -> int:
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from diffusers import DiffusionPipeline

    from turbo.distill.__main__ import parse_overrides
    from turbo.distill.config import DistillConfig
    from turbo.distill.trainer import distill

    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("cache")
    parser.add_argument("out")
    parser.add_argument("--fsdp", action="store_true")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = DistillConfig.load(args.config, parse_overrides(args.overrides))
    accelerator = Accelerator(cpu=True, mixed_precision=config.mixed_precision)
    if args.fsdp:
        accelerator.state.distributed_type = DistributedType.FSDP
        plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* environment
        if config.mixed_precision != "no":
            plugin.set_mixed_precision(config.mixed_precision)  # as AcceleratorState does for a GPU launch
        accelerator.state.fsdp_plugin = plugin
    pipe = DiffusionPipeline.from_pretrained(config.teacher, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    result = distill(pipe, config, args.cache, args.out, resume=args.resume, accelerator=accelerator)
    if result.export_dir is not None:
        print(f"exported {result.export_dir} after {result.steps_done} steps; sharded={args.fsdp}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
