"""Triton backward of block-sparse softmax attention over a router LUT (the sparse part of SLA, ALGORITHMS.md §1).

FlashAttention-2 style: nothing of the [S, S] probability map is stored; every pass recomputes the probabilities of
the (query block, key block) pairs the router kept from q, k and the forward's log-sum-exp:
    P = exp(scale·q·kᵀ − lse),  dP = dO·vᵀ,  dS = P ⊙ (dP − Δ),  Δ = rowsum(dO ⊙ O)
    dV = Pᵀ·dO,  dK = scale·dSᵀ·q,  dQ = scale·dS·k
Three launches, no atomics:
- `_delta_kernel`: Δ [B, H, S] fp32.
- `_dq_kernel`: one program per (query tile, batch·head) walks its query block's LUT row (query-major).
- `_dkdv_kernel`: one program per (key block, batch·head) walks the query blocks that selected it, from the
  key-major (CSC) transpose of the LUT (built in torch without a host sync, or `key_major_index`'s padded form); each
  query block is processed in sub-tiles of `block_m` rows. Programs start heaviest-first (coarse buckets) so that hub
  key blocks selected by most query blocks do not form a tail (measured on an H100 with 8 hub blocks per head at Wan
  480p: dK/dV 2.24 -> 1.52 ms).
exp2 with log2(e) folded into the score scale and into lse; tl.dot runs on the input dtype with fp32 accumulation.

Layout and LUT conventions are those of `sla_forward`: q, k, v, dO, O [B, S, H, D] with any strides but a contiguous
head dim, D a power of two; lut int32 [B, H, nq, W] (first count[b, h, i] entries valid), nq = ceil(S / block_q);
ragged last query / key blocks are masked.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .tiles import load_rows, tile_program

LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------------------------
# Key-major index (CSC transpose of the LUT), pure torch
# ----------------------------------------------------------------------------------------------------------------


def _key_major_csr(lut: Tensor, count: Tensor, num_key_blocks: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sync-free CSC of the LUT. Returns (entries int32 [B·H, nq·W]: the query block of every LUT entry, grouped by key
    block, ascending within a group, invalid entries last; starts long [B·H, nk + 1]: the first entry of each key
    block in its row (starts[:, nk] = number of valid entries); qcount long [B·H, nk]; the key block of each entry,
    long [B·H, nq·W], nk for invalid entries).
    Valid entries outside [0, nk) are clamped into range (memory-safe, not validated: no host sync here)."""
    batch, heads, nq, width = lut.shape
    nk = num_key_blocks
    device = lut.device
    count = count.to(device=device, dtype=torch.long)
    valid = torch.arange(width, device=device) < count[..., None]  # [B, H, nq, W]
    keys = torch.where(valid, lut.to(device=device, dtype=torch.long).clamp(0, nk - 1), nk)  # nk: sentinel column
    keys = keys.reshape(batch * heads, nq * width)
    # Stable sort by key block: the flat position p = i·W + t keeps the query blocks of a column ascending.
    sorted_keys, order = torch.sort(keys, dim=-1, stable=True)
    bounds = torch.arange(nk + 1, device=device).expand(batch * heads, nk + 1).contiguous()
    starts = torch.searchsorted(sorted_keys, bounds)  # first position of each key block, sentinel at the end
    entries = (order // max(width, 1)).to(torch.int32)
    return entries, starts, starts[:, 1:] - starts[:, :-1], sorted_keys


def key_major_index(lut: Tensor, count: Tensor, num_key_blocks: int) -> tuple[Tensor, Tensor]:
    """CSC transpose of a query-major LUT: for every key block j, the router query blocks i that selected it.

    lut: integer [B, H, nq, W], key-block indices per query block; only the first count[b, h, i] entries of a row are
    read (the rest may hold anything). count: integer [B, H, nq], values in [0, W]. num_key_blocks: nk.
    Returns (qidx int32 [B, H, nk, Wk], qcount int32 [B, H, nk]), contiguous, on lut's device: the first
    qcount[b, h, j] entries of qidx[b, h, j] are the query blocks that selected key block j, in ascending order; the
    rest are 0. Wk = max(1, max qcount). A key block listed twice in one LUT row is listed twice here as well (the
    forward then counts it twice too, so the gradients stay consistent).
    Pure torch (one stable sort, a batched searchsorted, one scatter). One host sync (Wk and the range checks):
    `block_sparse_attention_backward` does not need this function (it builds a sync-free CSC itself); pass its result
    as `key_index` to reuse one index across calls. Raises ValueError for malformed inputs (shape mismatch, count
    outside [0, W], a valid entry outside [0, nk))."""
    if lut.dim() != 4:
        raise ValueError(f"lut must be [B, H, nq, W], got shape {tuple(lut.shape)}")
    if tuple(count.shape) != tuple(lut.shape[:-1]):
        raise ValueError(f"count must be [B, H, nq] = {tuple(lut.shape[:-1])}, got {tuple(count.shape)}")
    if lut.dtype.is_floating_point or count.dtype.is_floating_point:
        raise ValueError(f"lut and count must be integer tensors, got {lut.dtype} and {count.dtype}")
    if num_key_blocks < 1 or count.numel() == 0:
        raise ValueError(f"need num_key_blocks >= 1 and B·H·nq >= 1, got {num_key_blocks} and {tuple(count.shape)}")
    batch, heads, nq, width = lut.shape
    nk = num_key_blocks
    device = lut.device
    entries, starts, qcount, key_of = _key_major_csr(lut, count, nk)

    count = count.to(device=device, dtype=torch.long)
    stats = [qcount.max(), count.min(), count.max()]
    if width:
        checked = torch.where(torch.arange(width, device=device) < count[..., None], lut.to(device, torch.long), 0)
        stats += [checked.min(), checked.max()]
    stats = torch.stack(stats).tolist()
    if stats[1] < 0 or stats[2] > width:
        raise ValueError(f"count must lie in [0, W={width}], got values in [{stats[1]}, {stats[2]}]")
    if width and (stats[3] < 0 or stats[4] >= nk):
        raise ValueError(f"valid LUT entries must lie in [0, {nk}), got values in [{stats[3]}, {stats[4]}]")
    wk = max(1, stats[0])

    # Entry p of a row belongs to key block key_of[p] at rank p - starts[key_of[p]]; the sentinel's entries go to a
    # dump slot past the end.
    rows, length = entries.shape
    rank = torch.arange(length, device=device) - starts.gather(1, key_of)
    slot = torch.where(key_of < nk, key_of * wk + rank, nk * wk)
    qidx = torch.zeros(rows, nk * wk + 1, dtype=torch.int32, device=device)
    qidx.scatter_(1, slot, entries)
    qidx = qidx[:, : nk * wk].reshape(batch, heads, nk, wk).contiguous()
    return qidx, qcount.to(torch.int32).reshape(batch, heads, nk).contiguous()


def _program_order(qcount: Tensor) -> Tensor:
    """int32 [B·H·nk]: which (head, key block) column each dK/dV program takes. Longest jobs first, coarsely: columns
    are bucketed by floor(log2(1 + work)) and the buckets run heaviest first, so hub key blocks (selected by most
    query blocks) start at the beginning instead of forming a tail at the end of the grid; inside a bucket the order
    stays head-major, so the programs in flight mostly share one head's Q / dO in L2."""
    work = qcount.reshape(-1).to(torch.float32)
    bucket = torch.floor(torch.log2(work + 1.0))
    return torch.sort(-bucket, stable=True).indices.to(torch.int32)


# ----------------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _delta_kernel(
    OUT, DO, DELTA,
    stride_ob, stride_os, stride_oh,
    stride_gb, stride_gs, stride_gh,
    seq_len, heads,
    D: tl.constexpr, BLOCK: tl.constexpr,
):
    """Grid (ceil(S / BLOCK), B·H): DELTA [B·H, S] fp32 = rowsum(dO ⊙ O)."""
    tile, bh, b, h, offs_m, offs_d = tile_program(heads, BLOCK, D)
    b = b.to(tl.int64)
    row_ok = offs_m < seq_len
    o = load_rows(OUT, b, h, offs_m, offs_d, stride_ob, stride_os, stride_oh, row_ok).to(tl.float32)
    do = load_rows(DO, b, h, offs_m, offs_d, stride_gb, stride_gs, stride_gh, row_ok).to(tl.float32)
    tl.store(DELTA + bh.to(tl.int64) * seq_len + offs_m, tl.sum(o * do, 1), mask=row_ok)


@triton.jit
def _dq_kernel(
    Q, K, V, DO, LSE, DELTA, LUT, COUNT, DQ,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_gb, stride_gs, stride_gh,
    stride_db, stride_ds, stride_dh,
    stride_lb, stride_lh, stride_lq,
    seq_len, heads, num_query_blocks, lut_width, qk_scale, scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ROUTER_BLOCK_Q: tl.constexpr,
):
    """Grid (ceil(S / BLOCK_M), B·H): dQ of one query tile over the key blocks of its LUT row."""
    tile, bh, b, h, offs_m, offs_d = tile_program(heads, BLOCK_M, D)
    b = b.to(tl.int64)
    qblock = tile * BLOCK_M // ROUTER_BLOCK_Q  # BLOCK_M divides ROUTER_BLOCK_Q: a tile lies in one router block
    offs_n = tl.arange(0, BLOCK_N)
    row_ok = offs_m < seq_len

    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * stride_gb + h * stride_gh + offs_m[:, None] * stride_gs + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    # Rows past S get lse = +inf, hence P = 0: they add nothing (and are not stored anyway).
    lse2 = tl.load(LSE + b * stride_lb + h * stride_lh + offs_m * stride_lq, mask=row_ok,
                   other=float("inf")) * 1.4426950408889634
    delta = tl.load(DELTA + bh.to(tl.int64) * seq_len + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros((BLOCK_M, D), dtype=tl.float32)

    row = bh * num_query_blocks + qblock  # LUT [B, H, nq, lut_width] and COUNT [B, H, nq], contiguous
    count = tl.load(COUNT + row)
    lut_row = LUT + row.to(tl.int64) * lut_width
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    for t in range(0, count):
        j = tl.load(lut_row + t)
        offs_s = j * BLOCK_N + offs_n
        key_ok = offs_s < seq_len
        k = tl.load(k_base + offs_s[:, None] * stride_ks + offs_d[None, :], mask=key_ok[:, None], other=0.0)
        v = tl.load(v_base + offs_s[:, None] * stride_vs + offs_d[None, :], mask=key_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        # Padded keys must be -inf, not 0: exp2(0 - lse2) can overflow when all real scores are very negative.
        s = tl.where(key_ok[None, :], s, float("-inf"))
        p = tl.exp2(s - lse2[:, None])
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)

    dq = dq * scale
    tl.store(DQ + b * stride_db + h * stride_dh + offs_m[:, None] * stride_ds + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, QIDX, QSTART, QCOUNT, ORDER, DK, DV,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_gb, stride_gs, stride_gh,
    stride_dkb, stride_dks, stride_dkh,
    stride_dvb, stride_dvs, stride_dvh,
    stride_lb, stride_lh, stride_lq,
    seq_len, heads, num_key_blocks, qk_scale, scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ROUTER_BLOCK_Q: tl.constexpr,
):
    """Grid (B·H·nk,): dK, dV of one key block over the query blocks that selected it. Program p takes the column
    col = ORDER[p] = bh·nk + key block; the query blocks of that column are QIDX[QSTART[col] + t], t < QCOUNT[col]."""
    col = tl.load(ORDER + tl.program_id(0))
    bh = col // num_key_blocks
    kblock = col % num_key_blocks
    b = (bh // heads).to(tl.int64)
    h = bh % heads
    SUB: tl.constexpr = ROUTER_BLOCK_Q // BLOCK_M  # sub-tiles per router query block
    offs_n = kblock * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    key_ok = offs_n < seq_len

    k = tl.load(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :],
                mask=key_ok[:, None], other=0.0)
    v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vs + offs_d[None, :],
                mask=key_ok[:, None], other=0.0)
    dk = tl.zeros((BLOCK_N, D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, D), dtype=tl.float32)

    n_sel = tl.load(QCOUNT + col)
    qidx_row = QIDX + tl.load(QSTART + col).to(tl.int64)
    q_base = Q + b * stride_qb + h * stride_qh
    g_base = DO + b * stride_gb + h * stride_gh
    l_base = LSE + b * stride_lb + h * stride_lh
    d_base = DELTA + bh.to(tl.int64) * seq_len
    # One flat loop over (selecting query block, sub-tile) keeps a single pipelined loop on the GPU.
    for u in range(0, n_sel * SUB):
        i = tl.load(qidx_row + u // SUB)
        offs_m = i * ROUTER_BLOCK_Q + (u % SUB) * BLOCK_M + offs_m0
        row_ok = offs_m < seq_len
        q = tl.load(q_base + offs_m[:, None] * stride_qs + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        do = tl.load(g_base + offs_m[:, None] * stride_gs + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        # Query rows past S: lse = +inf makes their P exactly 0, and q = dO = 0, so they add nothing.
        lse2 = tl.load(l_base + offs_m * stride_lq, mask=row_ok, other=float("inf")) * 1.4426950408889634
        delta = tl.load(d_base + offs_m, mask=row_ok, other=0.0)
        # Key rows past S are not masked here: whatever they hold stays in their own rows of dK / dV, never stored.
        st = tl.dot(k, tl.trans(q)) * qk_scale  # [BLOCK_N, BLOCK_M] = Sᵀ
        pt = tl.exp2(st - lse2[None, :])
        dv += tl.dot(pt.to(do.dtype), do)
        dpt = tl.dot(v, tl.trans(do))
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(q.dtype), q)

    dk = dk * scale
    tl.store(DK + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dks + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=key_ok[:, None])
    tl.store(DV + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvs + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=key_ok[:, None])


# ----------------------------------------------------------------------------------------------------------------
# Wrapper
# ----------------------------------------------------------------------------------------------------------------

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _is_pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def _head_dim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _check_inputs(do, q, k, v, out, lse, lut, count, block_q, block_k, block_m) -> None:
    if q.dim() != 4:
        raise ValueError(f"q must be [B, S, H, D], got shape {tuple(q.shape)}")
    shape = tuple(q.shape)
    for name, x in (("k", k), ("v", v), ("do", do), ("out", out)):
        if tuple(x.shape) != shape:
            raise ValueError(f"{name} must have q's shape {shape} (self-attention), got {tuple(x.shape)}")
    batch, seq_len, heads, dim = shape
    if min(shape) < 1:
        raise ValueError(f"empty input: q shape {shape}")
    if not _is_pow2(dim) or not 16 <= dim <= 256:
        raise ValueError(f"head dim must be a power of two in [16, 256], got {dim}")
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one dtype among fp16/bf16/fp32, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not do.dtype.is_floating_point or not out.dtype.is_floating_point or not lse.dtype.is_floating_point:
        raise ValueError(f"do, out and lse must be floating point, got {do.dtype}, {out.dtype}, {lse.dtype}")
    devices = {x.device for x in (q, k, v, do, out, lse, lut, count)}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")
    if tuple(lse.shape) != (batch, heads, seq_len):
        raise ValueError(f"lse must be [B, H, S] = {(batch, heads, seq_len)}, got {tuple(lse.shape)}")
    if not _is_pow2(block_k) or block_k < 16:
        raise ValueError(f"block_k must be a power of two >= 16, got {block_k}")
    if not _is_pow2(block_m) or block_m < 16:
        raise ValueError(f"block_m must be a power of two >= 16, got {block_m}")
    if block_q < 1 or block_q % block_m:
        raise ValueError(f"block_m={block_m} must divide block_q={block_q}")
    nq = triton.cdiv(seq_len, block_q)
    if lut.dim() != 4 or tuple(lut.shape[:3]) != (batch, heads, nq):
        raise ValueError(f"lut must be [B, H, nq, W] with (B, H, nq) = {(batch, heads, nq)}, got {tuple(lut.shape)}")
    if tuple(count.shape) != (batch, heads, nq):
        raise ValueError(f"count must be [B, H, nq] = {(batch, heads, nq)}, got {tuple(count.shape)}")


def block_sparse_attention_backward(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, lut: Tensor, count: Tensor,
    block_q: int, block_k: int, scale: float | None = None, block_m: int | None = None,
    num_warps: int | None = None, num_stages: int | None = None,
    key_index: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of block-sparse softmax attention (the forward of `sla_forward` without a linear branch, i.e.
    `reference.block_sparse_attention` with the mask of the LUT) with respect to q, k and v.

    do: [B, S, H, D] upstream gradient of the output; q, k, v: [B, S, H, D] fp16 / bf16 / fp32 (one dtype), any
    strides (a head dim that is not contiguous is copied); out: [B, S, H, D] the forward's output Oˢ; lse: [B, H, S]
    the forward's natural-log log-sum-exp (fp32; other float dtypes are upcast); lut: integer [B, H, nq, W] and
    count: integer [B, H, nq], nq = ceil(S / block_q), as from the router (`topk_lut`, `mask_to_lut`); block_q /
    block_k: the router's query / key block sizes (block_k a power of two >= 16); scale: softmax scale, default
    D**-0.5. Tuning: block_m rows per query tile (a power of two >= 16 dividing block_q; default min(block_q, 64)),
    num_warps (default 4), num_stages (default 2 for the dQ pass, 3 for the dK/dV pass; one value sets both).
    key_index: optional `key_major_index(lut, count, ceil(S / block_k))` (validated, one host sync); when None the
    key-major index is built here without any host sync, and LUT values are not validated: count is clamped to
    [0, W] and entries to [0, nk), so memory stays safe.
    do is cast to q.dtype for the tensor-core products; all accumulation is fp32.
    Returns (dq, dk, dv), contiguous [B, S, H, D] in q.dtype. Key blocks no query block selected get exactly zero
    dk / dv, query blocks with count 0 exactly zero dq. Raises ValueError for malformed shapes / dtypes / blocks."""
    block_m = block_m or min(block_q, 64)
    _check_inputs(do, q, k, v, out, lse, lut, count, block_q, block_k, block_m)
    batch, seq_len, heads, dim = q.shape
    scale = dim**-0.5 if scale is None else float(scale)
    q, k, v, out = (_head_dim_contiguous(x) for x in (q, k, v, out))
    do = _head_dim_contiguous(do.to(q.dtype))
    lse = lse.float()
    nq, nk = triton.cdiv(seq_len, block_q), triton.cdiv(seq_len, block_k)
    if key_index is not None:
        qidx, qcount = key_index
        if qidx.dim() != 4 or tuple(qidx.shape[:3]) != (batch, heads, nk) or tuple(qcount.shape) != (batch, heads, nk):
            raise ValueError(f"key_index must be ([B, H, nk, Wk], [B, H, nk]) with nk = {nk}, got "
                             f"{tuple(qidx.shape)} and {tuple(qcount.shape)}")
    # Clamping keeps the kernels' reads in bounds whatever the LUT holds (no host sync to validate it).
    lut = lut.to(torch.int32).clamp(0, nk - 1).contiguous()
    count = count.to(torch.int32).clamp(0, lut.shape[-1]).contiguous()

    delta = torch.empty(batch, heads, seq_len, device=q.device, dtype=torch.float32)
    delta_block = 64
    _delta_kernel[(triton.cdiv(seq_len, delta_block), batch * heads)](
        out, do, delta,
        out.stride(0), out.stride(1), out.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        seq_len, heads,
        D=dim, BLOCK=delta_block,
    )

    dq = torch.empty(batch, seq_len, heads, dim, device=q.device, dtype=q.dtype)
    dk = torch.empty_like(dq)
    dv = torch.empty_like(dq)
    qk_scale = scale * LOG2E
    warps = num_warps or 4
    _dq_kernel[(triton.cdiv(seq_len, block_m), batch * heads)](
        q, k, v, do, lse, delta, lut, count, dq,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2),
        lse.stride(0), lse.stride(1), lse.stride(2),
        seq_len, heads, nq, lut.shape[-1], qk_scale, scale,
        D=dim, BLOCK_M=block_m, BLOCK_N=block_k, ROUTER_BLOCK_Q=block_q,
        num_warps=warps, num_stages=num_stages or 2,
    )

    # Key-major index after the dQ launch: its small torch ops overlap the dQ kernel on the GPU (nothing syncs).
    if key_index is None:
        entries, starts, qcount, _ = _key_major_csr(lut, count, nk)
        rows = batch * heads
        qidx = entries
        qstart = starts[:, :nk] + torch.arange(rows, device=q.device)[:, None] * entries.shape[1]
    else:
        qidx, qcount = (x.to(device=q.device, dtype=torch.int32).contiguous() for x in key_index)
        qstart = torch.arange(batch * heads * nk, device=q.device) * qidx.shape[-1]
    qcount = qcount.to(torch.int32).reshape(-1).contiguous()
    qstart = qstart.to(torch.int32).reshape(-1).contiguous()
    order = _program_order(qcount)
    _dkdv_kernel[(batch * heads * nk,)](
        q, k, v, do, lse, delta, qidx, qstart, qcount, order, dk, dv,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        lse.stride(0), lse.stride(1), lse.stride(2),
        seq_len, heads, nk, qk_scale, scale,
        D=dim, BLOCK_M=block_m, BLOCK_N=block_k, ROUTER_BLOCK_Q=block_q,
        num_warps=warps, num_stages=num_stages or 3,
    )
    return dq, dk, dv
