"""W8A8 FP8 linear layers: e4m3 weights with one scale per output channel, activations quantised per token at run time.

Numerics (the spec; `fp8_linear_reference` is the oracle and the CPU path):
- weight W [N, K]: s_w[n] = max(amax(|W[n, :]|), 1e-12) / 448; W_q = e4m3(W / s_w) (round to nearest even, the
  ratio is within ±448 by construction);
- activation rows x [M, K] (every token separately): s_x[m] = max(amax(|x[m, :]|), 1e-12) / 448;
  x_q = e4m3(clamp(x / s_x, ±448));
- y[m, n] = s_x[m] · s_w[n] · Σ_k x_q[m, k] · W_q[n, k] (fp32 accumulation) + b[n], in the input's dtype.

On CUDA GPUs with FP8 tensor cores (compute capability ≥ 8.9) the product is `torch._scaled_mm` with row-wise scales
(cuBLASLt FP8 GEMM, scales applied in its epilogue). Under `torch.compile` the activation quantisation is plain
torch ops on purpose: inductor fuses them into the producer of x and de-duplicates the pass shared by q/k/v (measured
on an H200, Wan-1.3B 480p rows, 32,760 tokens: 0.10 ms for 1536-wide rows, 0.73 ms for 8960-wide ones). Eager, those
torch ops cost several passes (0.58 / 3.3 ms), so uncompiled calls use turbo's Triton kernel
(turbo/quant/fp8_rows.py, bit-identical; one read of x, one write of x_q).

Which linears pay off: the per-token pass reads M·K activations while the FP8 GEMM saves time ∝ M·N·K, so layers with
a wide input and a narrow output lose. Measured at Wan-1.3B 480p: the feed-forward down-projection (K 8960 → N 1536)
takes 1.10 ms in bf16 and 0.67 + 0.73 ms in FP8, the up-projection (1536 → 8960) 1.30 vs 0.85 + 0.10 ms. Linears
with in_features ≥ WIDE_INPUT_RATIO · out_features stay in bf16 (at 14B the down-projection, 13824 → 5120, is
quantised)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lora import QuantisedWeightOnly

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
TINY = 1e-12
WIDE_INPUT_RATIO = 4  # linears with in_features >= this × out_features stay in their dtype (see the module docstring)


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [M, K] (any float dtype) -> (x_q [M, K] float8_e4m3fn, scale [M, 1] fp32) with x ≈ x_q · scale row-wise."""
    amax = x.abs().amax(dim=-1, keepdim=True).to(torch.float32)
    scale = amax.clamp(min=TINY) / FP8_MAX
    q = (x.to(torch.float32) / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """weight [N, K] -> (W_q [N, K] float8_e4m3fn, scale [N] fp32), one scale per output channel."""
    q, scale = quantize_rows(weight.detach())
    return q, scale.reshape(-1)


def fp8_linear_reference(x: Tensor, weight_q: Tensor, weight_scale: Tensor, bias: Tensor | None) -> Tensor:
    """The FP8 W8A8 linear in plain PyTorch (any device): x [..., K] -> [..., N] in x.dtype, with x quantised per row
    exactly as the GPU path does and an fp32 product of the dequantised operands."""
    shape = x.shape
    rows = x.reshape(-1, shape[-1])
    x_q, x_scale = quantize_rows(rows)
    w = weight_q.to(torch.float32) * weight_scale[:, None]
    out = F.linear(x_q.to(torch.float32) * x_scale, w)
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out.to(x.dtype).reshape(*shape[:-1], weight_q.shape[0])


@functools.cache
def _probe_bias_epilogue(index: int) -> bool:
    with torch.device("cuda", index):
        a, b = torch.zeros(16, 16).to(FP8), torch.zeros(16, 16).to(FP8)
        try:
            torch._scaled_mm(a, b.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16),
                             bias=torch.ones(16, dtype=torch.bfloat16), out_dtype=torch.bfloat16)
        except (RuntimeError, ValueError):
            return False
    return True


@torch.compiler.assume_constant_result
def bias_in_epilogue(index: int) -> bool:
    """Whether this torch's `_scaled_mm` adds a bias in its epilogue with row-wise scales on CUDA device `index`
    (probed once with a 16 × 16 product; a constant for torch.compile)."""
    return _probe_bias_epilogue(index)


def fp8_linear(x: Tensor, weight_q: Tensor, weight_scale: Tensor, bias: Tensor | None,
               fast_accum: bool = False) -> Tensor:
    """The FP8 W8A8 linear on a CUDA GPU with FP8 tensor cores: same signature and numerics as
    `fp8_linear_reference` (up to accumulation order; `fast_accum` trades Hopper's exact fp32 accumulation for speed).
    Needs K and N multiples of 16. The bias is added in the GEMM's epilogue (fp32, one rounding, as the reference
    does) where torch supports it, else in a separate pass on the rounded product."""
    shape = x.shape
    rows = x.reshape(-1, shape[-1])
    if torch.compiler.is_compiling():  # a trace-time choice: inductor fuses the torch ops into x's producer
        x_q, x_scale = quantize_rows(rows)
    else:
        from .fp8_rows import quantize_rows_fp8

        x_q, x_scale = quantize_rows_fp8(rows)
    out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    fused = bias is not None and out_dtype == torch.bfloat16 and bias_in_epilogue(x.device.index or 0)
    out = torch._scaled_mm(x_q, weight_q.t(), scale_a=x_scale, scale_b=weight_scale[None, :],
                           bias=bias.to(out_dtype) if fused else None, out_dtype=out_dtype,
                           use_fast_accum=fast_accum)
    if bias is not None and not fused:
        out = out + bias.to(out.dtype)
    return out.to(x.dtype).reshape(*shape[:-1], weight_q.shape[0])


def gemm_ready(features: tuple[int, int]) -> bool:
    """Whether cuBLASLt's FP8 GEMM takes a [N, K] weight (both multiples of 16)."""
    return all(f % 16 == 0 for f in features)


class FP8Linear(QuantisedWeightOnly, nn.Module):
    """Drop-in for `nn.Linear` with FP8 W8A8 numerics. Buffers: `weight_q` [N, K] float8_e4m3fn, `weight_scale` [N]
    fp32, `bias` [N] (the original dtype) or None. `use_gemm` (fixed at construction: a CUDA GPU with FP8 tensor cores
    and GEMM-compatible shapes) picks `fp8_linear`, else `fp8_linear_reference`."""

    def __init__(self, linear: nn.Linear, use_gemm: bool, fast_accum: bool = False):
        super().__init__()
        q, scale = quantize_weight(linear.weight)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self._set_state(linear.in_features, linear.out_features, q, scale, bias, use_gemm, fast_accum)

    def _set_state(self, in_features: int, out_features: int, weight_q: Tensor, weight_scale: Tensor,
                   bias: Tensor | None, use_gemm: bool, fast_accum: bool) -> None:
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)
        self.use_gemm = use_gemm and gemm_ready((out_features, in_features))
        self.fast_accum = fast_accum

    @classmethod
    def empty(cls, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, device=None,
              use_gemm: bool = False, fast_accum: bool = False) -> FP8Linear:
        """A shell with uninitialised buffers (`weight_q` e4m3, `weight_scale` fp32, `bias` in `dtype` if `bias`) on
        `device` (e.g. "meta"), to be filled by `load_state_dict(..., assign=True)`; no high-precision weight is ever
        allocated. Used by `turbo.load_quantized`."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._set_state(in_features, out_features,
                          torch.empty(out_features, in_features, dtype=FP8, device=device),
                          torch.empty(out_features, dtype=torch.float32, device=device),
                          torch.empty(out_features, dtype=dtype, device=device) if bias else None,
                          use_gemm, fast_accum)
        return module

    def forward(self, x: Tensor) -> Tensor:
        if self.use_gemm:
            return fp8_linear(x, self.weight_q, self.weight_scale, self.bias, self.fast_accum)
        return fp8_linear_reference(x, self.weight_q, self.weight_scale, self.bias)

    def extra_repr(self) -> str:
        path = "fp8 GEMM" if self.use_gemm else "simulated"
        return f"in_features={self.in_features}, out_features={self.out_features}, {path}"
