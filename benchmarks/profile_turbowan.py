"""Where the time of a TurboDiffusion-style turbo forward goes (Wan2.1 1.3B 480p, random bf16 weights, H100/H200):

1. the SLA attention call alone (router + global linear state + fused forward, linear="all", top-k 0.1 floor) for
   several kernel tile configs (query tile : warps : stages), vs cuDNN SDPA dense, triton.testing.do_bench medians;
2. the FP8 row-wise GEMM (torch._scaled_mm) vs bf16 at the block linears' shapes, activation quantisation included;
3. a torch.profiler table of one compiled forward (compile="regional", SLA linear="all" top-k 0.1, --quant) grouped by
   kernel, top --top entries.

    python3 benchmarks/profile_turbowan.py --quant fp8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def bench(fn) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def attention_tiles(topk: float, configs: list[str]) -> None:
    from turbo.attention.kernels import ops  # noqa: F401  (registers torch.ops.turbo.*)
    from turbo.attention.kernels.router import topk_lut
    from turbo.attention.kernels.sla_forward import sla_forward, sla_global_linear_state

    b, s, h, d = 1, 32760, 12, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    w, bias = torch.randn(d, d, device="cuda") * 0.01, torch.zeros(d, device="cuda")
    dense = bench(lambda: F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)))
    print(f"cuDNN/SDPA dense: {dense:.3f} ms")

    def router():
        pq = torch.ops.turbo.block_pool(q, 128)
        pk = torch.ops.turbo.block_pool(k, 64)
        return topk_lut(pq @ pk.transpose(-1, -2), topk, "floor")

    lut, count = router()
    print(f"router: {bench(router):.3f} ms; global linear state: "
          f"{bench(lambda: sla_global_linear_state(k, v, 64)):.3f} ms; blocks kept {int(count[0, 0, 0])}/512")
    state = sla_global_linear_state(k, v, 64)
    for config in configs:
        block_m, warps, stages = (int(x) for x in config.split(":"))
        try:
            t = bench(lambda: sla_forward(q, k, v, lut, count, 128, 64, w, bias, linear_state=state, block_m=block_m,
                                          num_warps=warps, num_stages=stages, linear_all=True))
            print(f"sla forward tile {config}: {t:.3f} ms ({dense / t:.2f}x dense)")
        except Exception as error:
            print(f"sla forward tile {config}: failed {type(error).__name__}: {error}"[:200])


def gemms() -> None:
    from turbo.quant.fp8 import fp8_linear, quantize_rows, quantize_weight

    m = 32760
    for n, kk in ((1536, 1536), (8960, 1536), (1536, 8960)):
        x = torch.randn(m, kk, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, kk, device="cuda", dtype=torch.bfloat16)
        wq, ws = quantize_weight(w)
        bf16 = bench(lambda: F.linear(x, w))
        fp8 = bench(lambda: fp8_linear(x, wq, ws, None))
        xq, xs = quantize_rows(x)
        mm = bench(lambda: torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws[None, :], out_dtype=torch.bfloat16))
        fast = bench(lambda: torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws[None, :], out_dtype=torch.bfloat16,
                                              use_fast_accum=True))
        quant = bench(lambda: quantize_rows(x))
        cquant = torch.compile(quantize_rows)
        cquant(x)
        kernel = bench(lambda: torch.ops.turbo.fp8_quantize_rows(x))
        print(f"[{m}x{kk}]x[{kk}x{n}]: bf16 {bf16:.3f} ms, fp8 total {fp8:.3f} ms (quant: torch {quant:.3f}, "
              f"compiled {bench(lambda: cquant(x)):.3f}, triton {kernel:.3f}), _scaled_mm {mm:.3f} ms, "
              f"fast accum {fast:.3f} ms")


def profile_forward(topk: float, quant: str, top: int) -> None:
    from compile_forward import build_model, inputs

    import turbo

    model = build_model("wan2.1-t2v-1.3b")
    x = inputs("480p")
    options = {"attention": "sla", "keep": topk, "linear": "all", "topk_rule": "floor", "allow_untuned": True,
               "compile": "regional"}
    if quant != "off":
        options["quant"] = quant
    turbo.accelerate(model, **options)
    with torch.no_grad():
        for _ in range(3):
            model(**x)
        torch.cuda.synchronize()
        print(f"compiled forward: {bench(lambda: model(**x)):.2f} ms")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            model(**x)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=top, max_name_column_width=90))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topk", type=float, default=0.1)
    parser.add_argument("--quant", default="fp8")
    parser.add_argument("--tiles", default="64:4:3,128:8:3,128:4:3,64:4:2,128:8:2,64:8:3")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--parts", default="attention,gemm,profile")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    parts = args.parts.split(",")
    if "attention" in parts:
        attention_tiles(args.topk, args.tiles.split(","))
    if "gemm" in parts:
        gemms()
    if "profile" in parts:
        profile_forward(args.topk, args.quant, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
