"""Block caches side by side on ToyWorld (issue 13): turbo's Temporal Delta Cache vs diffusers' FirstBlockCache and
MagCache, same prompts and seeds, against the uncached teacher.

    python benchmarks/toyworld_cache_compare.py [--prompts 8] [--steps 50] [--guidance 5] [--frames 17]
        [--configs none,tdc,fbc,mag] [--fbc-threshold 0.05] [--json FILE]

``fp8`` / ``int8`` / ``nvfp4``: quantised linears instead of a cache (same prompts, PSNR against the unquantised
videos); ``mixed@FILE[@MAX_ERROR]``: ``quant="nvfp4-mixed"`` with a `turbo calibrate` file.
A config may name its threshold: ``tdc@0.1``, ``fbc@0.1``, ``mag@0.12`` (a threshold sweep: ``--configs
none,tdc@0.03,tdc,tdc@0.1``); TDC takes any of its options as ``+key=value`` (``tdc@0.05+span=1+max_skips=3``);
``tdc-v1`` is the first TDC (per block, decisions per CFG branch, held residuals, threshold 0.05, max error 0.1,
≤ 2 skips in a row) for comparison.

Per config: the fraction of transformer-block computations skipped (counted by hooks on every block's feed-forward,
so the three caches are counted the same way), mean same-seed PSNR against the uncached videos, the judge's accuracy,
seconds per video (meaningful only on an otherwise idle machine). MagCache needs magnitude ratios for the model:
they are calibrated first on the first prompt with diffusers' own `MagCacheConfig(calibrate=True)` run. Runs on a
CPU (fp32) or a GPU (--device cuda).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class BlockCounter:
    """Counts the transformer blocks actually computed: calls of each block's feed-forward (the caches replace a
    skipped block's forward through diffusers hooks, so the block itself is still "called"; its feed-forward is not)."""

    def __init__(self, blocks):
        self.calls = 0
        self.handles = [b.ffn.register_forward_pre_hook(self._count) for b in blocks]

    def _count(self, module, args):
        self.calls += 1

    def remove(self):
        for h in self.handles:
            h.remove()


def _generate(pipe, prompt, seed, kwargs) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    frames = pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).frames[0]
    return np.asarray(frames, dtype=np.float32), time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/toyworld/wan-t2v")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--configs", default="none,tdc,fbc,mag")
    parser.add_argument("--fbc-threshold", type=float, default=0.05)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import turbo
    from turbo.eval.harness import prompt_set
    from turbo.eval.judge import aggregate, judge
    from turbo.eval.metrics import psnr
    from turbo.toyworld.train import load_toyworld

    pipe = load_toyworld(args.model, dtype=torch.float32).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"height": 256, "width": 256, "num_frames": args.frames, "num_inference_steps": args.steps,
              "guidance_scale": args.guidance}
    prompts = prompt_set(args.prompts, 0)
    blocks = list(pipe.transformer.blocks)
    per_call = len(blocks) * args.steps * (2 if args.guidance > 1 else 1)
    reference: list[np.ndarray] = []
    rows = {}
    for name in args.configs.split(","):
        setup, teardown = _config(name, pipe, prompts[0], kwargs, args)
        setup()  # (MagCache calibrates here: its calls are not counted)
        counter = BlockCounter(blocks)
        videos, seconds, judged = [], 0.0, []
        try:
            for prompt, seed in prompts:
                video, dt = _generate(pipe, prompt, seed, kwargs)
                videos.append(video)
                seconds += dt
                judged.append(judge(video, prompt))
            report = getattr(pipe, "turbo", None)
            activity = [line.strip() for line in str(report).splitlines() if "quant:" in line or "cache:" in line] \
                if report else []
        finally:
            counter.remove()
            teardown()
        if name == "none":
            reference = videos
        values = [psnr(v, r) for v, r in zip(videos, reference, strict=True)] if reference else []
        finite = [v for v in values if np.isfinite(v)]
        rows[name] = {"skipped": 1.0 - counter.calls / (per_call * len(prompts)),
                      "psnr_mean_db": float(np.mean(finite)) if finite else float("inf"),
                      "identical": len(values) - len(finite),
                      "accuracy": aggregate(judged), "seconds_per_video": seconds / len(prompts),
                      "activity": activity}
        acc = rows[name]["accuracy"]
        print(f"| {name} | {100 * rows[name]['skipped']:.1f} % | {rows[name]['psnr_mean_db']:.1f} dB | "
              + " | ".join(f"{100 * acc[k]:.0f}" for k in ("colour", "shape", "motion", "background"))
              + f" | {rows[name]['seconds_per_video']:.1f} s |" + (f" {activity[0]}" if activity else ""), flush=True)
    out = {"model": args.model, "prompts": len(prompts), "call": kwargs, "device": args.device,
           "torch": torch.__version__, "turbo_cache_defaults": turbo.TurboConfig().cache.__dict__,
           "command": "python benchmarks/toyworld_cache_compare.py " + " ".join(sys.argv[1:]), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


V1_TDC = ["span=1", "aligned=False", "extrapolate=False", "threshold=0.05", "max_error=0.1", "max_skips=2"]


def _config(name, pipe, first, kwargs, args):
    """(setup, teardown) callables that put cache `name` on `pipe` and take it off again."""
    from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig

    import turbo

    def nothing():
        return None

    if name == "none":
        return nothing, nothing
    if name in ("fp8", "int8", "nvfp4"):  # quantised linears (issue 13's quality bars; nothing is skipped)
        return (lambda: turbo.accelerate(pipe, quant=name)), (lambda: turbo.restore(pipe))
    if name.startswith("mixed@"):  # nvfp4-mixed with a `turbo calibrate` file: "mixed@FILE" or "mixed@FILE@max_error"
        _, path, *budget = name.split("@")
        extra = {"quant_mixed_max_error": float(budget[0])} if budget else {}
        return (lambda: turbo.accelerate(pipe, quant="nvfp4-mixed", quant_calibration=path, **extra)), \
            (lambda: turbo.restore(pipe))
    name, *extra = name.split("+")  # "tdc+span=1+aligned=False": TDC options ("+quant=fp8": with quantised linears)
    if name == "tdc-v1":
        name, extra = "tdc", [*V1_TDC, *extra]
    name, _, value = name.partition("@")  # "tdc@0.1" / "fbc@0.1": that threshold
    if name == "tdc":
        options = {"cache_threshold": float(value)} if value else {}
        for item in extra:
            key, _, text = item.partition("=")
            if key == "quant":  # "tdc+quant=fp8": the cache over quantised linears
                options["quant"] = text
                continue
            options["cache_" + key] = {"True": True, "False": False}.get(text) if text in ("True", "False") \
                else (int(text) if text.lstrip("-").isdigit() else float(text))
        return (lambda: turbo.accelerate(pipe, cache="tdc", **options)), (lambda: turbo.restore(pipe))
    if name == "fbc":
        threshold = float(value) if value else args.fbc_threshold
        return (lambda: pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))), \
            pipe.transformer.disable_cache
    if name == "mag":
        def calibrate_then_enable():
            import ast
            import contextlib
            import io

            # diffusers prints the calibrated ratios (one list per CFG branch) at the end of a calibration run
            pipe.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=args.steps))
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                _generate(pipe, first[0], first[1], kwargs)
            pipe.transformer.disable_cache()
            lists = [ast.literal_eval(line.strip()) for line in printed.getvalue().splitlines()
                     if line.strip().startswith("[") and line.strip().endswith("]") and "MagCache" not in line]
            if not lists:
                raise SystemExit("MagCache calibration printed no ratios in this diffusers version")
            print(f"MagCache ratios calibrated on {first[0]!r}: {len(lists)} list(s) of {len(lists[0])}", flush=True)
            threshold = {"threshold": float(value)} if value else {}
            pipe.transformer.enable_cache(MagCacheConfig(mag_ratios=lists[0], num_inference_steps=args.steps,
                                                         **threshold))

        return calibrate_then_enable, pipe.transformer.disable_cache
    raise SystemExit(f"unknown cache config {name!r}; known: none, tdc, tdc-v1, fbc, mag")


if __name__ == "__main__":
    sys.exit(main())
