"""Triton flash-attention forward with its forward-mode derivative (JVP) in the same pass, for rCM distillation.

Math (per batch·head; tangents tQ, tK, tV of Q, K, V):
    S = Q Kᵀ·scale, P = softmax(S), O = P V
    tS = (tQ Kᵀ + Q tKᵀ)·scale,  tO = P tV + (P ⊙ tS) V − rowsum(P ⊙ tS) ⊙ O

Streaming form (one program per (query tile, batch·head), key tiles in order): besides the running max m and sum
l = Σ p̃ (p̃ = exp(S − m)), four fp32 accumulators, all rescaled by exp(m_old − m_new) when the max moves:
    Õ = Σ p̃ V,   Ã = Σ p̃ tV,   B̃ = Σ (p̃ ⊙ (tS − c)) V,   r̃ = Σ rowsum(p̃ ⊙ (tS − c))
Epilogue: O = Õ / l,  tO = (Ã + B̃)/l − (r̃/l)·O,  lse = m + log l.

c is a per-row constant fixed on the first key tile (the p-weighted mean of tS over that tile). Any row constant
cancels exactly in tO (it shifts B̃/l by c·O and r̃/l by c), but centring tS makes p̃ ⊙ (tS − c) small before it is
rounded to the input dtype for the tensor-core product: the row-constant part of tS (e.g. tQ·mean(K)) otherwise
survives as bf16 rounding error ~2⁻⁸·|c|·|O| after the final subtraction. It costs nothing (no extra matmul).

Six matmuls per key tile (Q Kᵀ, tQ Kᵀ, Q tKᵀ, P V, P tV, (P⊙tS) V) instead of two for the plain forward.
Layout [B, S, H, D] with arbitrary strides; q's length may differ from k/v's (cross-attention); D a power of two in
16..128; ragged last tiles masked; fp32 accumulation; int64 addressing. Forward only: tangent outputs carry no
autograd (the rCM JVP pass runs under no_grad)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _tile_ptrs(PTR, offs, offs_d, stride_s, stride_d):
    """Pointers [len(offs), D] to rows `offs` (int64 token indices) of the (batch, head) slice starting at PTR;
    offs_d (int32 head-dim indices) times stride_d stays int32 (checked by the wrapper)."""
    return PTR + offs[:, None] * stride_s + offs_d[None, :] * stride_d


@triton.jit
def _jvp_step(q, tq, K, TK, V, TV, offs_n, offs_d, seq_k,
              stride_ks, stride_kd, stride_tks, stride_tkd, stride_vs, stride_vd, stride_tvs, stride_tvd,
              m_i, l_i, o_acc, a_acc, b_acc, r_acc, c_i, qk_scale, FIRST: tl.constexpr):
    """One key tile (token offsets `offs_n`, int64) of the streaming JVP forward; K, TK, V, TV point at the
    (batch, head) slice. Returns the updated (m, l, Õ, Ã, B̃, r̃, c). FIRST: the running state is empty (m = -inf)
    and c is set from this tile."""
    key_ok = offs_n < seq_k
    k = tl.load(_tile_ptrs(K, offs_n, offs_d, stride_ks, stride_kd), mask=key_ok[:, None], other=0.0)
    tk = tl.load(_tile_ptrs(TK, offs_n, offs_d, stride_tks, stride_tkd), mask=key_ok[:, None], other=0.0)
    # scores in the log2 domain (qk_scale = scale·log2 e)
    s = tl.dot(q, tl.trans(k)) * qk_scale
    s = tl.where(key_ok[None, :], s, float("-inf"))
    # tangent of the scores, natural units: (tQ Kᵀ + Q tKᵀ)·scale
    ts = (tl.dot(tq, tl.trans(k)) + tl.dot(q, tl.trans(tk))) * (qk_scale / LOG2E)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp2(s - m_new[:, None])  # masked keys: exp2(-inf) = 0
    if FIRST:
        c_i = tl.sum(p * ts, 1) / tl.sum(p, 1)
        rescale = tl.zeros_like(m_new)
    else:
        rescale = tl.exp2(m_i - m_new)
    h = tl.where(key_ok[None, :], p * (ts - c_i[:, None]), 0.0)
    v = tl.load(_tile_ptrs(V, offs_n, offs_d, stride_vs, stride_vd), mask=key_ok[:, None], other=0.0)
    tv = tl.load(_tile_ptrs(TV, offs_n, offs_d, stride_tvs, stride_tvd), mask=key_ok[:, None], other=0.0)
    l_i = l_i * rescale + tl.sum(p, 1)
    r_acc = r_acc * rescale + tl.sum(h, 1)
    p_lo = p.to(v.dtype)
    o_acc = tl.dot(p_lo, v, o_acc * rescale[:, None])
    a_acc = tl.dot(p_lo, tv, a_acc * rescale[:, None])
    b_acc = tl.dot(h.to(v.dtype), v, b_acc * rescale[:, None])
    return m_new, l_i, o_acc, a_acc, b_acc, r_acc, c_i


@triton.jit
def _jvp_attention_kernel(
    Q, K, V, TQ, TK, TV, OUT, TOUT, LSE,
    stride_qb, stride_qs, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_tqb, stride_tqs, stride_tqh, stride_tqd,
    stride_tkb, stride_tks, stride_tkh, stride_tkd,
    stride_tvb, stride_tvs, stride_tvh, stride_tvd,
    stride_ob, stride_os, stride_oh, stride_od,
    seq_q, seq_k, heads, qk_scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid (cdiv(Sq, BLOCK_M), B·H). OUT / TOUT [B, Sq, H, D] share strides; LSE [B, H, Sq] contiguous fp32."""
    tile = tl.program_id(0).to(tl.int64)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // heads
    h = bh % heads
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N).to(tl.int64)
    offs_d = tl.arange(0, D)  # int32: the wrapper keeps D·stride_d < 2³¹
    row_ok = offs_m < seq_q

    q = tl.load(_tile_ptrs(Q + b * stride_qb + h * stride_qh, offs_m, offs_d, stride_qs, stride_qd),
                mask=row_ok[:, None], other=0.0)
    tq = tl.load(_tile_ptrs(TQ + b * stride_tqb + h * stride_tqh, offs_m, offs_d, stride_tqs, stride_tqd),
                 mask=row_ok[:, None], other=0.0)
    K += b * stride_kb + h * stride_kh
    TK += b * stride_tkb + h * stride_tkh
    V += b * stride_vb + h * stride_vh
    TV += b * stride_tvb + h * stride_tvh
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    r_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    c_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    o_acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
    a_acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
    b_acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
    # the first key tile (seq_k >= 1, so it holds a real key for every row) fixes the centring constant c
    m_i, l_i, o_acc, a_acc, b_acc, r_acc, c_i = _jvp_step(
        q, tq, K, TK, V, TV, offs_n, offs_d, seq_k,
        stride_ks, stride_kd, stride_tks, stride_tkd, stride_vs, stride_vd, stride_tvs, stride_tvd,
        m_i, l_i, o_acc, a_acc, b_acc, r_acc, c_i, qk_scale, True)
    for start in range(BLOCK_N, seq_k, BLOCK_N):
        m_i, l_i, o_acc, a_acc, b_acc, r_acc, c_i = _jvp_step(
            q, tq, K, TK, V, TV, start + offs_n, offs_d, seq_k,
            stride_ks, stride_kd, stride_tks, stride_tkd, stride_vs, stride_vd, stride_tvs, stride_tvd,
            m_i, l_i, o_acc, a_acc, b_acc, r_acc, c_i, qk_scale, False)

    inv_l = 1.0 / l_i
    out = o_acc * inv_l[:, None]
    t_out = (a_acc + b_acc) * inv_l[:, None] - (r_acc * inv_l)[:, None] * out
    o_base = b * stride_ob + h * stride_oh
    tl.store(_tile_ptrs(OUT + o_base, offs_m, offs_d, stride_os, stride_od), out.to(OUT.dtype.element_ty),
             mask=row_ok[:, None])
    tl.store(_tile_ptrs(TOUT + o_base, offs_m, offs_d, stride_os, stride_od), t_out.to(TOUT.dtype.element_ty),
             mask=row_ok[:, None])
    lse = (m_i + tl.log2(l_i)) * LN2
    tl.store(LSE + bh * seq_q + offs_m, lse, mask=row_ok)


def launch_config(dim: int, dtype: torch.dtype = torch.bfloat16) -> tuple[int, int, int, int]:
    """(block_m, block_n, num_warps, num_stages) per head dim. Each program holds q, tq and three [block_m, D] fp32
    accumulators, ~2.5× a flash forward's registers, so D = 128 takes half the query rows of D ≤ 64.
    D = 128 from `benchmarks/jvp_attention.py`'s sweep on an H200 (2026-11-30: 307 TFLOPS vs 221 for (64, 64, 8, 2);
    (128, 64, ·, ≥2) exceed shared memory); D ≤ 64 is not swept yet."""
    if dim <= 64:
        return 128, 64, 8, 3
    return 128, 32, 8, 3


def check_jvp_inputs(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor) -> None:
    """One clear error at the boundary instead of a failure (or a silent out-of-bounds read) inside the kernel."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"expected [B, S, H, D] tensors, got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    batch, _, heads, dim = q.shape
    if k.shape != v.shape or k.shape[0] != batch or k.shape[2:] != q.shape[2:]:
        raise ValueError(f"k and v must be [B, Sk, H, D] with q's B, H, D: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    for name, x, t in (("q", q, tq), ("k", k, tk), ("v", v, tv)):
        if t.shape != x.shape:
            raise ValueError(f"tangent t{name} {tuple(t.shape)} must have {name}'s shape {tuple(x.shape)}")
    if dim & (dim - 1) or not 16 <= dim <= 128:
        raise ValueError(f"JVP attention kernel needs a power-of-two head dim in 16..128, got {dim}")
    if q.shape[1] == 0 or k.shape[1] == 0:
        raise ValueError("JVP attention kernel needs non-empty q and k/v sequences")
    tensors = (q, k, v, tq, tk, tv)
    if any(x.dtype != q.dtype for x in tensors) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q, k, v and tangents must share one dtype of fp16/bf16/fp32, got "
                         f"{[x.dtype for x in tensors]}")
    if any(x.device != q.device for x in tensors):
        raise ValueError("q, k, v and tangents must be on one device")


def jvp_attention_forward(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor,
                          scale: float | None = None, block_m: int | None = None, block_n: int | None = None,
                          num_warps: int | None = None, num_stages: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Softmax attention and its JVP in one pass.

    q, tq: [B, Sq, H, D]; k, v, tk, tv: [B, Sk, H, D] (any strides, one dtype of fp16/bf16/fp32; Sq may differ from
    Sk); scale defaults to D^-0.5. Returns (o [B, Sq, H, D] q.dtype, t_o [B, Sq, H, D] q.dtype = d o along the
    tangents, lse [B, H, Sq] fp32 natural-log log-sum-exp of the scaled scores). No autograd through the outputs."""
    check_jvp_inputs(q, k, v, tq, tk, tv)
    batch, seq_q, heads, dim = q.shape
    seq_k = k.shape[1]
    scale = dim ** -0.5 if scale is None else float(scale)
    # the kernel indexes the head dim in int32: a (rare) layout with a huge head-dim stride gets a contiguous copy
    q, k, v, tq, tk, tv = (x if abs(x.stride(-1)) * dim < 2**31 else x.contiguous() for x in (q, k, v, tq, tk, tv))
    bm, bn, warps, stages = launch_config(dim, q.dtype)
    block_m, block_n = block_m or bm, block_n or bn
    if block_m < 16 or block_n < 16 or block_m & (block_m - 1) or block_n & (block_n - 1):
        raise ValueError(f"tiles must be powers of two >= 16, got block_m={block_m}, block_n={block_n}")
    out = torch.empty(batch, seq_q, heads, dim, device=q.device, dtype=q.dtype)
    t_out = torch.empty_like(out)
    lse = torch.empty(batch, heads, seq_q, device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(seq_q, block_m), batch * heads)
    _jvp_attention_kernel[grid](
        q, k, v, tq, tk, tv, out, t_out, lse,
        *q.stride(), *k.stride(), *v.stride(), *tq.stride(), *tk.stride(), *tv.stride(), *out.stride(),
        seq_q, seq_k, heads, scale * 1.4426950408889634,
        D=dim, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps or warps, num_stages=num_stages or stages,
    )
    return out, t_out, lse


@torch.library.custom_op("turbo::jvp_attention", mutates_args=())
def jvp_attention_op(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor,
                     scale: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """`jvp_attention_forward` as an op: (o [B, Sq, H, D], t_o [B, Sq, H, D] q.dtype, lse [B, H, Sq] fp32)."""
    return jvp_attention_forward(q, k, v, tq, tk, tv, scale)


@jvp_attention_op.register_fake
def _(q, k, v, tq, tk, tv, scale=None):
    check_jvp_inputs(q, k, v, tq, tk, tv)
    batch, seq_q, heads, dim = q.shape
    out = q.new_empty((batch, seq_q, heads, dim))
    return out, torch.empty_like(out), q.new_empty((batch, heads, seq_q), dtype=torch.float32)


def kernel_jvp_fn(q: Tensor, k: Tensor, v: Tensor, tq: Tensor | None, tk: Tensor | None, tv: Tensor | None,
                  scale: float | None = None, chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """The kernel in the `jvp_fn` form of `turbo.distill.jvp_attention.attention_with_jvp`: a None tangent is zero,
    `chunk` is ignored (the kernel streams over keys); a tangent comes in its primal's dtype (under FSDP's bf16
    parameters the RoPE'd q/k tangents arrive in fp32 while q/k are bf16); returns (o, t_o) [B, Sq, H, D] in
    q.dtype."""
    tq, tk, tv = (torch.zeros_like(x) if t is None else t.to(x.dtype) for x, t in ((q, tq), (k, tk), (v, tv)))
    return jvp_attention_op(q, k, v, tq, tk, tv, scale)[:2]
