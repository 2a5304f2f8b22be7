"""One ToyWorld Wan VAE decode on the CPU, stock vs turbo's `vae="fast"` hooks (issue 12's CPU demo).

    python benchmarks/vae_decode_cpu.py [--model models/toyworld/wan-t2v] [--reps 3] [--reuse-freed-memory]

Decodes a fixed [1, 16, 5, 32, 32] latent (17 frames 256²) and prints the minimum of --reps timed decodes (after one
warm-up) for: stock diffusers, the fast RMS norms only, and the fast norms + causal convolutions (all of
`vae="fast"`), with each one's max difference from stock. --reuse-freed-memory first applies `turbo generate`'s CPU
allocator setting (`pipelines.cli.reuse_freed_memory`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/toyworld/wan-t2v")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--reuse-freed-memory", action="store_true")
    args = parser.parse_args()
    if args.reuse_freed_memory:
        from pipelines.cli import reuse_freed_memory

        print(f"reuse_freed_memory: {reuse_freed_memory()}")
    from diffusers.hooks.hooks import HookRegistry

    import turbo
    from turbo.toyworld.train import load_toyworld
    from turbo.vae import CONV_HOOK_NAME, vae_causal_convs

    pipe = load_toyworld(args.model, dtype=torch.float32)
    z = torch.randn(1, pipe.vae.config.z_dim, 5, 32, 32, generator=torch.Generator().manual_seed(0))

    def timed(label: str, reference: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            pipe.vae.decode(z)
            best = float("inf")
            for _ in range(args.reps):
                start = time.perf_counter()
                out = pipe.vae.decode(z).sample
                best = min(best, time.perf_counter() - start)
        diff = "" if reference is None else f", max |Δ| vs stock {(out - reference).abs().max().item():.1e}"
        print(f"{label}: {best:.3f} s{diff}", flush=True)
        return out

    stock = timed("stock")
    turbo.accelerate(pipe, vae="fast")
    timed("vae=fast (norms + causal convolutions)", stock)
    for module in vae_causal_convs(pipe):
        HookRegistry.check_if_exists_or_initialize(module).remove_hook(CONV_HOOK_NAME, recurse=False)
    timed("fast norms only", stock)
    turbo.restore(pipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
