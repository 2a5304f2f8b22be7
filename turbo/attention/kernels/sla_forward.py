"""Triton SLA forward: block-sparse online-softmax attention over a LUT, with the linear branch of the marginal
blocks added in the same kernel's epilogue.

Same math as `reference.sla_attention` (the oracle), organised for the GPU:
- `sla_block_states`: per key block j, φ(K_j) = softmax over the head dim, h_j = φ(K_j)ᵀV_j [D, D] and z_j = φ(K_j)ᵀ1,
  stored side by side so one GEMM sums both.
- `sla_linear_states`: H_i = Σ_j M_ij h_j and Z_i = Σ_j M_ij z_j for every query block i, with M the block-level
  marginal mask (1 = not selected): one dense GEMM [nq, nk] × [nk, D² + D] per head. Decision: this replaces the
  "subtract the selected blocks inside the sparse loop" of the SLA-1 code: it costs 2·nq·nk·D² FLOPs on tensor cores
  (~1% of dense attention), keeps the sparse loop as light as plain block-sparse attention, and sums the marginal
  blocks directly (no total-minus-selected cancellation).
- `sla_forward`: one program per (query tile, batch·head): exact softmax over the LUT blocks, then
  O = Oˢ + proj(φQ·H_i / φQ·Z_i).
- linear_all (TurboDiffusion's released SLA, `reference.all_linear_attention`): the linear branch is over ALL keys, so
  one global state [H, Z] per (batch, head) (`sla_global_linear_state`, the fp32 sum of the block states) replaces
  the per-query-block states; the kernel reads it (LINEAR_ALL), divides by 1e-5 + φQ·Z and adds proj(Oˡ) to every
  row.

Layout [B, S, H, D] with strides; D a power of two ≥ 16 (64 and 128 in practice); any S (ragged last blocks masked).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .tiles import load_rows, tile_program

LOG2E = 1.4426950408889634


@triton.jit
def _block_states_kernel(
    K, V, HB,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    seq_len, heads, num_key_blocks,
    D: tl.constexpr, BLOCK: tl.constexpr,
):
    """Grid (nk, B·H): row (b·h, j) of HB [B·H, nk, D·D + D] (V's dtype) is [h_j = φ(K_j)ᵀ V_j flattened,
    z_j = Σ φ(K_j)], so one GEMM sums both over the marginal blocks."""
    blk, bh, b, h, offs_s, offs_d = tile_program(heads, BLOCK, D)
    valid = offs_s < seq_len
    k = load_rows(K, b, h, offs_s, offs_d, stride_kb, stride_ks, stride_kh, valid).to(tl.float32)
    v = load_rows(V, b, h, offs_s, offs_d, stride_vb, stride_vs, stride_vh, valid)
    e = tl.exp(k - tl.max(k, 1)[:, None])
    phi = tl.where(valid[:, None], e / tl.sum(e, 1)[:, None], 0.0)
    state = tl.dot(tl.trans(phi.to(v.dtype)), v)
    row = HB + (bh * num_key_blocks + blk) * (D * D + D)
    tl.store(row + offs_d[:, None] * D + offs_d[None, :], state.to(HB.dtype.element_ty))
    tl.store(row + D * D + offs_d, tl.sum(phi, 0).to(HB.dtype.element_ty))


def sla_block_states(k: torch.Tensor, v: torch.Tensor, block_k: int) -> torch.Tensor:
    """k, v [B, S, H, D] -> [B, H, nk, D·D + D] in v.dtype: per key block, h_j = φ(K_j)ᵀV_j (flattened) then
    z_j = φ(K_j)ᵀ1, with φ = softmax over D."""
    batch, seq_len, heads, dim = k.shape
    nk = triton.cdiv(seq_len, block_k)
    states = torch.empty(batch, heads, nk, dim * dim + dim, device=k.device, dtype=v.dtype)
    _block_states_kernel[(nk, batch * heads)](
        k, v, states,
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        seq_len, heads, nk,
        D=dim, BLOCK=block_k,
    )
    return states


def marginal_weights(lut: torch.Tensor, count: torch.Tensor, num_key_blocks: int, dtype) -> torch.Tensor:
    """[B, H, nq, nk] in `dtype`: 1 for the key blocks a query block did NOT select (its first `count` LUT entries),
    0 for the selected ones."""
    weights = torch.ones(*lut.shape[:-1], num_key_blocks, dtype=dtype, device=lut.device)
    unselected = (torch.arange(lut.shape[-1], device=lut.device) >= count[..., None]).to(dtype)
    return weights.scatter_(-1, lut.long(), unselected)


def sla_global_linear_state(k: torch.Tensor, v: torch.Tensor, block_k: int) -> torch.Tensor:
    """[B, H, D·D + D] fp32: [H = Σ_all φ(K)ᵀV flattened, Z = Σ_all φ(K)] over every key, the fp32 sum of the
    per-key-block states (only [B, H, nk, D² + D] is built, never a per-query-block copy)."""
    return sla_block_states(k, v, block_k).sum(2, dtype=torch.float32)


@triton.jit
def _attend_block(q, K, V, offs_s, key_ok, offs_d, stride_ks, stride_vs, m_i, l_i, acc, qk_scale):
    """One online-softmax step of a query tile over the keys at token offsets `offs_s` (K, V point at the
    (batch, head) start); masked keys count as -inf. Returns the updated (m_i, l_i, acc)."""
    k = tl.load(K + offs_s[:, None] * stride_ks + offs_d[None, :], mask=key_ok[:, None], other=0.0)
    v = tl.load(V + offs_s[:, None] * stride_vs + offs_d[None, :], mask=key_ok[:, None], other=0.0)
    s = tl.dot(q, tl.trans(k)) * qk_scale
    s = tl.where(key_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp2(s - m_new[:, None])
    rescale = tl.exp2(m_i - m_new)
    l_i = l_i * rescale + tl.sum(p, 1)
    acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _sla_forward_kernel(
    Q, K, V, LUT, COUNT, HM, PW, PB, ALPHA, TK, TV, TMASK, OUT, LSE,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_tkb, stride_tks, stride_tkh,
    stride_tvb, stride_tvs, stride_tvh,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_lq,
    seq_len, heads, num_key_blocks, lut_width, tail_len, qk_scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ROUTER_BLOCK_Q: tl.constexpr,
    HAS_LINEAR: tl.constexpr, HAS_PROJ_BIAS: tl.constexpr, MIX_ALPHA: tl.constexpr, HAS_TAIL: tl.constexpr,
    LINEAR_ALL: tl.constexpr,
):
    tile, bh, b, h, offs_m, offs_d = tile_program(heads, BLOCK_M, D)
    qblock = tile * BLOCK_M // ROUTER_BLOCK_Q  # the router's query block this tile belongs to
    offs_n = tl.arange(0, BLOCK_N)
    row_ok = offs_m < seq_len

    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)

    row = bh * tl.cdiv(seq_len, ROUTER_BLOCK_Q) + qblock  # LUT [B, H, nq, lut_width], COUNT [B, H, nq], contiguous
    count = tl.load(COUNT + row)
    lut_row = LUT + row * lut_width
    k_head = K + b * stride_kb + h * stride_kh
    v_head = V + b * stride_vb + h * stride_vh
    for t in range(0, count):
        offs_s = tl.load(lut_row + t) * BLOCK_N + offs_n
        m_i, l_i, acc = _attend_block(q, k_head, v_head, offs_s, offs_s < seq_len, offs_d, stride_ks, stride_vs,
                                      m_i, l_i, acc, qk_scale)
    if HAS_TAIL:  # always-attended extra keys (HunyuanVideo text), TMASK [B, tail_len] marks the real ones
        for t0 in range(0, tail_len, BLOCK_N):
            offs_t = t0 + offs_n
            tail_ok = offs_t < tail_len
            tail_ok = tail_ok & (tl.load(TMASK + b * tail_len + offs_t, mask=tail_ok, other=0) != 0)
            m_i, l_i, acc = _attend_block(q, TK + b * stride_tkb + h * stride_tkh, TV + b * stride_tvb + h * stride_tvh,
                                          offs_t, tail_ok, offs_d, stride_tks, stride_tvs, m_i, l_i, acc, qk_scale)

    out = acc / l_i[:, None]
    if HAS_LINEAR:
        qf = q.to(tl.float32)
        eq = tl.exp(qf - tl.max(qf, 1)[:, None])
        phiq = eq / tl.sum(eq, 1)[:, None]
        if LINEAR_ALL:
            # TurboDiffusion's form: Oˡ = φQ·H / (1e-5 + φQ·Z) over ALL keys (one fp32 state per batch·head),
            # added through proj to every row.
            state = HM + bh * (D * D + D)
        else:
            state = HM + row * (D * D + D)  # [H_i flattened, Z_i]
        h_i = tl.load(state + offs_d[:, None] * D + offs_d[None, :])
        z_i = tl.load(state + D * D + offs_d).to(tl.float32)
        num = tl.dot(phiq.to(h_i.dtype), h_i)
        den = tl.sum(phiq * z_i[None, :], 1)
        if LINEAR_ALL:
            has_marginal = row_ok
            ol = num / (den + 1e-5)[:, None]
        else:
            # Oˡ = φQ·H_i / (φQ·Z_i) over the marginal blocks; rows without marginal blocks get no linear term at
            # all (not even proj's bias), so keep = 1 is exactly dense attention.
            has_marginal = (den > 0) & (count < num_key_blocks)
            ol = tl.where(has_marginal[:, None], num / tl.where(has_marginal, den, 1.0)[:, None], 0.0)
        if MIX_ALPHA:  # SLA2: out = α·Oˢ + (1 − α)·Oˡ, α per (head, router query block)
            alpha = tl.load(ALPHA + h * tl.cdiv(seq_len, ROUTER_BLOCK_Q) + qblock)
            out = alpha * out + (1.0 - alpha) * ol
        else:  # SLA: out = Oˢ + proj(Oˡ)
            w_t = tl.load(PW + offs_d[None, :] * D + offs_d[:, None])  # proj weight [D_out, D_in], read transposed
            lin_out = tl.dot(ol.to(h_i.dtype), w_t.to(h_i.dtype))
            if HAS_PROJ_BIAS:
                lin_out += tl.load(PB + offs_d)[None, :]
            out += tl.where(has_marginal[:, None], lin_out, 0.0)
    tl.store(OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :],
             out.to(OUT.dtype.element_ty), mask=row_ok[:, None])
    lse = (m_i + tl.log2(l_i)) / 1.4426950408889634
    tl.store(LSE + b * stride_lb + h * stride_lh + offs_m * stride_lq, lse, mask=row_ok)


def sla_linear_states(k, v, lut, count, block_k: int) -> torch.Tensor:
    """[B, H, nq, D·D + D] in v.dtype: for every query block, [H_i, Z_i] summed over its marginal key blocks by one
    GEMM (fp32 accumulation) of the block-level marginal mask with the block states."""
    states = sla_block_states(k, v, block_k)
    weights = marginal_weights(lut, count, states.shape[2], states.dtype)
    return torch.matmul(weights, states)


def sla_forward(q, k, v, lut, count, block_q: int, block_k: int, proj_weight=None, proj_bias=None, scale=None,
                linear_state=None, block_m: int | None = None, num_warps: int | None = None,
                num_stages: int | None = None, alpha=None, tail_k=None, tail_v=None, tail_mask=None,
                linear_all: bool = False):
    """SLA forward with the LUT from the router.

    q, k, v: [B, S, H, D]; lut: int32 [B, H, nq, width] key-block indices per router query block (first `count`
    entries used); count: int32 [B, H, nq]; proj_weight [D, D] / proj_bias [D] enable SLA's linear branch (None = pure
    block-sparse attention); alpha [H, nq] fp32 instead selects SLA2's mix α·Oˢ + (1 − α)·Oˡ (no proj);
    linear_state = `sla_linear_states(...)` (computed if None). tail_k / tail_v [B, L, H, D] are keys every query
    also attends (HunyuanVideo's text), tail_mask [B, L] bool marks the real ones (None = all); the linear branch
    stays over the video keys. linear_all (SLA with proj only) = TurboDiffusion's form: linear attention over ALL
    keys with the 1e-5 eps, proj added to every row; linear_state is then `sla_global_linear_state(...)` [B, H, D²+D].
    Returns (out [B, S, H, D] in q.dtype, lse [B, H, S] fp32 natural log)."""
    batch, seq_len, heads, dim = q.shape
    scale = dim ** -0.5 if scale is None else scale
    block_m = block_m or min(block_q, 64)
    if block_q % block_m:
        raise ValueError(f"kernel tile {block_m} must divide the router query block {block_q}")
    lut, count = lut.to(torch.int32).contiguous(), count.to(torch.int32).contiguous()
    mix_alpha = alpha is not None
    has_linear = proj_weight is not None or mix_alpha
    if mix_alpha:
        alpha = alpha.to(torch.float32).contiguous()
        proj_weight = q  # unused pointer
    if linear_all and (mix_alpha or proj_weight is None):
        raise ValueError("linear_all is SLA's TurboDiffusion form: it needs proj_weight and no alpha")
    if has_linear:
        if linear_state is not None:
            h_m = linear_state.contiguous()
        elif linear_all:
            h_m = sla_global_linear_state(k, v, block_k)
        else:
            h_m = sla_linear_states(k, v, lut, count, block_k)
        proj_weight = proj_weight.contiguous()
        alpha = alpha if mix_alpha else q  # unused pointer
    else:
        h_m = proj_weight = alpha = q  # unused pointers
    has_tail = tail_k is not None
    if has_tail:
        tail_len = tail_k.shape[1]
        if tail_mask is None:
            tail_mask = torch.ones(batch, tail_len, dtype=torch.bool, device=q.device)
        tail_mask = tail_mask.to(torch.uint8).contiguous()
    else:
        tail_len, tail_k, tail_v, tail_mask = 0, k, v, q  # unused pointers
    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, seq_len, device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(seq_len, block_m), batch * heads)
    _sla_forward_kernel[grid](
        q, k, v, lut, count, h_m, proj_weight,
        proj_bias if proj_bias is not None else proj_weight, alpha, tail_k, tail_v, tail_mask, out, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        tail_k.stride(0), tail_k.stride(1), tail_k.stride(2),
        tail_v.stride(0), tail_v.stride(1), tail_v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1), lse.stride(2),
        seq_len, heads, triton.cdiv(seq_len, block_k), lut.shape[-1], tail_len, scale * LOG2E,
        D=dim, BLOCK_M=block_m, BLOCK_N=block_k, ROUTER_BLOCK_Q=block_q,
        HAS_LINEAR=has_linear, HAS_PROJ_BIAS=proj_bias is not None, MIX_ALPHA=mix_alpha, HAS_TAIL=has_tail,
        LINEAR_ALL=linear_all, num_warps=num_warps or 4, num_stages=num_stages or 3,
    )
    return out, lse
