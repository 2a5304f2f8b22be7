"""SLA2 forward with the low-bit (INT8 Q·Kᵀ, FP8 P·V) sparse branch vs `reference.sla2_attention(quantized=True)`.

On CPU the kernels run under TRITON_INTERPRET=1 (tests/conftest.py) with fp32 / fp16 inputs and small shapes; on CUDA
the same tests run with bf16 in place of fp16. Inputs are fresh random each run: the seed is in every failure message
and TURBO_TEST_SEED=<seed> replays it."""

import pytest
import torch

from turbo.attention import reference
from turbo.attention.kernels.router import sla_router
from turbo.attention.kernels.sla2_lowbit import sla2_lowbit_forward
from turbo.attention.kernels.sla_forward import sla_forward, sla_linear_states

from .kernel_env import DEVICE, HALF, fresh_seed, single_thread  # noqa: F401  (autouse fixture)

_seed = fresh_seed


def _inputs(seed, batch, seq_len, heads, dim, dtype, block_q):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, seq_len, heads, dim, generator=gen).to(DEVICE, dtype) for _ in range(3))
    nq = reference.num_blocks(seq_len, block_q)
    alpha = (torch.rand(heads, nq, generator=gen) * 0.8 + 0.1).to(DEVICE)
    return q, k, v, alpha


def _rel(x, y):
    return float((x.float() - y.float()).abs().sum() / y.float().abs().sum())


@pytest.mark.parametrize(
    "batch, s, heads, d, keep, dtype, block_q, block_k, block_m",
    [
        (1, 256, 2, 32, 0.3, torch.float32, 64, 32, 32),
        (2, 200, 2, 64, 0.3, HALF, 64, 32, None),  # ragged last query and key blocks
        (1, 300, 4, 32, 1.0, torch.float32, 128, 64, 64),  # ragged, key tile 64; 4 heads average out rel-L1 (≤ 0.019)
        (1, 130, 2, 64, 1.0, HALF, 64, 32, 32),
        (1, 290, 1, 64, 0.3, torch.float32, 64, 64, None),
    ],
)
def test_sla2_lowbit_matches_quantized_reference(batch, s, heads, d, keep, dtype, block_q, block_k, block_m):
    seed = _seed()
    q, k, v, alpha = _inputs(seed, batch, s, heads, d, dtype, block_q)
    lut, count = sla_router(q, k, block_q, block_k, keep)
    with torch.no_grad():
        out, lse = sla2_lowbit_forward(q, k, v, lut, count, alpha, block_q, block_k, block_m=block_m)
        expected = reference.sla2_attention(q, k, v, keep, alpha, block_q, block_k, quantized=True)
        exact, exact_lse = sla_forward(q, k, v, lut, count, block_q, block_k, alpha=alpha)
    assert out.dtype == q.dtype and out.shape == q.shape and lse.shape == (batch, heads, s)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all(), seed
    err_ref, err_exact = _rel(out, expected), _rel(out, exact)
    assert err_ref <= 0.02, (seed, err_ref)
    assert err_exact <= 0.05, (seed, err_exact)
    # lse is over the smoothed keys: + scale·q·mean(K) (a per-row constant) gives the exact kernel's lse
    shift = torch.einsum("bshd,bhd->bhs", q.float(), k.float().mean(1)) * d**-0.5
    lse_err = float((lse + shift - exact_lse).abs().max())
    assert lse_err < 0.05, (seed, lse_err)


def test_sla2_lowbit_lse_matches_lowbit_block_sparse_reference():
    seed = _seed()
    block_q, block_k, keep, dim = 64, 32, 0.4, 32
    q, k, v, alpha = _inputs(seed, 1, 180, 2, dim, torch.float32, block_q)
    lut, count = sla_router(q, k, block_q, block_k, keep)
    out, lse = sla2_lowbit_forward(q, k, v, lut, count, alpha, block_q, block_k)
    mask = reference.topk_block_mask(reference.block_scores(q, k, block_q, block_k), keep)
    qh, kh, vh = (x.transpose(1, 2).float() for x in (q, k, v))
    _, expected = reference._block_sparse(qh, kh, vh, mask, block_q, block_k, dim**-0.5, lowbit=True)
    torch.testing.assert_close(lse, expected, atol=1e-4, rtol=1e-4, msg=lambda m: f"seed {seed}: {m}")


def test_sla2_lowbit_options_do_not_change_the_result():
    seed = _seed()
    block_q, block_k = 64, 32
    q, k, v, alpha = _inputs(seed, 1, 150, 2, 32, torch.float32, block_q)
    lut, count = sla_router(q, k, block_q, block_k, 0.5)
    out, lse = sla2_lowbit_forward(q, k, v, lut, count, alpha, block_q, block_k, block_m=64)
    state = sla_linear_states(k, v, lut.to(torch.int32), count.to(torch.int32), block_k)
    out2, lse2 = sla2_lowbit_forward(q, k, v, lut, count, alpha, block_q, block_k, linear_state=state, block_m=32)
    atol = 1e-3 if DEVICE == "cuda" else 1e-5
    torch.testing.assert_close(out2, out, atol=atol, rtol=atol, msg=lambda m: f"seed {seed}: {m}")
    torch.testing.assert_close(lse2, lse, atol=atol, rtol=atol, msg=lambda m: f"seed {seed}: {m}")
    # α = 1 and keep = 1: plain low-bit dense attention
    ones = torch.ones_like(alpha)
    lut1, count1 = sla_router(q, k, block_q, block_k, 1.0)
    dense, _ = sla2_lowbit_forward(q, k, v, lut1, count1, ones, block_q, block_k)
    expected = reference.lowbit_attention(q, k, v, block_q=block_q, block_k=block_k)
    assert _rel(dense, expected) <= 0.02, seed


def test_sla2_lowbit_rejects_tail_keys_and_bad_shapes():
    q, k, v, alpha = _inputs(0, 1, 64, 1, 32, torch.float32, 32)
    lut, count = sla_router(q, k, 32, 32, 0.5)
    with pytest.raises(ValueError, match="tail"):
        sla2_lowbit_forward(q, k, v, lut, count, alpha, 32, 32, tail_k=k, tail_v=v)
    with pytest.raises(ValueError, match="alpha"):
        sla2_lowbit_forward(q, k, v, lut, count, alpha[:, :1], 32, 32)
    with pytest.raises(ValueError, match="divide"):
        sla2_lowbit_forward(q, k, v, lut, count, alpha, 32, 32, block_m=64)
