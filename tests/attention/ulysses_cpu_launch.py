"""Two `torchrun` processes on the CPU (gloo): a tiny Wan transformer under diffusers' Ulysses context parallelism
(`enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))`) with each turbo attention method, enabled
after `turbo.accelerate` and before it, against the same model and method in one process. Prints one line per
case: ``case <method> <order> <max abs difference> <max abs output> <exchanges> <their shapes>``,
then ``refused ring: <message>`` for a sparse method under ring attention, then a ToyWorld generation's line
(`toyworld_generations`).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/attention/ulysses_cpu_launch.py
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig

METHODS = {
    "dense": {},
    "sla": {"keep": 0.25, "block_q": 32, "block_k": 16},
    "sla2": {"keep": 0.25, "block_q": 32, "block_k": 16, "alpha_init": 0.5},
    "svg": {"density": 0.3, "block_q": 32, "block_k": 16, "profile_rows": 32},
    "svg2": {},
    "lowbit": {"block_q": 32, "block_k": 16},
}


def build():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=4,
                                  out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2,
                                  rope_max_seq_len=64)
    return model.eval()


def accelerate(model, method: str):
    import turbo

    turbo.accelerate(model, attention=method, allow_untuned=True, **METHODS[method])
    with torch.no_grad():  # distinct SLA2 α per head: a rank that used another rank's heads would differ
        for block in model.blocks:
            alpha = getattr(block.attn1.turbo_attention, "alpha_logit", None)
            if alpha is not None:
                alpha.copy_(torch.linspace(-2.0, 2.0, alpha.shape[0])[:, None].expand_as(alpha))
    return model


def toyworld_generations() -> list[str]:
    """The trained ToyWorld Wan pipeline with SVG attention and a permissive Temporal Delta Cache (12 steps, CFG,
    128 × 128 × 9), in one process and under Ulysses enabled before and after `turbo.accelerate`: ``toyworld <max
    abs frame difference before> <after> <skips: one process> <before> <after> <block evaluations>``."""
    import turbo
    from pipelines import registry
    from turbo.cache import cache_stats

    preset = registry.get_model("toyworld-wan-t2v")
    kwargs = registry.call_kwargs(preset, prompt="a blue square moving right on a white background", steps=12,
                                  height=128, width=128, frames=9)
    frames, skips, total = [], [], 0
    for order in ("one process", "before", "after"):
        pipe = registry.load_pipeline(preset, "cpu", torch.float32)
        pipe.set_progress_bar_config(disable=True)
        if order == "before":
            pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
        turbo.accelerate(pipe, attention="svg", density=0.3, block_q=32, block_k=16, cache="tdc", cache_threshold=0.3,
                         cache_max_error=1.0, cache_warmup_steps=2, cache_final_steps=1)
        if order == "after":
            pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
        frames.append(pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames[0])
        counts = [c for branches in cache_stats(pipe).values() for c in branches.values()]
        skips.append(sum(c["skipped"] for c in counts))
        total = sum(c["skipped"] + c["computed"] for c in counts)
    differences = " ".join(f"{float(abs(f - frames[0]).max()):.3e}" for f in frames[1:])
    return [f"toyworld {differences} {' '.join(map(str, skips))} {total}"]


def main() -> int:
    dist.init_process_group("gloo")
    torch.accelerator.device_count = lambda: 1  # diffusers divides the rank by it; this CPU build has no accelerator
    gen = torch.Generator().manual_seed(1)
    inputs = {"hidden_states": torch.randn(1, 4, 3, 16, 16, generator=gen), "timestep": torch.tensor([500]),
              "encoder_hidden_states": torch.randn(1, 8, 32, generator=gen), "return_dict": False}
    import turbo.adapters.base as processors

    exchanged = []  # the sequence -> heads exchanges turbo's processors made (shapes after)
    to_heads = processors.sequence_to_heads
    processors.sequence_to_heads = lambda x, group, world: exchanged.append(to_heads(x, group, world)) or exchanged[-1]
    lines = []
    for method in METHODS:
        with torch.no_grad():
            expected = accelerate(build(), method)(**inputs)[0]
            after = accelerate(build(), method)
            after.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
            before = build()
            before.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
            accelerate(before, method)
            for order, model in (("after", after), ("before", before)):
                exchanged.clear()
                out = model(**inputs)[0]
                shapes = sorted({tuple(x.shape) for x in exchanged})
                lines.append(f"case {method} {order} {float((out - expected).abs().max()):.3e} "
                             f"{float(expected.abs().max()):.3e} {len(exchanged)} {shapes}")
    from turbo.errors import TurboError

    ring = accelerate(build(), "sla")
    ring.enable_parallelism(config=ContextParallelConfig(ring_degree=2))
    try:
        with torch.no_grad():
            ring(**inputs)
    except TurboError as error:
        lines.append(f"refused ring: {error}")
    lines += toyworld_generations()
    everyone = [None, None]
    dist.all_gather_object(everyone, lines)  # printed by one process: two writing one pipe interleave
    if dist.get_rank() == 0:
        print("\n".join(line for rank_lines in everyone for line in rank_lines), flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
