"""Tile settings of turbo's per-token FP8 activation pass (turbo/quant/fp8_rows.py) on one GPU, against the torch-ops
reference compiled by inductor, at Wan row widths. Per (M, K): ms (do_bench median), effective GB/s (one read of x in
bf16, one write of x_q and the scales), bit-identity with `quantize_rows`.

    python3 benchmarks/fp8_rows_tune.py [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = [(32760, 1536), (32760, 5120), (32760, 8960), (32760, 13824), (75600, 5120), (75600, 13824)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import triton
    from triton.testing import do_bench

    from turbo.quant.fp8 import quantize_rows
    from turbo.quant.fp8_rows import launch

    settings = [dict(rows=r, block_k=b, warps=w) for r, b, w in itertools.product((1, 4, 16), (512, 2048), (4, 8))]
    settings += [dict(rows=r, warps=w, whole_rows=True) for r, w in ((1, 4), (1, 8), (1, 16), (2, 8), (4, 16))]
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M"), "rows": []}
    print(result["gpu"], result["torch"], result["triton"], flush=True)
    for m, k in SHAPES:
        torch._dynamo.reset()
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        ref_q, ref_s = quantize_rows(x)
        moved = m * k * 3 + m * 4
        compiled = torch.compile(quantize_rows, dynamic=False)
        ms = do_bench(lambda: compiled(x), warmup=25, rep=100)
        row = {"M": m, "K": k, "compiled_ms": ms, "settings": []}
        print(f"M {m} K {k}: compiled torch ops {ms:.3f} ms ({moved / ms / 1e6:.0f} GB/s)", flush=True)
        for setting in settings:
            try:
                q, s = launch(x, **setting)
                same = bool(torch.equal(q.view(torch.uint8), ref_q.view(torch.uint8)) and torch.equal(s, ref_s))
                ms = do_bench(lambda st=setting: launch(x, **st), warmup=25, rep=100)
            except Exception as error:  # e.g. too many registers for a whole row
                row["settings"].append({**setting, "error": f"{type(error).__name__}: {str(error)[:200]}"})
                print(f"  {setting}: FAILED {type(error).__name__}", flush=True)
                continue
            row["settings"].append({**setting, "ms": ms, "identical": same})
            print(f"  {setting}: {ms:.3f} ms ({moved / ms / 1e6:.0f} GB/s) identical {same}", flush=True)
        result["rows"].append(row)
        x = ref_q = None
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
