"""Full-size Wan transformer forwards (random bf16 weights) under torch.compile, stock vs turbo, measured in one run.

Variants (pick with --variants, comma-separated):
  eager            stock diffusers, eager
  full             stock, torch.compile(model) (whole model)
  regional         stock, diffusers compile_repeated_blocks (each block)
  sla              turbo SLA keep --keep, eager
  sla-regional     turbo SLA + compile="regional"
  sla-full         turbo SLA + compile="full"
  sla2-regional    turbo SLA2 keep --keep2 + compile="regional"
  lowbit-regional  turbo low-bit dense attention (INT8 QK, FP8 PV) + compile="regional"
  dense-regional   turbo with dense attention + compile="regional" (the baseline for quantisation alone)
  NAME+fp8 / +int8 any turbo variant above with quant="fp8" / "int8" (W8A8 linears in the blocks)
  loop             50 steps x CFG (cond/uncond cache contexts, falling timesteps) with SLA, dense_steps=10,
                   compile="regional": graphs compiled over the whole loop and its transformer time
  cudagraphs       a 4-step loop (no CFG) with SLA: compile="regional", "full", and "full" + CUDA graphs
                   (reduce-overhead); per-step time

Per forward: median of --reps CUDA-event timings after 2 warm-up calls (the first call's time, compile included, is
reported as `first`). Each variant starts from `torch._dynamo.reset()`. Prints a markdown table and writes JSON.

    python3 benchmarks/compile_forward.py --model wan2.1-t2v-1.3b --size 480p --variants eager,full,sla,sla-full
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

SIZES = {"480p": (21, 60, 104), "720p": (21, 90, 160)}  # latent frames, height/8, width/8 for 81 frames


def build_model(name: str):
    import diffusers

    from pipelines.tiny import _META_CONFIGS

    class_name, config = _META_CONFIGS[name]
    with torch.device("cuda"):
        model = getattr(diffusers, class_name)(**config)
    return model.to(torch.bfloat16).eval().requires_grad_(False)


def inputs(size: str, seed: int = 0) -> dict:
    frames, height, width = SIZES[size]
    g = torch.Generator(device="cuda").manual_seed(seed)
    return {
        "hidden_states": torch.randn(1, 16, frames, height, width, generator=g, device="cuda", dtype=torch.bfloat16),
        "timestep": torch.tensor([700.0], device="cuda"),
        "encoder_hidden_states": torch.randn(1, 512, 4096, generator=g, device="cuda", dtype=torch.bfloat16),
        "return_dict": False,
    }


def time_calls(fn, reps: int) -> dict:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return {"first_s": first, "median_s": statistics.median(times), "times_s": times}


def graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def uncompile(model) -> None:
    for module in model.modules():
        module._compiled_call_impl = None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wan2.1-t2v-1.3b")
    parser.add_argument("--size", default="480p", choices=list(SIZES))
    parser.add_argument("--variants", default="eager,full,regional,sla,sla-regional,sla-full")
    parser.add_argument("--keep", type=float, default=0.05)
    parser.add_argument("--keep2", type=float, default=0.03)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args()

    import turbo

    torch.backends.cuda.matmul.allow_tf32 = True
    model = build_model(args.model)
    x = inputs(args.size)
    results: dict = {"model": args.model, "size": args.size, "torch": torch.__version__,
                     "gpu": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "rows": {}}

    def forward():
        with torch.no_grad():
            return model(**x)[0]

    sla = {"attention": "sla", "keep": args.keep, "allow_untuned": True}
    outputs = {}

    def run_variant(name: str):
        label = name
        name, _, quant = name.partition("+")
        torch._dynamo.reset()
        from torch._dynamo.utils import counters

        counters.clear()
        if name == "eager":
            row = time_calls(forward, args.reps)
            outputs[name] = forward().float()
        elif name in ("full", "regional"):
            (model.compile if name == "full" else model.compile_repeated_blocks)()
            try:
                row = time_calls(forward, args.reps)
                outputs[name] = forward().float()
            finally:
                uncompile(model)
        elif name in ("sla", "sla-regional", "sla-full", "sla2-regional", "lowbit-regional", "dense-regional"):
            method = name.split("-")[0]
            options = dict(sla) if method == "sla" else {"attention": method, "allow_untuned": True}
            if method == "sla2":
                options["keep"] = args.keep2
            if "-" in name:
                options["compile"] = name.split("-")[1]
            if quant:
                options["quant"] = quant
            turbo.accelerate(model, **options)
            try:
                row = time_calls(forward, args.reps)
                outputs[label] = forward().float()
            finally:
                turbo.restore(model)
        elif name == "loop":
            turbo.accelerate(model, compile="regional", dense_steps=10, **sla)
            try:
                with torch.no_grad():
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    for i, t in enumerate(torch.linspace(999, 0, 50)):
                        x["timestep"] = t.reshape(1).cuda()
                        for branch in ("cond", "uncond"):
                            with model.cache_context(branch, step_index=i):
                                model(**x)
                    torch.cuda.synchronize()
                    total = time.perf_counter() - start
                calls = dict(model.turbo.runtime.stats.calls)
            finally:
                turbo.restore(model)
                x["timestep"] = torch.tensor([700.0], device="cuda")
            row = {"total_s_incl_compile": total, "graphs": graph_count(), "calls": calls}
        elif name == "cudagraphs":
            row = {}
            for label, extra in (("regional", {"compile": "regional"}), ("full", {"compile": "full"}),
                                 ("full+cudagraphs", {"compile": "full", "compile_cudagraphs": True})):
                torch._dynamo.reset()
                turbo.accelerate(model, **sla, **extra)
                try:
                    def loop():
                        outs = []
                        with torch.no_grad():
                            for i, t in enumerate((999.0, 937.0, 833.0, 500.0)):
                                x["timestep"] = torch.tensor([t], device="cuda")
                                with model.cache_context("cond", step_index=i):
                                    outs.append(model(**x)[0])
                        return outs

                    timing = time_calls(loop, args.reps)
                    outs = [o.float() for o in loop()]
                finally:
                    turbo.restore(model)
                    x["timestep"] = torch.tensor([700.0], device="cuda")
                row[label] = {"per_step_s": timing["median_s"] / 4, "first_loop_s": timing["first_s"]}
                if "loop-regional" in outputs:  # every step's output kept alive across later replays must stay intact
                    pairs = zip(outs, outputs["loop-regional"], strict=True)
                    row[label]["rel_l1_vs_regional"] = max(float((a - b).abs().sum() / b.abs().sum()) for a, b in pairs)
                else:
                    outputs["loop-regional"] = outs
        else:
            raise SystemExit(f"unknown variant {name}")
        name = label
        row["graphs"] = row.get("graphs", graph_count())
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        results["rows"][name] = row
        print(name, json.dumps({k: v for k, v in row.items() if k != "times_s"}, default=str), flush=True)

    for name in args.variants.split(","):
        try:
            run_variant(name.strip())
        except Exception as error:  # keep the other variants' numbers
            print(f"{name}: FAILED {type(error).__name__}: {error}", flush=True)
            results["rows"][name] = {"error": f"{type(error).__name__}: {error}"}
    for name, out in outputs.items():  # compiled vs eager numerics (bf16 fusions round differently)
        ref = (name.partition("+")[0] if "+" in name else "sla" if name.startswith("sla-")
               else "eager" if name in ("full", "regional") else None)
        if ref in outputs:
            rel = float((out - outputs[ref]).abs().sum() / outputs[ref].abs().sum())
            print(f"{name} vs eager {ref}: rel-L1 {rel:.2e}")
            results["rows"][name][f"rel_l1_vs_{ref}"] = rel

    rows = results["rows"]
    base = {k: rows[k]["median_s"] for k in ("eager", "full", "regional") if "median_s" in rows.get(k, {})}
    print(f"\n{args.model} {args.size}, {results['gpu']}, torch {torch.__version__}, {results['date']}")
    print("| variant | first call (s, incl. compile) | median forward (ms) | vs eager stock | vs compiled stock "
          "(full / regional) | graphs |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        if "median_s" not in row:
            continue
        med = row["median_s"]
        vs = lambda key: f"{base[key] / med:.2f}×" if key in base else "—"
        print(f"| {name} | {row['first_s']:.1f} | {med * 1e3:.1f} | {vs('eager')} | {vs('full')} / "
              f"{vs('regional')} | {row['graphs']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
