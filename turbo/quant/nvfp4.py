"""Weight-only NVFP4 linear layers: e2m1 weights in blocks of 16 with an e4m3 scale per block and an fp32 tensor scale;
activations stay in their dtype (Hopper has no FP4 tensor cores: this mode saves weight memory, not compute).

Numerics (the spec; `nvfp4_linear_reference` is the oracle and the CPU path):
- weight W [N, K], K a multiple of 16: s_t = amax(|W|) / (6 · 448) (1 for an all-zero W), fp32;
- every block of 16 consecutive K values of a row: s_b = e4m3(min(amax(|block|) / 6 / s_t, 448)) (round to nearest
  even; a block much smaller than the tensor's amax gets s_b = 0);
- code = e2m1(clamp(W / (s_b · s_t), ±6)), round to nearest, ties to the even code (magnitudes 0, 0.5, 1, 1.5, 2, 3,
  4, 6; sign bit 3, then 2 exponent bits and 1 mantissa bit); a block with s_b = 0 gets codes 0 (no division by 0);
- storage: two codes per uint8 along K, the even k in the low nibble: `packed` [N, K/2] uint8, `block_scale`
  [N, K/16] float8_e4m3fn, `tensor_scale` 0-dim fp32: K/2 + K/16 bytes per row, 0.28× bf16;
- dequant: W' = (e2m1(code) · s_b) · s_t (the first product is exact: 2 × 4 significant bits);
- y = x · W'ᵀ + b with an fp32 product, in x's dtype.

Backends of `NVFP4Linear`:
- "dequant" (the default on CUDA): turbo's one-pass Triton kernel (turbo/quant/nvfp4_dequant.py,
  `turbo::nvfp4_dequant`) writes the weight in x's dtype on every call (bit-identical to `dequantize_nvfp4`; the
  copy lives only during the call) and cuBLAS multiplies. (Before that kernel the dequantisation was torch ops,
  fused by inductor under torch.compile: 0.80–0.92× bf16 on an H200 at Wan shapes, 0.36× eager at M 4096.)
  The weights round once more, to x's dtype (rel. 2.5e-3 against the reference).
- "fp8" (`quant_nvfp4_compute="fp8"`, GPUs with FP8 tensor cores): the same kernel writes e4m3 weights with a scale
  per output channel (`nvfp4_dequant.fp8_row_scale`, derived from the block scales on every call), the activations
  are quantised per token as in FP8 W8A8 (turbo/quant/fp8.py) and cuBLASLt's FP8 GEMM multiplies: NVFP4's weight
  memory at FP8's speed, with one more rounding of the weight (e4m3 holds one significant bit fewer than
  e2m1 · s_b) and FP8 activations. Off CUDA it runs the same numerics in plain PyTorch (`nvfp4_fp8_reference`).
- "triton": turbo's GEMM (turbo/quant/nvfp4_gemm.py, `turbo::nvfp4_mm`) decodes codes and block scales in registers
  and feeds the exact (e2m1 · s_b) tile to the tensor cores; the dequantised weight never exists in memory. Correct
  on the H200 but measured 0.22–0.27× bf16 at the same shapes (the per-tile decode is not hidden behind the MMAs), so
  it is not the default.
- "reference" (the default elsewhere): dequantise to fp32 and multiply in fp32.
Weight-only quantisation has no activation pass, so unlike FP8/INT8 every block linear is worth quantising
(`turbo.quant.block_linears(..., weight_only=True)`); linears whose K is not a multiple of 16 stay in their dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lora import QuantisedWeightOnly

FP8 = torch.float8_e4m3fn
E2M1_MAX = 6.0
E4M3_MAX = 448.0
BLOCK = 16  # K values per block scale


def nvfp4_ready(in_features: int) -> bool:
    """Whether a linear with this K can be stored in NVFP4 (whole blocks of 16)."""
    return in_features % BLOCK == 0


def e2m1_codes(v: Tensor) -> Tensor:
    """fp32 values (|v| <= 6 after the clamp applied here) -> uint8 e2m1 codes in [0, 15], round to nearest, ties to
    the even code; a magnitude rounding to 0 gets code 0 (never -0)."""
    a = v.abs().clamp(max=E2M1_MAX)
    # the e2m1 grid step is 0.5 below 2, 1 in [2, 4) and 2 in [4, 6]; on each, an even multiple is an even code
    step = torch.where(a < 2, 0.5, torch.where(a < 4, 1.0, 2.0))
    r = torch.round(a / step) * step  # torch.round is half to even
    mag = torch.where(r < 2, r * 2, torch.where(r < 4, r + 2, r / 2 + 4)).to(torch.uint8)
    return torch.where((v < 0) & (mag > 0), mag | 8, mag)


def e2m1_values(codes: Tensor) -> Tensor:
    """uint8 e2m1 codes [...] -> their fp32 values [...]: m · 0.5 for exponent e = 0, (1 + m/2) · 2^(e-1) else."""
    exponent, mantissa = (codes >> 1) & 3, codes & 1
    quadruple = torch.where(exponent == 0, mantissa * 2, (mantissa + 2) << exponent)  # 4 · |value|, in uint8
    value = quadruple.to(torch.float32) * 0.25
    return torch.where(codes >= 8, -value, value)


def quantize_weight_nvfp4(weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """weight [N, K] (any float dtype, K % 16 == 0) -> (packed [N, K/2] uint8, block_scale [N, K/16] float8_e4m3fn,
    tensor_scale 0-dim fp32) per the module docstring."""
    n, k = weight.shape
    if k % BLOCK:
        raise ValueError(f"NVFP4 needs K (in_features) to be a multiple of {BLOCK}, got {k}.")
    w = weight.detach().to(torch.float32)
    amax = w.abs().amax()
    tensor_scale = torch.where(amax > 0, amax / (E2M1_MAX * E4M3_MAX), torch.ones_like(amax))
    blocks = w.reshape(n, k // BLOCK, BLOCK)
    block_scale = (blocks.abs().amax(dim=-1) / E2M1_MAX / tensor_scale).clamp(max=E4M3_MAX).to(FP8)
    scale = block_scale.to(torch.float32)[..., None] * tensor_scale
    ratio = torch.where(scale > 0, blocks / torch.where(scale > 0, scale, 1.0), 0.0)
    codes = e2m1_codes(ratio).reshape(n, k)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return packed, block_scale, tensor_scale


def unpack_codes(packed: Tensor) -> Tensor:
    """packed [N, K/2] uint8 -> codes [N, K] uint8 (the low nibble is the even k)."""
    return torch.stack([packed & 15, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


def dequantize_nvfp4(packed: Tensor, block_scale: Tensor, tensor_scale: Tensor,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """(packed [N, K/2] uint8, block_scale [N, K/16] e4m3, tensor_scale 0-dim fp32) -> W' [N, K] in `dtype`:
    (e2m1 · s_b) · s_t computed in fp32."""
    values = e2m1_values(unpack_codes(packed))
    n, k = values.shape
    scaled = values.reshape(n, k // BLOCK, BLOCK) * block_scale.to(torch.float32)[..., None]
    return (scaled * tensor_scale.to(torch.float32)).reshape(n, k).to(dtype)


def nvfp4_linear_reference(x: Tensor, packed: Tensor, block_scale: Tensor, tensor_scale: Tensor,
                           bias: Tensor | None) -> Tensor:
    """The NVFP4 weight-only linear in plain PyTorch (any device): x [..., K] -> [..., N] in x.dtype; the weight is
    dequantised and the product taken in fp32."""
    w = dequantize_nvfp4(packed, block_scale, tensor_scale)
    out = F.linear(x.to(torch.float32), w, None if bias is None else bias.to(torch.float32))
    return out.to(x.dtype)


def nvfp4_linear_triton(x: Tensor, packed: Tensor, block_scale: Tensor, tensor_scale: Tensor,
                        bias: Tensor | None) -> Tensor:
    """The NVFP4 weight-only linear through turbo's Triton GEMM (CUDA, or the Triton interpreter): same signature and
    result as `nvfp4_linear_reference` up to fp32 summation order; the weight tile enters the dot in x's dtype
    (exactly: e2m1 · s_b has 6 significant bits)."""
    from .nvfp4_gemm import nvfp4_mm

    shape = x.shape
    out = nvfp4_mm(x.reshape(-1, shape[-1]), packed, block_scale, tensor_scale, bias)
    return out.reshape(*shape[:-1], packed.shape[0])


def nvfp4_linear_dequant(x: Tensor, packed: Tensor, block_scale: Tensor, tensor_scale: Tensor,
                         bias: Tensor | None) -> Tensor:
    """The weight dequantised to x's dtype (turbo's Triton pass on CUDA, torch ops elsewhere), then `F.linear`: same
    signature as `nvfp4_linear_reference`; the weights round once more, to x's dtype."""
    if x.is_cuda:
        from .nvfp4_dequant import nvfp4_dequant

        w = nvfp4_dequant(packed, block_scale, tensor_scale, None, x.dtype)
    else:
        w = dequantize_nvfp4(packed, block_scale, tensor_scale, x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def nvfp4_fp8_reference(x: Tensor, packed: Tensor, block_scale: Tensor, tensor_scale: Tensor,
                        bias: Tensor | None) -> Tensor:
    """The "fp8" backend's numerics in plain PyTorch (any device): the NVFP4 weight re-rounded to e4m3 with a scale
    per output channel (turbo/quant/nvfp4_dequant.py), then the FP8 W8A8 linear (`fp8_linear_reference`)."""
    from .fp8 import fp8_linear_reference
    from .nvfp4_dequant import fp8_row_scale, nvfp4_dequant_reference

    row_scale = fp8_row_scale(block_scale, tensor_scale)
    w_q = nvfp4_dequant_reference(packed, block_scale, tensor_scale, row_scale, FP8)
    return fp8_linear_reference(x, w_q, row_scale, bias)


def nvfp4_linear_fp8(x: Tensor, packed: Tensor, block_scale: Tensor, tensor_scale: Tensor, bias: Tensor | None,
                     fast_accum: bool = False) -> Tensor:
    """The "fp8" backend on a CUDA GPU with FP8 tensor cores: same numerics as `nvfp4_fp8_reference` (up to the
    GEMM's accumulation order); N and K multiples of 16."""
    from .fp8 import fp8_linear
    from .nvfp4_dequant import fp8_row_scale, nvfp4_dequant

    row_scale = fp8_row_scale(block_scale, tensor_scale)
    w_q = nvfp4_dequant(packed, block_scale, tensor_scale, row_scale, FP8)
    return fp8_linear(x, w_q, row_scale, bias, fast_accum)


BACKENDS = ("triton", "dequant", "fp8", "reference")


def _backend(in_features: int, backend: str | None, cuda: bool) -> str:
    """The checked backend of an `NVFP4Linear`: `backend`, or "dequant" on CUDA and "reference" elsewhere."""
    if not nvfp4_ready(in_features):
        raise ValueError(f"NVFP4Linear needs in_features to be a multiple of {BLOCK}, got {in_features}.")
    backend = backend or ("dequant" if cuda else "reference")
    if backend not in BACKENDS:
        raise ValueError(f"NVFP4Linear backend must be one of {BACKENDS}, not {backend!r}.")
    return backend


class NVFP4Linear(QuantisedWeightOnly, nn.Module):
    """Drop-in for `nn.Linear` with NVFP4 weight-only numerics. Buffers: `packed` [N, K/2] uint8, `block_scale`
    [N, K/16] float8_e4m3fn, `tensor_scale` 0-dim fp32, `bias` [N] (the original dtype) or None. `backend` (see the
    module docstring): "dequant" (the default on CUDA), "fp8", "triton" or "reference" (the default elsewhere);
    `fast_accum` (the "fp8" backend): cuBLASLt fast accumulation. K must be a multiple of 16."""

    def __init__(self, linear: nn.Linear, backend: str | None = None):
        super().__init__()
        backend = _backend(linear.in_features, backend, linear.weight.is_cuda)
        packed, block_scale, tensor_scale = quantize_weight_nvfp4(linear.weight)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self._set_state(linear.in_features, linear.out_features, packed, block_scale, tensor_scale, bias, backend)

    def _set_state(self, in_features: int, out_features: int, packed: Tensor, block_scale: Tensor,
                   tensor_scale: Tensor, bias: Tensor | None, backend: str) -> None:
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("packed", packed)
        self.register_buffer("block_scale", block_scale)
        self.register_buffer("tensor_scale", tensor_scale)
        self.register_buffer("bias", bias)
        self.backend = backend
        self.fast_accum = False

    @classmethod
    def empty(cls, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, device=None,
              backend: str | None = None, cuda: bool = False) -> NVFP4Linear:
        """A shell with uninitialised buffers (`packed` uint8, `block_scale` e4m3, `tensor_scale` fp32, `bias` in
        `dtype` if `bias`) on `device` (e.g. "meta"), to be filled by `load_state_dict(..., assign=True)`; no
        high-precision weight is ever allocated. `cuda`: whether the buffers will live on a CUDA GPU (picks the
        default backend as `__init__` does). Used by `turbo.load_quantized`."""
        backend = _backend(in_features, backend, cuda)
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._set_state(in_features, out_features,
                          torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device),
                          torch.empty(out_features, in_features // BLOCK, dtype=FP8, device=device),
                          torch.empty((), dtype=torch.float32, device=device),
                          torch.empty(out_features, dtype=dtype, device=device) if bias else None, backend)
        return module

    def forward(self, x: Tensor) -> Tensor:
        if self.backend == "fp8":
            if x.is_cuda:
                return nvfp4_linear_fp8(x, self.packed, self.block_scale, self.tensor_scale, self.bias,
                                        self.fast_accum)
            return nvfp4_fp8_reference(x, self.packed, self.block_scale, self.tensor_scale, self.bias)
        if self.backend == "triton":
            return nvfp4_linear_triton(x, self.packed, self.block_scale, self.tensor_scale, self.bias)
        if self.backend == "dequant":
            return nvfp4_linear_dequant(x, self.packed, self.block_scale, self.tensor_scale, self.bias)
        return nvfp4_linear_reference(x, self.packed, self.block_scale, self.tensor_scale, self.bias)

    def weight_bytes(self) -> int:
        """Bytes of the quantised weight: codes, block scales and tensor scale (not the bias)."""
        return sum(t.numel() * t.element_size() for t in (self.packed, self.block_scale, self.tensor_scale))

    def extra_repr(self) -> str:
        path = {"triton": "nvfp4 GEMM (turbo Triton, dequantised in registers)",
                "dequant": "dequantised to the input dtype, then F.linear",
                "fp8": "re-quantised to FP8 per output channel, FP8 W8A8 GEMM",
                "reference": "dequantised fp32 reference"}[self.backend]
        return f"in_features={self.in_features}, out_features={self.out_features}, {path}"
