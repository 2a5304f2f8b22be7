"""Equivalence check: TurboDiffusion's own network + rCM sampler vs turbo's converted diffusers pipeline.

    bash benchmarks/get_turbodiffusion.sh                     # once: exports their source to .peer/TurboDiffusion
    python benchmarks/td_equivalence.py --turbodiffusion .peer/TurboDiffusion --device cuda     # bf16, dense + SLA
    python benchmarks/td_equivalence.py --device cpu          # fp32; SLA runs their Triton kernel interpreted (fp16)

One tiny random Wan2.1-like network in TurboDiffusion's native layout (dim 256 = 2 heads x 128, 2 blocks, ffn 512,
text_dim 4096, random non-zero SLA proj_l) is saved as a `.pth` the way their `modify_model.py` saves checkpoints,
converted with `turbo.convert_checkpoint`, and both sides sample 4 rCM steps (σ_max 80) from the same noise ε, the same
text embedding and the same fresh noise per step:

* TurboDiffusion: their `WanModel` (built by their `select_model`/`replace_attention` code path) driven by the sampler
  loop of their `inference/wan2.1_t2v_infer.py` (`turbodiffusion_ref.td_sample`; timesteps 1000·t and latents cast to
  the network dtype, as their script does).
* turbo: `WanTransformer3DModel.from_pretrained(<converted>)` in a `WanPipeline`, `turbo.accelerate(pipe)` from the
  converted recipe (rCM sampler + SLA linear="all", topk_rule="floor"; the dense case overrides attention="dense"), run
  with `prompt_embeds=`, `latents = init_noise_sigma · ε`, 4 steps, guidance 1, `output_type="latent"`. The rCM
  scheduler's fresh noise comes from its own generator seeded with `noise_seed`; the reference draws the same tensors
  from a generator with that seed on the same device.

Cases: dense (their "original" SDPA vs turbo dense attention) and sla (their Triton SLA, BLKQ 128 / BLKK 64, top-k
0.1, vs turbo's SLA). Latent [16, 5, 32, 32] → 1280 tokens → 20 key blocks of 64, so top-k 0.1 keeps 2 per query block.
Prints a table (max |Δ| and relative L2 of the final latents, PASS/FAIL) and exits 1 on any FAIL."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__:
    from . import turbodiffusion_ref as ref
else:  # run as a script: the repo root (turbo) and this folder on the path
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    import turbodiffusion_ref as ref

LATENT = (16, 5, 32, 32)  # C, T, H, W: 5 x 16 x 16 = 1280 tokens after the 1x2x2 patch
STEPS, SIGMA_MAX = 4, 80.0
HEADS = 2

# Relative-L2 tolerances on the final latents after 4 steps (see benchmarks/README.md, "Equivalence with
# TurboDiffusion"): fp32 dense differs only by summation order and the fp32 vs fp64 timestep sinusoid (~1e-6);
# fp32 SLA on CPU compares their fp16 sparse kernel with turbo's fp32 reference (~1e-3); bf16 runs round activations
# to 8 mantissa bits in every layer on both sides (~4e-3 per layer, partly independent), over 4 steps.
TOLERANCE = {("dense", "float32"): 1e-4, ("sla", "float32"): 2e-3,
             ("dense", "bfloat16"): 2e-2, ("sla", "bfloat16"): 2e-2,
             ("dense", "float16"): 1e-2, ("sla", "float16"): 1e-2}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turbodiffusion", default=None,
                        help="exported TurboDiffusion source (default .peer/TurboDiffusion)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="network dtype on both sides (default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--cases", default="dense,sla", help="comma list of dense, sla")
    parser.add_argument("--topk", type=float, default=0.1, help="SLA top-k ratio (their --sla_topk)")
    parser.add_argument("--seed", type=int, default=0, help="weights, noise and text embedding")
    parser.add_argument("--noise-seed", type=int, default=1234, help="seed of the rCM fresh noise (both sides)")
    parser.add_argument("--workdir", default=None, help="keep the native and converted checkpoints here")
    return parser.parse_args(argv)


def prepare_environment(device: str, cases: list[str]) -> None:
    """Their SLA kernels are Triton: on CPU they only run under the interpreter, which must be chosen before triton
    is imported anywhere (turbo imports it too)."""
    if device == "cpu" and "sla" in cases:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=".*autocast.*")  # their autocast("cuda") blocks on CPU
    import logging

    logging.getLogger("diffusers").setLevel(logging.ERROR)


def make_native_checkpoint(path: Path, seed: int, topk: float):
    """A random tiny TurboDiffusion network with SLA modules (random proj_l), saved as `net.state_dict()`."""
    import torch

    net = ref.build_td_model(ref.TINY_CONFIG, "sla", topk, device="cpu", dtype=torch.float32, seed=seed)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    torch.save(state, path)
    return state


def make_inputs(seed: int, device):
    """ε [1, 16, 5, 32, 32] and a text embedding [1, 512, 4096] (float32, drawn on the CPU, then moved)."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    noise = torch.randn(1, *LATENT, generator=gen)
    text = torch.randn(1, 512, 4096, generator=gen)
    return noise.to(device), text.to(device)


def fresh_noise_source(noise_seed: int, device):
    """The draws RCMScheduler makes: its own generator on the latents' device seeded with `noise_seed`, one float32
    standard-normal tensor of the latent shape per non-final step."""
    import torch

    gen = torch.Generator(device=device).manual_seed(noise_seed)
    return lambda shape, dev: torch.randn(shape, generator=gen, device=dev, dtype=torch.float32)


def run_turbodiffusion(case: str, state: dict, noise, text, *, dtype, topk: float, noise_seed: int,
                       timestep_dtypes=(None,)):
    """Their network + sampler; one final latent per entry of `timestep_dtypes` (None: their own cast to the network
    dtype; torch.float32: the diagnostic without their bf16 timestep rounding)."""
    import torch

    device = noise.device
    sla_dtype = None
    if case == "sla" and device.type != "cuda":
        sla_dtype = torch.float16  # the Triton interpreter has no bf16: their use_bf16=False
    net = ref.build_td_model(ref.TINY_CONFIG, "sla" if case == "sla" else "original", topk, device=device,
                             dtype=dtype, state_dict=state, sla_dtype=sla_dtype)
    return [ref.td_sample(net, noise, text, steps=STEPS, sigma_max=SIGMA_MAX, timestep_dtype=ts_dtype,
                          fresh_noise=fresh_noise_source(noise_seed, device)) for ts_dtype in timestep_dtypes]


def build_turbo_pipeline(converted: Path, *, device, dtype):
    """WanPipeline around the converted transformer; no text encoder, tokenizer or VAE (prompt_embeds= and
    output_type="latent" do not use them). The scheduler is replaced by turbo's RCMScheduler at accelerate time."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    transformer = WanTransformer3DModel.from_pretrained(converted, torch_dtype=dtype).to(device)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_turbo(case: str, converted: Path, noise, text, *, dtype, noise_seed: int, bf16_timesteps: bool = True):
    """turbo's pipeline; returns (final latents float32, first line of the turbo report).

    `bf16_timesteps=False` swaps in an RCMScheduler passing the exact 1000·t (diagnostic; turbo's default rounds the
    timesteps to bf16 as TurboDiffusion does)."""
    import torch

    import turbo

    pipe = build_turbo_pipeline(converted, device=noise.device, dtype=dtype)
    overrides = {"noise_seed": noise_seed}
    if case == "dense":
        overrides["attention"] = "dense"
    turbo.accelerate(pipe, **overrides)
    if not bf16_timesteps:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, bf16_timesteps=False)
    t0 = float(pipe.scheduler.init_noise_sigma)
    latents = (noise.to(torch.float64) * t0).float()  # the reference's start x = t0·ε
    _, c, t, h, w = noise.shape
    out = pipe(prompt_embeds=text.to(dtype), guidance_scale=1.0, num_inference_steps=STEPS, latents=latents,
               height=h * 8, width=w * 8, num_frames=(t - 1) * 4 + 1, output_type="latent").frames
    report = str(pipe.turbo)
    return out.float(), (report.splitlines() or [""])[0]


def compare(a, b) -> tuple[float, float]:
    diff = (a.double() - b.double())
    return float(diff.abs().max()), float(diff.norm() / b.double().norm())


def sla_unavailable_reason(device) -> str | None:
    """Why their SLA kernel cannot run here, or None."""
    if device.type == "cuda":
        return None
    if os.environ.get("TRITON_INTERPRET") != "1":
        return "their SLA is a Triton kernel: on CPU it needs TRITON_INTERPRET=1 set before triton is imported"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in ("dense", "sla")]
    if bad:
        print(f"unknown case(s) {bad}; use dense, sla", file=sys.stderr)
        return 2
    import torch

    device_name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    prepare_environment(device_name, cases)
    device = torch.device(device_name)
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    if device.type != "cuda" and dtype != torch.float32:
        print("TurboDiffusion's network relies on torch.amp.autocast('cuda') to run its float32 modulation path next "
              "to bf16/fp16 weights; off CUDA use --dtype float32.", file=sys.stderr)
        return 2

    td = ref.import_turbodiffusion(args.turbodiffusion)
    try:
        from turbo import convert_checkpoint
    except ImportError:
        from turbo.convert import convert_checkpoint

    work_ctx = tempfile.TemporaryDirectory(prefix="td_equivalence_") if args.workdir is None else None
    work = Path(args.workdir or work_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    state = make_native_checkpoint(work / "td_tiny.pth", args.seed, args.topk)
    converted = Path(convert_checkpoint(work / "td_tiny.pth", work / "converted", sla_topk=args.topk,
                                        sigma_max=SIGMA_MAX, steps=STEPS, dtype=dtype, heads=HEADS))
    noise, text = make_inputs(args.seed, device)

    rows, failed, refs = [], False, {}
    print(f"TurboDiffusion {td.commit[:12]} vs turbo (converted {converted}); device {device}, {dtype_name}; "
          f"latent {list(LATENT)}, {STEPS} rCM steps, sigma_max {SIGMA_MAX}, SLA top-k {args.topk}")
    # Timestep convention (see benchmarks/README.md): TurboDiffusion feeds 1000·t cast to the network dtype, bf16 in
    # its released bf16 pipeline; turbo's RCMScheduler rounds the timesteps to bf16 the same way. The main row gives
    # their side bf16-rounded timesteps in every precision (in a float32 run their own cast would not round); the info
    # row "ts exact" runs both sides with exact float32 timesteps, "ts mismatch" only their side rounded.
    bf16 = torch.bfloat16
    for case in cases:
        tol = TOLERANCE[(case, dtype_name)]
        reason = sla_unavailable_reason(device) if case == "sla" else None
        if reason:
            rows.append((case, "-", "-", f"{tol:.0e}", "SKIP", reason))
            continue
        start = time.perf_counter()
        try:
            td_rounded, td_exact = run_turbodiffusion(
                case, state, noise, text, dtype=dtype, topk=args.topk, noise_seed=args.noise_seed,
                timestep_dtypes=(bf16, torch.float32))
            turbo_rounded, report = run_turbo(case, converted, noise, text, dtype=dtype, noise_seed=args.noise_seed)
            turbo_exact, _ = run_turbo(case, converted, noise, text, dtype=dtype, noise_seed=args.noise_seed,
                                       bf16_timesteps=False)
        except Exception as error:  # one line per case; the table still prints
            failed = True
            rows.append((case, "-", "-", f"{tol:.0e}", "ERROR", f"{type(error).__name__}: {error}"[:300]))
            continue
        refs[case] = td_rounded
        seconds = time.perf_counter() - start
        comparisons = [(case, turbo_rounded, td_rounded, True,
                        f"{seconds:.0f}s; ref rms {float(td_rounded.pow(2).mean().sqrt()):.3f}"),
                       (f"{case} ts exact", turbo_exact, td_exact, False, "both sides float32 timesteps"),
                       (f"{case} ts mismatch", turbo_exact, td_rounded, False,
                        "TurboDiffusion bf16-rounded timesteps, turbo exact")]
        for name, got, expected, counts, note in comparisons:
            max_abs, rel = compare(got, expected)
            ok = bool(torch.isfinite(got).all()) and rel <= tol
            failed |= counts and not ok
            verdict = ("PASS" if ok else "FAIL") if counts else ("info: within" if ok else "info: beyond")
            rows.append((name, f"{max_abs:.3e}", f"{rel:.3e}", f"{tol:.0e}", verdict, note))
        print(f"[{case}] {report}")

    header = ("case", "max|Δ|", "rel L2", "tol", "result", "note")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    if len(refs) == 2:
        _, rel = compare(refs["sla"], refs["dense"])
        print(f"(sensitivity: TurboDiffusion's own SLA vs dense final latents differ by rel L2 {rel:.3e})")
    if work_ctx is not None:
        work_ctx.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
