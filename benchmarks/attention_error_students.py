"""Attention error of trained students' sparse attention on the teacher's own Q/K/V (issue 12: "SLA2 keep 3 %: its
attention error (rel-L1 on captured Q/K/V) ≤ SLA keep 5 %'s"). CPU, minutes.

    python benchmarks/attention_error_students.py [--model models/toyworld/wan-t2v] [--prompts 1]
        [--parts NAME=FILE[@key=value,...] ...]

Captures the teacher's self-attention Q/K/V (cond branch, steps 0/10/25/40/49 of 50, CFG 5, 17 frames 256²) on
--prompts prompts that are not the judged ones, then reports per parts file (a student's
``turbo_attention.safetensors``, run with the config stored in it, optionally overridden: ``@soft_topk=false``) the
rel-L1 of its attention output against exact dense attention, mean over calls, with the same config's untrained
parts beside it. The students' transformers were fine-tuned too (their own Q/K/V differ from the teacher's): this
measures the attention modules alone on one shared input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = "benchmarks/results/2026-11-30-h200x2-round3/parts"
DEFAULT_PARTS = [
    "sla5-shipped=models/toyworld/students/wan-t2v-sla5/turbo_attention.safetensors",
    f"sla2-stage1={RESULTS}/sla2-s1.safetensors",
    f"sla2-stage1-hard={RESULTS}/sla2-s1.safetensors@soft_topk=false",
    f"sla2-stage2-long={RESULTS}/sla2-s2-long.safetensors",
]


def _override(config, text: str):
    values = {}
    for pair in filter(None, text.split(",")):
        key, _, value = pair.partition("=")
        values[key] = json.loads(value.lower() if value.lower() in ("true", "false") else value)
    return dataclasses.replace(config, **values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/toyworld/wan-t2v")
    parser.add_argument("--prompts", type=int, default=1)
    parser.add_argument("--parts", nargs="+", default=DEFAULT_PARTS)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from turbo.eval.capture import attention_fidelity, capture_qkv, layer_parts
    from turbo.eval.harness import prompt_set
    from turbo.toyworld.train import load_toyworld

    pipe = load_toyworld(args.model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    with capture_qkv(pipe, steps=[0, 10, 25, 40, 49], branches=["cond"]) as captured:
        for prompt, seed in prompt_set(args.prompts, 100):
            pipe(prompt, num_inference_steps=50, guidance_scale=5.0, height=256, width=256, num_frames=17,
                 generator=torch.Generator().manual_seed(seed), output_type="latent")
    print(f"{len(captured)} captured calls, q {tuple(captured.items[0].q.shape)}", flush=True)
    print("| parts | method, keep, tiles, options | rel-L1 untrained | rel-L1 trained |\n|---|---|---|---|")
    rows = {}
    for spec in args.parts:
        name, _, rest = spec.partition("=")
        path, _, extra = rest.partition("@")
        config, parts = layer_parts(path)
        config = _override(config, extra)

        def mean(rows_):
            return sum(r["rel_l1"] for r in rows_) / len(rows_)

        untrained, trained = mean(attention_fidelity(captured, config)), mean(attention_fidelity(captured, config,
                                                                                                  parts=parts))
        options = {k: getattr(config, k) for k in ("soft_topk", "quantized", "linear") if hasattr(config, k)}
        label = f"{config.method} {config.keep:g}, {config.block_q}×{config.block_k}, {options}"
        rows[name] = {"path": path, "config": dataclasses.asdict(config), "untrained": untrained, "trained": trained}
        print(f"| {name} | {label} | {untrained:.3f} | {trained:.3f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
