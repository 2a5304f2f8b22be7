"""W8A8 linears vs bf16 at Wan shapes on one GPU (issue 13's GEMM table), every variant measured in the same run.

Per shape (M tokens × K in → N out; Wan2.1-14B: M = 32,760 at 480p / 75,600 at 720p, and Wan2.1-1.3B 480p):
  bf16             F.linear (cuBLAS)
  fp8-gemm         torch._scaled_mm on pre-quantised operands (row-wise scales), the GEMM alone
  fp8              turbo's FP8Linear incl. the per-token activation quantisation, eager
  fp8-c            the same under torch.compile (the quantisation fused by inductor), fast_accum off
  fp8-c-fast       compiled, cuBLASLt fast accumulation
  int8-gemm        turbo's Triton INT8 GEMM (scales fused) on pre-quantised operands
  int8-c           turbo's INT8Linear (Triton) incl. activation quantisation, compiled
  int8mm-c         INT8 through torch._int_mm + scales in torch ops, compiled
  nvfp4-gemm       turbo's Triton NVFP4 weight-only GEMM (dequantised in registers, bf16 dot), the kernel alone
  nvfp4-c          turbo's NVFP4Linear with that kernel (backend "triton"), compiled
  nvfp4-dq-c       NVFP4Linear's default CUDA backend (turbo's Triton dequantisation to bf16 + cuBLAS), compiled
  fp8-gemm-fast    torch._scaled_mm with cuBLASLt fast accumulation, the GEMM alone
  fp8-q            turbo's Triton per-token activation quantisation alone (turbo/quant/fp8_rows.py)
  fp8-qc           the torch-ops quantisation (turbo.quant.fp8.quantize_rows) under torch.compile, alone
  fp8-fast         FP8Linear eager (Triton quantisation) with fast accumulation
  nvfp4-dq         NVFP4Linear's default CUDA backend, eager
  nvfp4-dq-only    turbo's Triton NVFP4 -> bf16 dequantisation alone (turbo/quant/nvfp4_dequant.py)
  nvfp4-fp8-fast   NVFP4Linear backend "fp8" (weights re-rounded to e4m3, FP8 W8A8), eager, fast accumulation
  nvfp4-fp8-c-fast the same under torch.compile
Medians of `triton.testing.do_bench` (ms); speed-up = bf16 / variant. Each variant's output is checked against the
bf16 product (rel-L1) so a fast wrong kernel shows. Each shape's NVFP4 weight bytes / bf16 bytes is printed too.

    python3 benchmarks/quant_linears.py [--shapes 14b,1.3b] [--variants ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# (label, M, K, N)
SHAPES = {
    "14b": [("14B 480p qkvo", 32760, 5120, 5120), ("14B 480p ffn-up", 32760, 5120, 13824),
            ("14B 480p ffn-down", 32760, 13824, 5120), ("14B 720p qkvo", 75600, 5120, 5120),
            ("14B 720p ffn-up", 75600, 5120, 13824), ("14B 720p ffn-down", 75600, 13824, 5120)],
    "1.3b": [("1.3B 480p qkvo", 32760, 1536, 1536), ("1.3B 480p ffn-up", 32760, 1536, 8960),
             ("1.3B 480p ffn-down", 32760, 8960, 1536)],
}
VARIANTS = ("bf16,fp8-gemm,fp8-gemm-fast,fp8-q,fp8-qc,fp8,fp8-fast,fp8-c,fp8-c-fast,int8-gemm,int8-c,nvfp4-dq-only,"
            "nvfp4-dq,nvfp4-dq-c,nvfp4-fp8-fast,nvfp4-fp8-c-fast")
ALONE = ("bf16", "fp8-gemm", "fp8-gemm-fast", "fp8-q", "fp8-qc", "int8-gemm", "nvfp4-gemm", "nvfp4-dq-only")  # no x


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="14b,1.3b")
    parser.add_argument("--variants", default=VARIANTS)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import triton
    from triton.testing import do_bench

    from turbo.quant.fp8 import FP8Linear, bias_in_epilogue, fp8_linear_reference, quantize_rows
    from turbo.quant.fp8_rows import quantize_rows_fp8
    from turbo.quant.int8 import INT8Linear, quantize_rows_int8
    from turbo.quant.int8_gemm import int8_scaled_mm
    from turbo.quant.nvfp4 import NVFP4Linear
    from turbo.quant.nvfp4_dequant import fp8_row_scale, nvfp4_dequant, nvfp4_dequant_reference
    from turbo.quant.nvfp4_gemm import nvfp4_mm

    torch.manual_seed(0)
    variants = args.variants.split(",")
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "rows": []}
    print(f"{result['gpu']}, torch {torch.__version__}, triton {triton.__version__}", flush=True)
    print("| shape | M | K | N | " + " | ".join(variants) + " |")
    print("|---|---|---|---|" + "---|" * len(variants))
    for group in args.shapes.split(","):
        for label, m, k, n in SHAPES[group]:
            torch._dynamo.reset()  # every shape compiles afresh, static shapes (no recompile limit, no dynamic M)
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            linear = torch.nn.Linear(k, n, device="cuda", dtype=torch.bfloat16)
            with torch.no_grad():
                linear.weight.normal_(0, k ** -0.5)
            ref = F.linear(x, linear.weight, linear.bias).float()
            fp8 = FP8Linear(linear, use_gemm=True)
            fp8_fast = FP8Linear(linear, use_gemm=True, fast_accum=True)
            int8 = INT8Linear(linear, backend="triton")
            int8mm = INT8Linear(linear, backend="int_mm")
            nvfp4 = NVFP4Linear(linear, backend="triton")
            nvfp4_dq = NVFP4Linear(linear, backend="dequant")
            nvfp4_f8 = NVFP4Linear(linear, backend="fp8")
            nvfp4_f8.fast_accum = True
            packed = (nvfp4.packed, nvfp4.block_scale, nvfp4.tensor_scale)
            quantize_compiled = torch.compile(quantize_rows, dynamic=False)
            checks = _checks(x, packed, quantize_rows, quantize_rows_fp8, fp8_row_scale, nvfp4_dequant,
                             nvfp4_dequant_reference)
            with torch.no_grad():  # the GPU FP8 linear (bias in the epilogue where supported) vs its reference
                want = fp8_linear_reference(x, fp8.weight_q, fp8.weight_scale, fp8.bias).float()
                checks["fp8_vs_reference_rel_l1"] = float((fp8(x).float() - want).abs().sum() / want.abs().sum())
            checks["bias_in_epilogue"] = bias_in_epilogue(0)
            xq8, xs8 = quantize_rows(x)
            xqi, xsi = quantize_rows_int8(x)
            fns = {
                "bf16": lambda: F.linear(x, linear.weight, linear.bias),
                "fp8-gemm": lambda: torch._scaled_mm(xq8, fp8.weight_q.t(), scale_a=xs8,
                                                     scale_b=fp8.weight_scale[None, :], out_dtype=torch.bfloat16),
                "fp8": fp8,
                "fp8-c": torch.compile(fp8, dynamic=False),
                "fp8-c-fast": torch.compile(fp8_fast, dynamic=False),
                "int8-gemm": lambda: int8_scaled_mm(xqi, int8.weight_q, xsi.reshape(-1), int8.weight_scale,
                                                    int8.bias, torch.bfloat16),
                "int8-c": torch.compile(int8, dynamic=False),
                "int8mm-c": torch.compile(int8mm, dynamic=False),
                "nvfp4-gemm": lambda: nvfp4_mm(x, nvfp4.packed, nvfp4.block_scale, nvfp4.tensor_scale, nvfp4.bias),
                "nvfp4-c": torch.compile(nvfp4, dynamic=False),
                "nvfp4-dq-c": torch.compile(nvfp4_dq, dynamic=False),
                "fp8-gemm-fast": lambda: torch._scaled_mm(xq8, fp8.weight_q.t(), scale_a=xs8,
                                                          scale_b=fp8.weight_scale[None, :], out_dtype=torch.bfloat16,
                                                          use_fast_accum=True),
                "fp8-q": lambda: quantize_rows_fp8(x),
                "fp8-qc": lambda: quantize_compiled(x),
                "fp8-fast": fp8_fast,
                "nvfp4-dq": nvfp4_dq,
                "nvfp4-dq-only": lambda: nvfp4_dequant(*packed, None, torch.bfloat16),
                "nvfp4-fp8-fast": nvfp4_f8,
                "nvfp4-fp8-c-fast": torch.compile(nvfp4_f8, dynamic=False),
            }
            row = {"shape": label, "M": m, "K": k, "N": n, "ms": {}, "rel_l1": {}, "checks": checks,
                   "nvfp4_weight_ratio": nvfp4.weight_bytes() / (linear.weight.numel() * linear.weight.element_size())}
            for name in variants:
                fn = fns[name]
                try:
                    with torch.no_grad():
                        out = fn() if name in ALONE else fn(x)
                        call = fn if name in ALONE else (lambda f=fn: f(x))
                        if isinstance(out, torch.Tensor) and out.shape == ref.shape:
                            row["rel_l1"][name] = float((out.float() - ref).abs().sum() / ref.abs().sum())
                        row["ms"][name] = do_bench(call, warmup=25, rep=200)
                except Exception as error:  # keep the other variants' numbers
                    row["ms"][name] = None
                    row["error_" + name] = f"{type(error).__name__}: {error}"[:300]
                    print(f"{label} {name}: FAILED {row['error_' + name]}", flush=True)
            result["rows"].append(row)
            base = row["ms"].get("bf16")
            cells = [(f"{row['ms'][v]:.3f} ms" + (f" ({base / row['ms'][v]:.2f}×)" if base and v != "bf16" else ""))
                     if row["ms"].get(v) else "—" for v in variants]
            print(f"| {label} | {m} | {k} | {n} | " + " | ".join(cells) + " |", flush=True)
            print("  rel-L1 vs bf16: " + ", ".join(f"{v} {e:.4f}" for v, e in row["rel_l1"].items())
                  + f"; NVFP4 weight bytes / bf16: {row['nvfp4_weight_ratio']:.3f}; checks {checks}", flush=True)
            fns = x = xq8 = xqi = fp8 = fp8_fast = int8 = int8mm = nvfp4 = nvfp4_dq = nvfp4_f8 = packed = None
            torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _checks(x, packed, quantize_rows, quantize_rows_fp8, fp8_row_scale, nvfp4_dequant, nvfp4_dequant_reference):
    """Bit-identity of turbo's Triton passes with their references on this GPU: {name: bool}."""
    q, s = quantize_rows_fp8(x)
    rq, rs = quantize_rows(x)
    rows = fp8_row_scale(packed[1], packed[2])
    w8, r8 = (f(*packed, rows, torch.float8_e4m3fn).view(torch.uint8) for f in (nvfp4_dequant, nvfp4_dequant_reference))
    return {"fp8_rows": bool(torch.equal(q.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(s, rs)),
            "nvfp4_dequant_bf16": bool(torch.equal(nvfp4_dequant(*packed, None, torch.bfloat16),
                                                   nvfp4_dequant_reference(*packed, None, torch.bfloat16))),
            "nvfp4_dequant_fp8": bool(torch.equal(w8, r8))}


if __name__ == "__main__":
    sys.exit(main())
