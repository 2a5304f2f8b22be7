"""How well can SLA's linear branch stand in for the attention it drops, on a model's own Q/K/V? (CPU, minutes.)

    python benchmarks/sla_capacity.py [--model models/toyworld/wan-t2v] [--keeps 0.05,0.1,0.25] [--prompts 1]
        [--judge 8]

Captures the teacher's self-attention Q/K/V (cond branch, 5 of 50 denoising steps, 17 frames 256², `turbo.eval.capture`)
and reports, per keep fraction and linear form, the rel-L1 error against dense attention (mean over layers) of
  * the sparse part alone (SLA with its zero-initialised proj: what fine-tuning starts from), and
  * SLA with the least-squares proj (`turbo.attention.sla_fit`): the floor an attention-only fine-tune can reach, and
    the closed-form start the distillation trainer can use (`sla_proj_init: lstsq`).
With --judge N: the judge on N fixed prompts (20 steps, CFG 5) for dense attention, SLA with proj 0 and SLA with the
least-squares proj (training-free), per keep.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/toyworld/wan-t2v")
    parser.add_argument("--keeps", default="0.05,0.1,0.25")
    parser.add_argument("--linear", default="complement,all")
    parser.add_argument("--prompts", type=int, default=1, help="prompts whose attention is captured")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--judge", type=int, default=0, help="judge this many prompts per config (0: no judging)")
    parser.add_argument("--blocks", default="128x64", help="comma list of block_q x block_k tile sizes")
    args = parser.parse_args()
    from turbo.attention.sla_fit import fit_sla_projections, load_sla_projections, sla_fidelity
    from turbo.config import AttentionConfig
    from turbo.eval.capture import capture_qkv
    from turbo.eval.harness import judge_prompts, prompt_set
    from turbo.toyworld.train import load_toyworld

    pipe = load_toyworld(args.model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    steps = [0, 10, 25, 40, 49]
    call = {"height": 256, "width": 256, "num_frames": args.frames, "guidance_scale": 5.0}
    with capture_qkv(pipe, steps=steps, branches=["cond"]) as captured:
        for prompt, seed in prompt_set(args.prompts, 100):  # other prompts than the judged ones
            pipe(prompt, num_inference_steps=50, generator=torch.Generator().manual_seed(seed), output_type="latent",
                 **call)
    print(f"{len(captured)} captured calls, q {tuple(captured.items[0].q.shape)}, steps {steps}", flush=True)
    print("| keep | linear | blocks (q×k) | rel-L1, proj 0 | rel-L1, least-squares proj | per layer (proj 0 → lstsq) |")
    print("|---|---|---|---|---|---|")
    fits = {}
    blocks = [tuple(int(n) for n in b.split("x")) for b in args.blocks.split(",")]
    for keep in (float(k) for k in args.keeps.split(",")):
        for linear in args.linear.split(","):
            for block_q, block_k in blocks:
                options = {"method": "sla", "keep": keep, "linear": linear, "block_q": block_q, "block_k": block_k,
                           "topk_rule": "floor" if linear == "all" else "round"}
                config = AttentionConfig(**options)
                fit = fit_sla_projections(captured, config)
                fits[(keep, linear, block_q, block_k)] = (options, fit)
                before, after = sla_fidelity(captured, config), sla_fidelity(captured, config, fit)
                layers = ", ".join(f"{before[i]:.2f}→{after[i]:.2f}" for i in sorted(before))
                print(f"| {keep:g} | {linear} | {block_q}×{block_k} | {sum(before.values()) / len(before):.3f} | "
                      f"{sum(after.values()) / len(after):.3f} | {layers} |", flush=True)
    if args.judge:
        prompts = prompt_set(args.judge, 0)
        kwargs = {**call, "num_inference_steps": 20}
        print("| config | colour | shape | motion | background |\n|---|---|---|---|---|")

        def row(label, report):
            acc = report.accuracy()
            print(f"| {label} | " + " | ".join(f"{100 * acc[k]:.0f}" for k in ("colour", "shape", "motion",
                                                                             "background")) + " |", flush=True)

        row("dense", judge_prompts(pipe, prompts, kwargs, "dense", batch_size=4, progress=False))
        for (keep, linear, block_q, block_k), (options, fit) in fits.items():
            config = {"attention": options}
            label = f"sla {keep:g} {linear} {block_q}×{block_k}"
            row(f"{label}, proj 0", judge_prompts(pipe, prompts, kwargs, config, batch_size=4,
                                                                 progress=False))
            report = judge_prompts(pipe, prompts, kwargs, config, batch_size=4, progress=False,
                                   on_accelerated=lambda p, fit=fit: load_sla_projections(p.transformer, fit))
            row(f"{label}, lstsq proj", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
