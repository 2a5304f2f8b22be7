"""The `turbo` command: `turbo generate` (a video with acceleration, optionally timed against the unaccelerated run),
`turbo eval` (a candidate config against a reference config on ToyWorld prompts) and `turbo info` (what this machine
can run fast)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import fields

DEFAULT_MODEL = "default"


def _attention_flags(parser: argparse.ArgumentParser, title: str = "attention (override the preset)",
                     method: bool = True) -> None:
    from turbo.config import AttentionConfig

    group = parser.add_argument_group(title)
    for f in fields(AttentionConfig):
        if f.name == "method" and not method:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"]
        if f.metadata["methods"]:
            help_text += f" [{', '.join(f.metadata['methods'])}]"
        if f.name == "method":
            group.add_argument("--attention", dest="method", choices=f.metadata["choices"], help=help_text)
        elif isinstance(f.default, bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kwargs = {"choices": f.metadata["choices"]} if f.metadata["choices"] else {}
            group.add_argument(flag, dest=f.name, type=type(f.default), default=None, help=help_text, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from turbo.config import PRESETS

    parser = argparse.ArgumentParser(prog="turbo", description="Faster video diffusion transformers for diffusers.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate a video (mp4)")
    gen.add_argument("--model", default=DEFAULT_MODEL,
                     help="a diffusers pipeline directory, or 'default' for the embedded offline model")
    gen.add_argument("--prompt", default="a red circle moving left on a gray background")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--image", default=None, help="first frame for image-to-video pipelines")
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--width", type=int, default=None)
    gen.add_argument("--frames", type=int, default=None, help="number of frames, 4k+1")
    gen.add_argument("--steps", type=int, default=None)
    gen.add_argument("--guidance", type=float, default=None)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--preset", choices=list(PRESETS), default=None,
                     help="named config (default: turbo's safe default for this machine)")
    gen.add_argument("--no-turbo", action="store_true", help="run the unaccelerated pipeline only")
    gen.add_argument("--compare", action="store_true",
                     help="also run the unaccelerated pipeline with the same seed and print both times")
    gen.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    gen.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                     help="default: bfloat16 on CUDA, float32 on CPU")
    gen.add_argument("--fps", type=int, default=16)
    gen.add_argument("--out", default="turbo.mp4")
    _attention_flags(gen)

    ev = sub.add_parser("eval", help="compare a candidate config against a reference on ToyWorld prompts")
    ev.add_argument("--model", default=DEFAULT_MODEL,
                    help="a diffusers text-to-video pipeline directory, or 'default' for the embedded offline model")
    ev.add_argument("--prompts", type=int, default=8, help="number of ToyWorld prompts")
    ev.add_argument("--seed", type=int, default=0, help="seed of the prompt set (captions and video seeds)")
    ev.add_argument("--reference", default="dense", help="preset or attention method name (default: dense)")
    ev.add_argument("--candidate", default="fast",
                    help="preset or attention method name, e.g. sla (default: fast); the attention flags apply to it")
    ev.add_argument("--height", type=int, default=None)
    ev.add_argument("--width", type=int, default=None)
    ev.add_argument("--frames", type=int, default=None, help="number of frames, 4k+1")
    ev.add_argument("--steps", type=int, default=None)
    ev.add_argument("--guidance", type=float, default=None)
    ev.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ev.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                    help="default: bfloat16 on CUDA, float32 on CPU")
    ev.add_argument("--per-prompt", action="store_true", help="also print one table line per prompt")
    ev.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ev.add_argument("--json", default=None, help="also write the table (rows and summary) to this JSON file")
    ev.set_defaults(prompt=None, negative_prompt=None, image=None)
    _attention_flags(ev, "candidate attention options (override the candidate preset or method)", method=False)

    sub.add_parser("info", help="torch / CUDA / Triton and which methods run fast here")
    return parser


def _load(args, device, dtype):
    import torch

    if args.model == DEFAULT_MODEL:
        from pipelines.tiny import DEFAULT_DEMO, build_default
        from turbo.toyworld.train import ToyWorldWeightsError

        try:
            pipe = build_default().to(device)
        except ToyWorldWeightsError as error:
            raise SystemExit(f"turbo: {error}") from None
        return (pipe if dtype == torch.float32 else pipe.to(dtype)), {**DEFAULT_DEMO, "toyworld": True}
    from diffusers import DiffusionPipeline

    if not os.path.isdir(args.model):
        raise SystemExit(f"turbo: --model {args.model!r} is not a directory with a diffusers pipeline.")
    defaults = {"height": 480, "width": 832, "num_frames": 81, "num_inference_steps": 50}
    if os.path.isfile(os.path.join(args.model, "checksums.json")):  # a ToyWorld model: verify before loading
        from turbo.toyworld.train import ToyWorldWeightsError, load_toyworld

        try:
            pipe = load_toyworld(args.model, dtype=dtype).to(device)
        except ToyWorldWeightsError as error:
            raise SystemExit(f"turbo: {error}") from None
        return pipe, _toyworld_defaults(args.model)
    pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype)
    return pipe.to(device), defaults


def _toyworld_defaults(model: str) -> dict:
    """Call defaults of a ToyWorld pipeline directory: its demo setting (from the recipe's sizes), 50 steps, CFG 5."""
    import json
    from pathlib import Path

    recipe = Path(model) / "toyworld_recipe.json"
    sizes = json.loads(recipe.read_text(encoding="utf-8")).get("sizes", {}) if recipe.is_file() else {}
    return {"height": sizes.get("demo_height", 256), "width": sizes.get("demo_width", 256),
            "num_frames": sizes.get("demo_frames", 17), "num_inference_steps": 50, "guidance_scale": 5.0,
            "toyworld": True}


def _call_kwargs(args, pipe, defaults) -> dict:
    kwargs = {
        "prompt": args.prompt,
        "height": args.height or defaults["height"],
        "width": args.width or defaults["width"],
        "num_frames": args.frames or defaults["num_frames"],
        "num_inference_steps": args.steps or defaults["num_inference_steps"],
        "output_type": "np",
    }
    if args.guidance is not None or "guidance_scale" in defaults:
        kwargs["guidance_scale"] = args.guidance if args.guidance is not None else defaults["guidance_scale"]
    if defaults.get("toyworld"):  # CFG the way the ToyWorld models were trained for (HunyuanVideo: true CFG + template)
        from turbo.toyworld.models import sampling_kwargs

        kwargs.update(sampling_kwargs(pipe, kwargs.pop("guidance_scale")))
    if args.negative_prompt is not None:
        kwargs["negative_prompt"] = args.negative_prompt
    name = type(pipe).__name__
    if "ImageToVideo" in name and getattr(args, "command", None) != "eval":  # eval renders a first frame per prompt
        if not args.image:
            raise SystemExit(f"turbo: {name} needs --image (the first frame).")
        from diffusers.utils import load_image

        kwargs["image"] = load_image(args.image)
    return kwargs


def _run(pipe, kwargs, seed: int, label: str):
    import torch

    pipe.set_progress_bar_config(desc=label)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    frames = pipe(**kwargs, generator=torch.Generator(device="cpu").manual_seed(seed)).frames[0]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return frames, time.perf_counter() - start


def _psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def _device_dtype(args):
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("turbo: --device cuda was requested but this machine has no CUDA GPU; use --device cpu.")
    on_gpu = device.startswith("cuda")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if on_gpu else torch.float32)
    return device, dtype


def _attention_overrides(args) -> dict:
    from turbo.config import FIELD_OWNER

    return {
        name: getattr(args, name) for name in FIELD_OWNER
        if FIELD_OWNER[name] == "attention" and getattr(args, name, None) is not None
    }


def unknown_words(tokenizer, prompt: str) -> list[str]:
    """Words of the prompt that the pipeline's tokenizer can only map to its unknown token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if tokenizer is None or unk is None:
        return []
    return [word for word in prompt.split() if unk in tokenizer(word, add_special_tokens=False).input_ids]


def cmd_generate(args) -> int:
    from diffusers.utils import export_to_video

    import turbo
    from turbo.geometry import check_video_size

    device, dtype = _device_dtype(args)
    overrides = _attention_overrides(args)
    pipe, defaults = _load(args, device, dtype)
    unknown = unknown_words(getattr(pipe, "tokenizer", None), args.prompt)
    if unknown:
        print(f"turbo: warning: the model's tokenizer does not know {', '.join(map(repr, unknown))}; "
              "they become its unknown token.")
    kwargs = _call_kwargs(args, pipe, defaults)
    try:
        check_video_size(kwargs["height"], kwargs["width"], kwargs["num_frames"])
    except turbo.GeometryError as error:
        raise SystemExit(f"turbo: {error}") from None

    baseline_frames = baseline_time = None
    if args.compare or args.no_turbo:
        _run(pipe, {**kwargs, "num_inference_steps": 1}, args.seed, "warm-up")
        baseline_frames, baseline_time = _run(pipe, kwargs, args.seed, "unaccelerated")
        print(f"unaccelerated: {baseline_time:.2f} s")
    if args.no_turbo:
        frames, elapsed = baseline_frames, baseline_time
    else:
        try:
            turbo.accelerate(pipe, args.preset, **overrides)
        except turbo.TurboError as error:
            raise SystemExit(f"turbo: {error}") from None
        if not args.compare:
            _run(pipe, {**kwargs, "num_inference_steps": 1}, args.seed, "warm-up")
        frames, elapsed = _run(pipe, kwargs, args.seed, f"turbo {pipe.turbo.config.attention.method}")
        print(pipe.turbo)
        print(f"accelerated:   {elapsed:.2f} s")
        if baseline_time is not None:
            print(f"speed-up:      {baseline_time / elapsed:.2f}× vs the unaccelerated run "
                  f"(same seed; PSNR {_psnr(frames, baseline_frames):.1f} dB)")
    export_to_video(list(frames), args.out, fps=args.fps)
    n, h, w = frames.shape[0], frames.shape[1], frames.shape[2]
    print(f"wrote {args.out} ({n} frames, {w}×{h})")
    return 0


def _eval_config(name: str, overrides: dict, role: str):
    """--reference / --candidate: a preset name (with option overrides -> a TurboConfig) or an attention method name
    (-> {"attention": {"method": name, **overrides}}); checked here so a bad value fails before the model loads."""
    import turbo
    from turbo.config import ATTENTION_METHODS, PRESETS, resolve_config

    if name in PRESETS:
        config = PRESETS[name].config.replace(**overrides) if overrides else name
    elif name in ATTENTION_METHODS:
        config = {"attention": {"method": name, **overrides}}
    else:
        raise SystemExit(f"turbo: --{role} {name!r} is neither a preset ({', '.join(PRESETS)}) nor an attention "
                         f"method ({', '.join(ATTENTION_METHODS)}).")
    try:
        resolve_config(config, turbo.default_config())[0].check_built()
    except turbo.TurboError as error:
        raise SystemExit(f"turbo: --{role} {name}: {error}") from None
    return config


def cmd_eval(args) -> int:
    import json

    import turbo
    from turbo.eval.harness import evaluate, prompt_set
    from turbo.geometry import check_video_size

    if args.prompts < 1:
        raise SystemExit(f"turbo: --prompts must be at least 1, got {args.prompts}.")
    device, dtype = _device_dtype(args)
    reference = _eval_config(args.reference, {}, "reference")
    candidate = _eval_config(args.candidate, _attention_overrides(args), "candidate")
    pipe, defaults = _load(args, device, dtype)
    kwargs = _call_kwargs(args, pipe, defaults)
    kwargs.pop("prompt")
    try:
        check_video_size(kwargs["height"], kwargs["width"], kwargs["num_frames"])
    except turbo.GeometryError as error:
        raise SystemExit(f"turbo: {error}") from None
    try:
        table = evaluate(pipe, reference, candidate, prompt_set(args.prompts, args.seed), kwargs,
                         progress=not args.no_progress)
    except turbo.TurboError as error:
        raise SystemExit(f"turbo: {error}") from None
    print(table.markdown(per_prompt=args.per_prompt))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(table.to_dict(), handle, indent=2)
        print(f"wrote {args.json}")
    return 0


def cmd_info(args) -> int:
    import turbo
    from turbo.config import PRESETS

    print("\n".join(turbo.capabilities().lines()))
    print(f"default config here: attention={turbo.default_config().attention.method}")
    print("presets:")
    for preset in PRESETS.values():
        print(f"  {preset.name:<9} {preset.description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    return {"generate": cmd_generate, "eval": cmd_eval, "info": cmd_info}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
