"""How well can SLA's linear branch stand in for the attention it drops, on a model's own Q/K/V? (CPU, minutes.)

    python benchmarks/sla_capacity.py [--model models/toyworld/wan-t2v] [--keeps 0.05,0.1,0.25] [--prompts 2]

Captures the teacher's self-attention Q/K/V (cond branch, 5 of 50 denoising steps, 17 frames 256², `turbo.eval.capture`)
and reports, per keep fraction and linear form, the rel-L1 error against dense attention of
  * the sparse part alone (SLA with its zero-initialised proj: what training starts from), and
  * SLA with the best possible proj (least squares over all captured rows, one d×d + bias per layer, as SLA trains):
    the floor an attention-only fine-tune (proj only) can reach; what is left must come from the rest of the model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _rel_l1(out: torch.Tensor, exact: torch.Tensor) -> float:
    return float((out - exact).abs().sum() / exact.abs().sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/toyworld/wan-t2v")
    parser.add_argument("--keeps", default="0.05,0.1,0.25")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--frames", type=int, default=17)
    args = parser.parse_args()
    from turbo.attention import reference
    from turbo.eval.capture import capture_qkv
    from turbo.eval.harness import prompt_set
    from turbo.toyworld.train import load_toyworld

    pipe = load_toyworld(args.model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    steps = [0, 10, 25, 40, 49]
    with capture_qkv(pipe, steps=steps, branches=["cond"]) as captured:
        for prompt, seed in prompt_set(args.prompts, 0):
            pipe(prompt, height=256, width=256, num_frames=args.frames, num_inference_steps=50, guidance_scale=5.0,
                 generator=torch.Generator().manual_seed(seed), output_type="latent")
    by_layer: dict[int, list] = {}
    for item in captured:
        by_layer.setdefault(item.layer, []).append(item)
    print(f"{len(captured)} captured calls, q {tuple(captured.items[0].q.shape)}, steps {steps}, layers "
          f"{sorted(by_layer)}")
    print("| keep | linear | layer | sparse only (proj 0) | best proj (least squares) | ‖best W‖ mean |w| |")
    print("|---|---|---|---|---|---|")
    for keep in (float(k) for k in args.keeps.split(",")):
        for linear in ("complement", "all"):
            totals = [0.0, 0.0]
            for layer, items in sorted(by_layer.items()):
                exact, sparse, lin = [], [], []
                for it in items:
                    q, k, v = it.q.float(), it.k.float(), it.v.float()
                    exact.append(torch.nn.functional.scaled_dot_product_attention(
                        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2))
                    kw = dict(keep=keep, linear=linear, topk_rule="floor" if linear == "all" else "round")
                    s = reference.sla_attention(q, k, v, proj=None, **kw) if linear == "complement" else \
                        reference.sla_attention(q, k, v, proj=lambda x: x * 0, **kw)
                    both = reference.sla_attention(q, k, v, proj=lambda x: x, **kw)
                    sparse.append(s)
                    lin.append(both - s)
                exact, sparse, lin = (torch.cat(x) for x in (exact, sparse, lin))
                d = exact.shape[-1]
                # rows where the linear branch exists (complement: rows whose query block has marginal blocks)
                x = lin.reshape(-1, d)
                y = (exact - sparse).reshape(-1, d)
                rows = x.abs().sum(-1) > 0
                design = torch.cat([x[rows], torch.ones(int(rows.sum()), 1)], dim=1).double()
                solution = torch.linalg.lstsq(design, y[rows].double()).solution.float()
                w, b = solution[:d], solution[d]
                fitted = sparse.clone().reshape(-1, d)
                fitted[rows] += x[rows] @ w + b
                fitted = fitted.reshape(exact.shape)
                e0, e1 = _rel_l1(sparse, exact), _rel_l1(fitted, exact)
                totals[0] += e0
                totals[1] += e1
                print(f"| {keep:g} | {linear} | {layer} | {e0:.3f} | {e1:.3f} | {w.abs().mean():.3f} |", flush=True)
            n = len(by_layer)
            print(f"| {keep:g} | {linear} | mean | {totals[0] / n:.3f} | {totals[1] / n:.3f} | |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
