"""turbo::quantize_rows_fp8 (the eager FP8 activation pass) against `quantize_rows`, its reference, on the CPU through
the Triton interpreter (conftest sets TRITON_INTERPRET=1)."""

from __future__ import annotations

import pytest
import torch

from turbo.quant.fp8 import quantize_rows
from turbo.quant.fp8_rows import quantize_rows_fp8


@pytest.mark.parametrize("m, k", [(37, 2500), (4, 1024), (9, 48)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel_is_bit_identical_to_the_reference(m, k, dtype):
    """Ragged rows (4 per program) and K (1024-wide chunks, masked tail), a zero row (scale from the 1e-12 floor) and
    an outlier row; values on e4m3 rounding ties are frequent with fp16 inputs."""
    g = torch.Generator().manual_seed(m * k)
    x = (torch.randn(m, k, generator=g) * 3).to(dtype)
    x[0] = 0
    x[min(1, m - 1), k // 2] = 1e4
    q, scale = quantize_rows_fp8(x)
    want_q, want_scale = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (m, 1)
    assert torch.equal(scale, want_scale)
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8))


def test_kernel_takes_strided_rows_and_rejects_other_inputs():
    x = torch.randn(6, 64)[:, :48]  # rows with a stride of 64
    q, scale = quantize_rows_fp8(x)
    want_q, want_scale = quantize_rows(x)
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8)) and torch.equal(scale, want_scale)
    with pytest.raises(ValueError, match="2-D"):
        quantize_rows_fp8(torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="2-D"):
        quantize_rows_fp8(torch.ones(2, 16, dtype=torch.int32))
