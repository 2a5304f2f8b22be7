"""Real-size distillation steps (issue 12): the Wan2.1-1.3B architecture with random bf16 weights at 480p/81f
(latent [1, 16, 21, 60, 104], text [1, 512, 4096]), every variant measured in one process.

Variants (--variants, comma-separated; any `*-step` variant takes a `-gc` suffix = gradient checkpointing):
  rcm-step, rcm-step-gc   one rCM student step exactly as `turbo.distill.trainer` runs it (its `_Run.train_step`):
                          sCM (teacher F with CFG, JVP tangent of the student through turbo's JVP attention —
                          the Triton `kernel_jvp_fn` on CUDA unless --jvp reference —, `scm_loss`, backward) and DMD
                          (1…4-step backward simulation, fake score + CFG teacher, `dmd_generator_loss`, backward),
                          one AdamW step, power EMA. fp32 master weights, accelerate bf16 autocast. The timed steps
                          run a whole simulation cycle (n = 1…--sim-steps); one fake-score step is timed too.
  jvp-attention           benchmarks/jvp_attention.py `benchmark` at [1, 32760, 12, 128] next to turbo's forward
                          attention from the same run: cuDNN SDPA (dense) and turbo SLA keep --keep (router +
                          kernel); target: JVP ≥ 40 % of the forward attention TFLOPS.
  sla-step, dense-step    one SLA fine-tune step (trainer mode "sla": student with turbo SLA keep --keep installed by
                          turbo.accelerate(..., allow_untuned=True), velocity MSE vs the frozen dense teacher, backward
                          through turbo's SLA backward kernels, AdamW, EMA) vs the same step with dense attention.

s/step: median over --steps timed steps after one warm-up step (first step reported separately); peak GPU memory
(torch.cuda.max_memory_allocated) over the variant, models and optimizer state included; an OOM is a row.
Prints a markdown table and writes JSON (--out).

    python3 benchmarks/distill_step.py --out benchmarks/results/distill_step_h200.json
    python3 benchmarks/distill_step.py --smoke   # CPU, tiny Wan: every variant's code path (its test runs this)
    python3 -m accelerate.commands.launch --num_processes 2 --use_fsdp --fsdp_version 2 \
        benchmarks/distill_step.py --variants rcm-step-gc   # the step sharded by FSDP2 over 2 GPUs (or --multi_gpu)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_VARIANTS = "jvp-attention,sla-step,dense-step,rcm-step-gc,rcm-step"
SKIP_CUDA = "skipped: needs CUDA"


# ----------------------------------------------------------------------------------------------------- the models


def _full_size(args):
    from benchmarks.compile_forward import build_model, inputs

    model = build_model(args.model)
    x = inputs(args.size)
    return model, x["hidden_states"][0].float().cpu(), x["encoder_hidden_states"][0].float().cpu()


def _tiny(args):
    from pipelines.tiny import _wan_transformer

    model = _wan_transformer(num_layers=2, num_heads=2, head_dim=16, text_dim=32, seed=0)
    model = model.to(torch.bfloat16).requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    return model, torch.randn(16, 2, 16, 16, generator=g), torch.randn(8, 32, generator=g)


class _Latents:
    """A one-item latent cache as the trainer reads it ({latents [C, F, H, W], prompt_embeds [L, D]}, negative)."""

    def __init__(self, latents: torch.Tensor, embeds: torch.Tensor):
        self.item = {"latents": latents, "prompt_embeds": embeds}
        self.negative_prompt_embeds = torch.randn(1, *embeds.shape, generator=torch.Generator().manual_seed(1))

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return self.item


def _accelerator(mixed_precision: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    try:
        return Accelerator(mixed_precision=mixed_precision)
    except ValueError:  # an AcceleratorState with another precision already exists in this process (tests)
        AcceleratorState._reset_state(True)
        return Accelerator(mixed_precision=mixed_precision)


@contextlib.contextmanager
def _patched(module, name, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


# ---------------------------------------------------------------------------------------------------- measuring


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _gib(nbytes: int) -> float:
    return nbytes / 2**30


def _clean():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _timed(fn) -> tuple[float, dict]:
    _sync()
    start = time.perf_counter()
    record = fn()
    _sync()
    return time.perf_counter() - start, record


def _step_variant(name: str, teacher, data, args) -> dict:
    """One trainer `_Run` of mode rcm / sla (dense student for dense-step), warm-up + timed steps."""
    from turbo.distill import trainer
    from turbo.distill.config import DistillConfig

    base = name[:-3] if name.endswith("-gc") else name
    gc_on = name.endswith("-gc")
    cuda = torch.cuda.is_available()
    if base == "rcm-step":
        config = DistillConfig(mode="rcm", steps=1000, tangent_warmup=0, student_update_freq=5,
                               max_simulation_steps=args.sim_steps, gradient_checkpointing=gc_on,
                               mixed_precision=args.mixed_precision, show_progress=False,
                               jvp_attention=args.jvp if cuda else "reference")
        jvp = config.jvp_attention
    else:
        attention = {"method": "sla", "keep": args.keep, "linear": "all", "topk_rule": "floor"}
        config = DistillConfig(mode="sla", steps=1000, attention=attention, gradient_checkpointing=gc_on,
                               mixed_precision=args.mixed_precision, show_progress=False)
        jvp = None
    pipe = SimpleNamespace(components={"transformer": teacher}, transformer=teacher, transformer_2=None)
    no_sla = _patched(trainer, "_install_student_attention", lambda student, config: None) \
        if base == "dense-step" else contextlib.nullcontext()
    row: dict = {"gradient_checkpointing": gc_on, "jvp": jvp, "mixed_precision": args.mixed_precision}
    _clean()
    run = acc = None
    try:
        with tempfile.TemporaryDirectory() as out, no_sla:
            acc = _accelerator(args.mixed_precision)
            run = trainer._Run(pipe, config, data, Path(out), acc)
            row.update(processes=acc.num_processes, launch=str(acc.distributed_type).rsplit(".", 1)[-1])
            if cuda:
                row["state_gib"] = _gib(torch.cuda.memory_allocated())
            if base == "rcm-step":
                # student steps are iterations 0, 5, 10, ... (tangent_warmup 0, student_update_freq 5): sCM + DMD
                student_steps = [5 * i for i in range(1 + args.steps)]
                times, sims = [], []
                for i, step in enumerate(student_steps):
                    n = run.student_iter % args.sim_steps + 1  # = losses.dmd_simulation_steps(student_iter, ...)
                    seconds, record = _timed(lambda r=run, s=step: r.train_step(s))
                    assert record["kind"] == "student" and "dmd" in record, record
                    if i:
                        times.append(seconds)
                        sims.append(n)
                    else:
                        row["first_step_s"] = seconds
                    row["loss_scm"], row["loss_dmd"] = record["scm"], record["dmd"]
                row["steps_s"], row["sim_steps"] = times, sims
                seconds, record = _timed(lambda r=run: r.train_step(1))  # iteration 1: a fake-score step
                assert record["kind"] == "fake", record
                row["fake_step_s"], row["loss_fake"] = seconds, record["fake"]
                row["loss"] = row["loss_scm"] + row["loss_dmd"]
            else:
                times = []
                for step in range(1 + args.steps):
                    seconds, record = _timed(lambda r=run, s=step: r.train_step(s))
                    if step:
                        times.append(seconds)
                    else:
                        row["first_step_s"] = seconds
                    row["loss"] = record["loss"]
                row["steps_s"] = times
                row["attention"] = "dense" if base == "dense-step" else f"sla keep {args.keep}"
            row["s_per_step"] = statistics.median(times)
            if cuda:
                row["peak_gib"] = _gib(torch.cuda.max_memory_allocated())
                if acc.num_processes > 1:  # each process's GPU (FSDP shards the student, fake score, AdamW, EMA)
                    from accelerate.utils import gather_object

                    row["peak_gib_per_process"] = gather_object([row["peak_gib"]])
    except torch.cuda.OutOfMemoryError as error:
        row.update(status="OOM", error=f"OutOfMemoryError: {str(error).splitlines()[0][:300]}")
        if cuda:
            row["peak_gib"] = _gib(torch.cuda.max_memory_allocated())
    finally:
        if acc is not None:
            from accelerate.state import AcceleratorState

            acc.free_memory()  # the Accelerator keeps the prepared models and optimizers
            AcceleratorState._reset_state(True)  # leave no process-wide precision behind (in-process tests)
        del run, acc
        _clean()
    return row


def _attention_variant(args) -> dict:
    if not torch.cuda.is_available():
        return {"status": SKIP_CUDA}
    from benchmarks.jvp_attention import _bench, benchmark

    shape = (1, 32760, 12, 128)
    result = benchmark(shape, sweep=args.sweep)
    b, s, h, d = shape
    matmul_flops = 2.0 * b * h * s * s * d
    row = {"shape": list(shape), "sdpa_backend": result["sdpa_backend"], "sdpa_fwd_ms": result["sdpa_fwd_ms"],
           "sdpa_fwd_tflops": result["sdpa_fwd_tflops"], "jvp_configs": result["configs"]}
    if result.get("configs"):
        default = next((c for c in result["configs"] if c["default"]), result["configs"][0])
        row.update(jvp_default_ms=default["ms"], jvp_default_tflops=default["tflops"],
                   jvp_best_ms=result["best"]["ms"], jvp_best_tflops=result["best"]["tflops"],
                   jvp_best_config=[result["best"][k] for k in ("block_m", "block_n", "num_warps", "num_stages")])
    # turbo's SLA forward (router + fused sparse/linear kernel, as the SLA module runs it) on the same tensors
    try:
        from turbo.attention.kernels import ops  # noqa: F401  (registers torch.ops.turbo.*)
        from turbo.attention.kernels.router import sla_router

        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
        proj = torch.nn.Linear(d, d, device="cuda")
        torch.nn.init.normal_(proj.weight, std=0.02)

        def sla():
            lut, count = sla_router(q, k, 128, 64, args.keep)
            return torch.ops.turbo.sla_forward(q, k, v, lut, count, proj.weight, proj.bias, 128, 64, d ** -0.5)[0]

        with torch.no_grad():
            sla()
            ms = _bench(sla)
        row.update(sla_keep=args.keep, sla_fwd_ms=ms, sla_fwd_tflops_dense_equiv=2 * matmul_flops / ms * 1e-9,
                   sla_fwd_tflops_effective=2 * matmul_flops * args.keep / ms * 1e-9)
        print(f"turbo SLA forward keep {args.keep}: {ms:.3f} ms, {row['sla_fwd_tflops_effective']:.1f} TFLOPS on the "
              f"kept blocks ({row['sla_fwd_tflops_dense_equiv']:.1f} dense-equivalent)", flush=True)
    except Exception as error:  # keep the JVP numbers
        row["sla_error"] = f"{type(error).__name__}: {error}"
    if "jvp_best_tflops" in row:
        row["jvp_vs_sdpa_fwd"] = row["jvp_best_tflops"] / row["sdpa_fwd_tflops"]
        if "sla_fwd_tflops_effective" in row:
            row["jvp_vs_sla_fwd"] = row["jvp_best_tflops"] / row["sla_fwd_tflops_effective"]
        row["target_met"] = row["jvp_vs_sdpa_fwd"] >= 0.40
    return row


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except Exception:
        return None


def measure(args) -> dict:
    import diffusers

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        raise SystemExit("benchmarks/distill_step.py needs a CUDA GPU (use --smoke for the CPU smoke run)")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    results: dict = {
        "model": "tiny-wan (smoke)" if args.smoke else args.model,
        "size": "latent [1, 16, 2, 16, 16], text [1, 8, 32]" if args.smoke else args.size,
        "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
        "triton": _triton_version(), "diffusers": diffusers.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["python3", "benchmarks/distill_step.py", *sys.argv[1:]]) if not args.smoke else "--smoke",
        "rows": {}}
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    teacher = data = None
    if any(n != "jvp-attention" for n in names):
        teacher, latents, embeds = (_tiny if args.smoke else _full_size)(args)
        data = _Latents(latents, embeds)
    for name in names:
        base = name[:-3] if name.endswith("-gc") else name
        try:
            if name == "jvp-attention":
                row = _attention_variant(args)
            elif base in ("rcm-step", "sla-step", "dense-step"):
                row = _step_variant(name, teacher, data, args)
            else:
                raise SystemExit(f"unknown variant {name!r}")
        except SystemExit:
            raise
        except Exception as error:  # keep the other variants' numbers
            import traceback

            row = {"status": "error", "error": f"{type(error).__name__}: {str(error)[:500]}",
                   "traceback": traceback.format_exc()[-3000:]}
            _clean()
        row.setdefault("status", "ok")
        results["rows"][name] = row
        if not _main_process():
            continue
        print(name, json.dumps({k: v for k, v in row.items() if k not in ("jvp_configs", "steps_s")}, default=str),
              flush=True)
    return results


def _main_process() -> bool:
    """False in the other processes of an `accelerate launch` (they measure; the first one reports)."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _fmt(value, spec=".2f") -> str:
    if value is None:
        return "—"
    return format(value, spec) if isinstance(value, (int, float)) and math.isfinite(value) else str(value)


def table(results: dict) -> str:
    lines = [f"{results['model']} {results['size']}, {results['device']}, torch {results['torch']}, "
             f"triton {results['triton']}, diffusers {results['diffusers']}, {results['date']}", "",
             "| variant | status | s/step (median) | first step (s) | peak GPU (GiB) | models+opt. (GiB) | notes |",
             "|---|---|---|---|---|---|---|"]
    for name, row in results["rows"].items():
        notes = []
        if name == "jvp-attention" and row["status"] == "ok":
            notes.append(f"JVP {_fmt(row.get('jvp_best_tflops'), '.1f')} TFLOPS (best tile "
                         f"{row.get('jvp_best_config')}, default {_fmt(row.get('jvp_default_tflops'), '.1f')}) vs "
                         f"{row['sdpa_backend']} fwd {_fmt(row['sdpa_fwd_tflops'], '.1f')} TFLOPS = "
                         f"{_fmt(100 * row.get('jvp_vs_sdpa_fwd', float('nan')), '.0f')} % (target ≥ 40 %)")
            if "sla_fwd_tflops_effective" in row:
                notes.append(f"turbo SLA fwd keep {row['sla_keep']}: {_fmt(row['sla_fwd_ms'], '.2f')} ms, "
                             f"{_fmt(row['sla_fwd_tflops_effective'], '.1f')} TFLOPS on kept blocks "
                             f"(JVP = {_fmt(100 * row['jvp_vs_sla_fwd'], '.0f')} % of it)")
            elif "sla_error" in row:
                notes.append(f"SLA fwd: {row['sla_error'][:120]}")
        if "loss" in row:
            notes.append(f"loss {_fmt(row['loss'], '.4g')}")
        if "sim_steps" in row:
            notes.append(f"DMD sim steps {row['sim_steps']}, JVP {row['jvp']}, fake-score step "
                         f"{_fmt(row.get('fake_step_s'))} s")
        if "attention" in row:
            notes.append(row["attention"])
        if row.get("processes", 1) > 1:
            notes.append(f"{row['launch']} × {row['processes']} processes (batch 1 each), peak per GPU "
                         f"{[round(g, 1) for g in row.get('peak_gib_per_process', [])]} GiB")
        if row["status"] not in ("ok",) and "error" in row:
            notes.append(row["error"][:160])
        lines.append(f"| {name} | {row['status']} | {_fmt(row.get('s_per_step'), '.3f')} | "
                     f"{_fmt(row.get('first_step_s'))} | {_fmt(row.get('peak_gib'), '.1f')} | "
                     f"{_fmt(row.get('state_gib'), '.1f')} | {'; '.join(notes)} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wan2.1-t2v-1.3b")
    parser.add_argument("--size", default="480p", choices=["480p", "720p"])
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--steps", type=int, default=4, help="timed steps after one warm-up step (rcm: a DMD cycle)")
    parser.add_argument("--sim-steps", type=int, default=4, help="max DMD backward-simulation steps (published: 4)")
    parser.add_argument("--keep", type=float, default=0.1, help="SLA keep fraction (sla-step, jvp-attention)")
    parser.add_argument("--jvp", default="kernel", choices=["kernel", "reference"],
                        help="JVP attention of the sCM tangent on CUDA: Triton kernel_jvp_fn or the PyTorch reference")
    parser.add_argument("--mixed-precision", default="bf16", choices=["bf16", "fp16", "no"])
    parser.add_argument("--no-sweep", dest="sweep", action="store_false", help="JVP kernel: default tiles only")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny Wan, 1 timed step: tests every code path")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.sim_steps, args.sweep = min(args.steps, 1), min(args.sim_steps, 2), False
    results = measure(args)
    if not _main_process():
        return results
    print()
    print(table(results), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
