"""Triton low-bit dense attention forward (SageAttention-style): INT8 Q·Kᵀ, FP8 e4m3 P·V, fp32 accumulation.

Same math as `reference.lowbit_attention` (the oracle), organised for the GPU:
- `quantize_qk`: K is smoothed (minus its mean over the valid tokens, per (b, h, d)), then Q and K are quantised to
  INT8 with one symmetric scale per token block (block_q / block_k tokens, ragged last block) and head; the softmax
  scale·log2(e) is folded into Q's scales so the attention kernel works in the log2 domain with exp2.
- `quantize_v_fp8`: V to FP8 e4m3 with one scale per channel (amax over the valid tokens / 448), stored transposed
  [B, H, D, S_pad] so that the P·V `tl.dot` reads both 8-bit operands K-contiguous (the fast layout on Hopper).
- `lowbit_attention`: one program per (query tile, batch·head), online softmax over key tiles of block_k tokens:
  S = (q8·k8ᵀ as int32)·s_q·s_k, P̃ = exp2(S - m) quantised to FP8 with the fixed scale 448, acc += P̂·V̂ in fp32,
  l summed from the unquantised P̃; the 448 and V's channel scales are undone in the epilogue.

Differences from the reference that the tolerance absorbs: the reference quantises P̃ against the global row max,
the kernel against the running one, so the P̂ of tiles seen before a row's maximum is rounded at other points of
the FP8 grid (rel-L1 kernel vs reference ≈ 0.008–0.018 on random normal inputs, ≈ 0.004 on realistic ones; both
are ≈ 0.036 / 0.008 from exact attention), and its float sums run in another order.

Per-score work is what bounds this kernel (the 8-bit MMAs are twice as fast as bf16, the exp2 and the conversions
are not), so the tile step is trimmed:
- int32 -> fp32 costs no conversion instruction: the Q·Kᵀ MMA accumulates onto the bits of 1.5·2^23, so the fp32
  view of the result is 1.5·2^23 + q8·k8ᵀ exactly; the offset and the scales fold into one FMA per score.
- the 448 is folded into the exponent: exp2(S - (m - log2 448)) = 448·P̃, and l is summed in the same units, so it
  cancels in acc / l (mathematically the same as quantising P̃·448).
- fast_exp=True (CUDA) takes exp2 in packed fp16 (ex2.approx.f16x2); it measured slower, so it is off by default.
H100, Wan 480p (1×12×32760×128, bf16), kernel alone, cuDNN SDPA 11.7–11.8 ms in the same runs: block_m 128 /
block_k 64 / 8 warps (the defaults) 11.1 ms (1.07×); block_k 128: 9.75 ms (1.21×); block_m 64, block_k 128, 4 warps,
fast_exp: 9.36 ms (1.27×). The two quantisation passes add 0.34 ms.

FP8 under the Triton interpreter (CPU tests): fp8 tensors travel as uint8 views and are bitcast in the kernel, and
the fp32 -> e4m3 conversion is done by `_e4m3_bits` (round to nearest even, exact) because the interpreter's own
cast is wrong near binade tops and at ties. On CUDA the hardware conversion (RN, satfinite) is used.

Layout: q, k, v [B, S, H, D] with strides (S_q may differ from S_k); D a power of two, 16..128.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import reference
from .tiles import load_rows, tile_program

LOG2E = 1.4426950408889634
FP8_E4M3_MAX = 448.0
V_PAD = 64  # V's transposed token axis is padded to a multiple of this (16-byte aligned rows, whole key tiles)
STATS_BLOCK = 64  # tokens per step of the per-channel reductions
STATS_CHUNK = 1024  # tokens per program of the per-channel reductions (partials are summed in torch)


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _e4m3_bits(x):
    """uint8 FP8 e4m3fn codes of fp32 x (|x| <= 448, finite), rounded to nearest even, subnormals included.

    With e = max(floor(log2 |x|), -6) the e4m3 grid step around x is 2^(e-3) and n = rne(|x| / 2^(e-3)) in [0, 16];
    the code is ((e + 6) << 3) + n for normals and subnormals alike (n = 16 carries into the next binade)."""
    a = tl.abs(x)
    e = ((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    e = tl.maximum(e, -6)
    step = ((e + 124) << 23).to(tl.float32, bitcast=True)  # 2^(e - 3), exact
    n = ((a / step + 8388608.0) - 8388608.0).to(tl.int32)  # + 2^23 rounds to an integer, half to even
    code = ((e + 6) << 3) + n
    code = tl.where(x < 0, code | 0x80, code)
    return code.to(tl.uint8)


@triton.jit
def _to_fp8(x, EMULATE_FP8: tl.constexpr):
    """fp32 -> tl.float8e4nv (RN). x must already lie in [-448, 448]."""
    if EMULATE_FP8:
        return _e4m3_bits(x).to(tl.float8e4nv, bitcast=True)
    else:
        return x.to(tl.float8e4nv)


@triton.jit
def _round_half_away(x):
    # truncation towards zero of x ± 0.5 == sign(x)·floor(|x| + 0.5)
    return (x + tl.where(x >= 0, 0.5, -0.5)).to(tl.int32).to(tl.float32)


def _emulate_fp8(t: torch.Tensor) -> bool:
    return t.device.type != "cuda"


def _fp8_arg(t: torch.Tensor) -> torch.Tensor:
    """An fp8 tensor as the kernels take it: itself on CUDA, a uint8 view under the interpreter."""
    return t.view(torch.uint8) if _emulate_fp8(t) else t


def _check_dim(dim: int) -> None:
    if dim < 16 or dim > 128 or dim & (dim - 1):
        raise ValueError(f"head dim must be a power of two in [16, 128], got {dim}")


def _check_block(name: str, block: int) -> None:
    if block < 16 or block & (block - 1):
        raise ValueError(f"{name} must be a power of two >= 16, got {block}")


# ----------------------------------------------------------------------------------------------------------------
# Per-channel reductions over tokens (K mean, V amax)
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _channel_partials_kernel(
    X, VALID, OUT,
    stride_xb, stride_xs, stride_xh,
    stride_vb, stride_vs,
    seq_len, heads, num_chunks,
    D: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr, ABSMAX: tl.constexpr, HAS_VALID: tl.constexpr,
):
    """Grid (num_chunks, B·H): OUT[b·h, chunk, :] = Σ x (or max |x|) over the chunk's valid tokens, fp32."""
    chunk = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    offs_d = tl.arange(0, D)
    total = tl.zeros((D,), dtype=tl.float32)
    for start in range(chunk * CHUNK, chunk * CHUNK + CHUNK, BLOCK):
        offs_s = start + tl.arange(0, BLOCK)
        ok = offs_s < seq_len
        if HAS_VALID:
            ok = ok & (tl.load(VALID + b * stride_vb + offs_s * stride_vs, mask=ok, other=0) != 0)
        x = tl.load(X + b * stride_xb + h * stride_xh + offs_s[:, None] * stride_xs + offs_d[None, :],
                    mask=ok[:, None], other=0.0).to(tl.float32)
        if ABSMAX:
            total = tl.maximum(total, tl.max(tl.abs(x), 0))
        else:
            total += tl.sum(x, 0)
    tl.store(OUT + (bh * num_chunks + chunk) * D + offs_d, total)


def _channel_reduce(x: torch.Tensor, valid: torch.Tensor | None, absmax: bool) -> torch.Tensor:
    """x [B, S, H, D] -> fp32 [B, H, D]: Σ over the valid tokens (absmax=False) or their max |x| (absmax=True)."""
    batch, seq_len, heads, dim = x.shape
    chunks = triton.cdiv(seq_len, STATS_CHUNK)
    partials = torch.empty(batch * heads, chunks, dim, device=x.device, dtype=torch.float32)
    valid_arg = valid if valid is not None else x
    _channel_partials_kernel[(chunks, batch * heads)](
        x, valid_arg, partials,
        x.stride(0), x.stride(1), x.stride(2),
        valid.stride(0) if valid is not None else 0, valid.stride(1) if valid is not None else 0,
        seq_len, heads, chunks,
        D=dim, BLOCK=STATS_BLOCK, CHUNK=STATS_CHUNK, ABSMAX=absmax, HAS_VALID=valid is not None,
    )
    reduced = partials.amax(1) if absmax else partials.sum(1)
    return reduced.reshape(batch, heads, dim)


# ----------------------------------------------------------------------------------------------------------------
# Quantisation
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _quant_int8_kernel(
    X, MEAN, VALID, OUT, SCALE,
    stride_xb, stride_xs, stride_xh,
    stride_vb, stride_vs,
    seq_len, heads, num_blocks, scale_mult,
    D: tl.constexpr, BLOCK: tl.constexpr, HAS_MEAN: tl.constexpr, HAS_VALID: tl.constexpr,
):
    """Grid (num_blocks, B·H): block `blk` of x (minus MEAN[b·h] if HAS_MEAN; invalid tokens zeroed) -> INT8 codes in
    OUT [B, H, S, D] and SCALE[b·h, blk] = amax / 127 · scale_mult (the step times the folded factor)."""
    blk, bh, b, h, offs_s, offs_d = tile_program(heads, BLOCK, D)
    ok = offs_s < seq_len
    if HAS_VALID:
        ok = ok & (tl.load(VALID + b * stride_vb + offs_s * stride_vs, mask=ok, other=0) != 0)
    x = load_rows(X, b, h, offs_s, offs_d, stride_xb, stride_xs, stride_xh, ok).to(tl.float32)
    if HAS_MEAN:
        x = tl.where(ok[:, None], x - tl.load(MEAN + bh * D + offs_d)[None, :], 0.0)
    amax = tl.max(tl.max(tl.abs(x), 1), 0)
    step = tl.where(amax > 0, amax / 127.0, 1.0)
    codes = tl.minimum(tl.maximum(_round_half_away(x / step), -127.0), 127.0)
    tl.store(OUT + bh * seq_len * D + offs_s[:, None] * D + offs_d[None, :], codes.to(tl.int8),
             mask=(offs_s < seq_len)[:, None])
    tl.store(SCALE + bh * num_blocks + blk, step * scale_mult)


def _quantize_int8(x, block, scale_mult, mean=None, valid=None):
    batch, seq_len, heads, dim = x.shape
    blocks = triton.cdiv(seq_len, block)
    codes = torch.empty(batch, heads, seq_len, dim, device=x.device, dtype=torch.int8)
    scales = torch.empty(batch, heads, blocks, device=x.device, dtype=torch.float32)
    _quant_int8_kernel[(blocks, batch * heads)](
        x, mean if mean is not None else scales, valid if valid is not None else x, codes, scales,
        x.stride(0), x.stride(1), x.stride(2),
        valid.stride(0) if valid is not None else 0, valid.stride(1) if valid is not None else 0,
        seq_len, heads, blocks, scale_mult,
        D=dim, BLOCK=block, HAS_MEAN=mean is not None, HAS_VALID=valid is not None,
    )
    return codes, scales


def _key_valid(attn_mask, batch: int, keys: int, device) -> torch.Tensor | None:
    """The reference's key-padding rule ([B, Sk] or [B, 1, 1, Sk] bool, True = keep) as a contiguous bool [B, Sk]."""
    valid = reference._key_padding(attn_mask, batch, keys)
    return None if valid is None else valid.to(device).contiguous()


def quantize_qk(q: torch.Tensor, k: torch.Tensor, block_q: int = 128, block_k: int = 64, scale: float | None = None,
                attn_mask: torch.Tensor | None = None):
    """INT8 Q and smoothed INT8 K with one scale per (b, h, token block).

    q [B, Sq, H, D], k [B, Sk, H, D] (any float dtype, any strides with D contiguous); attn_mask: optional bool
    key-padding mask [B, Sk] / [B, 1, 1, Sk] (True = keep): masked keys are left out of the key mean and the scales and
    get code 0. Returns
      q8 int8 [B, H, Sq, D], q_scale fp32 [B, H, ceil(Sq / block_q)]: q ≈ q8 · q_scale / (scale·log2 e),
      k8 int8 [B, H, Sk, D], k_scale fp32 [B, H, ceil(Sk / block_k)]: k - mean(k) ≈ k8 · k_scale,
    so that (q8·k8ᵀ)·q_scale·k_scale are the log2-domain scores. Codes: round half away from zero, clamp ±127 (as
    `reference.fake_quant_int8`). scale defaults to D**-0.5."""
    _check_dim(q.shape[-1])
    _check_block("block_q", block_q)
    _check_block("block_k", block_k)
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        raise ValueError("q and k need a contiguous last dim")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    valid = _key_valid(attn_mask, k.shape[0], k.shape[1], k.device)
    key_sum = _channel_reduce(k, valid, absmax=False)
    count = k.shape[1] if valid is None else valid.sum(1).clamp(min=1).to(torch.float32)[:, None, None]
    key_mean = (key_sum / count).contiguous()
    q8, q_scale = _quantize_int8(q, block_q, scale * LOG2E)
    k8, k_scale = _quantize_int8(k, block_k, 1.0, mean=key_mean, valid=valid)
    return q8, q_scale, k8, k_scale


@triton.jit
def _quant_v_fp8_kernel(
    V, VALID, VSCALE, OUT,
    stride_vb, stride_vs, stride_vh,
    stride_mb, stride_ms,
    seq_len, heads, padded_len,
    D: tl.constexpr, BLOCK: tl.constexpr, HAS_VALID: tl.constexpr, EMULATE_FP8: tl.constexpr,
):
    """Grid (padded_len / BLOCK, B·H): tokens of the block -> e4m3 codes of v / VSCALE[b·h] (invalid and padding
    tokens 0), stored transposed into OUT [B, H, D, padded_len]."""
    blk, bh, b, h, offs_s, offs_d = tile_program(heads, BLOCK, D)
    ok = offs_s < seq_len
    if HAS_VALID:
        ok = ok & (tl.load(VALID + b * stride_mb + offs_s * stride_ms, mask=ok, other=0) != 0)
    x = load_rows(V, b, h, offs_s, offs_d, stride_vb, stride_vs, stride_vh, ok).to(tl.float32)
    step = tl.load(VSCALE + bh * D + offs_d)
    scaled = tl.minimum(tl.maximum(x / step[None, :], -448.0), 448.0)
    codes = tl.trans(_to_fp8(scaled, EMULATE_FP8))  # [D, BLOCK]
    if EMULATE_FP8:
        codes = codes.to(tl.uint8, bitcast=True)
    tl.store(OUT + bh * D * padded_len + offs_d[:, None] * padded_len + offs_s[None, :], codes)


def quantize_v_fp8(v: torch.Tensor, attn_mask: torch.Tensor | None = None, pad_to: int = V_PAD):
    """FP8 e4m3 V with one scale per (b, h, channel), transposed.

    v [B, S, H, D] -> (v8_t float8_e4m3fn [B, H, D, S_pad], v_scale fp32 [B, H, D]) with S_pad = S rounded up to a
    multiple of pad_to (a multiple of 64), padding tokens 0; v ≈ v8_tᵀ · v_scale with v_scale = amax over the tokens /
    448 (1 for an all-zero channel), as `reference.fake_quant_fp8(v, dim=tokens)`. attn_mask: optional key-padding
    mask (True = keep); masked tokens are left out of the amax and get code 0."""
    batch, seq_len, heads, dim = v.shape
    _check_dim(dim)
    if pad_to % V_PAD:
        raise ValueError(f"pad_to must be a multiple of {V_PAD}, got {pad_to}")
    if v.stride(-1) != 1:
        raise ValueError("v needs a contiguous last dim")
    valid = _key_valid(attn_mask, batch, seq_len, v.device)
    amax = _channel_reduce(v, valid, absmax=True)
    v_scale = torch.where(amax > 0, amax / FP8_E4M3_MAX, torch.ones_like(amax)).contiguous()
    padded_len = triton.cdiv(seq_len, pad_to) * pad_to
    v8_t = torch.empty(batch, heads, dim, padded_len, device=v.device, dtype=torch.float8_e4m3fn)
    _quant_v_fp8_kernel[(padded_len // V_PAD, batch * heads)](
        v, valid if valid is not None else v, v_scale, _fp8_arg(v8_t),
        v.stride(0), v.stride(1), v.stride(2),
        valid.stride(0) if valid is not None else 0, valid.stride(1) if valid is not None else 0,
        seq_len, heads, padded_len,
        D=dim, BLOCK=V_PAD, HAS_VALID=valid is not None, EMULATE_FP8=_emulate_fp8(v),
    )
    return v8_t, v_scale


# ----------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _exp2_f16(x):
    """exp2 of fp32 x as fp16, two per MUFU op (ex2.approx.f16x2): ample for an FP8 (3-bit mantissa) operand."""
    return tl.inline_asm_elementwise("ex2.approx.f16x2 $0, $1;", "=r,r", [x.to(tl.float16)], dtype=tl.float16,
                                     is_pure=True, pack=2)


@triton.jit
def _attend_tile(
    acc, l_i, m_i, q8, qc, k_ptrs, k_scale_ptr, vt_ptrs, bias_ptr, offs_n, start_n, k_len,
    DQK: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, LAST: tl.constexpr,
    HAS_BIAS: tl.constexpr, EMULATE_FP8: tl.constexpr, FAST_EXP: tl.constexpr,
):
    """One key tile of the online softmax. `LAST` (the ragged last tile) masks the K load and the scores beyond
    k_len; HAS_BIAS adds the key-padding bias (0 / -inf, padded with -inf to the V padding)."""
    key_ok = (start_n + offs_n) < k_len
    if LAST or (DQK != D):
        ld_mask = (tl.arange(0, DQK) < D)[None, :]
        if LAST:
            ld_mask = ld_mask & key_ok[:, None]
        k8 = tl.load(k_ptrs, mask=ld_mask, other=0)
    else:
        k8 = tl.load(k_ptrs)
    # int32 -> fp32 without a conversion instruction (those run at the exp2 rate): the MMA accumulates onto the bits
    # of 1.5·2^23, so the fp32 read of the result is 1.5·2^23 + q8·k8ᵀ exactly (|q8·k8ᵀ| <= 127²·128 < 2^22).
    magic = tl.full((BLOCK_M, BLOCK_N), 0x4B400000, dtype=tl.int32)
    s = tl.dot(q8, tl.trans(k8), magic, out_dtype=tl.int32).to(tl.float32, bitcast=True)
    if HAS_BIAS:
        s += tl.load(bias_ptr + start_n + offs_n)[None, :]
    elif LAST:
        s = tl.where(key_ok[None, :], s, float("-inf"))
    c = qc * tl.load(k_scale_ptr)  # log2-domain score per integer step, per row (> 0)
    m_new = tl.maximum(m_i, (tl.max(s, 1) - 12582912.0) * c)
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no valid key so far
    # exp2(S - m + log2 448) = 448·P̃ in [0, 448]: the FP8 operand directly; l is summed in the same units.
    # S - m + log2 448 = s·c - (1.5·2^23·c + m - log2 448): one FMA per score.
    shift = 12582912.0 * c + m_use - 8.807354922057604
    x = s * c[:, None] - shift[:, None]
    alpha = tl.exp2(m_i - m_use)
    if FAST_EXP:
        p16 = _exp2_f16(x)
        l_i = l_i * alpha + tl.sum(p16.to(tl.float32), 1)
        p8 = p16.to(tl.float8e4nv)
    else:
        p = tl.exp2(x)
        l_i = l_i * alpha + tl.sum(p, 1)
        p8 = _to_fp8(p, EMULATE_FP8)
    vt = tl.load(vt_ptrs)  # [D, BLOCK_N] 8-bit, keys contiguous; padding tokens are 0
    if EMULATE_FP8:
        vt = vt.to(tl.float8e4nv, bitcast=True)
    acc = acc * alpha[:, None] + tl.dot(p8, tl.trans(vt))
    return acc, l_i, m_new


@triton.jit
def _lowbit_attn_kernel(
    Q8, QS, K8, KS, VT, VS, BIAS, OUT,
    stride_ob, stride_os, stride_oh,
    q_len, k_len, v_len, heads, q_blocks, k_blocks,
    D: tl.constexpr, DQK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, QUANT_BLOCK_Q: tl.constexpr,
    HAS_BIAS: tl.constexpr, EMULATE_FP8: tl.constexpr, FAST_EXP: tl.constexpr,
):
    tile, bh, b, h, offs_m, offs_d = tile_program(heads, BLOCK_M, D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_dk = tl.arange(0, DQK)  # the int8 dot needs K >= 32: D = 16 is read zero-padded
    row_ok = offs_m < q_len

    q_mask = row_ok[:, None] & (offs_dk < D)[None, :]
    q8 = tl.load(Q8 + (bh * q_len + offs_m[:, None]) * D + offs_dk[None, :], mask=q_mask, other=0)
    qc = tl.load(QS + bh * q_blocks + offs_m // QUANT_BLOCK_Q, mask=row_ok, other=1.0)  # one scale per row

    k_ptrs = K8 + (bh * k_len + offs_n[:, None]) * D + offs_dk[None, :]
    vt_ptrs = VT + (bh * D + offs_d[:, None]) * v_len + offs_n[None, :]
    k_scale_ptr = KS + bh * k_blocks
    bias_ptr = BIAS + b * v_len

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
    full_tiles = k_len // BLOCK_N
    for j in range(0, full_tiles):
        start_n = j * BLOCK_N
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q8, qc, k_ptrs + start_n * D, k_scale_ptr + j, vt_ptrs + start_n, bias_ptr, offs_n,
            start_n, k_len, DQK, D, BLOCK_M, BLOCK_N, False, HAS_BIAS, EMULATE_FP8, FAST_EXP,
        )
    if full_tiles * BLOCK_N < k_len:
        start_n = full_tiles * BLOCK_N
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q8, qc, k_ptrs + start_n * D, k_scale_ptr + full_tiles, vt_ptrs + start_n, bias_ptr,
            offs_n, start_n, k_len, DQK, D, BLOCK_M, BLOCK_N, True, HAS_BIAS, EMULATE_FP8, FAST_EXP,
        )

    vs = tl.load(VS + bh * D + offs_d)
    seen = l_i > 0
    norm = tl.where(seen, 1.0 / tl.where(seen, l_i, 1.0), 0.0)  # rows that saw no valid key return 0
    out = acc * norm[:, None] * vs[None, :]
    tl.store(OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :],
             out.to(OUT.dtype.element_ty), mask=row_ok[:, None])


def lowbit_attention(q, k, v, scale=None, attn_mask=None, block_q: int = 128, block_k: int = 64,
                     block_m: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
                     fast_exp: bool | None = None):
    """Low-bit dense attention forward: q [B, Sq, H, D], k / v [B, Sk, H, D] -> q.dtype [B, Sq, H, D].

    INT8 Q (per block_q tokens) and smoothed K (per block_k tokens, also the kernel's key tile), FP8 per-channel V,
    FP8 P with the fixed scale 448, fp32 accumulation; see the module docstring. attn_mask: None or a bool key-padding
    mask [B, Sk] / [B, 1, 1, Sk] (True = keep; masked keys stay out of the softmax, the key mean and every scale).
    block_m: query rows per program (default 128); num_warps / num_stages: Triton launch options (defaults 8 / 3
    for D = 128 at block_m 128, else 4 / 3). fast_exp: P̃ by the packed fp16 exp2 (CUDA only; off by default, it
    measured slower at block_m 128). scale defaults to D**-0.5. Forward only."""
    batch, q_len, heads, dim = q.shape
    k_len = k.shape[1]
    if k.shape != (batch, k_len, heads, dim) or v.shape != k.shape:
        raise ValueError(f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match")
    q8, q_scale, k8, k_scale = quantize_qk(q, k, block_q, block_k, scale, attn_mask)
    v8_t, v_scale = quantize_v_fp8(v, attn_mask, pad_to=max(V_PAD, block_k))
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    valid = _key_valid(attn_mask, batch, k_len, q.device)
    return lowbit_attention_quantized(q8, q_scale, k8, k_scale, v8_t, v_scale, out, valid, block_q, block_k, block_m,
                                      num_warps, num_stages, fast_exp)


def lowbit_attention_quantized(q8, q_scale, k8, k_scale, v8_t, v_scale, out, key_valid=None, block_q: int = 128,
                               block_k: int = 64, block_m: int | None = None, num_warps: int | None = None,
                               num_stages: int | None = None, fast_exp: bool | None = None):
    """The attention kernel alone, on `quantize_qk` / `quantize_v_fp8` outputs made with the same block_q / block_k
    (block_k is also the key tile; v8_t must be padded to a multiple of it); writes and returns `out` [B, Sq, H, D]
    (any float dtype, D contiguous). key_valid: None or bool [B, Sk] (True = keep), the mask used to quantise."""
    batch, heads, q_len, dim = q8.shape
    k_len = k8.shape[2]
    if q_scale.shape[-1] != triton.cdiv(q_len, block_q) or k_scale.shape[-1] != triton.cdiv(k_len, block_k):
        raise ValueError("q_scale / k_scale were not made with these block_q / block_k")
    if v8_t.shape[-1] % block_k:
        raise ValueError(f"v8_t's token axis ({v8_t.shape[-1]}) is not padded to a multiple of block_k = {block_k}")
    block_m = block_m or 128
    _check_block("block_m", block_m)
    v_len = v8_t.shape[-1]
    if key_valid is not None:
        bias = torch.full((batch, v_len), float("-inf"), device=q8.device, dtype=torch.float32)
        bias[:, :k_len].masked_fill_(key_valid.to(q8.device), 0.0)
    else:
        bias = q_scale  # unused pointer
    if num_warps is None:
        num_warps = 8 if dim >= 128 and block_m >= 128 else 4
    emulate = _emulate_fp8(v_scale)
    fast_exp = bool(fast_exp)
    if fast_exp and emulate:
        raise ValueError("fast_exp needs CUDA (inline PTX)")
    grid = (triton.cdiv(q_len, block_m), batch * heads)
    _lowbit_attn_kernel[grid](
        q8, q_scale, k8, k_scale, _fp8_arg(v8_t), v_scale, bias, out,
        out.stride(0), out.stride(1), out.stride(2),
        q_len, k_len, v_len, heads, q_scale.shape[-1], k_scale.shape[-1],
        D=dim, DQK=max(dim, 32), BLOCK_M=block_m, BLOCK_N=block_k, QUANT_BLOCK_Q=block_q,
        HAS_BIAS=key_valid is not None, EMULATE_FP8=emulate, FAST_EXP=fast_exp,
        num_warps=num_warps, num_stages=num_stages or 3,
    )
    return out
