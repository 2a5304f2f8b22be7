"""ToyWorld training recipe: ``python -m pipelines.toyworld train --kind wan-t2v --out DIR --steps N ...``.

Trains (or reuses, ``--vae DIR``) the VAE, then the transformer of one pipeline kind, saves the pipeline with
``checksums.json`` and ``toyworld_recipe.json`` (the exact command, seeds, sizes, device and wall/GPU minutes), and
prints the command and the wall time. Everything is offline; text/image encoders are frozen random (seeded).

Example commands. No ToyWorld weights are shipped yet and these step counts are an untested starting point for the
first GPU run; once models are trained, each directory's ``toyworld_recipe.json`` records what was actually run::

    python -m pipelines.toyworld train --kind wan-t2v --out models/toyworld/wan-t2v --steps 20000 --batch-size 8 \\
        --vae-steps 4000 --seed 0 --device cuda
    python -m pipelines.toyworld train --kind wan-i2v --out models/toyworld/wan-i2v --vae models/toyworld/wan-t2v \\
        --steps 20000 --batch-size 8 --seed 0 --device cuda
    python -m pipelines.toyworld train --kind hunyuan-t2v --out models/toyworld/hunyuan-t2v --steps 20000 \\
        --batch-size 8 --vae-steps 4000 --seed 0 --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import time

import torch


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.toyworld", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one ToyWorld pipeline and save it with checksums")
    t.add_argument("--kind", required=True, choices=("wan-t2v", "wan-i2v", "hunyuan-t2v"))
    t.add_argument("--out", required=True, help="output directory (diffusers layout + checksums.json)")
    t.add_argument("--steps", type=int, required=True, help="transformer training steps")
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu")
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--cfg-dropout", type=float, default=0.1)
    t.add_argument("--ema", type=float, default=None, help="EMA decay of the transformer weights (e.g. 0.999)")
    t.add_argument("--timestep-shift", type=float, default=1.0)
    t.add_argument("--vae", default=None, help="ToyWorld directory whose (trained) VAE to reuse; else train one")
    t.add_argument("--vae-steps", type=int, default=None, help="VAE steps when training one (default: --steps)")
    t.add_argument("--vae-batch-size", type=int, default=None)
    t.add_argument("--vae-lr", type=float, default=1e-3)
    t.add_argument("--sizes", choices=("default", "tiny"), default="default", help="model sizes (tiny: tests)")
    t.add_argument("--frames", type=int, default=None, help="training frames (default: the sizes' main setting)")
    t.add_argument("--height", type=int, default=None)
    t.add_argument("--width", type=int, default=None)
    t.add_argument("--log-every", type=int, default=50)
    return parser


def train(args) -> dict:
    from turbo.toyworld.models import ToyWorldSizes, build_pipeline, param_report
    from turbo.toyworld.train import load_toyworld, save_toyworld, train_pipeline, train_vae

    sizes = ToyWorldSizes.tiny() if args.sizes == "tiny" else ToyWorldSizes()
    frames, height, width = args.frames or sizes.frames, args.height or sizes.height, args.width or sizes.width
    device = torch.device(args.device)
    command = "python -m pipelines.toyworld " + shlex.join(args.argv)
    start = time.perf_counter()
    vae_losses: list[float] = []
    components = {}
    if args.vae:
        components["vae"] = load_toyworld(args.vae, dtype=torch.float32).vae
    pipe = build_pipeline(args.kind, sizes, seed=args.seed, **components)
    if not args.vae:
        vae_losses = train_vae(
            pipe.vae, args.vae_steps if args.vae_steps is not None else args.steps,
            args.vae_batch_size or args.batch_size, frames, height, width, seed=args.seed, device=device,
            lr=args.vae_lr, log_every=args.log_every,
        )  # fmt: skip
    vae_seconds = time.perf_counter() - start
    max_len = sizes.hunyuan_max_sequence_length if args.kind == "hunyuan-t2v" else sizes.max_sequence_length
    losses = train_pipeline(
        pipe, args.kind, args.steps, batch_size=args.batch_size, frames=frames, height=height, width=width,
        seed=args.seed, device=device, lr=args.lr, cfg_dropout=args.cfg_dropout, ema_decay=args.ema,
        timestep_shift=args.timestep_shift, max_sequence_length=max_len, log_every=args.log_every,
    )  # fmt: skip
    pipe.to("cpu")
    wall = time.perf_counter() - start
    recipe = {
        "command": command,
        "kind": args.kind,
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "frames_height_width": [frames, height, width],
        "sizes": dataclasses.asdict(sizes),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "wall_seconds": round(wall, 1),
        "vae_seconds": round(vae_seconds, 1),
        "gpu_minutes": round(wall / 60, 2) if device.type == "cuda" else 0.0,
        "final_loss_mean_last_100": sum(losses[-100:]) / max(1, len(losses[-100:])),
        "vae_final_loss_mean_last_100": sum(vae_losses[-100:]) / max(1, len(vae_losses[-100:])) if vae_losses else None,
        "vae_from": args.vae,
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
    }
    save_toyworld(pipe, args.out, recipe=recipe)
    sizes_mb = sum(mb for _, mb in param_report(pipe).values())
    print(f"saved {args.kind} to {args.out} ({sizes_mb:.1f} MB of weights, checksums.json written)")
    print(f"command: {command}")
    print(f"wall time: {wall:.1f} s ({recipe['gpu_minutes']} GPU minutes) on {recipe['device']}")
    return recipe


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "train":
        train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
