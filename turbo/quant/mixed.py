"""NVFP4/INT8 mixed-precision linears (6Bit-Diffusion's DMPQ, ALGORITHMS.md §6): weights stored once in NVFP4, two
numerics paths chosen per call by the plain attribute `MixedLinear.precision` ("low" or "high"), which the router
(turbo/quant/router.py) sets from outside the block before the block runs.

Numerics (the spec; `mixed_low_reference` / `mixed_high_reference` are the oracles):
- weights: NVFP4 exactly as turbo/quant/nvfp4.py (e2m1 codes, e4m3 scale per 16 values along K, fp32 tensor scale),
  dequantised W' [N, K] fp32;
- "low" = NVFP4 weights × NVFP4-emulated activations. Every token (row of x [M, K], leading dims flattened) is
  fake-quantised like one weight row, with its own fp32 scale: s_t[m] = amax(|x[m, :]|) / (6 · 448) (1 for an
  all-zero token); per block of 16 consecutive K values s_b = e4m3(min(amax(|block|) / 6 / s_t[m], 448)) (round to
  nearest even; a block far below the token's amax underflows to s_b = 0 and becomes 0); x' = e2m1(clamp(x / (s_b ·
  s_t[m]), ±6)) · s_b · s_t[m], e2m1 rounding to nearest, ties to the even code (so a block's amax is always exactly
  6 · s_b · s_t up to the e4m3 rounding of s_b); all in fp32. Then y = x' · W'ᵀ + b in fp32, cast to x's dtype.
  Hopper has no FP4 tensor cores: this is the accuracy-study path (emulated, not faster); on CUDA the product is
  taken with W' and x' in x's dtype (cuBLAS), which rounds x' once more.
- "high" = INT8 W8A8 (turbo/quant/int8.py) on the NVFP4-dequantised weight re-quantised at construction to int8 per
  output channel (s_w[n] = amax(|W'[n, :]|) / 127; W'_q = round_half_even(W' / s_w)), as the paper casts the NVFP4
  weights for its INT8 GEMM; activations int8 per token; exact integer sum. This is not W' exactly: a row's e4m3
  block scales differ, so the int8 grid of the row does not hold every NVFP4 value.
Buffers: `packed` [N, K/2] uint8, `block_scale` [N, K/16] e4m3, `tensor_scale` 0-dim fp32 (the low path), `weight_q`
[N, K] int8 and `weight_scale` [N] fp32 (the high path), `bias` [N] or None: 0.78 bytes per weight (bf16: 2).
Backends (fixed at construction): high = turbo's Triton INT8 GEMM on CUDA, `torch._int_mm` elsewhere when K and N
are multiples of 8, else the float64 reference; low = the fp32 reference off CUDA, dequantised cuBLAS on CUDA."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .int8 import int8_linear_reference, int8_linear_with, int_mm_ready, quantize_weight_int8
from .lora import QuantisedWeightOnly
from .nvfp4 import (
    BLOCK,
    E2M1_MAX,
    E4M3_MAX,
    FP8,
    dequantize_nvfp4,
    e2m1_codes,
    e2m1_values,
    nvfp4_ready,
    quantize_weight_nvfp4,
)

PRECISIONS = ("low", "high")


def fake_quantize_nvfp4_rows(x: Tensor) -> Tensor:
    """x [..., K] (any float dtype, K % 16 == 0) -> x' [..., K] fp32: every row NVFP4-quantised and dequantised with
    its own fp32 scale s_t = amax(row) / (6 · 448) and an e4m3 scale per 16 values (module docstring)."""
    k = x.shape[-1]
    if k % BLOCK:
        raise ValueError(f"NVFP4 activations need K to be a multiple of {BLOCK}, got {k}.")
    rows = x.reshape(-1, k).to(torch.float32)
    amax = rows.abs().amax(dim=-1, keepdim=True)
    tensor_scale = torch.where(amax > 0, amax / (E2M1_MAX * E4M3_MAX), torch.ones_like(amax))  # [M, 1]
    blocks = rows.reshape(rows.shape[0], k // BLOCK, BLOCK)
    block_scale = (blocks.abs().amax(dim=-1) / E2M1_MAX / tensor_scale).clamp(max=E4M3_MAX).to(FP8)
    scale = block_scale.to(torch.float32)[..., None] * tensor_scale[..., None]  # [M, K/16, 1]
    ratio = torch.where(scale > 0, blocks / torch.where(scale > 0, scale, 1.0), 0.0)
    values = e2m1_values(e2m1_codes(ratio))
    return (values * block_scale.to(torch.float32)[..., None] * tensor_scale[..., None]).reshape(x.shape)


def mixed_low_reference(x: Tensor, packed: Tensor, block_scale: Tensor, tensor_scale: Tensor,
                        bias: Tensor | None) -> Tensor:
    """The "low" path in plain PyTorch: x [..., K] -> [..., N] in x.dtype; NVFP4-fake-quantised activations times the
    dequantised NVFP4 weight, fp32 product."""
    w = dequantize_nvfp4(packed, block_scale, tensor_scale)
    out = F.linear(fake_quantize_nvfp4_rows(x), w, None if bias is None else bias.to(torch.float32))
    return out.to(x.dtype)


def int8_from_nvfp4(packed: Tensor, block_scale: Tensor, tensor_scale: Tensor) -> tuple[Tensor, Tensor]:
    """The NVFP4 weight, dequantised in fp32 and re-quantised per output channel: (W_q [N, K] int8, s_w [N] fp32)."""
    return quantize_weight_int8(dequantize_nvfp4(packed, block_scale, tensor_scale))


def mixed_high_reference(x: Tensor, packed: Tensor, block_scale: Tensor, tensor_scale: Tensor,
                         bias: Tensor | None) -> Tensor:
    """The "high" path in plain PyTorch: x [..., K] -> [..., N] in x.dtype; INT8 W8A8 (per-token activations) on the
    NVFP4 weight re-quantised to int8 per channel, exact integer sum (float64)."""
    weight_q, weight_scale = int8_from_nvfp4(packed, block_scale, tensor_scale)
    return int8_linear_reference(x, weight_q, weight_scale, bias)


class MixedLinear(QuantisedWeightOnly, nn.Module):
    """Drop-in for `nn.Linear` (K % 16 == 0) with NVFP4 weights and two paths: `precision` = "high" (INT8 W8A8, the
    default) or "low" (NVFP4 activations), a plain attribute set outside the block (module docstring)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if not nvfp4_ready(linear.in_features):
            raise ValueError(f"MixedLinear needs in_features to be a multiple of {BLOCK}, got {linear.in_features}.")
        packed, block_scale, tensor_scale = quantize_weight_nvfp4(linear.weight)
        weight_q, weight_scale = int8_from_nvfp4(packed, block_scale, tensor_scale)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("packed", packed)
        self.register_buffer("block_scale", block_scale)
        self.register_buffer("tensor_scale", tensor_scale)
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        cuda = linear.weight.is_cuda
        if cuda:
            self.high_backend = "triton"
        else:
            self.high_backend = "int_mm" if int_mm_ready((self.out_features, self.in_features)) else "reference"
        self.low_backend = "dequant" if cuda else "reference"
        self.precision = "high"

    def forward(self, x: Tensor) -> Tensor:
        if self.precision == "low":
            if self.low_backend == "dequant":
                w = dequantize_nvfp4(self.packed, self.block_scale, self.tensor_scale, x.dtype)
                bias = None if self.bias is None else self.bias.to(x.dtype)
                return F.linear(fake_quantize_nvfp4_rows(x).to(x.dtype), w, bias)
            return mixed_low_reference(x, self.packed, self.block_scale, self.tensor_scale, self.bias)
        return int8_linear_with(self.high_backend, x, self.weight_q, self.weight_scale, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, precision={self.precision} "
                f"(low: NVFP4 activations, {self.low_backend}; high: INT8 W8A8, {self.high_backend})")
