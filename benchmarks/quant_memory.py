"""GPU memory of a Wan forward with quantised block linears (issue 13: Wan-14B 480p with NVFP4 weights ≤ 20 GB).

The Wan-14B architecture with random bf16 weights (benchmarks/compile_forward.py `build_model`) and one 480p/81f
forward (latent [1, 16, 21, 60, 104], text [1, 512, 4096]) per mode: stock bf16, then ``turbo.accelerate(model,
quant=MODE)`` (the originals of the swapped linears go to the CPU: the GPU keeps the quantised weights). Per mode:
resident GPU memory after the swap (weights + buffers), the forward's peak (torch.cuda.max_memory_allocated, reset
after the swap), and the forward's wall time (median of --reps eager calls; NVFP4 dequantises each weight per call);
output rel-L1 vs the bf16 forward. ``--load nvfp4``: the model is also saved quantised (`turbo.save_quantized`) and
loaded back with `turbo.load_quantized` onto the GPU after the original left it: the load's GPU peak and time.

    python3 benchmarks/quant_memory.py --model wan2.1-t2v-14b --size 480p --modes bf16,nvfp4,fp8 \\
        --out benchmarks/results/quant_memory.json [--load nvfp4]

Modes: bf16, any `quant=` mode, and ``nvfp4-fp8`` (NVFP4 weights, FP8 GEMMs: quant_nvfp4_compute="fp8", fast
accumulation) and ``fp8-fast`` (FP8 with fast accumulation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


MODES = {"nvfp4-fp8": {"quant": "nvfp4", "quant_nvfp4_compute": "fp8", "quant_fast_accum": True},
         "fp8-fast": {"quant": "fp8", "quant_fast_accum": True}}  # benchmark names -> accelerate options


def _gib(n: int) -> float:
    return n / 2**30


def _forward_stats(model, x, reps: int) -> tuple[torch.Tensor, float, float]:
    """(output, peak GiB of one forward, median seconds of `reps` more)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        out = model(**x)[0].float()
    torch.cuda.synchronize()
    peak = _gib(torch.cuda.max_memory_allocated())
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        with torch.no_grad():
            model(**x)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return out, peak, statistics.median(times)


def _load_row(model, x, args, reference) -> dict:
    """Save `model` quantised to args.load once, drop it from the GPU, then `turbo.load_quantized` it: the GPU peak
    while loading (the bf16 linears are never materialised) and of its forward."""
    import tempfile

    import turbo

    row: dict = {}
    try:
        with tempfile.TemporaryDirectory(dir=args.tmp) as directory:
            turbo.accelerate(model, quant=args.load)
            turbo.save_quantized(model, directory)
            turbo.restore(model)
            model.to("cpu")
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            loaded = turbo.load_quantized(directory, device="cuda")
            torch.cuda.synchronize()
            row.update(load_s=time.perf_counter() - start, load_peak_gib=_gib(torch.cuda.max_memory_allocated()),
                       resident_gib=_gib(torch.cuda.memory_allocated()))
            out, row["forward_peak_gib"], row["forward_s"] = _forward_stats(loaded, x, args.reps)
            if reference is not None:
                row["rel_l1_vs_bf16"] = float((out - reference).abs().sum() / reference.abs().sum())
    except Exception as error:
        row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wan2.1-t2v-14b")
    parser.add_argument("--size", default="480p", choices=["480p", "720p"])
    parser.add_argument("--modes", default="bf16,nvfp4,fp8")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--load", default=None, choices=("fp8", "int8", "nvfp4"),
                        help="also save the model quantised to this mode and time/measure turbo.load_quantized")
    parser.add_argument("--tmp", default=None, help="folder for the --load save (default: the system temp dir)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import diffusers

    import turbo
    from benchmarks.compile_forward import build_model, inputs

    model = build_model(args.model)
    x = inputs(args.size)
    gc_clean = torch.cuda.empty_cache
    gc_clean()
    results = {"model": args.model, "size": args.size, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
               "diffusers": diffusers.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
               "command": " ".join(["python3", "benchmarks/quant_memory.py", *sys.argv[1:]]), "rows": {}}
    reference = None
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        row: dict = {}
        try:
            if mode != "bf16":
                turbo.accelerate(model, **MODES.get(mode, {"quant": mode}))
            gc_clean()
            row["resident_gib"] = _gib(torch.cuda.memory_allocated())
            out, row["forward_peak_gib"], row["forward_s"] = _forward_stats(model, x, args.reps)
            if reference is None and mode == "bf16":
                reference = out
            elif reference is not None:
                row["rel_l1_vs_bf16"] = float((out - reference).abs().sum() / reference.abs().sum())
            del out
        except Exception as error:  # keep the other modes' numbers
            row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
        finally:
            if mode != "bf16":
                turbo.restore(model)
            gc_clean()
        results["rows"][mode] = row
        print(mode, json.dumps(row), flush=True)
    if args.load:
        results["rows"][f"{args.load} (load_quantized)"] = _load_row(model, x, args, reference)
        print(args.load, "load", json.dumps(results["rows"][f"{args.load} (load_quantized)"]), flush=True)
    print(f"\n{args.model} {args.size}, {results['gpu']}, torch {results['torch']}, {results['date']}\n")
    print("| weights | resident GPU (GiB) | forward peak (GiB) | forward (s, eager) | rel-L1 vs bf16 |")
    print("|---|---|---|---|---|")
    for mode, row in results["rows"].items():
        cells = [f"{row[k]:.2f}" if k in row else "—" for k in ("resident_gib", "forward_peak_gib", "forward_s")]
        rel = f"{row['rel_l1_vs_bf16']:.2e}" if "rel_l1_vs_bf16" in row else row.get("error", "—")[:80]
        print(f"| {mode} | {' | '.join(cells)} | {rel} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
