"""Whole generations on the real Wan architecture with random weights (issue 13): time per 50-step CFG call, blocks
skipped and peak GPU memory for the stock pipeline, turbo's default (`turbo.accelerate(pipe)`), TDC settings and
diffusers' FirstBlockCache / MagCache, every config in the same process.

The pipeline is diffusers' `WanPipeline` around the Wan2.1 transformer (benchmarks/compile_forward.py `build_model`,
random bf16 weights) with random prompt embeddings ([1, 512, 4096], so no text encoder runs), the Wan UniPC flow
scheduler (shift 3, as Wan 480p), CFG 5 and `output_type="latent"` (no VAE decode; a tiny VAE only gives the pipeline
its scale factors). Random weights make the caches' skip decisions unlike a trained checkpoint's: the times are
real for the fraction each config skipped here, the quality of those skips is not measured (ToyWorld is the quality
bar). MagCache is calibrated first with diffusers' own calibration run on the same inputs.

    python3 benchmarks/cache_generation.py --model wan2.1-t2v-1.3b --size 480p --steps 50 \\
        --configs none,default,fbc,mag --json FILE
    python benchmarks/cache_generation.py --model tiny --size tiny --device cpu --steps 16   (a CPU smoke test)
Configs: none, default (accelerate(pipe) with no options), tdc[@THRESHOLD], fbc[@THRESHOLD], mag[@THRESHOLD],
and any `turbo.accelerate` options as "turbo:key=value;key=value" (e.g. "turbo:cache=tdc;quant=fp8").
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_pipeline(model_name: str, device: str):
    """WanPipeline with the real-size transformer (random bf16 weights), a tiny VAE, no text encoder; "tiny" (a CPU
    smoke test): the test suite's 2-block fp32 Wan transformer."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    from benchmarks.compile_forward import build_model
    from pipelines.tiny import _wan_vae, build_wan_t2v

    transformer = build_wan_t2v().transformer if model_name == "tiny" else build_model(model_name)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                        num_train_timesteps=1000)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=_wan_vae(0).to(device), scheduler=scheduler,
                       transformer=transformer.to(device))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_kwargs(pipe, size: str, steps: int, guidance: float) -> dict:
    from benchmarks.compile_forward import SIZES

    frames, height, width = SIZES[size] if size != "tiny" else (3, 8, 8)  # latent sizes
    model = pipe.transformer
    text = torch.randn(2, 512, model.config.text_dim, generator=torch.Generator().manual_seed(0))
    text = text.to(model.device, model.dtype)
    return {"prompt_embeds": text[:1], "negative_prompt_embeds": text[1:], "num_frames": (frames - 1) * 4 + 1,
            "height": height * 8, "width": width * 8, "num_inference_steps": steps, "guidance_scale": guidance,
            "output_type": "latent"}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def generate(pipe, kwargs) -> tuple[torch.Tensor, float]:
    _sync()
    start = time.perf_counter()
    latents = pipe(**kwargs, generator=torch.Generator(device=pipe.transformer.device).manual_seed(1)).frames
    _sync()
    return latents.float(), time.perf_counter() - start


def setup_config(name: str, pipe, kwargs, steps: int):
    """Puts config `name` on `pipe`; returns the function that takes it off."""
    from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig

    import turbo

    kind, _, value = name.partition("@")
    if name == "none":
        return lambda: None
    if name == "default":
        turbo.accelerate(pipe)
        return lambda: turbo.restore(pipe)
    if kind == "tdc":
        turbo.accelerate(pipe, cache="tdc", **({"cache_threshold": float(value)} if value else {}))
        return lambda: turbo.restore(pipe)
    if name.startswith("turbo:"):
        options = dict(item.split("=", 1) for item in name[len("turbo:"):].split(";"))
        literal = {k: ast.literal_eval(v) if v[:1].isdigit() or v in ("True", "False") else v
                   for k, v in options.items()}
        turbo.accelerate(pipe, **literal)
        return lambda: turbo.restore(pipe)
    if kind == "fbc":
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=float(value) if value else 0.05))
        return pipe.transformer.disable_cache
    if kind == "mag":
        pipe.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # diffusers prints the calibrated ratios, one list per branch
            generate(pipe, kwargs)
        pipe.transformer.disable_cache()
        lists = [ast.literal_eval(line.strip()) for line in printed.getvalue().splitlines()
                 if line.strip().startswith("[") and line.strip().endswith("]")]
        if not lists:
            raise SystemExit("MagCache calibration printed no ratios in this diffusers version")
        pipe.transformer.enable_cache(MagCacheConfig(mag_ratios=lists[0], num_inference_steps=steps,
                                                     **({"threshold": float(value)} if value else {})))
        return pipe.transformer.disable_cache
    raise SystemExit(f"unknown config {name!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wan2.1-t2v-1.3b")
    parser.add_argument("--size", default="480p")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--configs", default="none,default,fbc,mag")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import diffusers

    import turbo
    from benchmarks.toyworld_cache_compare import BlockCounter

    pipe = build_pipeline(args.model, args.device)
    kwargs = call_kwargs(pipe, args.size, args.steps, args.guidance)
    gpu = args.device == "cuda"
    blocks = list(pipe.transformer.blocks)
    per_call = len(blocks) * args.steps * (2 if args.guidance > 1 else 1)
    result = {"model": args.model, "size": args.size, "steps": args.steps, "guidance": args.guidance,
              "gpu": torch.cuda.get_device_name() if gpu else "cpu", "torch": torch.__version__,
              "diffusers": diffusers.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
              "command": " ".join(["python3", "benchmarks/cache_generation.py", *sys.argv[1:]]), "rows": {}}
    generate(pipe, {**kwargs, "num_inference_steps": 2})  # warm-up (cuDNN / cuBLAS plans)
    reference = None
    print("| config | blocks skipped | s / generation | vs none | peak GiB | latent rel-L1 vs none | report |")
    print("|---|---|---|---|---|---|---|")
    for name in args.configs.split(","):
        row: dict = {}
        try:
            teardown = setup_config(name, pipe, kwargs, args.steps)
            counter = BlockCounter(blocks)
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            try:
                latents, seconds = generate(pipe, kwargs)
                report = str(getattr(pipe, "turbo", "") or "")
            finally:
                counter.remove()
                teardown()
            row = {"seconds": seconds, "skipped": 1 - counter.calls / per_call,
                   "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else 0.0,
                   "report": [line.strip() for line in report.splitlines() if "cache" in line.lower()]}
            if name == "none":
                reference = latents
            elif reference is not None:
                row["rel_l1_vs_none"] = float((latents - reference).abs().sum() / reference.abs().sum())
        except Exception as error:  # keep the other configs' numbers
            row = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
        result["rows"][name] = row
        base = result["rows"].get("none", {}).get("seconds")
        if "error" in row:
            print(f"| {name} | FAILED {row['error']} |", flush=True)
            continue
        print(f"| {name} | {100 * row['skipped']:.1f} % | {row['seconds']:.2f} | "
              f"{base / row['seconds']:.2f}× | {row['peak_gib']:.1f} | {row.get('rel_l1_vs_none', 0):.3f} | "
              f"{'; '.join(row['report'])[:160]} |" if base else f"| {name} | {row} |", flush=True)
    result["turbo_default"] = str(turbo.default_config(pipe))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
