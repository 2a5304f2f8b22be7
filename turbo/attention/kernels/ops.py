"""torch.library custom ops over the Triton kernels: shapes are checked once here, fake (meta) implementations let
torch.compile trace through them without graph breaks."""

from __future__ import annotations

import torch
from torch import Tensor

from .router import block_pool
from .sla_forward import sla_forward, sla_global_linear_state, sla_linear_states


@torch.library.custom_op("turbo::block_pool", mutates_args=())
def block_pool_op(x: Tensor, block: int) -> Tensor:
    """x [B, S, H, D] -> [B, H, ceil(S/block), D] fp32 block means."""
    return block_pool(x, block)


@block_pool_op.register_fake
def _(x, block):
    batch, seq_len, heads, dim = x.shape
    return x.new_empty((batch, heads, -(-seq_len // block), dim), dtype=torch.float32)


@torch.library.custom_op("turbo::sla_forward", mutates_args=())
def sla_forward_op(
    q: Tensor, k: Tensor, v: Tensor, lut: Tensor, count: Tensor, proj_weight: Tensor | None,
    proj_bias: Tensor | None, block_q: int, block_k: int, scale: float, tail_k: Tensor | None = None,
    tail_v: Tensor | None = None, tail_mask: Tensor | None = None, linear_all: bool = False,
) -> tuple[Tensor, Tensor]:
    """SLA forward (router LUT given): (out [B, S, H, D] q.dtype, lse [B, H, S] fp32). Optional tail keys
    (HunyuanVideo text) [B, L, H, D] with tail_mask [B, L] are attended by every query (forward only).
    linear_all: TurboDiffusion's linear branch (over ALL video keys, 1e-5 eps, proj on every row) instead of the
    paper's complement; differentiable too (its linear-branch backward is batched PyTorch, see `sla_backward`)."""
    state = None
    if proj_weight is not None:
        if linear_all:
            state = sla_global_linear_state(k, v, block_k)
        else:
            state = sla_linear_states(k, v, lut, count, block_k)
    return sla_forward(q, k, v, lut, count, block_q, block_k, proj_weight, proj_bias, scale, linear_state=state,
                       tail_k=tail_k, tail_v=tail_v, tail_mask=tail_mask, linear_all=linear_all)


@sla_forward_op.register_fake
def _(q, k, v, lut, count, proj_weight, proj_bias, block_q, block_k, scale, tail_k=None, tail_v=None,
      tail_mask=None, linear_all=False):
    batch, seq_len, heads, _ = q.shape
    return torch.empty_like(q), q.new_empty((batch, heads, seq_len), dtype=torch.float32)


@torch.library.custom_op("turbo::sla2_forward", mutates_args=())
def sla2_forward_op(
    q: Tensor, k: Tensor, v: Tensor, lut: Tensor, count: Tensor, alpha: Tensor, block_q: int, block_k: int,
    scale: float, tail_k: Tensor | None = None, tail_v: Tensor | None = None, tail_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """SLA2 forward (hard top-k LUT given, alpha [H, nq]): (out [B, S, H, D] q.dtype, lse [B, H, S] fp32)."""
    state = sla_linear_states(k, v, lut, count, block_k)
    return sla_forward(q, k, v, lut, count, block_q, block_k, scale=scale, linear_state=state, alpha=alpha,
                       tail_k=tail_k, tail_v=tail_v, tail_mask=tail_mask)


@sla2_forward_op.register_fake
def _(q, k, v, lut, count, alpha, block_q, block_k, scale, tail_k=None, tail_v=None, tail_mask=None):
    batch, seq_len, heads, _ = q.shape
    return torch.empty_like(q), q.new_empty((batch, heads, seq_len), dtype=torch.float32)


@torch.library.custom_op("turbo::sla2_lowbit_forward", mutates_args=())
def sla2_lowbit_forward_op(
    q: Tensor, k: Tensor, v: Tensor, lut: Tensor, count: Tensor, alpha: Tensor, block_q: int, block_k: int,
    scale: float,
) -> tuple[Tensor, Tensor]:
    """SLA2 forward with the INT8 Q·Kᵀ / FP8 P·V sparse branch (inference; QAT training uses the reference)."""
    from .sla2_lowbit import sla2_lowbit_forward

    return sla2_lowbit_forward(q, k, v, lut, count, alpha, block_q, block_k, scale=scale)


@sla2_lowbit_forward_op.register_fake
def _(q, k, v, lut, count, alpha, block_q, block_k, scale):
    batch, seq_len, heads, _ = q.shape
    return torch.empty_like(q), q.new_empty((batch, heads, seq_len), dtype=torch.float32)


def _no_tail_backward(tail_k) -> None:
    if tail_k is not None:
        raise NotImplementedError(
            "the SLA kernel backward with tail keys (HunyuanVideo text) is not implemented yet; train with "
            "backend='reference' on HunyuanVideo"
        )


def _setup_sla(ctx, inputs, output):
    q, k, v, lut, count, proj_weight, proj_bias, block_q, block_k, scale, tail_k = inputs[:11]
    _no_tail_backward(tail_k)
    ctx.save_for_backward(q, k, v, lut, count, proj_weight, proj_bias, output[1])
    ctx.config = (block_q, block_k, scale)
    ctx.linear_all = bool(inputs[13]) if len(inputs) > 13 else False


def _backward_sla(ctx, grad_out, grad_lse):
    from .sla_backward import sla_backward

    q, k, v, lut, count, proj_weight, proj_bias, lse = ctx.saved_tensors
    dq, dk, dv, dw, db, _ = sla_backward(grad_out.contiguous(), q, k, v, lse, lut, count, *ctx.config,
                                         proj_weight=proj_weight, proj_bias=proj_bias, linear_all=ctx.linear_all)
    return dq, dk, dv, None, None, dw, db, None, None, None, None, None, None, None


def _setup_sla2(ctx, inputs, output):
    q, k, v, lut, count, alpha, block_q, block_k, scale, tail_k = inputs[:10]
    _no_tail_backward(tail_k)
    ctx.save_for_backward(q, k, v, lut, count, alpha, output[1])
    ctx.config = (block_q, block_k, scale)


def _backward_sla2(ctx, grad_out, grad_lse):
    from .sla_backward import sla_backward

    q, k, v, lut, count, alpha, lse = ctx.saved_tensors
    dq, dk, dv, _, _, d_alpha = sla_backward(grad_out.contiguous(), q, k, v, lse, lut, count, *ctx.config,
                                             alpha=alpha)
    return dq, dk, dv, None, None, d_alpha, None, None, None, None, None, None


sla_forward_op.register_autograd(_backward_sla, setup_context=_setup_sla)
sla2_forward_op.register_autograd(_backward_sla2, setup_context=_setup_sla2)


def check_sla_inputs(q: Tensor, k: Tensor, v: Tensor, block_q: int, block_k: int) -> None:
    """One clear error at the boundary instead of a failure deep inside the kernel."""
    if q.shape != k.shape or q.shape != v.shape:
        shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        raise ValueError(f"SLA kernel is self-attention only (equal q/k/v shapes): {shapes}")
    dim = q.shape[-1]
    if dim & (dim - 1) or dim < 16:
        raise ValueError(f"SLA kernel needs a power-of-two head dim >= 16, got {dim}")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("SLA kernel needs the head dim to be contiguous (stride 1)")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"SLA kernel supports fp16/bf16/fp32, got {q.dtype}")
