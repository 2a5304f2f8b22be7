"""Wan transformer forwards on one GPU and under diffusers' Ulysses context parallelism on N GPUs, stock and with
turbo's methods, measured in one `torchrun` launch (random bf16 weights, the same on every rank).

First every rank times each variant alone on its own GPU (no collectives: N one-GPU measurements, rank 0's is
reported); then the model gets `enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))` and each variant
is accelerated, timed (all ranks together) and restored. Per variant: median forward time on one GPU and on N, the
speed-up of N GPUs over one, over stock on one GPU, and the rel-L1 of the N-GPU output against the one-GPU output of
the same variant (what the exchange changes: nothing but reduction order).

Variants (comma-separated): stock (no turbo), dense (turbo's dense path), sla (SLA keep --keep, untuned weights),
svg, lowbit, and any of them +fp8 (W8A8 FP8 linears).

    torchrun --standalone --nproc_per_node 2 benchmarks/context_parallel.py --model wan2.1-t2v-14b --size 720p \\
        --variants stock,sla,sla+fp8 --reps 3 --out cp.json
    # a CPU smoke test of the script itself (gloo, a tiny model):
    torchrun --standalone --nproc_per_node 2 benchmarks/context_parallel.py --model tiny --reps 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZES = {"480p": (21, 60, 104), "720p": (21, 90, 160), "tiny": (3, 16, 16)}  # latent frames, height/8, width/8


def build_model(name: str, device: torch.device):
    import diffusers

    from pipelines.tiny import _META_CONFIGS

    torch.manual_seed(0)
    if name == "tiny":
        model = diffusers.WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16,
                                                in_channels=16, out_channels=16, text_dim=64, freq_dim=32,
                                                ffn_dim=64, num_layers=2, rope_max_seq_len=64).to(device)
        return model.eval().requires_grad_(False)
    class_name, config = _META_CONFIGS[name]
    with device:
        model = getattr(diffusers, class_name)(**config)
    return model.to(torch.bfloat16).eval().requires_grad_(False)


def make_inputs(model, size: str, device: torch.device) -> dict:
    frames, height, width = SIZES[size]
    dtype = next(model.parameters()).dtype
    g = torch.Generator(device=device).manual_seed(1)
    return {"hidden_states": torch.randn(1, model.config.in_channels, frames, height, width, generator=g,
                                         device=device, dtype=dtype),
            "timestep": torch.tensor([700.0], device=device),
            "encoder_hidden_states": torch.randn(1, 512 if size != "tiny" else 8, model.config.text_dim,
                                                 generator=g, device=device, dtype=dtype),
            "return_dict": False}


def options(variant: str, keep: float) -> dict | None:
    """`turbo.accelerate` keywords of a variant; None for stock."""
    method, _, quant = variant.partition("+")
    if method == "stock":
        return None
    extra = {"sla": {"keep": keep, "allow_untuned": True}}.get(method, {})
    return {"attention": method, **extra, **({"quant": quant} if quant else {})}


def timed(fn, reps: int, device: torch.device, together: bool) -> float:
    """Median seconds of `reps` calls after one warm-up; `together`: every rank starts each call at a barrier."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    times = []
    for _ in range(reps):
        if together:
            dist.barrier()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rel_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().sum() / b.float().abs().sum().clamp_min(1e-12))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wan2.1-t2v-1.3b", help="a pipelines.tiny meta config name, or 'tiny'")
    parser.add_argument("--size", default=None, choices=list(SIZES), help="default 480p ('tiny' for --model tiny)")
    parser.add_argument("--variants", default="stock,sla,lowbit,sla+fp8")
    parser.add_argument("--keep", type=float, default=0.05)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON file for the results (rank 0)")
    args = parser.parse_args()
    size = args.size or ("tiny" if args.model == "tiny" else "480p")

    from diffusers import ContextParallelConfig

    import turbo

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        torch.cuda.set_device(rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
        torch.accelerator.device_count = lambda: 1  # diffusers divides the rank by it; a CPU build has no accelerator
    variants = args.variants.split(",")
    model = build_model(args.model, device)
    x = make_inputs(model, size, device)
    rows: dict[str, dict] = {v: {} for v in variants}
    one_gpu: dict[str, torch.Tensor] = {}

    def forward():
        with torch.no_grad():
            return model(**x)[0]

    for together in (False, True):
        if together:
            model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
        for variant in variants:
            kwargs = options(variant, args.keep)
            try:
                if kwargs is not None:
                    turbo.accelerate(model, **kwargs)
                seconds = timed(forward, args.reps, device, together)
                out = forward().cpu()
                if together:
                    rows[variant].update(parallel_s=seconds, rel_l1_vs_one=rel_l1(out, one_gpu[variant]))
                else:
                    rows[variant]["one_s"] = seconds
                    one_gpu[variant] = out
            except Exception as error:  # keep the other variants' numbers
                rows[variant]["error" if together else "error_one"] = f"{type(error).__name__}: {error}"[:300]
            finally:
                if kwargs is not None and getattr(model, "turbo", None) is not None:
                    turbo.restore(model)
        dist.barrier()
    if rank == 0:
        stock = rows.get("stock", {}).get("one_s")
        print(f"\n{args.model} {size}, {world} ranks ({torch.cuda.get_device_name() if cuda else 'CPU'}), "
              f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}")
        print(f"| variant | 1 GPU | {world} GPUs (Ulysses) | speed-up | vs stock on 1 GPU | rel-L1 vs 1 GPU |")
        print("|---|---|---|---|---|---|")
        for variant, r in rows.items():
            if "one_s" not in r or "parallel_s" not in r:
                print(f"| {variant} | {r.get('error_one') or r.get('error')} | | | | |")
                continue
            versus = f"{stock / r['parallel_s']:.2f}×" if stock else "—"
            print(f"| {variant} | {r['one_s'] * 1e3:.1f} ms | {r['parallel_s'] * 1e3:.1f} ms | "
                  f"{r['one_s'] / r['parallel_s']:.2f}× | {versus} | {r['rel_l1_vs_one']:.2e} |")
        if args.out:
            Path(args.out).write_text(json.dumps({"model": args.model, "size": size, "ranks": world,
                                                  "torch": torch.__version__, "rows": rows}, indent=1))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
