"""Triton SLA2 forward with the QAT low-bit sparse branch: INT8 Q·Kᵀ, FP8 P·V over the LUT blocks, fp32 accumulation.

Same math as `reference.sla2_attention(..., quantized=True)` (the oracle), organised as `sla_forward` with
`alpha` (SLA2's mix) but with the inner step of `lowbit_forward`:
- operands from the low-bit quantisers: `quantize_qk` (INT8 Q per router query block, smoothed INT8 K per key block
  of block_k tokens = the kernel's key tile, softmax scale·log2 e folded into Q's scales) and `quantize_v_fp8` (FP8
  e4m3 V, per-channel scales, transposed [B, H, D, S_pad]);
- one program per (query tile, batch·head) walks the first `count` LUT blocks of its router query block with
  `lowbit_forward._attend_tile` (S from the int32 MMA, P̃ = exp2(S − m) quantised to FP8 with the fixed scale 448,
  acc += P̂·V̂ in fp32); the ragged last key block takes the masked variant of the step;
- epilogue: Oˢ = acc / l · v_scale, Oˡ = φQ·H_i / φQ·Z_i from `sla_linear_states` exactly as in `sla_forward`'s
  epilogue (rows without marginal blocks get Oˡ = 0), out = α·Oˢ + (1 − α)·Oˡ with α per (head, router query block).

As for `lowbit_attention`, the kernel quantises P̃ against the running row max where the reference uses the global
one (rel-L1 of the sparse branch vs the reference ≈ 0.01 on random normal inputs). Forward only; no tail keys.
Layout [B, S, H, D] with strides (D contiguous), self-attention (S_q = S_k); D a power of two in [16, 128].
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .lowbit_forward import (
    V_PAD,
    _attend_tile,
    _check_block,
    _emulate_fp8,
    _fp8_arg,
    quantize_qk,
    quantize_v_fp8,
)
from .sla_forward import sla_linear_states
from .tiles import tile_program

LOG2_FP8_MAX = tl.constexpr(8.807354922057604)  # log2(448): the kernel's l is summed in units of 448·P̃


@triton.jit
def _alpha_mix_linear(out, q, HM, ALPHA, row, h, qblock, num_query_blocks, count, num_key_blocks, offs_d,
                      D: tl.constexpr):
    """α·out + (1 − α)·Oˡ with Oˡ = φQ·H_i / (φQ·Z_i) over the marginal blocks (HM row `row` = [H_i flattened, Z_i]);
    rows without marginal blocks get Oˡ = 0 (as `sla_forward`'s MIX_ALPHA epilogue)."""
    qf = q.to(tl.float32)
    eq = tl.exp(qf - tl.max(qf, 1)[:, None])
    phiq = eq / tl.sum(eq, 1)[:, None]
    state = HM + row * (D * D + D)
    h_i = tl.load(state + offs_d[:, None] * D + offs_d[None, :])
    z_i = tl.load(state + D * D + offs_d).to(tl.float32)
    num = tl.dot(phiq.to(h_i.dtype), h_i)
    den = tl.sum(phiq * z_i[None, :], 1)
    has_marginal = (den > 0) & (count < num_key_blocks)
    ol = tl.where(has_marginal[:, None], num / tl.where(has_marginal, den, 1.0)[:, None], 0.0)
    alpha = tl.load(ALPHA + h * num_query_blocks + qblock)
    return alpha * out + (1.0 - alpha) * ol


@triton.jit
def _sla2_lowbit_kernel(
    Q, Q8, QS, K8, KS, VT, VS, LUT, COUNT, HM, ALPHA, OUT, LSE,
    stride_qb, stride_qs, stride_qh,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_lq,
    seq_len, v_len, heads, num_query_blocks, num_key_blocks, lut_width,
    D: tl.constexpr, DQK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ROUTER_BLOCK_Q: tl.constexpr, EMULATE_FP8: tl.constexpr,
):
    tile, bh, b, h, offs_m, offs_d = tile_program(heads, BLOCK_M, D)
    qblock = tile * BLOCK_M // ROUTER_BLOCK_Q  # the router's (and Q quantiser's) query block of this tile
    offs_n = tl.arange(0, BLOCK_N)
    offs_dk = tl.arange(0, DQK)  # the int8 dot needs K >= 32: D = 16 is read zero-padded
    row_ok = offs_m < seq_len

    q8 = tl.load(Q8 + (bh * seq_len + offs_m[:, None]) * D + offs_dk[None, :],
                 mask=row_ok[:, None] & (offs_dk < D)[None, :], other=0)
    qc = tl.load(QS + bh * num_query_blocks + qblock)  # Q's scale (incl. scale·log2 e) of this router query block
    qc = tl.full((BLOCK_M,), 1.0, dtype=tl.float32) * qc

    k_ptrs = K8 + (bh * seq_len + offs_n[:, None]) * D + offs_dk[None, :]
    vt_ptrs = VT + (bh * D + offs_d[:, None]) * v_len + offs_n[None, :]
    k_scale_ptr = KS + bh * num_key_blocks

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)

    row = bh * num_query_blocks + qblock  # LUT [B, H, nq, lut_width], COUNT [B, H, nq], contiguous
    count = tl.load(COUNT + row)
    lut_row = LUT + row * lut_width
    for t in range(0, count):
        j = tl.load(lut_row + t)
        start_n = j * BLOCK_N
        if start_n + BLOCK_N <= seq_len:
            acc, l_i, m_i = _attend_tile(
                acc, l_i, m_i, q8, qc, k_ptrs + start_n * D, k_scale_ptr + j, vt_ptrs + start_n, VS, offs_n,
                start_n, seq_len, DQK, D, BLOCK_M, BLOCK_N, False, False, EMULATE_FP8, False,
            )
        else:  # the ragged last key block
            acc, l_i, m_i = _attend_tile(
                acc, l_i, m_i, q8, qc, k_ptrs + start_n * D, k_scale_ptr + j, vt_ptrs + start_n, VS, offs_n,
                start_n, seq_len, DQK, D, BLOCK_M, BLOCK_N, True, False, EMULATE_FP8, False,
            )

    vs = tl.load(VS + bh * D + offs_d)
    seen = l_i > 0
    norm = tl.where(seen, 1.0 / tl.where(seen, l_i, 1.0), 0.0)  # rows with no selected block: Oˢ = 0
    out = acc * norm[:, None] * vs[None, :]

    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    out = _alpha_mix_linear(out, q, HM, ALPHA, row, h, qblock, num_query_blocks, count, num_key_blocks, offs_d, D)
    tl.store(OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :],
             out.to(OUT.dtype.element_ty), mask=row_ok[:, None])
    # l is in units of 448·P̃: lse = (m + log2(l) − log2 448) · ln 2 (natural log, of the unquantised P̃ sum)
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0)) - LOG2_FP8_MAX) / 1.4426950408889634,
                   float("-inf"))
    tl.store(LSE + b * stride_lb + h * stride_lh + offs_m * stride_lq, lse, mask=row_ok)


def sla2_lowbit_forward(q, k, v, lut, count, alpha, block_q: int, block_k: int, scale=None, linear_state=None,
                        block_m: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
                        tail_k=None, tail_v=None, tail_mask=None):
    """SLA2 forward with the QAT low-bit sparse branch: out = α·Oˢ + (1 − α)·Oˡ.

    q, k, v: [B, S, H, D] (D contiguous); lut: int [B, H, nq, width] key-block indices per router query block (first
    `count` entries used, as from `router.sla_router`); count: int [B, H, nq]; alpha: [H, nq] mixing weights;
    block_q: the router query block (also Q's INT8 quantisation block); block_k: the router key block (also K's INT8
    quantisation block and the kernel's key tile); scale defaults to D**-0.5; linear_state = `sla_linear_states(k, v,
    lut, count, block_k)` (computed if None); block_m: query rows per program, must divide block_q (default
    min(block_q, 128)). Oˢ: INT8 Q·Kᵀ (smoothed K) and FP8 P·V (P̃ with the fixed scale 448, per-channel V) over the
    LUT blocks, fp32 accumulation; Oˡ as in `sla_forward`. Tail keys are not supported (ValueError).
    Returns (out [B, S, H, D] in q.dtype, lse [B, H, S] fp32): lse is the natural log of the sparse branch's
    (unquantised P̃) softmax sum over the smoothed keys, i.e. the exact lse minus the per-row constant
    scale·q·mean(K) (what the low-bit reference's lse is too). Forward only."""
    if tail_k is not None or tail_v is not None or tail_mask is not None:
        raise ValueError("sla2_lowbit_forward does not support tail keys (tail_k / tail_v / tail_mask); "
                         "use sla_forward for the unquantized path with a tail")
    batch, seq_len, heads, dim = q.shape
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} must match")
    nq, nk = triton.cdiv(seq_len, block_q), triton.cdiv(seq_len, block_k)
    if tuple(lut.shape[:-1]) != (batch, heads, nq) or tuple(count.shape) != (batch, heads, nq):
        raise ValueError(f"lut / count must be [B, H, nq(, width)] with nq = {nq}, got {tuple(lut.shape)} / "
                         f"{tuple(count.shape)}")
    if tuple(alpha.shape) != (heads, nq):
        raise ValueError(f"alpha must be [H, nq] = {(heads, nq)}, got {tuple(alpha.shape)}")
    block_m = block_m or min(block_q, 128)
    _check_block("block_m", block_m)
    if block_q % block_m:
        raise ValueError(f"kernel tile {block_m} must divide the router query block {block_q}")
    if q.stride(-1) != 1:
        raise ValueError("q needs a contiguous last dim")

    lut, count = lut.to(torch.int32).contiguous(), count.to(torch.int32).contiguous()
    alpha = alpha.to(device=q.device, dtype=torch.float32).contiguous()
    h_m = linear_state if linear_state is not None else sla_linear_states(k, v, lut, count, block_k)
    h_m = h_m.contiguous()
    q8, q_scale, k8, k_scale = quantize_qk(q, k, block_q, block_k, scale)
    v8_t, v_scale = quantize_v_fp8(v, pad_to=max(V_PAD, block_k))

    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, seq_len, device=q.device, dtype=torch.float32)
    if num_warps is None:
        num_warps = 8 if dim >= 128 and block_m >= 128 else 4
    grid = (triton.cdiv(seq_len, block_m), batch * heads)
    _sla2_lowbit_kernel[grid](
        q, q8, q_scale, k8, k_scale, _fp8_arg(v8_t), v_scale, lut, count, h_m, alpha, out, lse,
        q.stride(0), q.stride(1), q.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1), lse.stride(2),
        seq_len, v8_t.shape[-1], heads, nq, nk, lut.shape[-1],
        D=dim, DQK=max(dim, 32), BLOCK_M=block_m, BLOCK_N=block_k, ROUTER_BLOCK_Q=block_q,
        EMULATE_FP8=_emulate_fp8(v_scale),
        num_warps=num_warps, num_stages=num_stages or 3,
    )
    return out, lse

