"""Attention benchmark on a CUDA GPU: turbo's kernels vs cuDNN SDPA measured in the same run.

    python benchmarks/attention.py [--shapes 480p,720p,hunyuan720p] [--keep 0.1,0.05,0.03]
                                   [--sections sla,sla2,svg,fwdbwd,lowbit] [--check]

Prints one table (medians of triton.testing.do_bench; ratio = cuDNN time / turbo time, both measured here) and, with
--check, bf16 accuracy vs the PyTorch reference (rel-L1; NaN never passes). SLA "module" = what the attention method
runs per call: router (block pooling + top-k) + linear state (block states + marginal GEMM) + fused forward."""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from turbo.attention import reference  # noqa: E402
from turbo.attention.kernels import ops  # noqa: E402,F401  (registers torch.ops.turbo.*)
from turbo.attention.kernels.router import sla_router  # noqa: E402
from turbo.attention.kernels.sla_forward import sla_block_states, sla_forward, sla_linear_states  # noqa: E402

SHAPES = {
    "480p": (1, 32760, 12, 128),  # Wan-1.3B 480p/81f
    "720p": (1, 75600, 40, 128),  # Wan-14B 720p/81f
    "hunyuan720p": (1, 118800, 24, 128),
}
GRIDS = {"480p": (21, 1560), "720p": (21, 3600), "hunyuan720p": (33, 3600)}  # latent frames, tokens per frame
ROWS: list[tuple] = []


def bench(fn, warmup=25, rep=100) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def add(shape, what, keep, ms, base=None, err=None):
    ROWS.append((shape, what, keep, ms, None if base is None else base / ms, err))


def sdpa(backend, q, k, v):
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def rel_l1(a, b) -> float:
    return float((a.float() - b.float()).abs().sum() / b.float().abs().sum())


def cosine(a, b) -> float:
    return float(F.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0))


def sla_module(q, k, v, keep, proj):
    lut, count = sla_router(q, k, 128, 64, keep)
    return torch.ops.turbo.sla_forward(q, k, v, lut, count, proj.weight, proj.bias, 128, 64, 128 ** -0.5)[0]


def sla2_module(q, k, v, keep, alpha):
    lut, count = sla_router(q, k, 128, 64, keep)
    return torch.ops.turbo.sla2_forward(q, k, v, lut, count, alpha, 128, 64, 128 ** -0.5)[0]


def sla2_lowbit_module(q, k, v, keep, alpha):
    lut, count = sla_router(q, k, 128, 64, keep)
    return torch.ops.turbo.sla2_lowbit_forward(q, k, v, lut, count, alpha, 128, 64, 128 ** -0.5)[0]


def section_sla(shape, q, k, v, keeps, cudnn, check, variants):
    d = q.shape[-1]
    proj = torch.nn.Linear(d, d, device="cuda")
    torch.nn.init.normal_(proj.weight, std=0.02)
    add(shape, "SLA block states [h_j, z_j]", "-", bench(lambda: sla_block_states(k, v, 64)))
    for keep in keeps:
        add(shape, "SLA router", keep, bench(lambda: sla_router(q, k, 128, 64, keep)))
        lut, count = sla_router(q, k, 128, 64, keep)
        add(shape, "SLA linear state (block states + GEMM)", keep,
            bench(lambda: sla_linear_states(k, v, lut, count, 64)))
        state = sla_linear_states(k, v, lut, count, 64)
        for i, variant in enumerate(variants):
            bm, warps, stages = (int(x) for x in variant.split(":"))
            t = bench(lambda: sla_forward(q, k, v, lut, count, 128, 64, proj.weight, proj.bias, linear_state=state,
                                          block_m=bm, num_warps=warps, num_stages=stages))
            add(shape, f"SLA fwd kernel tile {variant}", keep, t, cudnn)
            if i == 0:
                t = bench(lambda: sla_forward(q, k, v, lut, count, 128, 64, None, None, block_m=bm,
                                              num_warps=warps, num_stages=stages))
                add(shape, f"sparse-only kernel tile {variant}", keep, t, cudnn)
        err = None
        if check and shape == "480p":
            with torch.no_grad():
                out = sla_module(q, k, v, keep, proj)
                err = rel_l1(out, reference.sla_attention(q, k, v, keep, proj=proj))
            assert torch.isfinite(out).all(), "NaN/inf in SLA output"
        add(shape, "SLA fwd module", keep, bench(lambda: sla_module(q, k, v, keep, proj)), cudnn, err)


def section_sla2(shape, q, k, v, keeps, cudnn, check):
    nq = -(-q.shape[1] // 128)
    alpha = torch.rand(q.shape[2], nq, device="cuda") * 0.5 + 0.4
    for keep in keeps:
        err = None
        if check and shape == "480p":
            with torch.no_grad():
                out = sla2_module(q, k, v, keep, alpha)
                err = rel_l1(out, reference.sla2_attention(q, k, v, keep, alpha))
            assert torch.isfinite(out).all(), "NaN/inf in SLA2 output"
        add(shape, "SLA2 fwd module (hard top-k, bf16 sparse branch)", keep,
            bench(lambda: sla2_module(q, k, v, keep, alpha)), cudnn, err)
        err = None
        if check and shape == "480p":
            with torch.no_grad():
                out = sla2_lowbit_module(q, k, v, keep, alpha)
                err = rel_l1(out, reference.sla2_attention(q, k, v, keep, alpha))  # vs the exact bf16 SLA2
            assert torch.isfinite(out).all(), "NaN/inf in low-bit SLA2 output"
        add(shape, "SLA2 fwd module (INT8 QK / FP8 PV sparse branch)", keep,
            bench(lambda: sla2_lowbit_module(q, k, v, keep, alpha)), cudnn, err)


def section_fwdbwd(shape, q, k, v, keeps, check):
    from torch.nn.attention import SDPBackend

    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    grad = torch.randn_like(q)
    d = q.shape[-1]
    proj = torch.nn.Linear(d, d, device="cuda")
    torch.nn.init.normal_(proj.weight, std=0.02)

    def cudnn_step():
        out = sdpa(SDPBackend.CUDNN_ATTENTION, qg, kg, vg)
        torch.autograd.grad(out, [qg, kg, vg], grad)

    base = bench(cudnn_step, warmup=5, rep=30)
    add(shape, "cuDNN SDPA fwd+bwd", "-", base, base)
    for keep in keeps:
        def sla_step():
            out = sla_module(qg, kg, vg, keep, proj)
            torch.autograd.grad(out, [qg, kg, vg, proj.weight, proj.bias], grad)

        err = None
        if check and shape == "480p":
            out = sla_module(qg, kg, vg, keep, proj)
            got = torch.autograd.grad(out, [qg, kg, vg], grad)
            ref = reference.sla_attention(qg, kg, vg, keep, proj=proj)
            expected = torch.autograd.grad(ref, [qg, kg, vg], grad)
            err = max(rel_l1(a, b) for a, b in zip(got, expected, strict=True))
            assert all(torch.isfinite(g).all() for g in got), "NaN/inf in SLA gradients"
        add(shape, "SLA fwd+bwd module (max grad rel-L1)", keep, bench(sla_step, warmup=5, rep=30), base, err)


def section_svg(shape, q, k, v, cudnn, check):
    from turbo.attention import SVGAttention
    from turbo.config import AttentionConfig

    frames, per_frame = GRIDS[shape]
    for density in (0.25, 0.15):
        method = SVGAttention(AttentionConfig(method="svg", density=density))

        def run():
            return method.kernel_forward(q, k, v, frames, per_frame, torch.Generator(device="cuda").manual_seed(0))

        with torch.no_grad():
            out, labels = run()
            real_density = method.band_density_value
            err = None
            if check and shape == "480p":
                ref, _, _ = reference.svg_attention(q, k, v, frames, per_frame, density, 128, 64, labels=labels)
                err = rel_l1(out, ref)
            add(shape, f"SVG (profiling + permute + band kernel), block density {real_density:.1%}", density,
                bench(run), cudnn, err)


def realish(b, s, h, d, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b, s, h, d, device="cuda", generator=g)
    k = torch.randn(b, s, h, d, device="cuda", generator=g) + 3.0 * torch.randn(1, 1, h, d, device="cuda", generator=g)
    v = torch.randn(b, s, h, d, device="cuda", generator=g) + torch.randn(1, 1, h, d, device="cuda", generator=g)
    return q.bfloat16(), k.bfloat16(), v.bfloat16()


def section_lowbit(shape, q, k, v, cudnn):
    from torch.nn.attention import SDPBackend

    from turbo.attention.kernels.lowbit_forward import lowbit_attention

    exact = sdpa(SDPBackend.CUDNN_ATTENTION, q, k, v)
    out = lowbit_attention(q, k, v)
    add(shape, f"turbo low-bit (random q/k/v: cos {cosine(out, exact):.5f})", "-",
        bench(lambda: lowbit_attention(q, k, v)), cudnn, rel_l1(out, exact))
    add(shape, "turbo low-bit, key tile 128", "-", bench(lambda: lowbit_attention(q, k, v, block_k=128)), cudnn,
        rel_l1(lowbit_attention(q, k, v, block_k=128), exact))
    rq, rk, rv = realish(*q.shape)
    exact_r = sdpa(SDPBackend.CUDNN_ATTENTION, rq, rk, rv)
    out_r = lowbit_attention(rq, rk, rv)
    add(shape, f"turbo low-bit (real-ish q/k/v: cos {cosine(out_r, exact_r):.5f})", "-", None, None,
        rel_l1(out_r, exact_r))
    try:
        from sageattention import sageattn
    except ImportError:
        return
    sage = sageattn(q, k, v, tensor_layout="NHD")
    add(shape, f"sageattention 1.0.6 (cos {cosine(sage, exact):.5f})", "-",
        bench(lambda: sageattn(q, k, v, tensor_layout="NHD")), cudnn, rel_l1(sage, exact))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="480p,720p")
    parser.add_argument("--keep", default="0.1,0.05,0.03")
    parser.add_argument("--sections", default="sla,sla2,svg,fwdbwd,lowbit")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--variants", default="64:4:3,128:8:3")
    args = parser.parse_args()
    import triton
    from torch.nn.attention import SDPBackend

    sections = args.sections.split(",")
    keeps = [float(x) for x in args.keep.split(",")]
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    torch.manual_seed(0)
    for shape in args.shapes.split(","):
        b, s, h, d = SHAPES[shape]
        q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        cudnn = bench(lambda: sdpa(SDPBackend.CUDNN_ATTENTION, q, k, v))
        add(shape, "cuDNN SDPA", "-", cudnn, cudnn)
        add(shape, "FA2 SDPA", "-", bench(lambda: sdpa(SDPBackend.FLASH_ATTENTION, q, k, v)), cudnn)
        if "sla" in sections:
            section_sla(shape, q, k, v, keeps, cudnn, args.check, args.variants.split(","))
        if "sla2" in sections:
            section_sla2(shape, q, k, v, keeps, cudnn, args.check)
        if "svg" in sections:
            section_svg(shape, q, k, v, cudnn, args.check)
        if "lowbit" in sections:
            section_lowbit(shape, q, k, v, cudnn)
        if "fwdbwd" in sections:
            section_fwdbwd(shape, q, k, v, [0.05], args.check)
        q = k = v = None
        torch.cuda.empty_cache()

    print("| shape | what | keep | ms | × cuDNN | rel-L1 |")
    print("|---|---|---|---|---|---|")
    for shape, what, keep, ms, ratio, err in ROWS:
        print(f"| {shape} | {what} | {keep} | {'' if ms is None else f'{ms:.3f}'} | "
              f"{'' if ratio is None else f'{ratio:.2f}×'} | {'' if err is None else f'{err:.4f}'} |")


if __name__ == "__main__":
    main()
