"""Attention benchmark on a CUDA GPU: turbo's kernels vs cuDNN SDPA measured in the same run.

    python benchmarks/attention.py [--shapes 480p,720p,hunyuan720p] [--keep 0.1,0.05,0.03] [--check] [--quick]

Prints one table (medians of triton.testing.do_bench, ratio = cuDNN time / turbo time) and, with --check, bf16
accuracy vs the PyTorch reference (rel-L1, NaN never passes). Everything is timed as the method runs in a model:
SLA "module" = router + linear pre-pass + fused forward; "kernel" = the fused forward alone."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from turbo.attention import reference  # noqa: E402
from turbo.attention.kernels.router import sla_router  # noqa: E402
from turbo.attention.kernels.sla_forward import sla_block_states, sla_forward, sla_linear_states  # noqa: E402

SHAPES = {
    "480p": (1, 32760, 12, 128),  # Wan-1.3B 480p/81f
    "720p": (1, 75600, 40, 128),  # Wan-14B 720p/81f
    "hunyuan720p": (1, 118800, 24, 128),
}


def bench(fn, warmup=25, rep=100) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

    return run


def rel_l1(a, b) -> float:
    return float((a.float() - b.float()).abs().sum() / b.float().abs().sum())


def sla_module(q, k, v, keep, proj, block_q=128, block_k=64, block_m=None, num_warps=None, num_stages=None):
    lut, count = sla_router(q, k, block_q, block_k, keep)
    state = sla_linear_states(k, v, lut, count, block_k)
    return sla_forward(q, k, v, lut, count, block_q, block_k, proj.weight, proj.bias, linear_state=state,
                       block_m=block_m, num_warps=num_warps, num_stages=num_stages)[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="480p,720p")
    parser.add_argument("--keep", default="0.1,0.05,0.03")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--variants", default="64:4:3,64:4:4,128:8:3")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import triton

    torch.manual_seed(0)
    device = torch.cuda.get_device_name()
    print(f"# {device}, torch {torch.__version__}, triton {triton.__version__}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    from torch.nn.attention import SDPBackend

    rows = []
    for shape_name in args.shapes.split(","):
        b, s, h, d = SHAPES[shape_name]
        q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        proj = torch.nn.Linear(d, d, device="cuda")
        torch.nn.init.normal_(proj.weight, std=0.02)
        cudnn = bench(lambda: sdpa(SDPBackend.CUDNN_ATTENTION)(q, k, v))
        flash = bench(lambda: sdpa(SDPBackend.FLASH_ATTENTION)(q, k, v))
        rows.append((shape_name, "cuDNN SDPA", "-", cudnn, 1.0, None))
        rows.append((shape_name, "FA2 SDPA", "-", flash, cudnn / flash, None))
        states = bench(lambda: sla_block_states(k, v, 64))
        rows.append((shape_name, "SLA block states [h_j, z_j]", "-", states, None, None))
        for keep in (float(x) for x in args.keep.split(",")):
            router = bench(lambda: sla_router(q, k, 128, 64, keep))
            rows.append((shape_name, "SLA router", keep, router, None, None))
            lut, count = sla_router(q, k, 128, 64, keep)
            marg = bench(lambda: sla_linear_states(k, v, lut, count, 64))
            rows.append((shape_name, "SLA marginal states (block states + GEMM)", keep, marg, None, None))
            state = sla_linear_states(k, v, lut, count, 64)
            for i, variant in enumerate(args.variants.split(",")):
                bm, warps, stages = (int(x) for x in variant.split(":"))
                t = bench(lambda: sla_forward(q, k, v, lut, count, 128, 64, proj.weight, proj.bias,
                                              linear_state=state, block_m=bm, num_warps=warps, num_stages=stages))
                rows.append((shape_name, f"SLA fwd kernel tile {variant}", keep, t, cudnn / t, None))
                if i == 0:
                    t = bench(lambda: sla_forward(q, k, v, lut, count, 128, 64, None, None, block_m=bm,
                                                  num_warps=warps, num_stages=stages))
                    rows.append((shape_name, f"sparse-only kernel tile {variant}", keep, t, cudnn / t, None))
            t = bench(lambda: sla_module(q, k, v, keep, proj))
            err = None
            if args.check and shape_name == "480p":
                with torch.no_grad():
                    out = sla_module(q, k, v, keep, proj)
                    ref = reference.sla_attention(q, k, v, keep, proj=proj)
                err = rel_l1(out, ref)
                assert torch.isfinite(out).all(), "NaN/inf in SLA output"
            rows.append((shape_name, "SLA fwd module (router+prepass+kernel)", keep, t, cudnn / t, err))
        q = k = v = state = None
        torch.cuda.empty_cache()

    print("| shape | what | keep | ms | × cuDNN | rel-L1 vs reference |")
    print("|---|---|---|---|---|---|")
    for shape_name, what, keep, ms, ratio, err in rows:
        print(f"| {shape_name} | {what} | {keep} | {ms:.3f} | {'' if ratio is None else f'{ratio:.2f}×'} | "
              f"{'' if err is None else f'{err:.4f}'} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "rows": rows}, f)


if __name__ == "__main__":
    main()
