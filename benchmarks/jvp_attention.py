"""JVP attention benchmark on a CUDA GPU: turbo's Triton forward+tangent kernel vs cuDNN SDPA forward, same run.

    python benchmarks/jvp_attention.py [--shapes 480p,720p] [--no-sweep] [--no-check] [--json out.json]

`benchmark(shape)` times `turbo.distill.kernels.jvp_attention.jvp_attention_forward` (default tiles and a small sweep
of alternatives, so the defaults in `launch_config` can be corrected from the printout) and cuDNN SDPA's plain
forward (medians of triton.testing.do_bench), and reports achieved TFLOPS: 6 matmuls of Sq·Sk·D per head for the JVP
kernel (Q Kᵀ, tQ Kᵀ, Q tKᵀ, P V, P tV, (P⊙tS) V) vs 2 for the forward. `accuracy_check()` compares bf16 kernel outputs
with a materialised fp32 oracle (TF32 off) on smaller shapes (rel-L1; NaN never passes).
Import-safe on a CPU machine (nothing touches CUDA or imports the kernel until called)."""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SHAPES = {
    "480p": (1, 32760, 12, 128),  # Wan-1.3B 480p/81f self-attention [B, S, H, D]
    "720p": (1, 75600, 40, 128),  # Wan-14B 720p/81f
}
# (block_m, block_n, num_warps, num_stages) tried besides the default
SWEEP = [(128, 64, 8, 3), (128, 32, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3), (64, 64, 8, 2), (64, 32, 4, 3),
         (64, 128, 8, 2), (64, 64, 4, 2)]


def _bench(fn, warmup=10, rep=50) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def _sdpa_forward(q, k, v):
    """cuDNN SDPA forward on [B, S, H, D] tensors (falls back to FlashAttention-2 where cuDNN attention is absent)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    try:
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2), "cudnn"
    except RuntimeError:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2), "flash2"


def benchmark(shape=SHAPES["480p"], sk: int | None = None, dtype=torch.bfloat16, sweep: bool = True) -> dict:
    """Time the JVP kernel and cuDNN SDPA forward at q shape [B, S, H, D] (keys: sk tokens, default S).
    Returns a dict of timings (ms, medians) and TFLOPS; prints one line per measurement."""
    if not torch.cuda.is_available():
        raise RuntimeError("benchmarks/jvp_attention.py needs a CUDA GPU")
    from turbo.distill.kernels.jvp_attention import jvp_attention_forward, launch_config

    b, s, h, d = shape
    sk = sk or s
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, tq = (torch.randn(b, s, h, d, device="cuda", dtype=dtype, generator=gen) for _ in range(2))
    k, v, tk, tv = (torch.randn(b, sk, h, d, device="cuda", dtype=dtype, generator=gen) for _ in range(4))
    matmul_flops = 2.0 * b * h * s * sk * d  # one Sq×Sk×D matmul
    result = {"shape": list(shape), "sk": sk, "dtype": str(dtype), "device": torch.cuda.get_device_name(),
              "torch": torch.__version__}

    _, backend = _sdpa_forward(q, k, v)
    ms_sdpa = _bench(lambda: _sdpa_forward(q, k, v))
    result["sdpa_backend"], result["sdpa_fwd_ms"] = backend, ms_sdpa
    result["sdpa_fwd_tflops"] = 2 * matmul_flops / ms_sdpa * 1e-9
    print(f"{backend} SDPA forward {shape} sk={sk}: {ms_sdpa:.3f} ms, {result['sdpa_fwd_tflops']:.1f} TFLOPS")

    default = launch_config(d, dtype)
    configs = [default] + ([c for c in SWEEP if c != default] if sweep else [])
    result["configs"] = []
    for bm, bn, warps, stages in configs:
        def run():
            return jvp_attention_forward(q, k, v, tq, tk, tv, block_m=bm, block_n=bn, num_warps=warps,
                                         num_stages=stages)
        try:
            run()
            torch.cuda.synchronize()
            ms = _bench(run)
        except Exception as exc:  # e.g. out of shared memory / registers for a large tile
            print(f"  jvp config {(bm, bn, warps, stages)}: failed ({type(exc).__name__}: {str(exc)[:120]})")
            continue
        tflops = 6 * matmul_flops / ms * 1e-9
        row = {"block_m": bm, "block_n": bn, "num_warps": warps, "num_stages": stages, "ms": ms, "tflops": tflops,
               "vs_sdpa_fwd": ms / ms_sdpa, "default": (bm, bn, warps, stages) == default}
        result["configs"].append(row)
        print(f"  jvp config {(bm, bn, warps, stages)}{' (default)' if row['default'] else ''}: {ms:.3f} ms, "
              f"{tflops:.1f} TFLOPS, {ms / ms_sdpa:.2f}× the SDPA forward time (3× the FLOPs)")
    if result["configs"]:
        best = min(result["configs"], key=lambda r: r["ms"])
        result["best"] = best
        print(f"  best: {best}")
    return result


def _oracle_fp32(q, k, v, tq, tk, tv, scale=None):
    """Materialised attention + JVP in fp32 (TF32 off), one head at a time: (o, t_o, lse)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    outs, touts, lses = [], [], []
    for hh in range(q.shape[2]):
        qh, kh, vh, tqh, tkh, tvh = (x[:, :, hh].float() for x in (q, k, v, tq, tk, tv))
        s = qh @ kh.transpose(1, 2) * scale
        ts = (tqh @ kh.transpose(1, 2) + qh @ tkh.transpose(1, 2)) * scale
        p = torch.softmax(s, -1)
        o = p @ vh
        pts = p * ts
        touts.append(p @ tvh + pts @ vh - pts.sum(-1, keepdim=True) * o)
        outs.append(o)
        lses.append(torch.logsumexp(s, -1))
    return torch.stack(outs, 2), torch.stack(touts, 2), torch.stack(lses, 1)


def accuracy_check(shapes=((1, 4096, 4, 128, 4096), (2, 2048, 4, 64, 512), (1, 1560, 2, 128, 512),
                           (4, 1280, 6, 32, 1280)),  # the last: ToyWorld Wan T2V, 17 frames
                   dtype=torch.bfloat16, tol: float = 2e-2) -> list[dict]:
    """bf16 kernel vs the fp32 oracle on (B, Sq, H, D, Sk) shapes; rel-L1 of o and t_o, max |Δlse|. Tangents are
    random normal plus a row-constant score component (keys with a shared mean) as in real attention."""
    if not torch.cuda.is_available():
        raise RuntimeError("benchmarks/jvp_attention.py needs a CUDA GPU")
    from turbo.distill.kernels.jvp_attention import jvp_attention_forward

    allow = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    try:
        for b, s, h, d, sk in shapes:
            gen = torch.Generator(device="cuda").manual_seed(1)
            q, tq = (torch.randn(b, s, h, d, device="cuda", generator=gen) for _ in range(2))
            k, v, tk, tv = (torch.randn(b, sk, h, d, device="cuda", generator=gen) for _ in range(4))
            k = k + torch.randn(1, 1, h, d, device="cuda", generator=gen)  # shared key mean
            args = [x.to(dtype) for x in (q, k, v, tq, tk, tv)]
            got = jvp_attention_forward(*args)
            exp = _oracle_fp32(*args)
            rel = [float((a.float() - e).abs().sum() / e.abs().sum()) for a, e in zip(got[:2], exp[:2], strict=True)]
            dlse = float((got[2] - exp[2]).abs().max())
            ok = all(r == r and r < tol for r in rel) and dlse == dlse and dlse < 1e-2
            rows.append({"shape": [b, s, h, d], "sk": sk, "rel_l1_o": rel[0], "rel_l1_t_o": rel[1],
                         "max_abs_lse": dlse, "ok": ok})
            print(f"accuracy {dtype} B{b} Sq{s} Sk{sk} H{h} D{d}: rel-L1 o {rel[0]:.2e}, t_o {rel[1]:.2e}, "
                  f"max|Δlse| {dlse:.2e} -> {'ok' if ok else 'FAIL'}")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="480p", help=f"comma list of {sorted(SHAPES)}")
    parser.add_argument("--no-sweep", action="store_true", help="time only the default tiles")
    parser.add_argument("--no-check", action="store_true", help="skip the bf16 accuracy check")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    results = {"benchmarks": [benchmark(SHAPES[name], sweep=not args.no_sweep) for name in args.shapes.split(",")]}
    if not args.no_check:
        results["accuracy"] = accuracy_check()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0 if all(r["ok"] for r in results.get("accuracy", [])) else 1


if __name__ == "__main__":
    sys.exit(main())
