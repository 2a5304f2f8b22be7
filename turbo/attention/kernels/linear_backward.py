"""Triton backward of the SLA / SLA2 linear branch (same math as `sla_backward.linear_branch_backward`, the oracle):

- query side, one program per query tile: φQ, Oˡ = φQ·H_i / φQ·Z_i, dOˡ (SLA: masked dO·W; SLA2: (1 − α)·dO),
  dφQ → dQ through the softmax-over-D Jacobian, and the tile's [dH, dZ] = φQᵀ[dN, dden] partial sums;
- one GEMM (transposed block-mask weights, per tile) sums [dH, dZ] over the query tiles that saw each key block as
  marginal;
- key side, one program per key block: dφK = V·dh_jᵀ + dz_j, dV = φK·dh_j, dK through the softmax Jacobian.
It replaces ≈ 50 PyTorch elementwise launches over [B, H, nq, block, D] tensors (13 of 17.7 ms of an SLA fwd+bwd step
at Wan 480p, docs/BENCHMARKS.md)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .sla_forward import marginal_weights, sla_block_states
from .tiles import load_rows, tile_program


@triton.jit
def _query_side_kernel(
    Q, DO, OS, STATE, COUNT, W, ALPHA, DQL, OL, HM, DSTATE, DALPHA,
    stride_qb, stride_qs, stride_qh,
    stride_gb, stride_gs, stride_gh,
    stride_ob, stride_os, stride_oh,
    seq_len, heads, num_key_blocks, num_query_blocks,
    D: tl.constexpr, BLOCK_M: tl.constexpr, ROUTER_BLOCK_Q: tl.constexpr, MIX_ALPHA: tl.constexpr,
):
    tile, bh, b, h, offs_m, offs_d = tile_program(heads, BLOCK_M, D)
    qblock = tile * BLOCK_M // ROUTER_BLOCK_Q
    row = bh * num_query_blocks + qblock
    row_ok = offs_m < seq_len
    q_tile = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :]
    q = tl.load(q_tile, mask=row_ok[:, None], other=0.0)
    dt = q.dtype
    qf = q.to(tl.float32)
    e = tl.exp(qf - tl.max(qf, 1)[:, None])
    phiq = tl.where(row_ok[:, None], e / tl.sum(e, 1)[:, None], 0.0)

    state = STATE + row * (D * D + D)
    h_i = tl.load(state + offs_d[:, None] * D + offs_d[None, :])
    z_i = tl.load(state + D * D + offs_d).to(tl.float32)
    num = tl.dot(phiq.to(dt), h_i.to(dt))
    den = tl.sum(phiq * z_i[None, :], 1)
    count = tl.load(COUNT + row)
    marginal = row_ok & (den > 0) & (count < num_key_blocks)
    safe = tl.where(marginal, den, 1.0)
    ol = tl.where(marginal[:, None], num / safe[:, None], 0.0)

    g_tile = DO + b * stride_gb + h * stride_gh + offs_m[:, None] * stride_gs + offs_d[None, :]
    d_out = tl.load(g_tile, mask=row_ok[:, None], other=0.0).to(tl.float32)
    if MIX_ALPHA:
        alpha = tl.load(ALPHA + h * num_query_blocks + qblock)
        o_s = tl.load(OS + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :],
                      mask=row_ok[:, None], other=0.0).to(tl.float32)
        tl.store(DALPHA + bh * tl.num_programs(0) + tile, tl.sum(tl.sum(d_out * (o_s - ol), 1), 0))
        d_ol = (1.0 - alpha) * d_out
    else:
        w = tl.load(W + offs_d[:, None] * D + offs_d[None, :])  # proj weight [D_out, D_in]
        d_ol = tl.dot(tl.where(marginal[:, None], d_out, 0.0).to(dt), w.to(dt))

    d_num = tl.where(marginal[:, None], d_ol / safe[:, None], 0.0)
    d_den = tl.where(marginal, -tl.sum(d_ol * ol, 1) / safe, 0.0)
    d_phiq = tl.dot(d_num.to(dt), tl.trans(h_i.to(dt))) + d_den[:, None] * z_i[None, :]
    dq = phiq * (d_phiq - tl.sum(d_phiq * phiq, 1)[:, None])
    out_offsets = ((b * seq_len + offs_m[:, None]) * heads + h) * D + offs_d[None, :]  # contiguous [B, S, H, D]
    tl.store(DQL + out_offsets, dq, mask=row_ok[:, None])
    tl.store(OL + out_offsets, ol.to(OL.dtype.element_ty), mask=row_ok[:, None])
    tl.store(HM + bh * seq_len + offs_m, marginal.to(tl.float32), mask=row_ok)

    d_h = tl.dot(tl.trans(phiq.to(dt)), d_num.to(dt))
    d_z = tl.sum(phiq * d_den[:, None], 0)
    partial = DSTATE + (bh * tl.num_programs(0) + tile) * (D * D + D)
    tl.store(partial + offs_d[:, None] * D + offs_d[None, :], d_h.to(DSTATE.dtype.element_ty))
    tl.store(partial + D * D + offs_d, d_z.to(DSTATE.dtype.element_ty))


@triton.jit
def _key_side_kernel(
    K, V, DSTATE, DKL, DVL,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    seq_len, heads, num_key_blocks,
    D: tl.constexpr, BLOCK: tl.constexpr,
):
    blk, bh, b, h, offs_s, offs_d = tile_program(heads, BLOCK, D)
    valid = offs_s < seq_len
    k = load_rows(K, b, h, offs_s, offs_d, stride_kb, stride_ks, stride_kh, valid)
    v = load_rows(V, b, h, offs_s, offs_d, stride_vb, stride_vs, stride_vh, valid)
    dt = v.dtype
    kf = k.to(tl.float32)
    e = tl.exp(kf - tl.max(kf, 1)[:, None])
    phik = tl.where(valid[:, None], e / tl.sum(e, 1)[:, None], 0.0)
    state = DSTATE + (bh * num_key_blocks + blk) * (D * D + D)
    d_h = tl.load(state + offs_d[:, None] * D + offs_d[None, :])
    d_z = tl.load(state + D * D + offs_d).to(tl.float32)
    d_phik = tl.where(valid[:, None], tl.dot(v, tl.trans(d_h.to(dt))) + d_z[None, :], 0.0)
    dv = tl.dot(phik.to(dt), d_h.to(dt))
    dk = phik * (d_phik - tl.sum(d_phik * phik, 1)[:, None])
    out_offsets = ((b * seq_len + offs_s[:, None]) * heads + h) * D + offs_d[None, :]
    tl.store(DKL + out_offsets, dk, mask=valid[:, None])
    tl.store(DVL + out_offsets, dv, mask=valid[:, None])


def _half_matmul(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype in (torch.float16, torch.bfloat16):
        return torch.matmul(a.to(dtype), b.to(dtype)).float()
    return torch.matmul(a.float(), b.float())


def linear_branch_backward_fused(grad_out, q, k, v, lut, count, block_q: int, block_k: int, proj_weight=None,
                                 alpha=None, out_s=None, block_m: int = 64, num_warps: int = 4):
    """Gradients of the linear branch. grad_out, q, k, v [B, S, H, D]; SLA: proj_weight [D, D]; SLA2: alpha [H, nq]
    and out_s (the sparse output Oˢ). Returns (dq, dk, dv fp32 [B, S, H, D], d_proj_weight, d_proj_bias, d_alpha);
    the SLA2 / SLA-only entries are None for the other method."""
    batch, seq_len, heads, dim = q.shape
    block_m = min(block_m, block_q)
    tiles = triton.cdiv(seq_len, block_m)
    states = sla_block_states(k, v, block_k)  # [B, H, nk, D² + D]
    nk = states.shape[2]
    weights = marginal_weights(lut, count, nk, states.dtype)  # [B, H, nq, nk]
    nq = weights.shape[2]
    summed = torch.matmul(weights, states).contiguous()
    count = count.to(torch.int32).contiguous()
    mix = alpha is not None
    dql = torch.empty(batch, seq_len, heads, dim, device=q.device, dtype=torch.float32)
    ol = torch.empty(batch, seq_len, heads, dim, device=q.device, dtype=q.dtype)
    hm = torch.empty(batch, heads, seq_len, device=q.device, dtype=torch.float32)
    d_tiles = torch.empty(batch, heads, tiles, dim * dim + dim, device=q.device, dtype=torch.float32)
    d_alpha_tiles = torch.zeros(batch, heads, tiles, device=q.device, dtype=torch.float32)
    o_s = out_s if mix else q
    _query_side_kernel[(tiles, batch * heads)](
        q, grad_out, o_s, summed, count,
        proj_weight.float().contiguous() if not mix else q, alpha.float().contiguous() if mix else q,
        dql, ol, hm, d_tiles, d_alpha_tiles,
        q.stride(0), q.stride(1), q.stride(2),
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
        o_s.stride(0), o_s.stride(1), o_s.stride(2),
        seq_len, heads, nk, nq,
        D=dim, BLOCK_M=block_m, ROUTER_BLOCK_Q=block_q, MIX_ALPHA=mix, num_warps=num_warps,
    )
    tile_block = (torch.arange(tiles, device=q.device) * block_m) // block_q
    tile_weights = weights[:, :, tile_block]  # [B, H, tiles, nk]
    d_states = _half_matmul(tile_weights.transpose(-1, -2), d_tiles, q.dtype).contiguous()  # [B, H, nk, D² + D]
    dkl = torch.empty(batch, seq_len, heads, dim, device=q.device, dtype=torch.float32)
    dvl = torch.empty_like(dkl)
    _key_side_kernel[(nk, batch * heads)](
        k, v, d_states, dkl, dvl,
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        seq_len, heads, nk,
        D=dim, BLOCK=block_k, num_warps=num_warps,
    )
    d_w = d_b = d_alpha = None
    if mix:
        d_alpha = d_alpha_tiles.sum(0).new_zeros(heads, nq).index_add_(
            1, tile_block, d_alpha_tiles.sum(0)).to(alpha.dtype)
    else:
        d_lin = grad_out.float() * hm.transpose(1, 2)[..., None]
        d_w = _half_matmul(d_lin.reshape(-1, dim).t(), ol.reshape(-1, dim), q.dtype).to(proj_weight.dtype)
        d_b = d_lin.sum((0, 1, 2))
    return dql, dkl, dvl, d_w, d_b, d_alpha
