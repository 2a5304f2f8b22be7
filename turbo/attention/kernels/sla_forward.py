"""Triton SLA forward: block-sparse online-softmax attention over a LUT fused with the complement linear branch.

Same math as `reference.sla_attention` (the oracle), organised for the GPU:
- `sla_linear_prepass`: φ(K) = softmax over the head dim, stored once, and the global sums H = φ(K)ᵀV, Z = φ(K)ᵀ1 per
  (batch, head) in fp32.
- `sla_forward`: one program per (query tile, batch·head). For every key block in its LUT row it runs the exact
  softmax step and, in the same loop, subtracts that block from the linear branch by accumulating (φQ φKᵀ)V and
  φQ φKᵀ1; marginal blocks are never visited. The end is O = Oˢ + proj(φQ·H − Σsel) / (φQ·Z − Σsel).

Layout [B, S, H, D] with strides; D in {64, 128} (any power of two ≥ 16); any S (ragged last blocks are masked).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _sla_prepass_kernel(
    K, V, PHI, HPART, ZPART,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_pb, stride_ps, stride_ph,
    seq_len, heads, blocks_per_split,
    D: tl.constexpr, BLOCK: tl.constexpr,
):
    """Grid (splits, B·H). φ(K) for this split's tokens, and the split's partial H [D, D] and Z [D] in fp32."""
    split = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    offs_d = tl.arange(0, D)
    h_acc = tl.zeros((D, D), dtype=tl.float32)
    z_acc = tl.zeros((D,), dtype=tl.float32)
    for blk in range(split * blocks_per_split, (split + 1) * blocks_per_split):
        offs_s = blk * BLOCK + tl.arange(0, BLOCK)
        valid = offs_s < seq_len
        k = tl.load(K + b * stride_kb + h * stride_kh + offs_s[:, None] * stride_ks + offs_d[None, :],
                    mask=valid[:, None], other=0.0).to(tl.float32)
        v = tl.load(V + b * stride_vb + h * stride_vh + offs_s[:, None] * stride_vs + offs_d[None, :],
                    mask=valid[:, None], other=0.0)
        k = k - tl.max(k, 1)[:, None]
        e = tl.exp(k)
        phi = e / tl.sum(e, 1)[:, None]
        phi = tl.where(valid[:, None], phi, 0.0)
        phi_lo = phi.to(v.dtype)
        tl.store(PHI + b * stride_pb + h * stride_ph + offs_s[:, None] * stride_ps + offs_d[None, :], phi_lo,
                 mask=valid[:, None])
        h_acc += tl.dot(tl.trans(phi_lo), v)
        z_acc += tl.sum(phi, 0)
    base = (bh * tl.num_programs(0) + split)
    tl.store(HPART + base * D * D + offs_d[:, None] * D + offs_d[None, :], h_acc)
    tl.store(ZPART + base * D + offs_d, z_acc)


def sla_linear_prepass(k: torch.Tensor, v: torch.Tensor, block: int = 64, splits: int | None = None):
    """k, v [B, S, H, D] (fp16/bf16/fp32) -> (φ(K) [B, S, H, D] in k.dtype, H [B, H, D, D] fp32, Z [B, H, D] fp32)."""
    batch, seq_len, heads, dim = k.shape
    nblocks = triton.cdiv(seq_len, block)
    if splits is None:
        splits = max(1, min(nblocks, 16))
    per_split = triton.cdiv(nblocks, splits)
    splits = triton.cdiv(nblocks, per_split)
    phi = torch.empty_like(k)
    h_part = torch.empty(batch * heads, splits, dim, dim, device=k.device, dtype=torch.float32)
    z_part = torch.empty(batch * heads, splits, dim, device=k.device, dtype=torch.float32)
    _sla_prepass_kernel[(splits, batch * heads)](
        k, v, phi, h_part, z_part,
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        phi.stride(0), phi.stride(1), phi.stride(2),
        seq_len, heads, per_split,
        D=dim, BLOCK=block,
    )
    return phi, h_part.sum(1).view(batch, heads, dim, dim), z_part.sum(1).view(batch, heads, dim)


@triton.jit
def _sla_forward_kernel(
    Q, K, V, PHIK, LUT, COUNT, HT, ZT, PW, PB, OUT, LSE,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_pb, stride_ps, stride_ph,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_lq,
    seq_len, heads, num_key_blocks, lut_width, qk_scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ROUTER_BLOCK_Q: tl.constexpr,
    HAS_LINEAR: tl.constexpr, HAS_PROJ_BIAS: tl.constexpr,
):
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    qblock = tile * BLOCK_M // ROUTER_BLOCK_Q  # the router's query block this tile belongs to
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < seq_len

    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    if HAS_LINEAR:
        qf = q.to(tl.float32)
        qf = qf - tl.max(qf, 1)[:, None]
        eq = tl.exp(qf)
        phiq = (eq / tl.sum(eq, 1)[:, None]).to(q.dtype)
        lin = tl.zeros((BLOCK_M, D), dtype=tl.float32)
        lin_den = tl.zeros((BLOCK_M,), dtype=tl.float32)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)

    row = bh * tl.cdiv(seq_len, ROUTER_BLOCK_Q) + qblock  # LUT [B, H, nq, LUT_WIDTH], COUNT [B, H, nq], contiguous
    count = tl.load(COUNT + row)
    lut_row = LUT + row * lut_width
    for t in range(0, count):
        j = tl.load(lut_row + t)
        offs_s = j * BLOCK_N + offs_n
        key_ok = offs_s < seq_len
        k = tl.load(K + b * stride_kb + h * stride_kh + offs_s[:, None] * stride_ks + offs_d[None, :],
                    mask=key_ok[:, None], other=0.0)
        v = tl.load(V + b * stride_vb + h * stride_vh + offs_s[:, None] * stride_vs + offs_d[None, :],
                    mask=key_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        s = tl.where(key_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
        if HAS_LINEAR:
            pk = tl.load(PHIK + b * stride_pb + h * stride_ph + offs_s[:, None] * stride_ps + offs_d[None, :],
                         mask=key_ok[:, None], other=0.0)
            a = tl.dot(phiq, tl.trans(pk))
            lin += tl.dot(a.to(v.dtype), v)
            lin_den += tl.sum(a, 1)

    out = acc / l_i[:, None]
    if HAS_LINEAR:
        h_tot = tl.load(HT + bh * D * D + offs_d[:, None] * D + offs_d[None, :])
        z_tot = tl.load(ZT + bh * D + offs_d)
        phiq32 = phiq.to(tl.float32)
        num = tl.dot(phiq32, h_tot) - lin
        den = tl.sum(phiq32 * z_tot[None, :], 1) - lin_den
        # every block selected -> no marginal mass: Oˡ is exactly 0 (avoid dividing rounding noise by ~0)
        has_marginal = (den > 0) & (count < num_key_blocks)
        safe = tl.where(has_marginal, den, 1.0)
        ol = tl.where(has_marginal[:, None], num / safe[:, None], 0.0)
        # proj(Oˡ) = Oˡ Wᵀ + b with W [D_out, D_in] fp32 master weights; rows without marginal blocks get no linear
        # term at all (not even the bias), so keep = 1 is exactly dense attention.
        w_t = tl.load(PW + offs_d[None, :] * D + offs_d[:, None])
        lin_out = tl.dot(ol, w_t)
        if HAS_PROJ_BIAS:
            lin_out += tl.load(PB + offs_d)[None, :]
        out += tl.where(has_marginal[:, None], lin_out, 0.0)
    tl.store(OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :],
             out.to(OUT.dtype.element_ty), mask=row_ok[:, None])
    lse = (m_i + tl.log2(l_i)) / 1.4426950408889634
    tl.store(LSE + b * stride_lb + h * stride_lh + offs_m * stride_lq, lse, mask=row_ok)


def sla_forward(q, k, v, lut, count, block_q: int, block_k: int, proj_weight=None, proj_bias=None, scale=None,
                linear_state=None, block_m: int | None = None, num_warps: int | None = None,
                num_stages: int | None = None):
    """SLA forward with the LUT from the router.

    q, k, v: [B, S, H, D]; lut: int32 [B, H, nq, nk_max] key-block indices per router query block (first `count`
    entries used); count: int32 [B, H, nq]; proj_weight [D, D] / proj_bias [D] (fp32) enable the linear branch
    (None = pure block-sparse attention). linear_state = (φ(K), H, Z) from `sla_linear_prepass` (computed if None).
    Returns (out [B, S, H, D] in q.dtype, lse [B, H, S] fp32 natural log)."""
    batch, seq_len, heads, dim = q.shape
    scale = dim ** -0.5 if scale is None else scale
    block_m = block_m or min(block_q, 128 if dim <= 64 else 64)
    if block_q % block_m:
        raise ValueError(f"kernel tile {block_m} must divide the router query block {block_q}")
    has_linear = proj_weight is not None
    if has_linear:
        phi_k, h_tot, z_tot = linear_state if linear_state is not None else sla_linear_prepass(k, v, block_k)
        proj_weight = proj_weight.to(torch.float32).contiguous()
    else:
        phi_k = h_tot = z_tot = proj_weight = q  # unused pointers
    lut, count = lut.to(torch.int32).contiguous(), count.to(torch.int32).contiguous()
    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, seq_len, device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(seq_len, block_m), batch * heads)
    _sla_forward_kernel[grid](
        q, k, v, phi_k, lut, count, h_tot, z_tot, proj_weight,
        proj_bias if proj_bias is not None else proj_weight, out, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        phi_k.stride(0), phi_k.stride(1), phi_k.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1), lse.stride(2),
        seq_len, heads, triton.cdiv(seq_len, block_k), lut.shape[-1], scale * LOG2E,
        D=dim, BLOCK_M=block_m, BLOCK_N=block_k, ROUTER_BLOCK_Q=block_q,
        HAS_LINEAR=has_linear, HAS_PROJ_BIAS=proj_bias is not None,
        num_warps=num_warps or (4 if block_m <= 64 else 8), num_stages=num_stages or 2,
    )
    return out, lse
