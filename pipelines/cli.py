"""The `turbo` command: `turbo generate` (a video with acceleration, optionally compared with the unaccelerated run),
`turbo eval` (a candidate config against a reference config on ToyWorld prompts), `turbo calibrate` (the nvfp4-mixed
router's alpha, beta for a model), `turbo convert` (a TurboDiffusion /
rCM checkpoint into a diffusers transformer with its turbo recipe), `turbo info` (what this machine can run fast, the
presets and the models) and `turbo app` (the Gradio app).

Every bad input is refused before any model loads, with one line `turbo: <sentence>` on stderr and exit code 2.
Arguments come from `pipelines.options` (shared with the app), models from `pipelines.registry`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from pipelines import options, registry
from pipelines.options import RequestError

DEFAULT_MODEL = registry.DEFAULT_MODEL
_SIZE_ARGUMENTS = ("model", "height", "width", "frames", "steps", "guidance", "device", "dtype")


class _Parser(argparse.ArgumentParser):
    """argparse without abbreviations whose errors are one line `turbo: <message>` (exit code 2, no usage dump)."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        _refuse(message)
        raise SystemExit(2)


def _refuse(message) -> int:
    text = " ".join(str(message).split())
    print(f"turbo: {text}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    """The `turbo` argument parser (subcommands generate, eval, calibrate, convert, distill, info, app)."""
    from turbo.config import PRESETS

    parser = _Parser(prog="turbo", description="Faster video diffusion transformers for diffusers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = sub.add_parser("generate", help="generate a video (mp4)")
    options.add_arguments(gen)
    gen.add_argument("--out", default="turbo.mp4", help="the mp4 to write (its folder must exist)")
    gen.add_argument("--preset", choices=list(PRESETS), default=None,
                     help="named config (default: turbo's safe default for this machine)")
    gen.add_argument("--no-turbo", action="store_true", help="run the unaccelerated pipeline only")
    gen.add_argument("--compare", action="store_true",
                     help="also run the unaccelerated pipeline with the same seed and print both times and the PSNR")
    gen.add_argument("--allow-untuned", action="store_true",
                     help="run a config that needs turbo-fine-tuned weights (sla, sla2) on weights without them")
    gen.add_argument("--transformer", default=None, metavar="DIR",
                     help="a `turbo convert` output directory whose transformer(s) replace the model's (its recipe "
                          "becomes the starting config)")
    options.add_acceleration_arguments(gen)

    ev = sub.add_parser("eval", help="compare a candidate config against a reference on ToyWorld prompts")
    options.add_arguments(ev, _SIZE_ARGUMENTS)
    options.add_arguments(ev, ("seed",), {"seed": {"help": "seed of the prompt set (captions and video seeds)"}})
    ev.add_argument("--prompts", type=int, default=8, help="number of ToyWorld prompts")
    ev.add_argument("--reference", default="dense", help="preset or attention method name (default: dense)")
    ev.add_argument("--candidate", default="balanced",
                    help="preset or attention method name, e.g. svg (default: balanced); the option flags apply to it")
    ev.add_argument("--allow-untuned", action="store_true",
                    help="allow configs that need turbo-fine-tuned weights (sla, sla2) on weights without them")
    ev.add_argument("--per-prompt", action="store_true", help="also print one table line per prompt")
    ev.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ev.add_argument("--json", default=None, help="also write the table (rows and summary) to this JSON file")
    options.add_acceleration_arguments(ev, "candidate options (override the candidate preset or method)",
                                       skip=("attention",))

    conv = sub.add_parser("convert", help="convert a TurboDiffusion / rCM checkpoint (native Wan keys) into a "
                                          "diffusers transformer directory with its turbo recipe")
    conv.add_argument("checkpoint",
                      help=".pth/.pt, .safetensors or a sharded directory (Wan2.2: the high-noise expert)")
    conv.add_argument("--out", required=True, help="output directory")
    conv.add_argument("--low-noise", default=None, help="Wan2.2 A14B: the low-noise expert (written as transformer_2)")
    conv.add_argument("--sla-topk", type=float, default=0.1, help="SLA keep ratio of the recipe (default 0.1)")
    conv.add_argument("--sigma-max", type=float, default=None, help="rCM sigma_max (default 80 T2V, 200 I2V)")
    conv.add_argument("--steps", type=int, default=4, help="rCM sampling steps of the recipe (default 4)")
    conv.add_argument("--dtype", choices=list(_CONVERT_DTYPES), default="bf16", help="weights dtype (default bf16)")

    dist = sub.add_parser("distill", help="rCM step distillation / SLA fine-tuning of a Wan pipeline (a YAML config, "
                                          "see examples/distill_toyworld.yaml)")
    from turbo.distill.__main__ import add_arguments as add_distill_arguments

    add_distill_arguments(dist)

    cal = sub.add_parser("calibrate", help="fit the nvfp4-mixed precision router (alpha, beta) of a model on ToyWorld "
                                           "prompts and write it as JSON (quant_calibration=FILE)")
    options.add_arguments(cal, _SIZE_ARGUMENTS)
    options.add_arguments(cal, ("seed",), {"seed": {"help": "seed of the prompt set and the generator"}})
    cal.add_argument("--prompts", type=int, default=4, help="number of ToyWorld prompts (default 4)")
    cal.add_argument("--out", default=None, help="the JSON to write (default: turbo_mixed_calibration.json beside the "
                                                 "transformer's weights, when that folder is writable)")

    sub.add_parser("info", help="torch / CUDA / Triton, which methods run fast here, presets and models")
    sub.add_parser("app", help="start the Gradio app (arguments after 'app' go to it)", add_help=False)
    return parser


# ------------------------------------------------------------------------------------------------------------ helpers


def unknown_words(tokenizer, prompt: str) -> list[str]:
    """Words of the prompt that the pipeline's tokenizer can only map to its unknown token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if tokenizer is None or unk is None:
        return []
    return [word for word in prompt.split() if unk in tokenizer(word, add_special_tokens=False).input_ids]


def _request(args, image_required: bool = True, names=None) -> options.Request:
    names = names or [a.name for a in options.GENERATION_ARGUMENTS]
    values = {name: getattr(args, name) for name in names}
    return options.validate_request(**values, out=getattr(args, "out", None), image_required=image_required)


def _accelerate(pipe, preset: str | None, overrides: dict, allow_untuned: bool):
    import turbo

    return turbo.accelerate(pipe, preset, allow_untuned=allow_untuned, **overrides)


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


def judge_line(frames, prompt: str) -> str:
    """What the ToyWorld judge (`turbo.eval.judge`) reads in a video against its prompt, one line per object,
    e.g. "colour red ✓, shape square ✗ (circle), motion left ✓, background gray ✓"."""
    import warnings

    from turbo.eval.judge import judge

    with warnings.catch_warnings():  # unknown prompt words were already reported once
        warnings.simplefilter("ignore")
        result = judge(frames, prompt)
    parts = []
    for o in result.objects:
        for attribute in ("colour", "shape", "motion"):
            prompted, seen = getattr(o, f"prompted_{attribute}"), getattr(o, f"detected_{attribute}") or "nothing"
            if prompted is None:
                continue
            ok = getattr(o, f"{attribute}_ok")
            parts.append(f"{attribute} {seen} ✓" if ok else f"{attribute} {seen} ✗ (prompt: {prompted})")
    if result.prompted_background is not None:
        bg = result.detected_background or "nothing"
        parts.append(f"background {bg} ✓" if result.background_ok
                     else f"background {bg} ✗ (prompt: {result.prompted_background})")
    return ", ".join(parts) if parts else "nothing the judge can check in this prompt"


def _describe_config(config) -> str:
    from turbo.eval.harness import describe_config

    try:
        return describe_config(config)
    except Exception:  # the label is cosmetic; never fail a run on it
        return config if isinstance(config, str) else config.attention.method


# ----------------------------------------------------------------------------------------------------------- commands


def reuse_freed_memory() -> bool:
    """On Linux/glibc, serve every allocation from the heap and never give freed heap memory back (``mallopt``:
    M_MMAP_MAX 0, M_TRIM_THRESHOLD 2 GiB), so a CPU run's large activations (a Wan VAE decode allocates and frees
    tens of 50 MB tensors per frame chunk) reuse pages instead of page-faulting fresh zeroed mappings each time: the
    ToyWorld decode took ~20 % less time on 2 cores. The process keeps its peak memory until it exits, which is what
    a one-shot `turbo generate` wants. Returns whether the settings took."""
    import ctypes
    import platform

    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc
        return False


def cmd_generate(args) -> int:
    """`turbo generate`: validate everything, then load, (optionally) run unaccelerated, accelerate, run, write."""
    from diffusers.utils import export_to_video

    from turbo.eval.metrics import psnr

    request = _request(args)
    if args.transformer and (problem := registry.transformer_dir_error(args.transformer)):
        raise RequestError(problem)
    recipe_path = registry.recipe_file(request.model, args.transformer)
    overrides = options.acceleration_overrides(args)
    config = label = None
    # a student (or converted) transformer replaces the model's: --compare runs the model's own one as the teacher,
    # at the teacher's own steps and CFG
    student = args.transformer or (registry.converted_dir(request.model) if request.model.student else None)
    teacher = None
    if args.compare and student is not None:
        teacher = request.model.baseline or (request.steps, request.guidance)
    if not args.no_turbo:
        recipe = None
        if recipe_path is not None and args.preset is None:
            from turbo.recipe import load_recipe

            recipe = load_recipe(recipe_path)
        config, preset = options.validate_acceleration(args.preset, overrides, args.allow_untuned, recipe=recipe)
        label = _describe_config(preset if preset and not overrides else config)
        if recipe is not None:
            label += f", from the model's recipe {recipe_path}"
        request = options.fit_request(request, config, steps_given=args.steps is not None,
                                      guidance_given=args.guidance is not None)

    print(f"prompt:  {request.prompt!r}")
    print(f"model:   {options.request_summary(request)}")
    if args.no_turbo:
        print("running: the unaccelerated pipeline only (--no-turbo)")
    elif teacher is not None:
        print(f"comparing: the student {student} with turbo ({label}) against its teacher, the model's own transformer "
              f"with dense attention at {_call_label(*teacher)} and the same VAE decode, same prompt and seed; PSNR "
              "of the student's video against the teacher's")
    elif args.compare:
        print(f"comparing: turbo ({label}) against the unaccelerated pipeline (the model's own attention), same "
              f"prompt and seed; PSNR of turbo's video against the unaccelerated one")
    else:
        print(f"running: turbo ({label})")
    method = None if config is None else config.attention.method
    if request.device == "cpu" and method not in (None, "dense"):
        print(f"note:    on a CPU '{method}' runs its PyTorch reference, which is exact but not faster than dense "
              "attention; the speed-ups need a CUDA GPU")

    if request.device == "cpu":
        reuse_freed_memory()
    pipe = registry.load_pipeline(request.model, request.device, request.torch_dtype(), transformer=args.transformer,
                                  own_transformer=teacher is not None)
    unknown = unknown_words(getattr(pipe, "tokenizer", None), request.prompt)
    if unknown:
        print(f"turbo: warning: the model's tokenizer does not know {', '.join(map(repr, unknown))}; "
              "they become its unknown token.")
    kwargs = request.call_kwargs(image=request.load_image())

    baseline_frames = baseline_time = None
    baseline_kwargs, baseline_name = kwargs, "unaccelerated"
    if teacher is not None:
        baseline_kwargs, baseline_name = _with_call(kwargs, *teacher), "teacher"
    if args.compare or args.no_turbo:
        fair = teacher is not None and not args.no_turbo
        if fair:  # the teacher decodes with the same turbo VAE as the student: the speed-up is the transformer's
            import turbo

            turbo.accelerate(pipe, vae=config.vae)
        _run(pipe, {**baseline_kwargs, "num_inference_steps": 1}, request.seed, "warm-up")
        baseline_frames, baseline_time = _run(pipe, baseline_kwargs, request.seed, baseline_name)
        if fair:
            turbo.restore(pipe)
        print(f"{baseline_name}: {baseline_time:.2f} s"
              + (f" ({_call_label(*teacher)}, {_calls(*teacher)} transformer calls"
                 + (f"; dense attention, VAE {config.vae.mode}" if fair else "") + ")" if teacher else ""))
    if args.no_turbo:
        frames, elapsed = baseline_frames, baseline_time
    else:
        if teacher is not None:
            registry.swap_transformers(pipe, student)
        _accelerate(pipe, args.preset, overrides, args.allow_untuned)
        # warmed up like the baseline (a swapped-in student's first call pays for first touches of its weights)
        _run(pipe, {**kwargs, "num_inference_steps": 1}, request.seed, "warm-up")
        frames, elapsed = _run(pipe, kwargs, request.seed, f"turbo {pipe.turbo.config.attention.method}")
        print(pipe.turbo)
        print(f"accelerated:   {elapsed:.2f} s"
              + (f" ({_call_label(request.steps, request.guidance)}, {_calls(request.steps, request.guidance)} "
                 "transformer calls)" if teacher else ""))
        if teacher is not None:
            print(f"speed-up:      {baseline_time / elapsed:.2f}× vs the teacher, whole call (text encoder and VAE "
                  f"decode included; same seed; PSNR {psnr(frames, baseline_frames):.1f} dB)")
        elif baseline_time is not None:
            caveat = "; CPU: both runs are PyTorch attention, not a kernel speed-up" if method != "dense" and \
                request.device == "cpu" else ""
            print(f"speed-up:      {baseline_time / elapsed:.2f}× vs the unaccelerated run "
                  f"(same seed; PSNR {psnr(frames, baseline_frames):.1f} dB{caveat})")
    if request.model.toyworld and request.prompt:
        if baseline_frames is not None and not args.no_turbo:
            print(f"judge, {baseline_name}: {judge_line(baseline_frames, request.prompt)}")
        print(f"judge{(', student' if teacher else ', accelerated') if not args.no_turbo else ''}: "
              f"{judge_line(frames, request.prompt)}")
    export_to_video(list(frames), request.out, fps=request.fps)
    n, h, w = frames.shape[0], frames.shape[1], frames.shape[2]
    print(f"wrote {request.out} ({n} frames, {w}×{h}, prompt {request.prompt!r})")
    return 0


def _with_call(kwargs: dict, steps: int, guidance: float | None) -> dict:
    """`kwargs` with another step count and CFG scale (Wan's ``guidance_scale``; None keeps the pipeline's)."""
    out = {**kwargs, "num_inference_steps": steps}
    if guidance is not None:
        out["guidance_scale"] = guidance
    return out


def _calls(steps: int, guidance: float | None) -> int:
    """Transformer calls of a Wan call: two per step with CFG (> 1), one without."""
    return steps * (2 if guidance is not None and guidance > 1.0 else 1)


def _call_label(steps: int, guidance: float | None) -> str:
    return f"{steps} steps" + (f", CFG {guidance:g}" if guidance is not None and guidance > 1.0 else ", no CFG")


def _attention_methods() -> tuple[str, ...]:
    for spec in options.acceleration_specs():
        if spec.key == "attention":
            return tuple(spec.choices)
    return ()


def _eval_config(name: str, overrides: dict, role: str, allow_untuned: bool):
    """--reference / --candidate: a preset name or an attention method name plus option overrides, checked before
    the model loads; returns what `turbo.eval.harness.evaluate` takes."""
    import turbo
    from turbo.config import PRESETS

    methods = _attention_methods()
    if name in PRESETS:
        base = name
    elif name in methods:
        base = {"attention": {"method": name}}
    else:
        raise RequestError(f"--{role} {name!r} is neither a preset ({', '.join(PRESETS)}) nor an attention method "
                           f"({', '.join(methods)}).")
    try:
        config, _ = options.validate_acceleration(base, overrides, allow_untuned)
    except turbo.TurboError as error:
        raise RequestError(f"--{role} {name}: {error}") from None
    return (base if not overrides else config), config


def cmd_eval(args) -> int:
    """`turbo eval`: reference vs candidate config on ToyWorld prompts (table, optional JSON)."""
    import json

    from turbo.eval.harness import evaluate, prompt_set

    if args.prompts < 1:
        raise RequestError(f"--prompts must be at least 1, got {args.prompts}.")
    if args.json:
        options.check_output(args.json)
    request = _request(args, image_required=False, names=[*_SIZE_ARGUMENTS, "seed"])
    reference, reference_config = _eval_config(args.reference, {}, "reference", args.allow_untuned)
    candidate, candidate_config = _eval_config(args.candidate, options.acceleration_overrides(args), "candidate",
                                               args.allow_untuned)
    for config in (reference_config, candidate_config):  # one call setting serves both: fit it to each (rCM steps)
        request = options.fit_request(request, config, steps_given=args.steps is not None,
                                      guidance_given=args.guidance is not None)
    pipe = registry.load_pipeline(request.model, request.device, request.torch_dtype())
    kwargs = request.call_kwargs()
    kwargs.pop("prompt", None)
    table = evaluate(pipe, reference, candidate, prompt_set(args.prompts, request.seed), kwargs,
                     progress=not args.no_progress)
    print(table.markdown(per_prompt=args.per_prompt))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(table.to_dict(), handle, indent=2)
        print(f"wrote {args.json}")
    return 0


def _calibration_path(args, model) -> str:
    """--out, else turbo_mixed_calibration.json in the model's transformer folder (or the model folder) if writable."""
    from turbo.quant.router import CALIBRATION_FILE

    if args.out:
        options.check_output(args.out)
        return args.out
    if model.is_local:
        folder = Path(model.source) / "transformer"
        folder = folder if folder.is_dir() else Path(model.source)
        if os.access(folder, os.W_OK):
            return str(folder / CALIBRATION_FILE)
    raise RequestError(f"cannot write beside the weights of {model.name}; pass --out FILE.json.")


def cmd_calibrate(args) -> int:
    """`turbo calibrate`: run the model unaccelerated on --prompts ToyWorld prompts with the nvfp4-mixed calibration
    hooks (`turbo.quant.calibrate_mixed`) and write alpha, beta and the model fingerprint as JSON."""
    import torch

    from turbo.eval.harness import prompt_set
    from turbo.quant import calibrate_mixed, save_calibration

    if args.prompts < 1:
        raise RequestError(f"--prompts must be at least 1, got {args.prompts}.")
    request = _request(args, image_required=False, names=[*_SIZE_ARGUMENTS, "seed"])
    if request.steps < 2:
        raise RequestError(f"--steps must be at least 2 for a calibration (Γ needs a previous step), got "
                           f"{request.steps}.")
    out = _calibration_path(args, request.model)
    pipe = registry.load_pipeline(request.model, request.device, request.torch_dtype())
    pipe.set_progress_bar_config(disable=True)
    kwargs = request.call_kwargs()
    kwargs.pop("prompt", None)
    prompts = [caption for caption, _ in prompt_set(args.prompts, request.seed)]
    calibration = calibrate_mixed(pipe, prompts, generator=torch.Generator().manual_seed(request.seed), **kwargs)
    save_calibration(calibration, out)
    print(f"alpha {calibration['alpha']:.6g}, beta {calibration['beta']:.6g}, r² {calibration['r2']:.3f} from "
          f"{calibration['samples']} block calls ({len(prompts)} prompts, {request.steps} steps)")
    print(f"wrote {out} (use: quant='nvfp4-mixed', quant_calibration={out!r})")
    return 0


_CONVERT_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_BASE_PIPELINES = {  # model guess → (pipeline class, diffusers repo the other components come from)
    "Wan2.1-T2V-1.3B": ("WanPipeline", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
    "Wan2.1-T2V-14B": ("WanPipeline", "Wan-AI/Wan2.1-T2V-14B-Diffusers"),
    "Wan2.1-I2V-14B": ("WanImageToVideoPipeline", "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"),
    "Wan2.2-I2V-A14B": ("WanImageToVideoPipeline", "Wan-AI/Wan2.2-I2V-A14B-Diffusers"),
    "Wan2.2-T2V-A14B": ("WanPipeline", "Wan-AI/Wan2.2-T2V-A14B-Diffusers"),
}


def cmd_convert(args) -> int:
    """`turbo convert`: TurboDiffusion / rCM checkpoint → diffusers transformer dir + SLA parts + turbo recipe."""
    import torch

    from turbo.convert import convert_report, recipe_for

    for label, path in (("checkpoint", args.checkpoint), ("--low-noise", args.low_noise)):
        if path is not None and not os.path.exists(path):
            return _refuse(f"{label} {path} does not exist.")
    if os.path.isfile(args.out):
        return _refuse(f"--out {args.out} is a file; give a directory.")
    if not 0 < args.sla_topk <= 1:
        return _refuse(f"--sla-topk {args.sla_topk} must be in (0, 1] (TurboDiffusion uses 0.1).")
    if args.sigma_max is not None and not args.sigma_max > 0:
        return _refuse(f"--sigma-max {args.sigma_max} must be > 0 (80 for T2V, 200 for I2V).")
    recipe_for(sla=True, in_channels=16, sla_topk=args.sla_topk, sigma_max=args.sigma_max, steps=args.steps)
    dtype = getattr(torch, _CONVERT_DTYPES[args.dtype])

    started = time.perf_counter()
    report = convert_report(args.checkpoint, args.out, low_noise=args.low_noise, sla_topk=args.sla_topk,
                            sigma_max=args.sigma_max, steps=args.steps, dtype=dtype)
    first = report.models[0]
    sla = all(m.sla for m in report.models)
    int8 = sum(m.int8_linears for m in report.models)
    print(f"found: {report.name}; SLA parts: {'yes' if sla else 'no'}; "
          f"INT8 dequantised: {f'yes ({int8} linears)' if int8 else 'no'}")
    if report.name.startswith("one ") and args.low_noise is None:
        print("note: this is one expert of a two-expert model; convert both with --low-noise LOW_NOISE_FILE")
    sampler = first.recipe["sampler"]
    attention = f"sla keep {first.recipe['attention']['keep']}" if sla else "dense attention"
    print(f"wrote {report.output} in {time.perf_counter() - started:.1f} s ({args.dtype}); recipe: {attention}, rCM "
          f"{sampler['steps']} steps, sigma_max {sampler['sigma_max']:g}")
    pipeline, repo = _BASE_PIPELINES.get(report.name.split(" (")[0], ("WanPipeline", "<the base Wan *-Diffusers repo>"))
    torch_dtype = f"torch.{_CONVERT_DTYPES[args.dtype]}"
    out = str(report.output)
    print("run it (diffusers + turbo):")
    if len(report.models) == 2:
        print(f"  t1, t2 = (WanTransformer3DModel.from_pretrained({out!r}, subfolder=s, torch_dtype={torch_dtype}) "
              f"for s in ('transformer', 'transformer_2'))")
        print(f"  pipe = {pipeline}.from_pretrained({repo!r}, transformer=t1, transformer_2=t2, "
              f"torch_dtype={torch_dtype})")
    else:
        print(f"  transformer = WanTransformer3DModel.from_pretrained({out!r}, torch_dtype={torch_dtype})")
        print(f"  pipe = {pipeline}.from_pretrained({repo!r}, transformer=transformer, torch_dtype={torch_dtype})")
    print(f"  turbo.accelerate(pipe)  # the recipe; then pipe(..., num_inference_steps={sampler['steps']}, "
          "guidance_scale=1.0)")
    preset = next((p for p in registry.list_models() if p.converted and repo == p.source
                   and registry.converted_dir(p).resolve() == Path(report.output).resolve()), None)
    model = preset.name if preset else repo
    flag = "" if preset else f" --transformer {out}"
    print(f"or: turbo generate --model {model}{flag} --prompt \"...\" --compile regional --quant fp8 --out video.mp4")
    return 0


def cmd_distill(args) -> int:
    """`turbo distill --config cfg.yaml [--resume] [--out DIR]`: the teacher may be a registry model name (resolved
    here to its directory) or a diffusers pipeline directory; the rest is `python -m turbo.distill`."""
    import logging

    from turbo.distill.__main__ import parse_overrides, run
    from turbo.distill.config import DistillConfig

    overrides = parse_overrides(args.overrides)
    config = DistillConfig.load(args.config, overrides)
    teacher_dir = None
    if config.teacher and not Path(config.teacher).is_dir():
        preset = registry.resolve_model(config.teacher)
        if not preset.is_local or not registry.is_available(preset):
            return _refuse(f"teacher {config.teacher!r} is not a pipeline directory on this machine; download it and "
                           "set teacher to its directory.")
        teacher_dir = preset.source
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run(args.config, out=args.out, resume=args.resume, teacher_dir=teacher_dir, overrides=overrides)


def cmd_info(args) -> int:
    """`turbo info`: capabilities, the default config, presets and models (with whether each is on this machine)."""
    import turbo
    from turbo.config import PRESETS

    print("\n".join(turbo.capabilities().lines()))
    default = turbo.default_config()
    print(f"default config here (a pipeline with one transformer): attention={default.attention.method}, "
          f"cache={default.cache.mode}")
    print("presets:")
    for preset in PRESETS.values():
        print(f"  {preset.name:<9} {preset.description}")
    print("models (--model NAME, or a diffusers pipeline directory):")
    for model in registry.list_models():
        here = "here" if registry.is_available(model) else "not here"
        print(f"  {model.name:<22} {model.kind}  {model.width}x{model.height}, {model.frames} frames  [{here}]  "
              f"{model.title}")
    return 0


def cmd_app(argv: list[str]) -> int:
    """`turbo app ...`: `pipelines.app.main(argv)`, imported only now (Gradio is optional)."""
    try:
        from pipelines import app
    except ModuleNotFoundError as error:
        if error.name in ("pipelines.app", "gradio") or (error.name or "").startswith("gradio"):
            missing = "Gradio (pip install gradio)" if "gradio" in (error.name or "") else "pipelines/app.py"
            return _refuse(f"the Gradio app is not available in this installation: {missing} is missing.")
        raise
    return int(app.main(argv) or 0)


_COMMANDS = {"generate": cmd_generate, "eval": cmd_eval, "info": cmd_info, "convert": cmd_convert,
             "distill": cmd_distill, "calibrate": cmd_calibrate}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `turbo` command; returns the exit code (2 for any refused input, with one stderr line)."""
    import turbo

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["app"]:
        return cmd_app(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or an error already printed as one line (2)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return _COMMANDS[args.command](args)
    except (RequestError, registry.RegistryError, turbo.TurboError) as error:
        return _refuse(error)


if __name__ == "__main__":
    sys.exit(main())
