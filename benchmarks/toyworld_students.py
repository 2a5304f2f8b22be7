"""Train ToyWorld students with `turbo distill` and judge them against their teacher, in one command (issue 12).

    python3 benchmarks/toyworld_students.py --out runs/students --minutes 6 --runs rcm,rcm-sla,sla5 \
        [--gpus 0] [--cache DIR [--wait-cache]] [--cache-count 2048] [--eval-prompts 200] [--teacher-eval]

1. The latent cache (`turbo.distill.data.cache_toyworld`: ToyWorld clips through the teacher's VAE and text encoder,
   256², 17 frames, seed 0) in ``OUT/cache`` unless it is there (runs on the HunyuanVideo teacher: ``OUT/cache-
   hunyuan-t2v``).
2. Every run in --runs at once, each its own `python -m turbo.distill` process with a --minutes wall-time budget
   (round-robin over --gpus: the ToyWorld model is tiny, several runs share one GPU); logs in ``OUT/NAME.log``, the
   exported student in ``OUT/NAME/student``.
3. The judge (`python -m pipelines.toyworld accuracy --transformer`) on --eval-prompts fixed prompts at 17 frames:
   rCM students at 4, 2 and 1 steps (guidance 1), the others at 50 steps + CFG 5; with --teacher-eval the teacher at
   50 steps + CFG 5 too, and same-seed PSNR of every 50-step student against it (the first 32 videos).
4. ``OUT/summary.json`` and a markdown table on stdout.

The runs (their configs are the examples/ files; `RUNS` holds each one's ``--set`` overrides) are the recipes of the
shipped students; every process is a plain `python -m turbo.distill` command, printed before it starts.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEACHER = "models/toyworld/wan-t2v"
HUNYUAN = "models/toyworld/hunyuan-t2v"  # runs whose overrides name it train on their own cache (its VAE and text)
RCM = "examples/distill_toyworld.yaml"
SLA = "examples/distill_toyworld_sla.yaml"
TD_SLA = "{method: sla, keep: 0.1, linear: all, topk_rule: floor}"
# ToyWorld's 1280-token clips with 64-token key blocks leave 20 key blocks (keep 5 % = 1 block); 16-token key blocks
# give 80, nearer the 512 of Wan2.1-1.3B at 480p (keep 5 % = 25)
TD_SLA_T16 = "{method: sla, keep: 0.1, linear: all, topk_rule: floor, block_q: 32, block_k: 16}"
SLA5_T16 = "{method: sla, keep: 0.05, block_q: 32, block_k: 16}"
B64 = {"batch_size": "64"}
# name: (config, overrides)
RUNS = {
    "rcm": (RCM, {}),
    "rcm-lr3e-5": (RCM, {"lr": "3.0e-5", "fake_lr": "6.0e-6"}),
    "rcm-lr3e-4": (RCM, {"lr": "3.0e-4", "fake_lr": "6.0e-5"}),
    "rcm-sla": (RCM, {"mode": "rcm+sla", "attention": TD_SLA}),
    "sla5": (SLA, {}),
    "sla5-attn": (SLA, {"train_attention_only": "true", "lr": "1.0e-3"}),
    "sla5-lr3e-4": (SLA, {"lr": "3.0e-4"}),
    "rcm-sla-lr5e-5": (RCM, {"mode": "rcm+sla", "attention": TD_SLA, "lr": "5.0e-5", "fake_lr": "1.0e-5"}),
    "rcm-sla-lr1e-4": (RCM, {"mode": "rcm+sla", "attention": TD_SLA, "lr": "1.0e-4", "fake_lr": "2.0e-5",
                             "student_update_freq": "3"}),
    "rcm-b64": (RCM, {**B64, "lr": "3.0e-5", "fake_lr": "6.0e-6"}),
    "rcm-sla-b64": (RCM, {**B64, "mode": "rcm+sla", "attention": TD_SLA, "lr": "3.0e-5", "fake_lr": "6.0e-6"}),
    "rcm-sla-t16": (RCM, {**B64, "mode": "rcm+sla", "attention": TD_SLA_T16, "lr": "3.0e-5", "fake_lr": "6.0e-6"}),
    # the TurboDiffusion stack fine-tuned from the shipped dense rCM student
    "rcm-sla-t16-init": (RCM, {**B64, "mode": "rcm+sla", "attention": TD_SLA_T16, "lr": "3.0e-5", "fake_lr": "6.0e-6",
                               "student_from": "models/toyworld/students/wan-t2v-rcm4"}),
    # continued from the exports of the two runs above (carried to runs/NAME/student)
    "rcm-sla-t16-cont": (RCM, {**B64, "mode": "rcm+sla", "attention": TD_SLA_T16, "lr": "3.0e-5", "fake_lr": "6.0e-6",
                               "student_from": "runs/rcm-sla-t16-init/student"}),
    "sla5-t16-cont": (SLA, {**B64, "lr": "2.0e-4", "attention": SLA5_T16, "student_from": "runs/sla5-t16/student"}),
    # SLA2 keep 3 %: stage 1 (router + α on captured Q/K/V, SoftTop-k), then stage 2 (hard top-k + QAT, whole model)
    # from stage 1's export, in a second wave; 32-key tiles (the quantized SLA2 kernel is tested at block_k 32)
    "sla2-s1": (SLA, {**B64, "mode": "sla2-stage1", "lr": "1.0e-3",
                      "attention": "{method: sla2, keep: 0.03, soft_topk: true, block_q: 32, block_k: 32}"}),
    "sla2-s2": (SLA, {**B64, "mode": "sla2-stage2", "lr": "2.0e-4", "init_from": "{out}/sla2-s1/student",
                      "attention": "{method: sla2, keep: 0.03, quantized: true, block_q: 32, block_k: 32}"}),
    # stage 2 alone, longer, from a stage-1 run's SLA2 parts carried to runs/sla2-s1/ (stage 1 trains only the router
    # and alpha: its transformer weights are the teacher's)
    "sla2-s2-long": (SLA, {**B64, "mode": "sla2-stage2", "lr": "2.0e-4",
                           "init_from": "runs/sla2-s1/turbo_attention.safetensors",
                           "attention": "{method: sla2, keep: 0.03, quantized: true, block_q: 32, block_k: 32}"}),
    # HunyuanVideo ToyWorld teacher (true CFG 5, no guidance embedding), rCM 4 steps
    "hunyuan-rcm": (RCM, {**B64, "teacher": HUNYUAN, "lr": "3.0e-5", "fake_lr": "6.0e-6"}),
    "sla5-b64": (SLA, {**B64, "lr": "2.0e-4"}),
    "sla5-t16": (SLA, {**B64, "lr": "2.0e-4", "attention": SLA5_T16}),
}


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _start(argv: list[str], log: Path, gpu: str | None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    print(f"$ {'CUDA_VISIBLE_DEVICES=' + gpu + ' ' if gpu is not None else ''}{shlex.join(argv[1:])} > {log}",
          flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait(jobs: dict[str, tuple[subprocess.Popen, Path]]) -> dict[str, int]:
    codes = {}
    for name, (proc, log) in jobs.items():
        codes[name] = proc.wait()
        if codes[name] != 0:
            tail = log.read_text().splitlines()[-15:]
            print(f"{name} exited with {codes[name]}; the end of {log}:\n  " + "\n  ".join(tail), flush=True)
    return codes


def _teacher(name: str) -> str:
    return RUNS[name][1].get("teacher", TEACHER)


def _cache_for(cache: Path, teacher: str) -> Path:
    """The latent cache of `teacher`: `cache` for the Wan teacher, a sibling ``<cache>-<teacher dir name>`` else."""
    return cache if teacher == TEACHER else cache.with_name(f"{cache.name}-{Path(teacher).name}")


def build_cache(cache: Path, count: int, gpu: str | None, wait: bool = False, teacher: str = TEACHER) -> Path:
    """Build the cache unless it is there; `wait`: another process builds it, wait for it (up to 10 minutes)."""
    if wait:
        for _ in range(600):
            if (cache / "checksums.json").is_file():
                break
            time.sleep(1)
    if (cache / "checksums.json").is_file():
        return cache
    out = cache.parent
    code = ("import torch; from diffusers import DiffusionPipeline; from turbo.distill.data import cache_toyworld; "
            f"pipe = DiffusionPipeline.from_pretrained({teacher!r}, dtype=torch.float32).to("
            "'cuda' if torch.cuda.is_available() else 'cpu'); "
            f"cache_toyworld(pipe, {count}, {str(cache)!r}, seed=0, batch_size=32, progress=False)")
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"{cache.name}.log"
    if _wait({"cache": (_start(_python("-c", code), log, gpu), log)})["cache"]:
        raise SystemExit("the latent cache failed")
    print(f"cache: {count} clips in {time.perf_counter() - t0:.0f} s", flush=True)
    return cache


def _after(name: str) -> str | None:
    """The run whose export `name` starts from (an override holding ``{out}/RUN/student``), or None."""
    for value in RUNS[name][1].values():
        if isinstance(value, str) and value.startswith("{out}/"):
            return value.split("/")[1]
    return None


def train(out: Path, names: list[str], cache: Path, minutes: float, gpus: list[str]) -> dict[str, int]:
    """Every run at once, except runs that start from another run's export: those start when it has finished (each
    wave gets `minutes`)."""
    codes: dict[str, int] = {}
    pending = list(names)
    while pending:
        wave = [n for n in pending if _after(n) is None or _after(n) in codes or _after(n) not in names]
        if not wave:
            raise SystemExit(f"runs {pending} wait on each other")
        jobs = {}
        for i, name in enumerate(wave):
            config, overrides = RUNS[name]
            overrides = {k: v.replace("{out}", str(out)) for k, v in overrides.items()}
            sets = {"teacher": TEACHER, "data": str(_cache_for(cache, _teacher(name))), "minutes": str(minutes),
                    "steps": "1000000", "show_progress": "false", "sample_every": "0",
                    **({"mixed_precision": "no"} if gpus == [None] else {}), **overrides}
            argv = _python("-m", "turbo.distill", "--config", config, "--out", str(out / name),
                           *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")])
            jobs[name] = (_start(argv, out / f"{name}.log", gpus[i % len(gpus)]), out / f"{name}.log")
        codes.update(_wait(jobs))
        pending = [n for n in pending if n not in codes]
    return codes


def _accuracy_argv(out: Path, tag: str, extra: list[str], prompts: int, gpu: str | None, save: bool,
                   teacher: str = TEACHER) -> list[str]:
    argv = _python("-m", "pipelines.toyworld", "accuracy", "--model", teacher, "--prompts", str(prompts),
                   "--frames", "17", "--batch-size", "25", "--device", "cuda" if gpu is not None else "cpu",
                   "--dtype", "stored", "--json", str(out / "eval" / f"{tag}.json"), *extra)
    if save:
        argv += ["--save-videos", str(out / "eval" / f"{tag}-videos"), "--save-count", "32"]
    return argv


def _run_limited(specs: dict[str, tuple[list[str], str | None]], out: Path, limit: int) -> None:
    """Run the judge processes `limit` at a time (each holds a VAE decode of a whole batch on the GPU)."""
    pending, running = list(specs.items()), {}
    while pending or running:
        while pending and len(running) < limit:
            tag, (argv, gpu) = pending.pop(0)
            running[tag] = (_start(argv, out / "eval" / f"{tag}.log", gpu), out / "eval" / f"{tag}.log")
        done = [t for t, (p, _) in running.items() if p.poll() is not None]
        if done:
            _wait({t: running.pop(t) for t in done})
        else:
            time.sleep(0.5)


def evaluate(out: Path, names: list[str], prompts: int, gpus: list[str], teacher: bool, limit: int = 3,
             teacher_videos: Path | None = None) -> dict:
    jobs = {}
    refs = {}  # teacher dir -> its judge tag (its saved videos are the PSNR reference of its students)
    for t in (sorted({_teacher(n) for n in names}) if teacher else []):
        refs[t] = "teacher" if t == TEACHER else f"teacher-{Path(t).name}"
        jobs[refs[t]] = (_accuracy_argv(out, refs[t], ["--steps", "50", "--guidance", "5"], prompts, gpus[0], True,
                                        teacher=t), gpus[0])
    for i, name in enumerate(names):
        student = out / name / "student"
        if not (student / "config.json").is_file():
            continue
        gpu = gpus[(i + 1) % len(gpus)]
        rcm = RUNS[name][1].get("mode", "rcm" if RUNS[name][0] == RCM else "sla").startswith("rcm")
        for steps in ((4, 2, 1) if rcm else (50,)):
            tag = f"{name}-{steps}step"
            jobs[tag] = (_accuracy_argv(out, tag, ["--transformer", str(student), "--steps", str(steps)], prompts,
                                        gpu, not rcm or steps == 4, teacher=_teacher(name)), gpu)
    _run_limited(jobs, out, limit * len(gpus))
    results = {}
    for tag in jobs:
        path = out / "eval" / f"{tag}.json"
        if path.is_file():
            results[tag] = json.loads(path.read_text())[0]
    for name in names:
        t = _teacher(name)
        ref = (out / "eval" / f"{refs[t]}-videos" / "cfg5") if teacher else (teacher_videos if t == TEACHER else None)
        if ref is None or not Path(ref).is_dir():
            continue
        for tag in [f"{name}-{steps}step" for steps in (4, 2, 1, 50) if f"{name}-{steps}step" in results]:
            videos = out / "eval" / f"{tag}-videos"
            if videos.is_dir():
                cand = next(videos.iterdir())
                proc = subprocess.run(_python("-m", "pipelines.toyworld", "psnr", str(cand), str(ref)), cwd=ROOT,
                                      capture_output=True, text=True)
                if proc.returncode == 0:
                    results[tag]["psnr_vs_teacher"] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


def _table(results: dict) -> str:
    lines = ["| run | steps | CFG | colour | shape | motion | background | all | s / video | PSNR vs teacher |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for tag, r in results.items():
        acc = r.get("accuracy", {})
        psnr = r.get("psnr_vs_teacher", {}).get("psnr_mean_db")
        lines.append(f"| {tag} | {r.get('steps')} | {r.get('guidance')} | "
                     + " | ".join(f"{100 * acc.get(k, float('nan')):.1f}" for k in
                                  ("colour", "shape", "motion", "background", "all"))
                     + f" | {r.get('seconds_per_video', float('nan')):.3f} | "
                     + (f"{psnr:.1f} dB" if psnr is not None else "—") + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--runs", default="rcm,rcm-sla,sla5", help=f"comma list of {', '.join(RUNS)}")
    parser.add_argument("--minutes", type=float, default=6.0, help="wall-time budget of each training run")
    parser.add_argument("--gpus", default="0", help="comma list of GPU indices; 'cpu' for none")
    parser.add_argument("--cache-count", type=int, default=2048)
    parser.add_argument("--cache", default=None, help="latent cache directory (default OUT/cache); built if missing")
    parser.add_argument("--wait-cache", action="store_true", help="another process builds --cache: wait for it")
    parser.add_argument("--teacher-videos", default=None,
                        help="the teacher's --save-videos folder from another run (PSNR without --teacher-eval)")
    parser.add_argument("--eval-prompts", type=int, default=200, help="0: no evaluation")
    parser.add_argument("--teacher-eval", action="store_true", help="judge the teacher too (and PSNR against it)")
    parser.add_argument("--eval-only", action="store_true", help="judge the students already in --out")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    names = [n for n in args.runs.split(",") if n]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        parser.error(f"unknown runs {unknown}; known: {', '.join(RUNS)}")
    gpus = [None] if args.gpus == "cpu" else args.gpus.split(",")
    t0 = time.perf_counter()
    summary = {"runs": {n: {"config": RUNS[n][0], "overrides": RUNS[n][1]} for n in names},
               "minutes": args.minutes, "command": shlex.join([sys.argv[0], *(argv or sys.argv[1:])])}
    if not args.eval_only:
        cache = Path(args.cache or out / "cache").resolve()
        for teacher in sorted({_teacher(n) for n in names}):
            # --wait-cache: another process builds the Wan teacher's cache; other teachers' caches are built here
            build_cache(_cache_for(cache, teacher), args.cache_count, gpus[0], args.wait_cache and teacher == TEACHER,
                        teacher)
        summary["train_exit_codes"] = train(out, names, cache, args.minutes, gpus)
        print(f"training done at {time.perf_counter() - t0:.0f} s", flush=True)
    if args.eval_prompts:
        summary["eval"] = evaluate(out, names, args.eval_prompts, gpus, args.teacher_eval,
                                   teacher_videos=args.teacher_videos)
        print(_table(summary["eval"]), flush=True)
    summary["seconds"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
