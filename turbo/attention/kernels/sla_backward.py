"""Backward of the SLA / SLA2 forward kernels.

The sparse softmax part goes to the Triton FA2-style kernels in `sparse_backward.py` (dQ over the LUT, dK/dV over the
key-major index). The linear branch is small dense algebra per block, done with batched matmuls:
    Oˡ = N / den, N = φQ·H_i, den = φQ·Z_i, with [H_i, Z_i] = Σ_j M_ij [h_j, z_j] (M = marginal mask)
    dN = dOˡ / den, dden = −rowsum(dOˡ ∘ Oˡ) / den
    dφQ = dN H_iᵀ + dden Z_iᵀ;   [dH_i, dZ_i] = φQ_iᵀ [dN, dden]
    [dh_j, dz_j] = Σ_i M_ij [dH_i, dZ_i]            (one GEMM with Mᵀ, like the forward)
    dφK = V dh_jᵀ + dz_j,  dV += φK dh_j;  then the softmax-over-D Jacobian for dQ, dK.
Everything is recomputed from q, k, v, the LUT and the LSE (no per-block state or Oˢ is kept between forward and
backward: one extra sparse forward pass replaces an activation-sized buffer).

linear_all (TurboDiffusion's form, Oˡ = φQ·H / (1e-5 + φQ·Z) with ONE global [H, Z] per batch·head, proj on every
row): `all_linear_backward`, the same algebra with the block mask all ones, as batched PyTorch over [B, H, S, D]
(O(S·D²), no per-block-row tensors; not the fused Triton path, on CUDA either)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .sla_forward import marginal_weights, sla_block_states, sla_forward
from .sparse_backward import block_sparse_attention_backward


def _blocks(x: Tensor, block: int) -> Tensor:
    """[B, S, H, D] -> [B, H, nb, block, D] fp32, zero-padded."""
    batch, seq_len, heads, dim = x.shape
    nb = -(-seq_len // block)
    x = F.pad(x.float(), (0, 0, 0, 0, 0, nb * block - seq_len))
    return x.reshape(batch, nb, block, heads, dim).permute(0, 3, 1, 2, 4)


def _unblocks(x: Tensor, seq_len: int) -> Tensor:
    """[B, H, nb, block, D] -> [B, S, H, D]."""
    batch, heads, nb, block, dim = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(batch, nb * block, heads, dim)[:, :seq_len]


def _matmul(a: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:
    """a @ b with operands in `dtype` (the inputs' half precision on the GPU: tensor cores, fp32 accumulation) and an
    fp32 result; fp32 inputs stay fp32 (the CPU / oracle path)."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.matmul(a.to(dtype), b.to(dtype)).float()
    return torch.matmul(a, b)


def _softmax_backward(phi: Tensor, dphi: Tensor) -> Tensor:
    return phi * (dphi - (dphi * phi).sum(-1, keepdim=True))


def linear_branch(q, k, v, lut, count, block_q: int, block_k: int):
    """Recompute the linear branch: returns (φQ blocks, H_i, Z_i, Oˡ blocks, has_marginal rows, marginal weights).

    Shapes: φQ, Oˡ [B, H, nq, block_q, D] fp32; H_i [B, H, nq, D, D]; Z_i [B, H, nq, D]; has_marginal
    [B, H, nq, block_q] bool; weights [B, H, nq, nk]."""
    dim = q.shape[-1]
    states = sla_block_states(k, v, block_k)
    weights = marginal_weights(lut, count, states.shape[2], states.dtype)
    summed = torch.matmul(weights, states).float()
    h_i = summed[..., : dim * dim].unflatten(-1, (dim, dim))
    z_i = summed[..., dim * dim:]
    phiq = torch.softmax(_blocks(q, block_q), dim=-1)
    num = _matmul(phiq, h_i, q.dtype)
    den = (phiq * z_i[..., None, :]).sum(-1)
    has_marginal = (den > 0) & (count < states.shape[2])[..., None]
    safe = torch.where(has_marginal, den, torch.ones_like(den))
    ol = torch.where(has_marginal[..., None], num / safe[..., None], 0.0)
    return phiq, h_i, z_i, ol, has_marginal, weights, safe


def linear_branch_backward(d_ol, q, k, v, block_q, block_k, phiq, h_i, z_i, ol, has_marginal, weights, den):
    """Gradients of Oˡ w.r.t. q, k, v. d_ol [B, H, nq, block_q, D] fp32 (zero on rows without marginal blocks).
    Returns (dq, dk, dv) [B, S, H, D] fp32."""
    dim, dtype = q.shape[-1], q.dtype
    d_num = torch.where(has_marginal[..., None], d_ol / den[..., None], 0.0)
    d_den = torch.where(has_marginal, -(d_ol * ol).sum(-1) / den, 0.0)
    d_phiq = _matmul(d_num, h_i.transpose(-1, -2), dtype) + d_den[..., None] * z_i[..., None, :]
    d_h = _matmul(phiq.transpose(-1, -2), d_num, dtype)  # [B, H, nq, D, D]
    d_z = (phiq * d_den[..., None]).sum(-2)  # [B, H, nq, D]
    d_states = _matmul(weights.transpose(-1, -2).float(), torch.cat([d_h.flatten(-2), d_z], dim=-1), dtype)
    d_hj = d_states[..., : dim * dim].unflatten(-1, (dim, dim))  # [B, H, nk, D, D]
    d_zj = d_states[..., dim * dim:]
    kb, vb = _blocks(k, block_k), _blocks(v, block_k)
    phik = torch.softmax(kb, dim=-1)
    valid = (torch.arange(kb.shape[2] * block_k, device=k.device) < k.shape[1]).view(1, 1, kb.shape[2], block_k, 1)
    phik = phik * valid
    d_phik = (_matmul(vb, d_hj.transpose(-1, -2), dtype) + d_zj[..., None, :]) * valid
    dv = _matmul(phik, d_hj, dtype)
    dk = _softmax_backward(phik, d_phik)
    dq = _softmax_backward(phiq, d_phiq)
    return _unblocks(dq, q.shape[1]), _unblocks(dk, k.shape[1]), _unblocks(dv, v.shape[1])


def all_linear_backward(grad_out, q, k, v, proj_weight, proj_bias=None, eps: float = 1e-5):
    """Gradients of proj(Oˡ) with Oˡ = φQ·H / (eps + φQ·Z), H = Σ_all φKᵀV, Z = Σ_all φK (every query row, every key).

    grad_out, q, k, v [B, S, H, D]. Returns (dq, dk, dv fp32 [B, S, H, D], d_proj_weight, d_proj_bias or None)."""
    dtype = q.dtype
    d_out = grad_out.float().transpose(1, 2)  # [B, H, S, D]
    phiq = torch.softmax(q.float().transpose(1, 2), dim=-1)
    phik = torch.softmax(k.float().transpose(1, 2), dim=-1)
    vh = v.float().transpose(1, 2)
    h_all = torch.matmul(phik.transpose(-1, -2), vh)  # [B, H, D, D]; sums over S stay fp32
    z_all = phik.sum(2)  # [B, H, D]
    den = eps + (phiq * z_all[:, :, None, :]).sum(-1)  # [B, H, S]
    ol = _matmul(phiq, h_all, dtype) / den[..., None]
    d_w = torch.einsum("bhso,bhsi->oi", d_out, ol).to(proj_weight.dtype)
    d_b = None if proj_bias is None else d_out.sum((0, 1, 2)).to(proj_bias.dtype)
    d_ol = torch.matmul(d_out, proj_weight.float())
    d_num = d_ol / den[..., None]
    d_den = -(d_ol * ol).sum(-1) / den
    d_phiq = _matmul(d_num, h_all.transpose(-1, -2), dtype) + d_den[..., None] * z_all[:, :, None, :]
    d_h = torch.matmul(phiq.transpose(-1, -2), d_num)  # [B, H, D, D]
    d_z = torch.matmul(d_den[:, :, None, :], phiq).squeeze(2)  # [B, H, D]
    d_phik = _matmul(vh, d_h.transpose(-1, -2), dtype) + d_z[:, :, None, :]
    dv = _matmul(phik, d_h, dtype)
    dq = _softmax_backward(phiq, d_phiq)
    dk = _softmax_backward(phik, d_phik)
    return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2), d_w, d_b


def sla_backward(grad_out, q, k, v, lse, lut, count, block_q, block_k, scale, proj_weight=None, proj_bias=None,
                 alpha=None, fused: bool | None = None, linear_all: bool = False):
    """Gradients of `sla_forward` (SLA: out = Oˢ + proj(Oˡ); SLA2: out = α·Oˢ + (1 − α)·Oˡ; neither: Oˢ).
    linear_all: SLA in TurboDiffusion's form (`all_linear_backward` for the linear branch; `fused` is ignored).

    grad_out [B, S, H, D]; lse [B, H, S] from the forward. `fused` picks the Triton linear-branch backward
    (`linear_backward.py`; default on CUDA) over the batched-torch one (default on CPU, the oracle). Returns
    (dq, dk, dv, d_proj_weight, d_proj_bias, d_alpha); entries that do not apply are None."""
    seq_len = q.shape[1]
    out_s, _ = sla_forward(q, k, v, lut, count, block_q, block_k, scale=scale)
    if proj_weight is None and alpha is None:
        dq, dk, dv = block_sparse_attention_backward(grad_out, q, k, v, out_s, lse, lut, count, block_q, block_k,
                                                     scale)
        return dq, dk, dv, None, None, None
    if linear_all:
        if alpha is not None:
            raise ValueError("linear_all is SLA's TurboDiffusion form: it takes proj_weight, not alpha")
        lq, lk, lv, d_w, d_b = all_linear_backward(grad_out, q, k, v, proj_weight, proj_bias)
        dq, dk, dv = block_sparse_attention_backward(grad_out, q, k, v, out_s, lse, lut, count, block_q, block_k,
                                                     scale)
        return ((dq.float() + lq).to(q.dtype), (dk.float() + lk).to(k.dtype), (dv.float() + lv).to(v.dtype),
                d_w, d_b, None)
    if q.is_cuda if fused is None else fused:
        from .linear_backward import linear_branch_backward_fused

        lq, lk, lv, d_w, d_b, d_alpha = linear_branch_backward_fused(
            grad_out, q, k, v, lut, count, block_q, block_k, proj_weight, alpha, out_s)
        if proj_bias is None:
            d_b = None
        d_out_s = grad_out if alpha is None else (grad_out.float() * _unblocks(
            alpha.float()[None, :, :, None, None].expand(q.shape[0], -1, -1, block_q, 1), seq_len)).to(q.dtype)
        dq, dk, dv = block_sparse_attention_backward(d_out_s, q, k, v, out_s, lse, lut, count, block_q, block_k,
                                                     scale)
        return ((dq.float() + lq).to(q.dtype), (dk.float() + lk).to(k.dtype), (dv.float() + lv).to(v.dtype),
                d_w, d_b, d_alpha)
    phiq, h_i, z_i, ol, has_marginal, weights, den = linear_branch(q, k, v, lut, count, block_q, block_k)
    d_out = _blocks(grad_out, block_q)
    d_w = d_b = d_alpha = None
    if alpha is None:
        d_lin = torch.where(has_marginal[..., None], d_out, 0.0)
        d_w = torch.einsum("bhnro,bhnri->oi", d_lin, ol).to(proj_weight.dtype)
        d_b = None if proj_bias is None else d_lin.sum((0, 1, 2, 3)).to(proj_bias.dtype)
        d_ol = torch.matmul(d_lin, proj_weight.float())
        d_out_s = grad_out
    else:
        a = alpha.float()[None, :, :, None, None]  # [1, H, nq, 1, 1]
        d_alpha = (d_out * (_blocks(out_s, block_q) - ol)).sum((0, 3, 4)).to(alpha.dtype)
        d_out_s = _unblocks(a * d_out, seq_len).to(q.dtype)
        d_ol = (1.0 - a) * d_out
    dq, dk, dv = block_sparse_attention_backward(d_out_s, q, k, v, out_s, lse, lut, count, block_q, block_k, scale)
    lq, lk, lv = linear_branch_backward(d_ol, q, k, v, block_q, block_k, phiq, h_i, z_i, ol, has_marginal, weights,
                                        den)
    return ((dq.float() + lq).to(q.dtype), (dk.float() + lk).to(k.dtype), (dv.float() + lv).to(v.dtype),
            d_w, d_b, d_alpha)
