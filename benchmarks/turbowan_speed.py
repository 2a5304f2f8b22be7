"""TurboDiffusion-style few-step generation speed: the whole rCM sampling loop (transformer calls + scheduler steps;
text encoder and VAE excluded, as TurboDiffusion reports it) at full size with random bf16 weights, turbo vs
diffusers stock 50 steps x CFG and vs TurboDiffusion's own inference code, measured in one run.

Variants (--variants, comma-separated):
  stock        diffusers stock dense forward, eager: median per forward; "50 x CFG" = 100 x that median
  td           TurboDiffusion's own model + its Triton SLA (top-k --topk) + its fast norms, no INT8 (its advice for
               > 40 GB GPUs), 4 steps no CFG, via benchmarks/turbodiffusion_ref.py (needs .peer/TurboDiffusion)
  td-dense     TurboDiffusion's model with its original attention: one forward
  turbo        turbo SLA in TurboDiffusion's form (linear over all keys, floor top-k --topk) + the RCMScheduler,
               eager
  turbo-c      the same, compile="regional"
  turbo-cg     the same, compile="full" + CUDA graphs
  +fp8         suffix for turbo variants and experts: also quant="fp8" (W8A8 e4m3 linears in the blocks)
  experts      Wan2.2 I2V A14B layout: two 14B experts (36 input channels), sigma_max 200, 2 high + 2 low steps,
               turbo SLA compile="regional"

Each loop variant: the 4-step loop timed end to end (CUDA events around the loop, including the scheduler's fp64
steps and fresh noise), median of --reps loops after one warm-up loop (whose time, compile included, is `first_s`);
peak GPU memory of that variant. Prints one JSON line per variant and a markdown table; writes JSON with --out.

    python3 benchmarks/turbowan_speed.py --model wan2.1-t2v-1.3b --size 480p --variants stock,td,turbo,turbo-c
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compile_forward import SIZES, build_model, inputs  # noqa: E402


def cuda_time(fn) -> float:
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / 1e3


def time_loop(fn, reps: int) -> dict:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    times = [cuda_time(fn) for _ in range(reps)]
    return {"first_s": first, "median_s": statistics.median(times), "times_s": times}


def rcm_loop(models, x: dict, steps: int, sigma_max: float, boundary: float | None = None):
    """The rCM sampling loop the way WanPipeline drives it: scheduler timesteps, one cond call per step (no CFG),
    `step` with fp64 state and fresh noise; two experts switch at `boundary` (RF time), as Wan2.2's pipeline does."""
    from turbo.schedulers.rcm import RCMScheduler

    scheduler = RCMScheduler(num_steps=steps, sigma_max=sigma_max, noise_seed=0)
    base = x["hidden_states"]
    extra = x.get("condition")

    def loop():
        scheduler.set_timesteps(steps, device="cuda")
        latents = base.float() * scheduler.init_noise_sigma
        with torch.no_grad():
            for i, t in enumerate(scheduler.timesteps):
                model = models[0] if boundary is None or t >= boundary * 1000 else models[1]
                hidden = latents.to(torch.bfloat16)
                if extra is not None:
                    hidden = torch.cat([hidden, extra], dim=1)
                with model.cache_context("cond", step_index=i):
                    v = model(hidden_states=hidden, timestep=t.reshape(1), encoder_hidden_states=x[
                        "encoder_hidden_states"], return_dict=False)[0]
                latents = scheduler.step(v, t, latents, return_dict=False)[0]
        return latents

    return loop


def td_options(topk: float) -> dict:
    return {"attention": "sla", "keep": topk, "linear": "all", "topk_rule": "floor", "allow_untuned": True}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wan2.1-t2v-1.3b", choices=["wan2.1-t2v-1.3b", "wan2.1-t2v-14b"])
    parser.add_argument("--size", default="480p", choices=list(SIZES))
    parser.add_argument("--variants", default="stock,td,turbo,turbo-c")
    parser.add_argument("--topk", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--sigma-max", type=float, default=80.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--turbodiffusion", default=str(ROOT / ".peer" / "TurboDiffusion"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import turbo

    torch.backends.cuda.matmul.allow_tf32 = True
    results: dict = {"model": args.model, "size": args.size, "topk": args.topk, "steps": args.steps,
                     "torch": torch.__version__, "gpu": torch.cuda.get_device_name(),
                     "date": time.strftime("%Y-%m-%d"), "rows": {}}
    x = inputs(args.size)
    model = None
    td_name = {"wan2.1-t2v-1.3b": "Wan2.1-1.3B", "wan2.1-t2v-14b": "Wan2.1-14B"}[args.model]

    def need_model():
        nonlocal model
        if model is None:
            model = build_model(args.model)
        return model

    def drop_model():
        nonlocal model
        model = None
        torch.cuda.empty_cache()

    def run(variant: str) -> dict:
        name, *flags = variant.split("+")
        quant = {"quant": "fp8"} if "fp8" in flags else {}
        torch._dynamo.reset()
        torch.cuda.reset_peak_memory_stats()
        if name == "stock":
            m = need_model()
            with torch.no_grad():
                row = time_loop(lambda: m(**x), args.reps)
            row["per_call_s"] = row["median_s"]
            row["loop_50xcfg_s"] = 100 * row["median_s"]
            return row
        if name in ("turbo", "turbo-c", "turbo-cg"):
            m = need_model()
            extra = {"turbo-c": {"compile": "regional"},
                     "turbo-cg": {"compile": "full", "compile_cudagraphs": True}}.get(name, {})
            turbo.accelerate(m, **td_options(args.topk), **extra, **quant)
            try:
                row = time_loop(rcm_loop([m], x, args.steps, args.sigma_max), args.reps)
            finally:
                turbo.restore(m)
            row["per_call_s"] = row["median_s"] / args.steps
            return row
        if name in ("td", "td-dense"):
            drop_model()
            import turbodiffusion_ref as td

            td.import_turbodiffusion(args.turbodiffusion)
            net = td.build_td_model(td_name, attention="sla" if name == "td" else "original", topk=args.topk,
                                    device="cuda", dtype=torch.bfloat16, seed=None, fast_norm=True,
                                    path=args.turbodiffusion).eval().requires_grad_(False)
            frames, height, width = SIZES[args.size]
            noise = torch.randn(1, 16, frames, height, width, device="cuda",
                                generator=torch.Generator(device="cuda").manual_seed(0))
            text = x["encoder_hidden_states"]
            if name == "td":
                fresh = torch.Generator(device="cuda")

                def draw(shape, device):
                    return torch.randn(shape, generator=fresh, device=device)

                def loop():
                    fresh.manual_seed(1)
                    with torch.no_grad():
                        return td.td_sample(net, noise, text, args.steps, args.sigma_max, draw)

                row = time_loop(loop, args.reps)
                row["per_call_s"] = row["median_s"] / args.steps
            else:
                ones = torch.ones(1, 1, device="cuda", dtype=torch.bfloat16)

                def forward():
                    with torch.no_grad():
                        return net(x_B_C_T_H_W=noise.to(torch.bfloat16), timesteps_B_T=ones * 900,
                                   crossattn_emb=text)

                row = time_loop(forward, args.reps)
                row["per_call_s"] = row["median_s"]
            del net
            torch.cuda.empty_cache()
            return row
        if name == "experts":
            drop_model()
            import diffusers

            from pipelines.tiny import _META_CONFIGS

            _, config = _META_CONFIGS["wan2.1-t2v-14b"]
            experts = []
            for _ in range(2):
                with torch.device("cuda"):
                    experts.append(diffusers.WanTransformer3DModel(**dict(config, in_channels=36)).to(
                        torch.bfloat16).eval().requires_grad_(False))
            frames, height, width = SIZES[args.size]
            cond = torch.randn(1, 20, frames, height, width, device="cuda", dtype=torch.bfloat16)
            for e in experts:
                turbo.accelerate(e, **td_options(args.topk), compile="regional", **quant)
            try:
                row = time_loop(rcm_loop(experts, dict(x, condition=cond), args.steps, 200.0, boundary=0.9),
                                args.reps)
            finally:
                for e in experts:
                    turbo.restore(e)
            row["per_call_s"] = row["median_s"] / args.steps
            del experts
            return row
        raise SystemExit(f"unknown variant {name}")

    for name in args.variants.split(","):
        name = name.strip()
        try:
            row = run(name)
        except Exception as error:  # keep the other variants' numbers
            import traceback

            traceback.print_exc()
            row = {"error": f"{type(error).__name__}: {error}"}
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        results["rows"][name] = row
        print(name, json.dumps({k: v for k, v in row.items() if k != "times_s"}), flush=True)

    rows = results["rows"]
    stock = rows.get("stock", {}).get("loop_50xcfg_s")
    td_loop = rows.get("td", {}).get("median_s")
    print("\n| variant | loop s | per call s | first s | peak GiB | vs stock 50xCFG | vs TurboDiffusion |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        if "error" in row:
            print(f"| {name} | failed: {row['error'][:80]} | | | | | |")
            continue
        loop = row["median_s"] if name not in ("stock", "td-dense") else None
        vs_stock = f"{stock / loop:.1f}x" if stock and loop else ""
        vs_td = f"{td_loop / loop:.2f}x" if td_loop and loop else ""
        shown = f"{loop:.3f}" if loop else (f"{row['loop_50xcfg_s']:.2f} (50xCFG)" if name == "stock" else "")
        print(f"| {name} | {shown} | {row['per_call_s']:.4f} | {row['first_s']:.1f} | {row['peak_gib']:.1f} | "
              f"{vs_stock} | {vs_td} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
