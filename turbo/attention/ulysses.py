"""Ulysses sequence parallelism for turbo's attention methods (tensors and a process group only; no diffusers).

Under context parallelism each of P ranks holds a contiguous 1/P of the sequence with every head. Sparse and
low-bit attention need the whole sequence (block masks, layout permutations and top-k routing span all tokens), so
before the method runs one all-to-all trades sequence for heads — each rank then holds the whole sequence for H/P
heads, and every turbo method works per head — and a second all-to-all trades them back. Rank r holds heads
[r·H/P, (r+1)·H/P) (`head_range`), the layout diffusers' own Ulysses attention uses."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _all_to_all(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Split dim 0 of `x` into equal chunks, send chunk j to rank j, and stack what each rank sent along dim 0."""
    from torch.distributed import _functional_collectives as funcol

    out = funcol.all_to_all_single(x, None, None, group)
    return funcol.wait_tensor(out) if isinstance(out, funcol.AsyncCollectiveTensor) else out


def sequence_to_heads(x: torch.Tensor, group: dist.ProcessGroup, world: int) -> torch.Tensor:
    """[B, S/P, H, D] (this rank's sequence chunk, all heads) -> [B, S, H/P, D] (the whole sequence, this rank's
    heads). H must be divisible by `world` (P)."""
    batch, length, heads, dim = x.shape
    if heads % world:
        raise ValueError(f"Ulysses attention needs the head count ({heads}) divisible by the degree ({world}).")
    x = x.reshape(batch, length, world, heads // world, dim).permute(2, 1, 0, 3, 4).contiguous()
    x = _all_to_all(x, group)  # [P (source rank = sequence chunk), S/P, B, H/P, D]
    return x.flatten(0, 1).permute(1, 0, 2, 3).contiguous()


def heads_to_sequence(x: torch.Tensor, group: dist.ProcessGroup, world: int) -> torch.Tensor:
    """The inverse of `sequence_to_heads`: [B, S, H/P, D] -> [B, S/P, H, D]. S must be divisible by `world`."""
    batch, length, heads, dim = x.shape
    x = x.reshape(batch, world, length // world, heads, dim).permute(1, 3, 0, 2, 4).contiguous()
    x = _all_to_all(x, group)  # [P (source rank = head group), H/P, B, S/P, D]
    return x.flatten(0, 1).permute(1, 2, 0, 3).contiguous()


def head_range(rank: int, world: int, heads: int) -> slice:
    """The heads rank `rank` of `world` holds after `sequence_to_heads` of an [B, S/P, `heads`, D] tensor."""
    per_rank = heads // world
    return slice(rank * per_rank, (rank + 1) * per_rank)
