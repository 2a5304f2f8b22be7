"""W8A8 INT8 linear layers: int8 weights with one scale per output channel, activations quantised per token at run time.

Numerics (the spec; `int8_linear_reference` is the oracle and the fallback path):
- weight W [N, K]: s_w[n] = max(amax(|W[n, :]|), 1e-12) / 127; W_q = round_half_even(W / s_w) in [-127, 127];
- activation rows x [M, K] (every token separately): s_x[m] = max(amax(|x[m, :]|), 1e-12) / 127;
  x_q = round_half_even(clamp(x / s_x, ±127));
- y[m, n] = s_x[m] · s_w[n] · Σ_k x_q[m, k] · W_q[n, k] (exact integer sum) + b[n], in the input's dtype.

On CUDA GPUs the product is turbo's Triton INT8 GEMM with the scales, bias and cast fused into its epilogue
(turbo/quant/int8_gemm.py, the `turbo::int8_scaled_mm` custom op); elsewhere `torch._int_mm` (int8 × int8 → int32,
oneDNN on CPUs; cuBLASLt IMMA on GPUs when asked for with backend="int_mm") when the shapes allow it (K and N
multiples of 8), with the scales applied in plain torch ops. The activation quantisation is plain torch ops, which
inductor fuses under `torch.compile` as for FP8 (turbo/quant/fp8.py). The reference computes the same integer sum
exactly in float64.
Which linears are quantised is decided as for FP8 (`turbo.quant.block_linears`). INT8 is the W8A8 mode for GPUs
without FP8 tensor cores (Ampere) and the integer path on CPUs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .lora import QuantisedWeightOnly

INT8_MAX = 127.0
TINY = 1e-12
_MIN_ROWS = 17  # torch._int_mm on CUDA needs more than 16 rows: shorter inputs are padded


def quantize_rows_int8(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [M, K] (any float dtype) -> (x_q [M, K] int8, scale [M, 1] fp32) with x ≈ x_q · scale row-wise."""
    amax = x.abs().amax(dim=-1, keepdim=True).to(torch.float32)
    scale = amax.clamp(min=TINY) / INT8_MAX
    q = torch.round(x.to(torch.float32) / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def quantize_weight_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """weight [N, K] -> (W_q [N, K] int8, scale [N] fp32), one scale per output channel."""
    q, scale = quantize_rows_int8(weight.detach())
    return q, scale.reshape(-1)


def _finish(acc: Tensor, x_scale: Tensor, weight_scale: Tensor, bias: Tensor | None, dtype, shape) -> Tensor:
    out = acc.to(torch.float32) * x_scale * weight_scale[None, :]
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out.to(dtype).reshape(*shape[:-1], weight_scale.shape[0])


def int8_linear_reference(x: Tensor, weight_q: Tensor, weight_scale: Tensor, bias: Tensor | None) -> Tensor:
    """The INT8 W8A8 linear in plain PyTorch (any device): x [..., K] -> [..., N] in x.dtype; the integer sum is exact
    (float64 holds every Σ x_q·W_q of K < 2^39 terms)."""
    shape = x.shape
    x_q, x_scale = quantize_rows_int8(x.reshape(-1, shape[-1]))
    acc = x_q.to(torch.float64) @ weight_q.to(torch.float64).T
    return _finish(acc, x_scale, weight_scale, bias, x.dtype, shape)


def int8_linear(x: Tensor, weight_q: Tensor, weight_scale: Tensor, bias: Tensor | None) -> Tensor:
    """The INT8 W8A8 linear through `torch._int_mm`: same signature and result as `int8_linear_reference` (the int32
    sum is exact too). Needs K and N multiples of 8."""
    shape = x.shape
    x_q, x_scale = quantize_rows_int8(x.reshape(-1, shape[-1]))
    rows = x_q.shape[0]
    if x_q.is_cuda and rows < _MIN_ROWS:
        x_q = torch.nn.functional.pad(x_q, (0, 0, 0, _MIN_ROWS - rows))
    acc = torch._int_mm(x_q, weight_q.t())[:rows]
    return _finish(acc, x_scale, weight_scale, bias, x.dtype, shape)


def int8_linear_triton(x: Tensor, weight_q: Tensor, weight_scale: Tensor, bias: Tensor | None) -> Tensor:
    """The INT8 W8A8 linear through turbo's Triton GEMM (CUDA, or the Triton interpreter): same signature and result
    as `int8_linear_reference` (exact int32 sum; fp32 epilogue), output in x.dtype (bf16 for fp32 inputs on CUDA)."""
    from .int8_gemm import int8_scaled_mm

    shape = x.shape
    x_q, x_scale = quantize_rows_int8(x.reshape(-1, shape[-1]))
    out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) or not x.is_cuda else torch.bfloat16
    out = int8_scaled_mm(x_q, weight_q, x_scale.reshape(-1), weight_scale, bias, out_dtype)
    return out.to(x.dtype).reshape(*shape[:-1], weight_q.shape[0])


BACKENDS = ("triton", "int_mm", "reference")


def int8_linear_with(backend: str, x: Tensor, weight_q: Tensor, weight_scale: Tensor, bias: Tensor | None) -> Tensor:
    """The INT8 W8A8 linear through `backend` (one of `BACKENDS`): `int8_linear_triton`, `int8_linear` or
    `int8_linear_reference`."""
    if backend == "triton":
        return int8_linear_triton(x, weight_q, weight_scale, bias)
    if backend == "int_mm":
        return int8_linear(x, weight_q, weight_scale, bias)
    return int8_linear_reference(x, weight_q, weight_scale, bias)


def int_mm_ready(features: tuple[int, int]) -> bool:
    """Whether `torch._int_mm` takes a [N, K] weight (both multiples of 8)."""
    return all(f % 8 == 0 for f in features)


class INT8Linear(QuantisedWeightOnly, nn.Module):
    """Drop-in for `nn.Linear` with INT8 W8A8 numerics. Buffers: `weight_q` [N, K] int8, `weight_scale` [N] fp32,
    `bias` [N] (the original dtype) or None. `backend` (fixed at construction): "triton" (turbo's fused GEMM, the
    default on CUDA), "int_mm" (`torch._int_mm` + scales in torch ops, the default elsewhere) or "reference" (float64);
    shapes `torch._int_mm` cannot take fall back to the reference."""

    def __init__(self, linear: nn.Linear, backend: str | None = None):
        super().__init__()
        q, scale = quantize_weight_int8(linear.weight)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self._set_state(linear.in_features, linear.out_features, q, scale, bias, backend, linear.weight.is_cuda)

    def _set_state(self, in_features: int, out_features: int, weight_q: Tensor, weight_scale: Tensor,
                   bias: Tensor | None, backend: str | None, cuda: bool) -> None:
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)
        backend = backend or ("triton" if cuda else "int_mm")
        if backend not in BACKENDS:
            raise ValueError(f"INT8Linear backend must be one of {BACKENDS}, not {backend!r}.")
        if backend == "int_mm" and not int_mm_ready((out_features, in_features)):
            backend = "reference"
        self.backend = backend

    @classmethod
    def empty(cls, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, device=None,
              backend: str | None = None, cuda: bool = False) -> INT8Linear:
        """A shell with uninitialised buffers (`weight_q` int8, `weight_scale` fp32, `bias` in `dtype` if `bias`) on
        `device` (e.g. "meta"), to be filled by `load_state_dict(..., assign=True)`; no high-precision weight is ever
        allocated. `cuda`: whether the buffers will live on a CUDA GPU (picks the default backend as `__init__`
        does). Used by `turbo.load_quantized`."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._set_state(in_features, out_features,
                          torch.empty(out_features, in_features, dtype=torch.int8, device=device),
                          torch.empty(out_features, dtype=torch.float32, device=device),
                          torch.empty(out_features, dtype=dtype, device=device) if bias else None,
                          backend, cuda)
        return module

    def forward(self, x: Tensor) -> Tensor:
        return int8_linear_with(self.backend, x, self.weight_q, self.weight_scale, self.bias)

    def extra_repr(self) -> str:
        path = {"triton": "int8 GEMM (turbo Triton, fused scales)", "int_mm": "int8 GEMM (torch._int_mm)",
                "reference": "float64 reference"}[self.backend]
        return f"in_features={self.in_features}, out_features={self.out_features}, {path}"
