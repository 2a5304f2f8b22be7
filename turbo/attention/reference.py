"""Pure-PyTorch reference attention math: the spec, the CPU path and the test oracle for the Triton kernels.

Covers SLA and SLA2 sparse-linear attention, SageAttention-style simulated low-bit attention and Sparse VideoGen
(SVG1) spatial / temporal band attention (ALGORITHMS.md §1–4).

Conventions
- Public tensors use the [B, S, H, D] layout (batch, tokens, heads, head_dim); the internals work in [B, H, S, D].
- Math runs in fp32 whatever the input dtype (fp64 when the inputs are fp64, so torch.autograd.gradcheck works);
  outputs come back in q.dtype unless a docstring says otherwise.
- Token blocks use ceil division: the last block may be ragged and is masked / pooled by its real token count.
- No full [S, S] score map is ever built: query rows run in chunks of at most CHUNK_ELEMENTS scores, and while
  autograd records, each chunk is checkpointed so that the backward pass stays chunked as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

# Upper bound on the elements of one chunk's [B, H, rows, keys] score tensor (~256 MB in fp32).
CHUNK_ELEMENTS = 64 * 2**20

INT8_MAX = 127.0
FP8_E4M3_MAX = 448.0

Projection = Callable[[Tensor], Tensor] | None
# key_weights(r0, r1) -> bool mask or float weights in [0, 1] for query rows r0:r1, broadcastable to
# [B, H, r1 - r0, keys]; None means every key counts fully.
KeyWeights = Callable[[int, int], Tensor | None] | None


# ----------------------------------------------------------------------------------------------------------------
# Blocks and layout helpers
# ----------------------------------------------------------------------------------------------------------------


def num_blocks(length: int, block: int) -> int:
    """Number of blocks of `block` tokens that cover `length` tokens (ceil division)."""
    if block <= 0:
        raise ValueError(f"block size must be positive, got {block}")
    return -(-length // block)


TOPK_RULES = ("round", "floor")


def kept_blocks(keep: float, total: int, rule: str = "round") -> int:
    """Key blocks kept per query-block row for a keep fraction, at least 1, at most total.

    rule "round": round(keep * total) (Python's round, half to even; the SLA paper form). rule "floor":
    int(keep * total), TurboDiffusion's released SLA (its own code can yield 0 blocks, i.e. NaN rows; turbo clamps to
    1 here as well). This function is the one definition of the count: every caller must use it."""
    if rule == "round":
        count = round(keep * total)
    elif rule == "floor":
        count = int(keep * total)
    else:
        raise ValueError(f"top-k rule must be one of {TOPK_RULES}, got {rule!r}")
    return max(1, min(total, count))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _heads_first(x: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, S, H, D] -> [B, H, S, D] in `dtype`."""
    return x.transpose(1, 2).to(dtype)


def _tokens_first(x: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, H, S, D] -> [B, S, H, D] in `dtype`."""
    return x.transpose(1, 2).to(dtype)


def _block_index(length: int, block: int, device) -> Tensor:
    """long [length]: the block each token belongs to."""
    return torch.arange(length, device=device) // block


def _block_sizes(length: int, block: int, device) -> Tensor:
    """long [num_blocks]: the real token count of each block (the last one may be short)."""
    starts = torch.arange(0, length, block, device=device)
    return (length - starts).clamp(max=block)


def _pad_tokens(x: Tensor, length: int) -> Tensor:
    """Zero-pad the token axis (dim 2) of a [B, H, S, D] tensor up to `length`."""
    return F.pad(x, (0, 0, 0, length - x.shape[2]))


def _run_chunk(fn: Callable, *args, several_chunks: bool):
    # Checkpointing keeps only each chunk's inputs alive for the backward pass instead of its score matrix.
    if several_chunks and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def block_mean_pool(x: Tensor, block: int) -> Tensor:
    """Mean of each block of `block` tokens, the ragged last block divided by its real token count.

    x [B, S, H, D] any float dtype -> [B, H, nb, D] fp32, nb = num_blocks(S, block)."""
    batch, length, heads, dim = x.shape
    blocks = num_blocks(length, block)
    x = _pad_tokens(_heads_first(x, _compute_dtype(x.dtype)), blocks * block)
    sums = x.reshape(batch, heads, blocks, block, dim).sum(3)
    return sums / _block_sizes(length, block, x.device).to(sums.dtype)[:, None]


def smooth_keys(k: Tensor) -> Tensor:
    """k [B, S, H, D] minus its mean over the tokens (dim 1), same dtype and shape.

    Exact for softmax attention: it shifts every score of a query row by the same constant q·mean(k)."""
    k32 = k.to(_compute_dtype(k.dtype))
    return (k32 - k32.mean(dim=1, keepdim=True)).to(k.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Routers
# ----------------------------------------------------------------------------------------------------------------


def block_scores(
    q: Tensor, k: Tensor, block_q: int, block_k: int, proj_q: Projection = None, proj_k: Projection = None
) -> Tensor:
    """Router scores pool(q) · pool(smooth_keys(k))ᵀ (no softmax, no 1/sqrt(D)).

    q [B, Sq, H, D], k [B, Sk, H, D] -> fp32 [B, H, nq, nk]. proj_q / proj_k: optional callables applied to the pooled
    [B, H, n, D] tensors (SLA2's learnable projections); the result is differentiable w.r.t. them and q, k."""
    pooled_q = block_mean_pool(q, block_q)
    # pool(k - mean k) == pool(k) - mean k; subtracting in fp32 avoids rounding the smoothed keys to k.dtype.
    key_mean = k.to(_compute_dtype(k.dtype)).mean(dim=1)  # [B, H, D]
    pooled_k = block_mean_pool(k, block_k) - key_mean[:, :, None]
    if proj_q is not None:
        pooled_q = proj_q(pooled_q)
    if proj_k is not None:
        pooled_k = proj_k(pooled_k)
    return pooled_q @ pooled_k.transpose(-1, -2)


def topk_block_mask(scores: Tensor, keep: float, rule: str = "round") -> Tensor:
    """bool [B, H, nq, nk]: per row, True at the kept_blocks(keep, nk, rule) highest scores (ties broken by
    torch.topk)."""
    top = scores.detach().topk(kept_blocks(keep, scores.shape[-1], rule), dim=-1).indices
    return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).scatter_(-1, top, True)


def soft_topk_block_mask(scores: Tensor, keep: float, tau: float = 0.1, iters: int = 40) -> Tensor:
    """SLA2 SoftTop-k: sigmoid(scores / tau + lam_i), lam_i per row such that each row sums to kept_blocks(keep, nk).

    scores [..., nk] is already the probability map P_c (no softmax here). Returns a tensor of scores' shape and
    dtype with values in (0, 1), differentiable w.r.t. scores; lam is found by bisection and detached (the gradient
    does not see how lam moves with the scores)."""
    target = kept_blocks(keep, scores.shape[-1])
    # float64 so that the row sums hit the target to ~1e-9 even for hundreds of blocks per row.
    logits = scores.to(torch.float64) / tau
    shift = _bisect_row_shift(logits.detach(), target, iters)
    return torch.sigmoid(logits + shift).to(scores.dtype)


def _bisect_row_shift(logits: Tensor, target: int, iters: int) -> Tensor:
    """lam [..., 1] with sum_j sigmoid(logits_j + lam) == target, by bisection on a bracket that surely holds it."""
    margin = 40.0  # sigmoid(-40) ~ 4e-18: at `low` every entry is ~0, at `high` every entry is ~1
    low = -logits.amax(-1, keepdim=True) - margin
    high = -logits.amin(-1, keepdim=True) + margin
    for _ in range(iters):
        middle = (low + high) / 2
        too_many = torch.sigmoid(logits + middle).sum(-1, keepdim=True) > target
        high = torch.where(too_many, middle, high)
        low = torch.where(too_many, low, middle)
    return (low + high) / 2


# ----------------------------------------------------------------------------------------------------------------
# Softmax attention core (chunked over query rows)
# ----------------------------------------------------------------------------------------------------------------


def _apply_key_weights(scores: Tensor, weights: Tensor | None) -> Tensor:
    """Logits whose exp is weight * exp(score); keys with weight 0 (or False) become -inf."""
    if weights is None:
        return scores
    if weights.dtype == torch.bool:
        return scores.masked_fill(~weights, float("-inf"))
    positive = weights > 0
    # log of a safe operand: torch.log(0) would put 0/0 = NaN into the backward pass even though it is masked.
    log_weights = torch.log(torch.where(positive, weights, torch.ones_like(weights)))
    return torch.where(positive, scores + log_weights, float("-inf"))


def _fake_quant_probs_fp8(probs: Tensor) -> Tensor:
    """P in [0, 1] through FP8 e4m3 with the fixed scale 1/448."""
    scaled = (probs * FP8_E4M3_MAX).clamp(max=FP8_E4M3_MAX)
    return scaled.to(torch.float8_e4m3fn).to(probs.dtype) / FP8_E4M3_MAX


def _attention_rows(
    q: Tensor, k: Tensor, v: Tensor, scale: float, weights: Tensor | None, fp8_probs: bool
) -> tuple[Tensor, Tensor]:
    """Weighted softmax attention of some query rows over all keys: [B,H,R,D] x [B,H,Sk,D] -> [B,H,R,Dv], [B,H,R]."""
    logits = _apply_key_weights((q @ k.transpose(-1, -2)) * scale, weights)
    # The row max cancels in both the output and the lse, so detaching it leaves the gradients exact.
    row_max = logits.amax(-1, keepdim=True).detach()
    row_max = torch.where(torch.isneginf(row_max), torch.zeros_like(row_max), row_max)  # rows with no key at all
    probs = torch.exp(logits - row_max)  # in [0, 1], exactly 0 off the mask
    denom = probs.sum(-1, keepdim=True)
    if fp8_probs:
        probs = _fake_quant_probs_fp8(probs)
    nonempty = denom > 0
    safe_denom = torch.where(nonempty, denom, torch.ones_like(denom))
    out = torch.where(nonempty, (probs @ v) / safe_denom, 0.0)
    lse = torch.where(nonempty, row_max + torch.log(safe_denom), float("-inf"))
    return out, lse.squeeze(-1)


def _attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float, key_weights: KeyWeights = None, fp8_probs: bool = False
) -> tuple[Tensor, Tensor]:
    """Softmax attention in [B, H, S, D], chunked over query rows. Returns out [B, H, Sq, Dv], lse [B, H, Sq]."""
    batch, heads, queries, _ = q.shape
    rows = max(1, CHUNK_ELEMENTS // (batch * heads * k.shape[2]))
    outs, lses = [], []
    for r0 in range(0, queries, rows):
        r1 = min(queries, r0 + rows)

        def chunk(q_rows: Tensor, r0: int = r0, r1: int = r1) -> tuple[Tensor, Tensor]:
            weights = None if key_weights is None else key_weights(r0, r1)
            return _attention_rows(q_rows, k, v, scale, weights, fp8_probs)

        out, lse = _run_chunk(chunk, q[:, :, r0:r1], several_chunks=rows < queries)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs, 2), torch.cat(lses, 2)


def _default_scale(scale: float | None, head_dim: int) -> float:
    return head_dim**-0.5 if scale is None else scale


def _tail_valid(tail_k: Tensor, tail_mask: Tensor | None) -> Tensor:
    """bool [B, L]: which tail keys count."""
    if tail_mask is None:
        return torch.ones(tail_k.shape[:2], dtype=torch.bool, device=tail_k.device)
    return tail_mask.to(device=tail_k.device, dtype=torch.bool).expand(tail_k.shape[:2])


def _with_tail(
    k: Tensor, v: Tensor, tail_k: Tensor | None, tail_v: Tensor | None, tail_mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Append the tail keys/values ([B, L, H, D] public layout) to [B, H, Sk, D] keys/values.

    Returns (keys, values, tail_valid bool [B, L] or None when there is no tail)."""
    if tail_k is None:
        return k, v, None
    if tail_v is None:
        raise ValueError("tail_k given without tail_v")
    keys = torch.cat([k, _heads_first(tail_k, k.dtype)], 2)
    values = torch.cat([v, _heads_first(tail_v, v.dtype)], 2)
    return keys, values, _tail_valid(tail_k, tail_mask)


# ----------------------------------------------------------------------------------------------------------------
# Block-sparse softmax attention
# ----------------------------------------------------------------------------------------------------------------


def _block_sparse(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    block_mask: Tensor,
    block_q: int,
    block_k: int,
    scale: float,
    tail_k: Tensor | None = None,
    tail_v: Tensor | None = None,
    tail_mask: Tensor | None = None,
    lowbit: bool = False,
) -> tuple[Tensor, Tensor]:
    """block_sparse_attention on [B, H, S, D] compute-dtype tensors; fp out [B, H, Sq, Dv] and lse [B, H, Sq]."""
    batch, heads, queries, _ = q.shape
    video_keys = k.shape[2]
    shape = (batch, heads, num_blocks(queries, block_q), num_blocks(video_keys, block_k))
    if tuple(block_mask.shape[-2:]) != shape[2:]:
        raise ValueError(f"block_mask has {tuple(block_mask.shape[-2:])} blocks, expected {shape[2:]}")
    block_mask = block_mask.expand(shape)
    if block_mask.dtype != torch.bool:
        block_mask = block_mask.to(q.dtype)
    query_block = _block_index(queries, block_q, q.device)
    key_block = _block_index(video_keys, block_k, q.device)
    keys, values, tail_valid = _with_tail(k, v, tail_k, tail_v, tail_mask)
    if lowbit:
        key_valid = None
        if tail_valid is not None:
            key_valid = torch.cat([torch.ones(batch, video_keys, dtype=torch.bool, device=q.device), tail_valid], 1)
        q, keys, values = _lowbit_operands(q, keys, values, key_valid, block_q, block_k)

    def key_weights(r0: int, r1: int) -> Tensor:
        weights = block_mask[:, :, query_block[r0:r1]][..., key_block]  # [B, H, rows, Sk]
        if tail_valid is None:
            return weights
        tail = tail_valid[:, None, None, :].to(weights.dtype).expand(batch, heads, r1 - r0, -1)
        return torch.cat([weights, tail], -1)

    return _attention(q, keys, values, scale, key_weights, fp8_probs=lowbit)


def block_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    block_mask: Tensor,
    block_q: int,
    block_k: int,
    scale: float | None = None,
    tail_k: Tensor | None = None,
    tail_v: Tensor | None = None,
    tail_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact softmax attention of each query over the key blocks its query block selects, plus the tail keys.

    q [B, Sq, H, D], k / v [B, Sk, H, D]; block_mask [B, H, nq, nk] (broadcastable) either bool, or float weights in
    [0, 1] that multiply a key block's exp-scores (soft mask; differentiable). tail_k / tail_v [B, L, H, D] are
    always attended, only those with tail_mask [B, L] True (None = all). scale defaults to D**-0.5.
    Returns (out [B, Sq, H, D] in q.dtype, lse [B, H, Sq] fp32: natural-log log-sum-exp of the weighted scaled scores).
    A row that sees no key returns 0 and lse = -inf."""
    dtype = _compute_dtype(q.dtype)
    out, lse = _block_sparse(
        _heads_first(q, dtype), _heads_first(k, dtype), _heads_first(v, dtype), block_mask, block_q, block_k,
        _default_scale(scale, q.shape[-1]), tail_k, tail_v, tail_mask,
    )
    return _tokens_first(out, q.dtype), lse


# ----------------------------------------------------------------------------------------------------------------
# Linear attention over the marginal blocks
# ----------------------------------------------------------------------------------------------------------------


def linear_feature_map(x: Tensor) -> Tensor:
    """phi(x) = softmax over the head dim (last dim), fp32, same shape."""
    return torch.softmax(x.to(_compute_dtype(x.dtype)), dim=-1)


def _complement_linear(
    q: Tensor, k: Tensor, v: Tensor, marginal: Tensor, block_q: int, block_k: int
) -> Tensor:
    """complement_linear_attention on [B, H, S, D] compute-dtype tensors -> [B, H, Sq, Dv]."""
    batch, heads, queries, dim = q.shape
    video_keys, value_dim = k.shape[2], v.shape[-1]
    query_blocks, key_blocks = num_blocks(queries, block_q), num_blocks(video_keys, block_k)
    marginal = marginal.expand(batch, heads, query_blocks, key_blocks).to(q.dtype)

    # Per key block j: h_j = phi(K_j)ᵀ V_j and z_j = phi(K_j)ᵀ 1. Padded key rows are zero, so they add nothing.
    phi_k = _pad_tokens(linear_feature_map(k), key_blocks * block_k).reshape(batch, heads, key_blocks, block_k, dim)
    v_blocks = _pad_tokens(v, key_blocks * block_k).reshape(batch, heads, key_blocks, block_k, value_dim)
    kv_blocks = (phi_k.transpose(-1, -2) @ v_blocks).flatten(-2)  # [B, H, nk, D * Dv]
    k_sums = phi_k.sum(3)  # [B, H, nk, D]
    phi_q = _pad_tokens(linear_feature_map(q), query_blocks * block_q)
    phi_q = phi_q.reshape(batch, heads, query_blocks, block_q, dim)

    def chunk(phi_q_blocks: Tensor, c0: int, c1: int) -> Tensor:
        # H_i and Z_i straight from the mask (not total minus selected), so an empty marginal set is an exact 0.
        weights = marginal[:, :, c0:c1]
        kv_sum = (weights @ kv_blocks).reshape(batch, heads, c1 - c0, dim, value_dim)
        k_sum = weights @ k_sums
        numerator = phi_q_blocks @ kv_sum  # [B, H, c, bq, Dv]
        denominator = phi_q_blocks @ k_sum[..., None]  # [B, H, c, bq, 1]
        nonzero = denominator > 0
        safe = torch.where(nonzero, denominator, torch.ones_like(denominator))
        return torch.where(nonzero, numerator / safe, 0.0)

    step = max(1, CHUNK_ELEMENTS // (batch * heads * dim * value_dim))
    several_chunks = step < query_blocks
    outs = [
        _run_chunk(chunk, phi_q[:, :, c0 : c0 + step], c0, min(query_blocks, c0 + step), several_chunks=several_chunks)
        for c0 in range(0, query_blocks, step)
    ]
    return torch.cat(outs, 2).reshape(batch, heads, query_blocks * block_q, value_dim)[:, :, :queries]


def complement_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, marginal: Tensor, block_q: int, block_k: int
) -> Tensor:
    """SLA / SLA2 linear attention over the marginal key blocks only (phi = linear_feature_map).

    q [B, Sq, H, D], k / v [B, Sk, H, D]; marginal bool or float [B, H, nq, nk] (broadcastable), 1 = marginal.
    out_i = phi(Q_i) H_i / (phi(Q_i) · Z_i), H_i = Σ_j marginal_ij phi(K_j)ᵀ V_j, Z_i = Σ_j marginal_ij phi(K_j)ᵀ 1.
    Returns fp32 [B, Sq, H, Dv]; rows whose marginal set is empty give exactly 0."""
    dtype = _compute_dtype(q.dtype)
    out = _complement_linear(
        _heads_first(q, dtype), _heads_first(k, dtype), _heads_first(v, dtype), marginal, block_q, block_k
    )
    return _tokens_first(out, dtype)


ALL_LINEAR_EPS = 1e-5


def _all_linear(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """all_linear_attention on [B, H, S, D] compute-dtype tensors -> [B, H, Sq, Dv]."""
    phi_q, phi_k = linear_feature_map(q), linear_feature_map(k)
    kv_sum = phi_k.transpose(-1, -2) @ v  # [B, H, D, Dv]
    k_sum = phi_k.sum(2)  # [B, H, D]
    return (phi_q @ kv_sum) / (ALL_LINEAR_EPS + phi_q @ k_sum[..., None])


def all_linear_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """TurboDiffusion's SLA linear branch: linear attention of every query over ALL keys (phi = linear_feature_map).

    q [B, Sq, H, D], k / v [B, Sk, H, D] -> fp32 [B, Sq, H, Dv] (fp64 for fp64 inputs):
    out = phi(Q) (Σ_all phi(K)ᵀ V) / (1e-5 + phi(Q) · Σ_all phi(K)). The 1e-5 is part of the trained checkpoints'
    math (it barely matters: the denominator is a sum of positive terms of order Sk / D)."""
    dtype = _compute_dtype(q.dtype)
    out = _all_linear(_heads_first(q, dtype), _heads_first(k, dtype), _heads_first(v, dtype))
    return _tokens_first(out, dtype)


# ----------------------------------------------------------------------------------------------------------------
# SLA and SLA2
# ----------------------------------------------------------------------------------------------------------------


def _rows_of_blocks(per_block: Tensor, length: int, block: int) -> Tensor:
    """[..., nq] per query block -> [..., length] per query row."""
    return per_block[..., _block_index(length, block, per_block.device)]


def _negligible_blocks(scores: Tensor, critical: Tensor, fraction: float) -> Tensor:
    """bool mask of the round(fraction * nk) lowest-scored non-critical blocks of each row."""
    count = min(round(fraction * scores.shape[-1]), scores.shape[-1])
    negligible = torch.zeros_like(critical)
    if count <= 0:
        return negligible
    lowest = scores.detach().masked_fill(critical, float("inf")).topk(count, dim=-1, largest=False).indices
    return negligible.scatter_(-1, lowest, True) & ~critical


LINEAR_FORMS = ("complement", "all")


def sla_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    keep: float,
    block_q: int = 128,
    block_k: int = 64,
    proj: Projection = None,
    negligible: float = 0.0,
    scale: float | None = None,
    tail_k: Tensor | None = None,
    tail_v: Tensor | None = None,
    tail_mask: Tensor | None = None,
    linear: str = "complement",
    topk_rule: str = "round",
) -> Tensor:
    """SLA: out = O^s + proj(O^l). q, k, v [B, S, H, D] -> q.dtype [B, S, H, D].

    Critical blocks = topk_block_mask(block_scores(q, k), keep, topk_rule); O^s = block-sparse softmax attention over
    them plus the tail keys. proj (callable on the last dim, e.g. nn.Linear(D, D)) None = no linear branch. O^l is
    over the video keys only (never the tail), and depends on `linear`:
    - "complement" (the SLA paper): complement linear attention over the marginal blocks (all non-critical ones
      minus, if negligible > 0, the lowest-scored round(negligible * nk) of each row). Rows whose query block has no
      marginal block get no linear term at all (not even proj's bias), so keep=1.0 is dense attention for any proj.
    - "all" (TurboDiffusion's released checkpoints): all_linear_attention over every key, with its 1e-5 eps, and
      proj(O^l) is added to every row (keep=1.0 is then NOT dense attention). negligible must be 0.
    Differentiable."""
    if linear not in LINEAR_FORMS:
        raise ValueError(f"linear must be one of {LINEAR_FORMS}, got {linear!r}")
    if linear == "all" and negligible > 0:
        raise ValueError("negligible > 0 needs linear='complement': linear='all' sums over every key")
    dtype = _compute_dtype(q.dtype)
    scores = block_scores(q, k, block_q, block_k)
    critical = topk_block_mask(scores, keep, topk_rule)
    qh, kh, vh = _heads_first(q, dtype), _heads_first(k, dtype), _heads_first(v, dtype)
    sparse, _ = _block_sparse(
        qh, kh, vh, critical, block_q, block_k, _default_scale(scale, q.shape[-1]), tail_k, tail_v, tail_mask
    )
    out = _tokens_first(sparse, dtype)
    if proj is None:
        return out.to(q.dtype)
    if linear == "all":
        return (out + proj(_tokens_first(_all_linear(qh, kh, vh), dtype))).to(q.dtype)
    marginal = ~critical & ~_negligible_blocks(scores, critical, negligible)
    linear_out = _tokens_first(_complement_linear(qh, kh, vh, marginal, block_q, block_k), dtype)
    has_marginal = _rows_of_blocks(marginal.any(-1), q.shape[1], block_q)  # [B, H, S]
    out = out + torch.where(has_marginal.transpose(1, 2)[..., None], proj(linear_out), 0.0)
    return out.to(q.dtype)


def sla2_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    keep: float,
    alpha: Tensor,
    block_q: int = 128,
    block_k: int = 64,
    proj_q: Projection = None,
    proj_k: Projection = None,
    soft: bool = False,
    tau: float = 0.1,
    quantized: bool = False,
    scale: float | None = None,
    tail_k: Tensor | None = None,
    tail_v: Tensor | None = None,
    tail_mask: Tensor | None = None,
) -> Tensor:
    """SLA2: out = alpha * O^s + (1 - alpha) * O^l. q, k, v [B, S, H, D] -> q.dtype [B, S, H, D].

    Router P_c = softmax(block_scores(q, k, proj_q, proj_k) * D**-0.5); mask M = SoftTop-k (soft, float weights) or
    hard top-k of P_c. O^s = block-sparse attention under M plus tail keys; with quantized=True its forward uses the
    simulated INT8 Q/K + FP8 P/V numerics of lowbit_attention and its backward the exact gradient (straight-through).
    O^l = complement linear attention over 1 - M (video keys only). alpha [H, nq] in (0, 1], one value per head and
    query block. Differentiable w.r.t. q, k, v, alpha and (soft only) proj_q / proj_k."""
    dtype = _compute_dtype(q.dtype)
    scores = block_scores(q, k, block_q, block_k, proj_q, proj_k)
    router_probs = torch.softmax(scores * q.shape[-1] ** -0.5, dim=-1)
    mask = soft_topk_block_mask(router_probs, keep, tau) if soft else topk_block_mask(router_probs, keep)
    num_query_blocks = num_blocks(q.shape[1], block_q)
    if tuple(alpha.shape) != (q.shape[2], num_query_blocks):
        raise ValueError(f"alpha must be [H, nq] = {(q.shape[2], num_query_blocks)}, got {tuple(alpha.shape)}")

    qh, kh, vh = _heads_first(q, dtype), _heads_first(k, dtype), _heads_first(v, dtype)
    scale = _default_scale(scale, q.shape[-1])
    sparse, _ = _block_sparse(qh, kh, vh, mask, block_q, block_k, scale, tail_k, tail_v, tail_mask)
    if quantized:
        with torch.no_grad():
            lowbit, _ = _block_sparse(
                qh, kh, vh, mask, block_q, block_k, scale, tail_k, tail_v, tail_mask, lowbit=True
            )
        sparse = sparse + (lowbit - sparse).detach()
    marginal = 1.0 - mask if soft else ~mask
    linear = _complement_linear(qh, kh, vh, marginal, block_q, block_k)
    alpha_rows = _rows_of_blocks(alpha.to(dtype), q.shape[1], block_q)[None, :, :, None]  # [1, H, S, 1]
    out = alpha_rows * sparse + (1.0 - alpha_rows) * linear
    return _tokens_first(out, q.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Simulated low-bit attention (SageAttention-style)
# ----------------------------------------------------------------------------------------------------------------


def _round_half_away(x: Tensor) -> Tensor:
    # The kernels round this way (add ±0.5, truncate), unlike torch.round's half-to-even.
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def fake_quant_int8(x: Tensor, block: int, dim: int = 1) -> Tensor:
    """Symmetric INT8 fake quantisation with one scale per (batch, token block, head).

    x [B, S, H, D] with the token axis at `dim` (dim=2 for [B, H, S, D]); blocks of `block` tokens along it (ragged
    last block). scale = amax / 127, round half away from zero, clamp to [-127, 127], dequantise. fp32 out."""
    x = x.to(_compute_dtype(x.dtype)).movedim(dim, 1)
    length = x.shape[1]
    blocks = num_blocks(length, block)
    padded = F.pad(x.movedim(1, -1), (0, blocks * block - length)).movedim(-1, 1)
    grouped = padded.reshape(x.shape[0], blocks, block, x.shape[2], -1)  # [B, nb, block, H, rest]
    amax = grouped.abs().amax(dim=(2, 4), keepdim=True)
    step = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    codes = _round_half_away(grouped / step).clamp(-INT8_MAX, INT8_MAX)
    dequantised = (codes * step).reshape(padded.shape)[:, :length]
    return dequantised.movedim(1, dim)


def fake_quant_fp8(x: Tensor, dim) -> Tensor:
    """FP8 e4m3 fake quantisation with one scale amax / 448 per slice reduced over `dim` (int or tuple).

    Any shape; fp32 out of the same shape. All-zero slices stay zero."""
    x = x.to(_compute_dtype(x.dtype))
    amax = x.abs().amax(dim=dim, keepdim=True)
    step = torch.where(amax > 0, amax / FP8_E4M3_MAX, torch.ones_like(amax))
    scaled = (x / step).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX)
    return scaled.to(torch.float8_e4m3fn).to(x.dtype) * step


def _lowbit_operands(
    q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor | None, block_q: int, block_k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Fake-quantised [B, H, S, D] operands: Q INT8 per query block, smoothed K INT8 per key block, V FP8 per channel.

    Invalid keys (key_valid [B, Sk] False) are zeroed and left out of the key mean and of every scale; the caller
    masks them out of the softmax."""
    if key_valid is None:
        k = k - k.mean(2, keepdim=True)
    else:
        valid = key_valid[:, None, :, None]
        count = valid.sum(2, keepdim=True).clamp(min=1)
        key_mean = torch.where(valid, k, 0.0).sum(2, keepdim=True) / count
        k = torch.where(valid, k - key_mean, 0.0)
        v = torch.where(valid, v, 0.0)
    return fake_quant_int8(q, block_q, dim=2), fake_quant_int8(k, block_k, dim=2), fake_quant_fp8(v, dim=2)


def _key_padding(attn_mask: Tensor | None, batch: int, keys: int) -> Tensor | None:
    """A key-padding mask [B, Sk] or [B, 1, 1, Sk] (True = keep) as bool [B, Sk]."""
    if attn_mask is None:
        return None
    if attn_mask.dtype != torch.bool:
        raise TypeError(f"attn_mask must be bool (True = keep), got {attn_mask.dtype}")
    if attn_mask.dim() == 4 and attn_mask.shape[1:3] == (1, 1):
        attn_mask = attn_mask[:, 0, 0]
    if attn_mask.dim() != 2 or attn_mask.shape[-1] != keys:
        raise ValueError(f"expected a key-padding mask [B, {keys}] or [B, 1, 1, {keys}], got {tuple(attn_mask.shape)}")
    return attn_mask.expand(batch, keys)


def lowbit_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float | None = None,
    block_q: int = 128,
    block_k: int = 64,
    attn_mask: Tensor | None = None,
) -> Tensor:
    """Simulated SageAttention-style low-bit dense attention. q [B, Sq, H, D], k / v [B, Sk, H, D] -> q.dtype.

    K smoothed; Q and K fake-quantised INT8 per token block (block_q / block_k); S = Q̂K̂ᵀ·scale;
    P̃ = exp(S - rowmax) fake-quantised FP8 e4m3 with the fixed scale 1/448; V fake-quantised FP8 per channel;
    out = (P̂ V̂) / rowsum(P̃). attn_mask: optional bool key-padding mask [B, Sk] or [B, 1, 1, Sk], True = keep
    (masked keys also stay out of the key mean and the quantisation scales). Forward simulation only."""
    dtype = _compute_dtype(q.dtype)
    key_valid = _key_padding(attn_mask, q.shape[0], k.shape[1])
    qh, kh, vh = _lowbit_operands(
        _heads_first(q, dtype), _heads_first(k, dtype), _heads_first(v, dtype), key_valid, block_q, block_k
    )
    weights = None if key_valid is None else key_valid[:, None, None, :]
    out, _ = _attention(qh, kh, vh, _default_scale(scale, q.shape[-1]), lambda r0, r1: weights, fp8_probs=True)
    return _tokens_first(out, q.dtype)


def dense_attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, attn_mask: Tensor | None = None
) -> Tensor:
    """Exact softmax attention, chunked over query rows. q [B, Sq, H, D], k / v [B, Sk, H, D] -> q.dtype.

    attn_mask: optional bool mask, True = keep: a key-padding mask [B, Sk], or any 4-D mask broadcastable to
    [B, H, Sq, Sk]. Rows with no kept key return 0."""
    dtype = _compute_dtype(q.dtype)
    mask = attn_mask
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"attn_mask must be bool (True = keep), got {mask.dtype}")
        if mask.dim() not in (2, 4):
            raise ValueError(f"attn_mask must be [B, Sk] or 4-D [B|1, H|1, Sq|1, Sk], got {tuple(mask.shape)}")
        mask = mask[:, None, None, :] if mask.dim() == 2 else mask
    key_weights = None
    if mask is not None:
        key_weights = lambda r0, r1: mask if mask.shape[2] == 1 else mask[:, :, r0:r1]
    out, _ = _attention(
        _heads_first(q, dtype), _heads_first(k, dtype), _heads_first(v, dtype),
        _default_scale(scale, q.shape[-1]), key_weights,
    )
    return _tokens_first(out, q.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Sparse VideoGen (SVG1)
# ----------------------------------------------------------------------------------------------------------------


def frame_to_token_major(frames: int, tokens_per_frame: int, device=None) -> Tensor:
    """long [T*P] perm with perm[p*T + f] = f*P + p: x[:, perm] reorders frame-major tokens into token-major order."""
    return torch.arange(frames * tokens_per_frame, device=device).reshape(frames, tokens_per_frame).t().reshape(-1)


def _token_major_position(frames: int, tokens_per_frame: int, device=None) -> Tensor:
    """long [T*P]: the token-major index p*T + f of each frame-major token f*P + p (the inverse of the perm)."""
    return torch.arange(frames * tokens_per_frame, device=device).reshape(tokens_per_frame, frames).t().reshape(-1)


def svg_band_block_mask(
    num_tokens: int, block_q: int, block_k: int, width: int, sink_tokens: int, device=None
) -> Tensor:
    """bool [nq, nk]: query block i keeps key block j when some token pair of the two blocks is at most `width`
    token indices apart, or when key block j overlaps the sink [0, sink_tokens)."""
    q_start = torch.arange(0, num_tokens, block_q, device=device)
    k_start = torch.arange(0, num_tokens, block_k, device=device)
    q_end = (q_start + block_q).clamp(max=num_tokens) - 1
    k_end = (k_start + block_k).clamp(max=num_tokens) - 1
    gap = torch.maximum(k_start[None, :] - q_end[:, None], q_start[:, None] - k_end[None, :]).clamp(min=0)
    return (gap <= width) | (k_start < sink_tokens)[None, :]


def svg_band_width(density: float, num_tokens: int) -> int:
    """Half-width w (tokens) of the diagonal band |i - j| <= w covering `density` of an S×S map:
    ceil(S * (1 - sqrt(1 - density))), density in (0, 1]."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    width = num_tokens * (1.0 - math.sqrt(1.0 - density))
    return math.ceil(width - 1e-9)  # the tolerance keeps float noise (20.000000000000004) from adding a token


def _band_attention_output(
    qh: Tensor, keys: Tensor, values: Tensor, scale: float, video_mask: Tensor | None, tail_valid: Tensor | None
) -> Tensor:
    """Attention of sampled query rows [B, H, R, D] under a video token mask [R, S] (None = all), tail always on."""
    batch, _, rows, _ = qh.shape
    video_keys = keys.shape[2] - (0 if tail_valid is None else tail_valid.shape[1])
    if video_mask is None:
        video_mask = torch.ones(rows, video_keys, dtype=torch.bool, device=qh.device)
    weights = video_mask.expand(batch, 1, rows, video_keys)
    if tail_valid is not None:
        weights = torch.cat([weights, tail_valid[:, None, None, :].expand(batch, 1, rows, -1)], -1)
    out, _ = _attention(qh, keys, values, scale, lambda r0, r1: weights[:, :, r0:r1])
    return out


def profile_sample(length: int, rows: int, generator: torch.Generator | None = None) -> Tensor:
    """SVG's profiling rows: the first `rows` of a random permutation of `length` tokens (long, generator's device)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(length, generator=generator, device=device)[:rows]


def svg_profile_heads(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    frames: int,
    tokens_per_frame: int,
    width: int,
    sink_tokens: int,
    rows: int,
    generator: torch.Generator | None = None,
    scale: float | None = None,
    tail_k: Tensor | None = None,
    tail_v: Tensor | None = None,
    tail_mask: Tensor | None = None,
    sample: Tensor | None = None,
) -> Tensor:
    """SVG head classification: long [B, H], 0 = spatial, 1 = temporal (ties go to spatial).

    q, k, v [B, T*P, H, D] frame-major video tokens. Samples `rows` query tokens uniformly (`profile_sample`: the
    first rows of torch.randperm with the generator; or the given `sample` long [rows]) and compares their exact
    attention output (all video keys + tail keys) with their output under the spatial mask (|i - j| <= width
    frame-major, or key j < sink_tokens) and the temporal mask (the same rule on token-major indices p*T + f); MSE
    per (b, h) over rows and D, label = argmin."""
    batch, length, _, head_dim = q.shape
    if length != frames * tokens_per_frame:
        raise ValueError(f"expected {frames}×{tokens_per_frame} = {frames * tokens_per_frame} tokens, got {length}")
    dtype = _compute_dtype(q.dtype)
    device = q.device
    if sample is None:
        sample = profile_sample(length, rows, generator).to(device)

    qh = _heads_first(q[:, sample], dtype)
    keys, values, tail_valid = _with_tail(_heads_first(k, dtype), _heads_first(v, dtype), tail_k, tail_v, tail_mask)
    scale = _default_scale(scale, head_dim)
    key_position = torch.arange(length, device=device)
    token_major = _token_major_position(frames, tokens_per_frame, device)
    spatial = ((sample[:, None] - key_position[None, :]).abs() <= width) | (key_position < sink_tokens)[None, :]
    temporal = ((token_major[sample][:, None] - token_major[None, :]).abs() <= width) | (
        token_major < sink_tokens
    )[None, :]

    exact = _band_attention_output(qh, keys, values, scale, None, tail_valid)
    errors = torch.stack(
        [
            ((_band_attention_output(qh, keys, values, scale, mask, tail_valid) - exact) ** 2).mean(dim=(2, 3))
            for mask in (spatial, temporal)
        ]
    )  # [2, B, H]
    return errors.argmin(0)


def svg_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    frames: int,
    tokens_per_frame: int,
    density: float,
    block_q: int = 128,
    block_k: int = 128,
    sink_tokens: int | None = None,
    labels: Tensor | None = None,
    profile_rows: int = 64,
    generator: torch.Generator | None = None,
    scale: float | None = None,
    tail_k: Tensor | None = None,
    tail_v: Tensor | None = None,
    tail_mask: Tensor | None = None,
    sample: Tensor | None = None,
) -> tuple[Tensor, Tensor, float]:
    """Sparse VideoGen attention. q, k, v [B, T*P, H, D] frame-major video tokens.

    Heads labelled temporal (labels [B, H], default svg_profile_heads) are permuted to token-major order; every head
    then runs block_sparse_attention under one band block mask svg_band_block_mask(S, block_q, block_k,
    svg_band_width(density, S), sink_tokens) plus the tail keys, and temporal heads are permuted back. sink_tokens
    defaults to tokens_per_frame (for temporal heads it is counted in token-major order, like the profiling rule).
    Returns (out [B, S, H, D] q.dtype, labels long [B, H], density: the kept fraction of the S×S video map after
    block rounding, i.e. blocks weighted by their real sizes). `sample` fixes the profiling rows (see
    svg_profile_heads)."""
    length = q.shape[1]
    sink_tokens = tokens_per_frame if sink_tokens is None else sink_tokens
    width = svg_band_width(density, length)
    band = svg_band_block_mask(length, block_q, block_k, width, sink_tokens, q.device)
    out, labels = svg_band_attention(q, k, v, frames, tokens_per_frame, band, width, sink_tokens, block_q, block_k,
                                     labels, profile_rows, generator, scale, tail_k, tail_v, tail_mask, sample)
    return out, labels, band_density(band, length, block_q, block_k)


def svg_band_attention(
    q: Tensor, k: Tensor, v: Tensor, frames: int, tokens_per_frame: int, band: Tensor, width: int, sink_tokens: int,
    block_q: int, block_k: int, labels: Tensor | None = None, profile_rows: int = 64,
    generator: torch.Generator | None = None, scale: float | None = None, tail_k: Tensor | None = None,
    tail_v: Tensor | None = None, tail_mask: Tensor | None = None, sample: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """`svg_attention` with its band block mask (bool [nq, nk]) and half-width given. Returns (out, labels)."""
    batch, length, heads, head_dim = q.shape
    if length != frames * tokens_per_frame:
        raise ValueError(f"expected {frames}×{tokens_per_frame} = {frames * tokens_per_frame} tokens, got {length}")
    if labels is None:
        labels = svg_profile_heads(
            q, k, v, frames, tokens_per_frame, width, sink_tokens, profile_rows, generator, scale, tail_k, tail_v,
            tail_mask, sample,
        )
    labels = labels.to(q.device).expand(batch, heads)

    temporal = (labels == 1)[:, None, :, None]  # [B, 1, H, 1]
    to_token_major = frame_to_token_major(frames, tokens_per_frame, q.device)
    to_frame_major = _token_major_position(frames, tokens_per_frame, q.device)

    def head_layout(x: Tensor) -> Tensor:
        return torch.where(temporal, x[:, to_token_major], x)

    dtype = _compute_dtype(q.dtype)
    out, _ = _block_sparse(
        _heads_first(head_layout(q), dtype), _heads_first(head_layout(k), dtype), _heads_first(head_layout(v), dtype),
        band, block_q, block_k, _default_scale(scale, head_dim), tail_k, tail_v, tail_mask,
    )
    out = _tokens_first(out, q.dtype)
    out = torch.where(temporal, out[:, to_frame_major], out)
    return out, labels


def band_density(band: Tensor, length: int, block_q: int, block_k: int) -> float:
    """Fraction of the S×S map a block mask computes, each block weighted by its real (possibly ragged) size."""
    area = _block_sizes(length, block_q, band.device)[:, None] * _block_sizes(length, block_k, band.device)[None, :]
    return float((band * area).sum()) / float(length * length)


# ----------------------------------------------------------------------------------------------------------------
# Sparse VideoGen 2 (semantic-aware permutation): k-means routing
# ----------------------------------------------------------------------------------------------------------------


def kmeans(
    x: Tensor, clusters: int, iters: int, init: Tensor | None = None, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Batched Lloyd k-means per (batch, head). x [B, H, N, D] -> (centroids [B, H, C, D] fp32, labels [B, H, N] long).

    C = min(clusters, N). `init` [B, H, C, D] warm-starts (SVG2 reuses the previous step's centroids), else C
    distinct tokens drawn with torch.randperm(generator) seed them. An empty cluster keeps its centroid. Labels are
    the assignment to the returned centroids."""
    batch, heads, count, dim = x.shape
    x = x.to(_compute_dtype(x.dtype))
    clusters = min(clusters, count)
    if init is None:
        device = generator.device if generator is not None else torch.device("cpu")
        pick = torch.randperm(count, generator=generator, device=device)[:clusters].to(x.device)
        centroids = x[:, :, pick]
    else:
        centroids = init.to(x.dtype)

    def assign(c: Tensor) -> Tensor:
        # argmin ||x - c||² = argmax (x·c - ||c||²/2)
        return (x @ c.transpose(-1, -2) - 0.5 * (c * c).sum(-1)[:, :, None, :]).argmax(-1)

    for _ in range(iters):
        labels = assign(centroids)
        sums = torch.zeros_like(centroids).scatter_add_(2, labels[..., None].expand(-1, -1, -1, dim), x)
        counts = torch.zeros(batch, heads, centroids.shape[2], device=x.device, dtype=x.dtype).scatter_add_(
            2, labels, torch.ones_like(labels, dtype=x.dtype)
        )
        centroids = torch.where(counts[..., None] > 0, sums / counts.clamp(min=1)[..., None], centroids)
    return centroids, assign(centroids)


def svg2_cluster_mask(
    q_centroids: Tensor, k_centroids: Tensor, k_sizes: Tensor, top_p: float, min_fraction: float = 0.1,
    scale: float | None = None,
) -> Tensor:
    """Which key clusters each query cluster attends: bool [B, H, Cq, Ck].

    Centroid scores s = q_c · k_cᵀ · scale; cluster weights p_j ∝ size_j · exp(s_j) (an empty key cluster has weight
    0); per query cluster keep key clusters in descending p until the cumulative mass reaches top_p (the crossing one
    included), and at least ceil(min_fraction · non-empty clusters), never an empty one."""
    scale = _default_scale(scale, q_centroids.shape[-1])
    sizes = k_sizes.to(q_centroids.dtype)[:, :, None, :]
    logits = (q_centroids @ k_centroids.transpose(-1, -2)) * scale
    logits = torch.where(sizes > 0, logits + torch.log(sizes.clamp(min=1)), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    order = probs.argsort(dim=-1, descending=True)
    sorted_probs = probs.gather(-1, order)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    nonempty = (sizes > 0).sum(-1, keepdim=True)
    floor = torch.ceil(min_fraction * nonempty.to(probs.dtype))
    rank = torch.arange(probs.shape[-1], device=probs.device)
    keep_sorted = ((mass_before < top_p) | (rank < floor)) & (sorted_probs > 0)
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def svg2_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_clusters: int = 256,
    k_clusters: int = 1024,
    top_p: float = 0.9,
    iters: int = 2,
    state: tuple[Tensor, Tensor] | None = None,
    generator: torch.Generator | None = None,
    min_fraction: float = 0.1,
    scale: float | None = None,
    tail_k: Tensor | None = None,
    tail_v: Tensor | None = None,
    tail_mask: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor], float]:
    """SVG2: k-means on (post-RoPE) Q and K per head, centroid-level top-p routing, exact attention of every query
    over the keys of the clusters its cluster selected (+ tail keys). q, k, v [B, S, H, D] video tokens.

    state = (q_centroids, k_centroids) from the previous step warm-starts `iters` Lloyd iterations; without it the
    centroids are seeded from random tokens (generator) and refined with `iters` iterations too. Returns (out q.dtype
    [B, S, H, D], new state, density = fraction of the S×S video map computed). The GPU version sorts tokens by
    cluster and runs block-sparse attention with variable block sizes; the set of (query, key) pairs is the same."""
    dtype = _compute_dtype(q.dtype)
    qh, kh, vh = _heads_first(q, dtype), _heads_first(k, dtype), _heads_first(v, dtype)
    q_init, k_init = (None, None) if state is None else state
    q_centroids, q_labels = kmeans(qh, q_clusters, iters, q_init, generator)
    k_centroids, k_labels = kmeans(kh, k_clusters, iters, k_init, generator)
    k_sizes = torch.zeros(k_centroids.shape[:3], device=k.device, dtype=dtype).scatter_add_(
        2, k_labels, torch.ones_like(k_labels, dtype=dtype))
    q_sizes = torch.zeros(q_centroids.shape[:3], device=q.device, dtype=dtype).scatter_add_(
        2, q_labels, torch.ones_like(q_labels, dtype=dtype))
    clusters = svg2_cluster_mask(q_centroids, k_centroids, k_sizes, top_p, min_fraction, scale)
    keys, values, tail_valid = _with_tail(kh, vh, tail_k, tail_v, tail_mask)
    batch = q.shape[0]

    def key_weights(r0: int, r1: int) -> Tensor:
        rows = clusters.gather(2, q_labels[:, :, r0:r1, None].expand(-1, -1, -1, clusters.shape[-1]))
        allowed = rows.gather(3, k_labels[:, :, None, :].expand(-1, -1, r1 - r0, -1))
        if tail_valid is None:
            return allowed
        return torch.cat([allowed, tail_valid[:, None, None, :].expand(batch, allowed.shape[1], r1 - r0, -1)], -1)

    out, _ = _attention(qh, keys, values, _default_scale(scale, q.shape[-1]), key_weights)
    pairs = (clusters * q_sizes[..., :, None] * k_sizes[..., None, :]).sum()
    density = float(pairs) / float(q.shape[0] * q.shape[2] * q.shape[1] * k.shape[1])
    return _tokens_first(out, q.dtype), (q_centroids, k_centroids), density
