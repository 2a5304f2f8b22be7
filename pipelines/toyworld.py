"""ToyWorld recipes: train the VAEs and the three pipelines, and measure their attribute accuracy with the judge.

    python -m pipelines.toyworld vae --family wan --out DIR (--steps N | --minutes M) ...
    python -m pipelines.toyworld train --kind wan-t2v --vae DIR --out DIR (--steps N | --minutes M) ...
    python -m pipelines.toyworld accuracy --model DIR [--transformer STUDENT] --prompts 200 --steps 50 --guidance 5
    python -m pipelines.toyworld psnr CANDIDATE_VIDEOS REFERENCE_VIDEOS   # two accuracy --save-videos folders
    python -m pipelines.toyworld all --out DIR --device cuda      # the shipped models' recipe, ~45 GPU minutes

`all` runs the recipe of models/toyworld/ stage after stage on one GPU (the Wan VAE, its decoder, the HunyuanVideo VAE,
Wan T2V, Wan I2V started from Wan T2V, HunyuanVideo T2V), then the judge over each pipeline; one process at a time,
since compiled, CUDA-graphed steps keep the GPU busy. Each saved directory holds ``toyworld_recipe.json`` with the
exact command, the steps actually run (with ``--minutes`` the loop fixes its step count after timing its first steps;
``reproduce`` is the same command with that ``--steps``), seeds, device and wall minutes, and ``checksums.json`` over
every file. Everything is offline; text/image encoders are frozen random.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

FAMILIES = {"wan": ("wan-t2v", "wan-i2v"), "hunyuan": ("hunyuan-t2v",)}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(f) for f in text.split(","))


def _budget(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=None, help="training steps (an upper bound with --minutes)")
    p.add_argument("--minutes", type=float, default=None, help="train for this wall time (steps fixed after timing)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--schedule", choices=("constant", "cosine"), default="cosine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", choices=("default", "tiny"), default="default", help="model sizes (tiny: tests)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="train eagerly (default on CUDA: each step replays a captured CUDA graph)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.toyworld", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    v = sub.add_parser("vae", help="train one ToyWorld VAE (wan: AutoencoderKLWan, hunyuan: AutoencoderKLHunyuanVideo)")
    v.add_argument("--family", required=True, choices=tuple(FAMILIES))
    v.add_argument("--out", required=True)
    v.add_argument("--frames", type=int, default=9, help="training clip length (the VAE is causal: short clips do)")
    v.add_argument("--crop", type=int, default=128, help="train on random square crops of this side (0: full frames)")
    v.add_argument("--fg-weight", type=float, default=10.0, help="extra loss weight on object pixels")
    v.add_argument("--sample-scale", type=float, default=0.0, help="posterior noise scale (0: plain autoencoder)")
    v.add_argument("--mse-weight", type=float, default=1.0, help="squared-error term added to the L1 loss")
    v.add_argument("--beta2", type=float, default=0.999, help="AdamW second-moment decay")
    v.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip (0: none)")
    v.add_argument("--warmup", type=int, default=100)
    v.add_argument("--check", type=int, default=8, help="videos in the reconstruction check (0: skip)")
    v.add_argument("--objects", type=_ints, default=(2, 3, 4), help="objects per training video, e.g. 2,3,4")
    v.add_argument("--long-frames", type=int, default=33, help="clip length of every --long-every-th step")
    v.add_argument("--long-every", type=int, default=4, help="0: train on --frames clips only")
    v.add_argument("--residual", action="store_true", help="Wan VAE with Wan2.2-style residual up/down blocks")
    v.add_argument("--resume", default=None, help="trained VAE (a `vae` output or a pipeline dir) to train on")
    v.add_argument("--decoder-only", action="store_true",
                   help="with --resume: train the decoder only (same latents: transformers trained on them stay valid)")
    v.add_argument("--vae-width", type=int, default=None,
                   help="Wan base_dim / HunyuanVideo first-block channels (default: the ToyWorld sizes)")
    _budget(v)

    t = sub.add_parser("train", help="train one ToyWorld pipeline's transformer and save the pipeline with checksums")
    t.add_argument("--kind", required=True, choices=("wan-t2v", "wan-i2v", "hunyuan-t2v"))
    t.add_argument("--out", required=True, help="output directory (diffusers layout + checksums.json)")
    t.add_argument("--vae", default=None, help="trained VAE (a `vae` output or a pipeline dir); else train one here")
    t.add_argument("--vae-steps", type=int, default=None, help="VAE steps when training one here")
    t.add_argument("--resume", default=None, help="ToyWorld pipeline dir whose transformer to continue training")
    t.add_argument("--init-from", default=None,
                   help="ToyWorld pipeline dir of another kind to start from (e.g. wan-t2v for wan-i2v): every weight "
                        "that fits is copied")
    t.add_argument("--frames", type=_ints, default=None, help="frame counts, e.g. 33,17 (default: main setting)")
    t.add_argument("--pool-size", type=int, default=0, help="pre-encoded videos per frame count (0: fresh each step)")
    t.add_argument("--cfg-dropout", type=float, default=0.1)
    t.add_argument("--ema", type=float, default=None, help="EMA decay of the transformer weights (e.g. 0.999)")
    t.add_argument("--timestep-shift", type=float, default=1.0)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--compile", action="store_true", help="torch.compile the transformer's forward (CUDA: faster)")
    _budget(t)

    a = sub.add_parser("accuracy", help="judge accuracy of a ToyWorld pipeline on a fixed prompt set")
    a.add_argument("--model", required=True)
    a.add_argument("--prompts", type=int, default=200)
    a.add_argument("--prompt-seed", type=int, default=0)
    a.add_argument("--transformer", default=None,
                   help="a student transformer directory (turbo distill's export) that replaces --model's; it runs "
                        "with its recipe (turbo_config.json: sampler, attention)")
    a.add_argument("--steps", type=int, default=None, help="default: 50, or the student recipe's rCM steps")
    a.add_argument("--guidance", type=float, nargs="+", default=None,
                   help="one report per CFG scale (default: 5, or 1 for an rCM student)")
    a.add_argument("--frames", type=int, default=None)
    a.add_argument("--height", type=int, default=None)
    a.add_argument("--width", type=int, default=None)
    a.add_argument("--batch-size", type=int, default=25)
    a.add_argument("--device", default="cpu")
    a.add_argument("--dtype", choices=("stored", "float32"), default="float32",
                   help="stored: as shipped (bf16 transformer, fp32 VAE; for GPUs); float32: everything fp32")
    a.add_argument("--json", default=None)
    a.add_argument("--save-videos", default=None, metavar="DIR",
                   help="save the first --save-count videos here: NNN.npy (uint8 [F, H, W, 3]) and NNN.png (frames "
                        "0, middle, last side by side); `psnr DIR_A DIR_B` compares two such folders")
    a.add_argument("--save-count", type=int, default=32)
    a.add_argument("--quant", default=None, choices=("fp8", "int8", "nvfp4"),
                   help="W8A8 / NVFP4 linears in the transformer blocks (dense attention; not with --transformer)")
    a.add_argument("--cache", default=None, choices=("tdc",),
                   help="turbo's Temporal Delta Cache on the transformer blocks (default settings; with --quant too; "
                        "not with --transformer)")

    ps = sub.add_parser("psnr", help="mean same-seed PSNR (dB) between two --save-videos folders")
    ps.add_argument("candidate")
    ps.add_argument("reference")
    ps.add_argument("--json", default=None)

    al = sub.add_parser("all", help="the shipped models' recipe, stage after stage, then their accuracy")
    al.add_argument("--out", required=True)
    al.add_argument("--device", default="cuda")
    al.add_argument("--vae-minutes", type=float, default=4.8, help="each VAE (Wan, HunyuanVideo)")
    al.add_argument("--decoder-minutes", type=float, default=2.5, help="the Wan VAE's decoder-only stage")
    al.add_argument("--minutes", type=float, default=11.0, help="Wan T2V and HunyuanVideo T2V transformers each")
    al.add_argument("--i2v-minutes", type=float, default=4.7, help="Wan I2V, started from the Wan T2V transformer")
    al.add_argument("--batch-size", type=int, default=48)
    al.add_argument("--pool-size", type=int, default=2048)
    al.add_argument("--frames", default="33,17")
    al.add_argument("--eval-prompts", type=int, default=200, help="0: skip the accuracy stage")
    al.add_argument("--eval-steps", type=int, default=50)
    al.add_argument("--guidance", default="5")
    al.add_argument("--seed", type=int, default=0)
    al.add_argument("--sizes", choices=("default", "tiny"), default="default")
    al.add_argument("--extra", default="", help="extra flags for every `train` (quoted)")
    al.add_argument("--vae-extra", default="", help="extra flags for every `vae` (quoted)")
    al.add_argument("--skip-existing", action="store_true", help="reuse stage outputs already in OUT")
    al.add_argument("--pack", default=None, help="after each stage, tar its directory (and the logs) into here")
    return parser


def _sizes(name: str):
    from turbo.toyworld.models import ToyWorldSizes

    return ToyWorldSizes.tiny() if name == "tiny" else ToyWorldSizes()


def _reproduce(argv: list[str], steps: int) -> str:
    """The command with ``--minutes M`` replaced by the ``--steps`` it ran."""
    out, skip = [], False
    for i, word in enumerate(argv):
        if skip:
            skip = False
            continue
        if word in ("--minutes", "--steps"):
            skip = i + 1 < len(argv)
            continue
        out.append(word)
    return "python -m pipelines.toyworld " + shlex.join([*out, "--steps", str(steps)])


def _recipe(args, sizes, device, start, losses, **extra) -> dict:
    wall = time.perf_counter() - start
    tail = losses[-100:]
    return {
        "command": "python -m pipelines.toyworld " + shlex.join(args.argv),
        "reproduce": _reproduce(args.argv, len(losses)),
        "steps_run": len(losses),
        "seed": args.seed,
        "batch_size": args.batch_size,
        "sizes": dataclasses.asdict(sizes),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "wall_seconds": round(wall, 1),
        "gpu_minutes": round(wall / 60, 2) if device.type == "cuda" else 0.0,
        "final_loss_mean_last_100": sum(tail) / max(1, len(tail)),
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
        **extra,
    }


def cmd_vae(args) -> dict:
    from turbo.toyworld.models import build_hunyuan_vae, build_vae, sizes_with_vae
    from turbo.toyworld.train import TrainConfig, VAETask, load_vae, reconstruction_check, save_vae, train_vae

    sizes = _sizes(args.sizes)
    if args.vae_width:
        field = "vae_base_dim" if args.family == "wan" else "hunyuan_vae_channels"
        sizes = dataclasses.replace(sizes, **{field: args.vae_width})
    if args.residual:
        if args.family != "wan":
            raise SystemExit("--residual is an AutoencoderKLWan option (--family wan)")
        sizes = dataclasses.replace(sizes, vae_residual=True)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # fixed clip/crop shapes: let cuDNN pick the 3-D convolution algorithms
    height, width = args.height or sizes.height, args.width or sizes.width
    start = time.perf_counter()
    if args.decoder_only and not args.resume:
        raise SystemExit("--decoder-only needs --resume (a trained VAE)")
    if args.resume:
        vae = load_vae(args.resume)
        family = "wan" if type(vae).__name__ == "AutoencoderKLWan" else "hunyuan"
        if family != args.family:
            raise SystemExit(f"--resume {args.resume} is a {family} VAE, not --family {args.family}")
    else:
        vae = (build_vae if args.family == "wan" else build_hunyuan_vae)(sizes, seed=args.seed)
    sizes = sizes_with_vae(sizes, vae)
    config = TrainConfig(steps=args.steps, minutes=args.minutes, batch_size=args.batch_size, seed=args.seed,
                         device=str(device), lr=args.lr or 3e-4, beta2=args.beta2, grad_clip=args.grad_clip,
                         warmup=args.warmup, schedule=args.schedule, cuda_graphs=args.cuda_graphs,
                         log_every=args.log_every)
    task = VAETask(frames=args.frames, height=height, width=width, fg_weight=args.fg_weight, crop=args.crop or None,
                   sample_scale=args.sample_scale, mse_weight=args.mse_weight, num_objects=args.objects,
                   long_frames=args.long_frames, long_every=args.long_every, decoder_only=args.decoder_only,
                   calibrate_frames=sizes.frames)
    losses = train_vae(vae, config, task)
    check = None
    if args.check:
        check = reconstruction_check(vae, args.check, sizes.frames, height, width, device=device)
        print(f"reconstruction check: {json.dumps(check)}", flush=True)
    vae.to("cpu")
    recipe = _recipe(args, sizes, device, start, losses, family=args.family, frames=args.frames,
                     height_width=[height, width], reconstruction_check=check, resumed_from=args.resume,
                     decoder_only=args.decoder_only)
    save_vae(vae, args.out, recipe=recipe)
    print(f"saved the {args.family} VAE to {args.out}: {len(losses)} steps, {recipe['wall_seconds']} s, "
          f"loss {recipe['final_loss_mean_last_100']:.4f}")
    print(f"reproduce: {recipe['reproduce']}")
    return recipe


def cmd_train(args) -> dict:
    from turbo.toyworld.models import build_pipeline, param_report, sizes_with_vae
    from turbo.toyworld.train import (
        FlowTask,
        TrainConfig,
        VAETask,
        init_from,
        load_toyworld,
        load_vae,
        save_toyworld,
        train_pipeline,
        train_vae,
    )

    sizes = _sizes(args.sizes)
    frames = args.frames or (sizes.frames,)
    height, width = args.height or sizes.height, args.width or sizes.width
    device = torch.device(args.device)
    start = time.perf_counter()
    components = {}
    if args.vae:
        components["vae"] = load_vae(args.vae)
    if args.resume:
        components["transformer"] = load_toyworld(args.resume, dtype=torch.float32).transformer
    pipe = build_pipeline(args.kind, sizes, seed=args.seed, **components)
    sizes = sizes_with_vae(sizes, pipe.vae)  # the recipe records the VAE the pipeline has (--vae: the loaded one)
    if args.init_from:
        if args.resume:
            raise SystemExit("--init-from and --resume exclude each other")
        left = init_from(pipe.transformer, load_toyworld(args.init_from, dtype=torch.float32).transformer)
        print(f"transformer initialised from {args.init_from}; left as initialised: {', '.join(left) or 'nothing'}")
    vae_losses: list[float] = []
    if not args.vae:
        vae_config = TrainConfig(steps=args.vae_steps or args.steps or 100, batch_size=args.batch_size,
                                 seed=args.seed, device=str(device), lr=1e-3, log_every=args.log_every,
                                 cuda_graphs=args.cuda_graphs)
        vae_losses = train_vae(pipe.vae, vae_config, VAETask(frames=frames[0], height=height, width=width))
    max_len = sizes.hunyuan_max_sequence_length if args.kind == "hunyuan-t2v" else sizes.max_sequence_length
    config = TrainConfig(steps=args.steps, minutes=args.minutes, batch_size=args.batch_size, seed=args.seed,
                         device=str(device), lr=args.lr or 3e-4, warmup=args.warmup, schedule=args.schedule,
                         ema_decay=args.ema, cuda_graphs=args.cuda_graphs, compile=args.compile,
                         log_every=args.log_every)
    task = FlowTask(frames=frames, height=height, width=width, cfg_dropout=args.cfg_dropout,
                    timestep_shift=args.timestep_shift, max_sequence_length=max_len, pool_size=args.pool_size)
    losses = train_pipeline(pipe, args.kind, config, task)
    pipe.to("cpu")
    recipe = _recipe(args, sizes, device, start, losses, kind=args.kind, frames=list(frames),
                     height_width=[height, width], vae_from=args.vae, resumed_from=args.resume,
                     initialised_from=args.init_from,
                     vae_steps_here=len(vae_losses))
    save_toyworld(pipe, args.out, recipe=recipe)
    megabytes = sum(mb for _, mb in param_report(pipe).values())
    print(f"saved {args.kind} to {args.out} ({megabytes:.1f} MB of weights, checksums.json written)")
    print(f"command: {recipe['command']}")
    print(f"reproduce: {recipe['reproduce']}")
    print(f"wall time: {recipe['wall_seconds']:.1f} s ({recipe['gpu_minutes']} GPU minutes) on {recipe['device']}")
    return recipe


def cmd_accuracy(args) -> list[dict]:
    from turbo.eval.harness import judge_prompts, prompt_set
    from turbo.toyworld.models import sampling_kwargs
    from turbo.toyworld.train import load_toyworld

    recipe_path = Path(args.model) / "toyworld_recipe.json"
    recipe = json.loads(recipe_path.read_text()) if recipe_path.is_file() else {}
    sizes = recipe.get("sizes", {})
    pipe = load_toyworld(args.model, dtype=None if args.dtype == "stored" else torch.float32, device=args.device)
    steps, guidances, config, label = args.steps or 50, args.guidance or [5.0], "dense", args.model
    if args.transformer:
        from turbo.distill.pack import student_dir
        from turbo.recipe import find_recipe

        student = type(pipe.transformer).from_pretrained(student_dir(args.transformer),
                                                         torch_dtype=pipe.transformer.dtype)
        pipe.transformer = student.to(pipe.device)
        recipe = find_recipe([student])
        sampler = recipe[0].sampler if recipe else None
        rcm = sampler is not None and sampler.mode == "rcm"
        steps = args.steps or (sampler.steps if rcm else 50)
        guidances = args.guidance or [1.0 if rcm else 5.0]
        config, label = None, f"{args.model} + {args.transformer}"  # None: the student's recipe
    if args.quant or args.cache:
        if args.transformer:
            raise SystemExit("accuracy: --quant or --cache measures the model's own transformer; it does not "
                             "combine with --transformer (a student runs its own recipe).")
        config = {**({"quant": {"mode": args.quant}} if args.quant else {}),
                  **({"cache": {"mode": args.cache}} if args.cache else {})}
        label = f"{args.model} + " + " + ".join(f"{k} {v['mode']}" for k, v in config.items())
    prompts = prompt_set(args.prompts, args.prompt_seed)
    reports = []
    for guidance in guidances:
        kwargs = {
            "height": args.height or sizes.get("height", 256),
            "width": args.width or sizes.get("width", 256),
            "num_frames": args.frames or sizes.get("frames", 33),
            "num_inference_steps": steps,
            **sampling_kwargs(pipe, guidance),
        }
        save = None if not args.save_videos else _video_saver(Path(args.save_videos) / f"cfg{guidance:g}",
                                                               args.save_count)
        stats: dict = {}

        def on_video(index, prompt, seed, video, save=save, stats=stats):
            if save is not None:
                save(index, prompt, seed, video)
            if args.cache:  # block evaluations since install, read while the cache is installed
                from turbo.cache import cache_stats

                stats.update(cache_stats(pipe))

        report = judge_prompts(pipe, prompts, kwargs, config, batch_size=args.batch_size, on_video=on_video)
        counts = [c for branches in stats.values() for c in branches.values()]
        skipped = sum(c["skipped"] for c in counts) / max(1, sum(c["skipped"] + c["computed"] for c in counts))
        out = {"model": args.model, "transformer": args.transformer, "guidance": guidance, "steps": steps,
               "device": str(args.device), "dtype": args.dtype, "quant": args.quant, "cache": args.cache,
               "command": "python -m pipelines.toyworld " + shlex.join(args.argv), **report.to_dict(),
               **({"cache_skipped": skipped, "cache_counts": stats} if args.cache else {})}
        reports.append(out)
        print(f"{label} ({type(pipe).__name__}), CFG {guidance}, {steps} steps"
              + (f", {100 * skipped:.1f} % of block evaluations skipped by the cache:" if args.cache else ":"))
        print(report.markdown())
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1) + "\n")
    return reports


def _video_saver(directory: Path, count: int):
    """An `on_video` callback of `judge_prompts` that keeps the first `count` videos as uint8 .npy + a .png strip."""
    import numpy as np
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)

    def save(index: int, prompt: str, seed: int, video) -> None:
        if index >= count:
            return
        frames = (np.clip(video, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        np.save(directory / f"{index:03d}.npy", frames)
        strip = np.concatenate([frames[0], frames[len(frames) // 2], frames[-1]], axis=1)
        Image.fromarray(strip).save(directory / f"{index:03d}.png")
        with (directory / "prompts.txt").open("a") as f:
            f.write(f"{index:03d}\t{seed}\t{prompt}\n")

    return save


def cmd_psnr(args) -> dict:
    """Mean PSNR of the candidate folder's videos against the reference folder's (matching NNN.npy files)."""
    import numpy as np

    from turbo.eval.metrics import psnr

    names = sorted(p.name for p in Path(args.candidate).glob("*.npy"))
    ref = Path(args.reference)
    pairs = [(Path(args.candidate) / n, ref / n) for n in names if (ref / n).is_file()]
    if not pairs:
        raise SystemExit(f"toyworld psnr: no matching NNN.npy files in {args.candidate} and {args.reference}")
    values = [psnr(np.load(a).astype(np.float32) / 255.0, np.load(b).astype(np.float32) / 255.0) for a, b in pairs]
    finite = [v for v in values if np.isfinite(v)]
    out = {"candidate": args.candidate, "reference": args.reference, "videos": len(values),
           "psnr_mean_db": float(np.mean(finite)) if finite else float("inf"),
           "psnr_min_db": float(np.min(values)), "identical": len(values) - len(finite)}
    print(json.dumps(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


def _spawn(argv: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    print("$ python -m pipelines.toyworld " + shlex.join(argv), flush=True)
    return subprocess.Popen([sys.executable, "-m", "pipelines.toyworld", *argv], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=env)


def _wait(jobs: dict[str, tuple[subprocess.Popen, Path]]) -> None:
    failed = []
    for name, (proc, log) in jobs.items():
        if proc.wait() != 0:
            failed.append(name)
        print(f"--- {name} (exit {proc.returncode}), last lines of {log}:")
        print("\n".join(log.read_text().splitlines()[-6:]), flush=True)
    if failed:
        raise SystemExit(f"toyworld all: {', '.join(failed)} failed; see the logs above")


def _pack(out: Path, names: list[str], pack: str | None) -> None:
    """Tar each finished directory ``out/NAME`` to ``pack/NAME.tar`` and the logs + accuracy JSONs to ``logs.tar``."""
    if not pack:
        return
    import tarfile

    Path(pack).mkdir(parents=True, exist_ok=True)
    for name in names:
        if (out / name).is_dir():
            with tarfile.open(Path(pack) / f"{name}.tar", "w") as tar:
                tar.add(out / name, arcname=name)
    with tarfile.open(Path(pack) / "logs.tar", "w") as tar:
        tar.add(out / "logs", arcname="logs")
        for f in out.glob("*.json"):
            tar.add(f, arcname=f.name)


def cmd_all(args) -> int:
    out = Path(args.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def run(name: str, argv: list[str]) -> None:
        _wait({name: (_spawn(argv, logs / f"{name}.log"), logs / f"{name}.log")})

    try:
        for name, argv in _recipe_stages(args, out):
            if args.skip_existing and (out / name / "checksums.json").is_file():
                print(f"reusing {out / name}", flush=True)
                continue
            run(name, argv)
            _pack(out, [name], args.pack)
        for kind in ("wan-t2v", "wan-i2v", "hunyuan-t2v") if args.eval_prompts else ():
            run(f"{kind}-accuracy", ["accuracy", "--model", str(out / kind), "--prompts", str(args.eval_prompts),
                                     "--steps", str(args.eval_steps), "--device", args.device, "--guidance",
                                     *args.guidance.split(","), "--json", str(out / f"{kind}-accuracy.json")])
    finally:
        _pack(out, [], args.pack)
    print(f"toyworld all: done in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    return 0


def _recipe_stages(args, out: Path) -> list[tuple[str, list[str]]]:
    """(output name, `pipelines.toyworld` argv) of every training stage, in order: the recipe of models/toyworld/
    (its README lists the commands as run, which continued some stages with --resume; here each runs once, for the
    given minutes). One process at a time: the GPU is the bottleneck once steps are compiled and graphed."""
    common = ["--device", args.device, "--sizes", args.sizes]
    seed = args.seed
    flow = ["--batch-size", str(args.batch_size), "--frames", args.frames, "--pool-size", str(args.pool_size),
            "--ema", "0.998", "--timestep-shift", "3", *(["--compile"] if args.device != "cpu" else []),
            *shlex.split(args.extra)]
    vae_extra = shlex.split(args.vae_extra)
    return [
        ("vae-wan-base", ["vae", "--family", "wan", "--residual", "--vae-width", "16", "--lr", "4e-4", "--batch-size",
                          "24", "--minutes", str(args.vae_minutes), "--seed", str(seed), "--out",
                          str(out / "vae-wan-base"), *common, *vae_extra]),
        ("vae-wan", ["vae", "--family", "wan", "--residual", "--vae-width", "16", "--resume", str(out / "vae-wan-base"),
                     "--decoder-only", "--lr", "2e-4", "--batch-size", "24", "--check", "32", "--warmup", "50",
                     "--minutes", str(args.decoder_minutes), "--seed", str(seed + 1), "--out", str(out / "vae-wan"),
                     *common, *vae_extra]),
        ("vae-hunyuan", ["vae", "--family", "hunyuan", "--vae-width", "16", "--lr", "6e-4", "--batch-size", "12",
                         "--minutes", str(args.vae_minutes), "--seed", str(seed), "--out", str(out / "vae-hunyuan"),
                         *common, *vae_extra]),
        ("wan-t2v", ["train", "--kind", "wan-t2v", "--vae", str(out / "vae-wan"), "--lr", "6e-4", "--warmup", "300",
                     "--minutes", str(args.minutes), "--seed", str(seed), "--out", str(out / "wan-t2v"), *common,
                     *flow]),
        ("wan-i2v", ["train", "--kind", "wan-i2v", "--vae", str(out / "vae-wan"), "--init-from", str(out / "wan-t2v"),
                     "--lr", "4e-4", "--warmup", "200", "--minutes", str(args.i2v_minutes), "--seed", str(seed),
                     "--out", str(out / "wan-i2v"), *common, *flow]),
        ("hunyuan-t2v", ["train", "--kind", "hunyuan-t2v", "--vae", str(out / "vae-hunyuan"), "--lr", "5e-4",
                         "--warmup", "300", "--minutes", str(args.minutes), "--seed", str(seed), "--out",
                         str(out / "hunyuan-t2v"), *common, *flow]),
    ]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    if args.command in ("vae", "train") and args.steps is None and args.minutes is None:
        raise SystemExit(f"toyworld {args.command}: give --steps or --minutes")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    {"vae": cmd_vae, "train": cmd_train, "accuracy": cmd_accuracy, "psnr": cmd_psnr, "all": cmd_all}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
