"""Triton JVP attention forward (`turbo.distill.kernels.jvp_attention`) vs materialised fp64 oracles.

CPU: TRITON_INTERPRET=1 (tests/conftest.py; set here too when the file runs alone), fp32 and fp16, S <= 512.
CUDA: the same tests on the GPU (fp32 tl.dot is TF32 there, hence the looser fp32 tolerance)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported

from tests.attention.kernel_env import DEVICE, fresh_seed, single_thread  # noqa: E402,F401
from turbo.distill.kernels.jvp_attention import jvp_attention_forward, jvp_attention_op, kernel_jvp_fn  # noqa: E402

FP32_TOL = 3e-3 if DEVICE == "cuda" else 2e-5
TOL = {torch.float32: FP32_TOL, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def jvp_attention_oracle(q, k, v, tq, tk, tv, scale=None):
    """Materialised softmax attention and its JVP in fp64: (o, t_o [B, Sq, H, D], lse [B, H, Sq]), all fp64.
    tO = P·tV + (P⊙tS)·V − rowsum(P⊙tS)⊙O with tS = (tQ·Kᵀ + Q·tKᵀ)·scale."""
    q, k, v, tq, tk, tv = (x.double() for x in (q, k, v, tq, tk, tv))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    ts = (torch.einsum("bqhd,bkhd->bhqk", tq, k) + torch.einsum("bqhd,bkhd->bhqk", q, tk)) * scale
    p = torch.softmax(s, -1)
    o = torch.einsum("bhqk,bkhd->bqhd", p, v)
    pts = p * ts
    t_o = (torch.einsum("bhqk,bkhd->bqhd", p, tv) + torch.einsum("bhqk,bkhd->bqhd", pts, v)
           - pts.sum(-1).transpose(1, 2)[..., None] * o)
    return o, t_o, torch.logsumexp(s, -1)


def func_jvp_oracle(q, k, v, tq, tk, tv, scale=None):
    """Second oracle: torch.func.jvp of materialised fp64 attention -> (o, t_o)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale

    def attention(q, k, v):
        p = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) * scale, -1)
        return torch.einsum("bhqk,bkhd->bqhd", p, v)

    primals = tuple(x.double() for x in (q, k, v))
    return torch.func.jvp(attention, primals, tuple(x.double() for x in (tq, tk, tv)))


def _inputs(b, sq, sk, h, d, dtype, seed, scale_qk=1.0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(b, sq, h, d), (b, sk, h, d), (b, sk, h, d)] * 2
    xs = [torch.randn(*s, generator=g) for s in shapes]
    xs[0], xs[1] = xs[0] * scale_qk, xs[1] * scale_qk
    return [x.to(DEVICE, dtype) for x in xs]


def _rel(a, b):
    return float((a.double() - b.double()).abs().sum() / b.double().abs().sum())


def _check(got, expected, dtype, seed):
    (o, t_o, lse), (eo, et_o, else_) = got, expected
    tol = TOL[dtype]
    assert o.dtype == t_o.dtype == dtype and lse.dtype == torch.float32
    assert torch.isfinite(o).all() and torch.isfinite(t_o).all() and torch.isfinite(lse).all()
    assert _rel(o, eo) < tol, (seed, _rel(o, eo))
    assert _rel(t_o, et_o) < tol, (seed, _rel(t_o, et_o))
    torch.testing.assert_close(lse.double(), else_.to(lse.device), atol=max(tol, 1e-4), rtol=tol)


@pytest.mark.parametrize(
    "b, sq, sk, d, dtype, tiles",
    [
        (1, 200, 77, 32, torch.float32, None),  # cross-attention, ragged q and k tiles
        (2, 320, 320, 64, torch.float16, None),  # self-attention
        (2, 200, 77, 64, torch.float16, None),
        (1, 320, 320, 32, torch.float32, None),
        (1, 77, 200, 16, torch.float32, (32, 16)),  # Sq < Sk, small tiles, many key tiles
        (2, 130, 45, 128, torch.float16, (16, 32)),
    ],
)
def test_matches_materialised_oracle(b, sq, sk, d, dtype, tiles):
    seed = fresh_seed()
    args = _inputs(b, sq, sk, 2, d, dtype, seed)
    block_m, block_n = tiles or (None, None)
    got = jvp_attention_forward(*args, block_m=block_m, block_n=block_n)
    _check(got, jvp_attention_oracle(*args), dtype, seed)


def test_oracles_agree_and_kernel_matches_func_jvp():
    seed = fresh_seed()
    args = _inputs(2, 96, 50, 2, 32, torch.float32, seed)
    o, t_o, _ = jvp_attention_oracle(*args, scale=0.3)
    fo, ft_o = func_jvp_oracle(*args, scale=0.3)
    torch.testing.assert_close(o, fo, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(t_o, ft_o, atol=1e-12, rtol=1e-12)
    ko, kt_o, _ = jvp_attention_forward(*args, scale=0.3, block_m=32, block_n=16)
    assert _rel(ko, fo) < FP32_TOL and _rel(kt_o, ft_o) < FP32_TOL, seed


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_zero_tangents_give_zero_tangent_and_plain_attention(dtype):
    seed = fresh_seed()
    q, k, v, *_ = _inputs(1, 150, 90, 2, 32, dtype, seed)
    zeros = [torch.zeros_like(x) for x in (q, k, v)]
    o, t_o, lse = jvp_attention_forward(q, k, v, *zeros)
    assert torch.equal(t_o, torch.zeros_like(t_o))
    expected = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * 32 ** -0.5, -1)
    assert _rel(o, torch.einsum("bhqk,bkhd->bqhd", expected, v.double())) < TOL[dtype], seed
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.float().transpose(1, 2), k.float().transpose(1, 2), v.float().transpose(1, 2)).transpose(1, 2)
    assert _rel(o, sdpa) < TOL[dtype], seed


def test_tangent_is_linear():
    seed = fresh_seed()
    q, k, v, tq, tk, tv = _inputs(2, 100, 70, 2, 32, torch.float32, seed)
    o, t_o, lse = jvp_attention_forward(q, k, v, tq, tk, tv)
    o2, t_o2, lse2 = jvp_attention_forward(q, k, v, -2.5 * tq, -2.5 * tk, -2.5 * tv)
    assert torch.equal(o, o2) and torch.equal(lse, lse2)  # primal outputs do not see the tangents
    torch.testing.assert_close(t_o2, -2.5 * t_o, atol=1e-5, rtol=1e-4)
    # additivity: one tangent per input, summed
    zq, zk, zv = (torch.zeros_like(x) for x in (tq, tk, tv))
    parts = [jvp_attention_forward(q, k, v, *t)[1] for t in ((tq, zk, zv), (zq, tk, zv), (zq, zk, tv))]
    torch.testing.assert_close(sum(parts), t_o, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_large_scores_are_stable(dtype):
    # |scores| up to ~1e3 (fp16 inputs stay < 65504): exp overflows without the running max
    seed = fresh_seed()
    mag = 6.0 if dtype == torch.float16 else 12.0
    args = _inputs(1, 140, 100, 2, 32, dtype, seed, scale_qk=mag)
    got = jvp_attention_forward(*args)
    expected = jvp_attention_oracle(*args)
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all()
    # near-one-hot rows: compare the tangent to the oracle's scale (a few rows have near-ties, so L1-relative)
    assert _rel(got[0], expected[0]) < TOL[dtype], seed
    assert _rel(got[1], expected[1]) < 2 * TOL[dtype], (seed, _rel(got[1], expected[1]))
    torch.testing.assert_close(got[2].double(), expected[2], atol=1e-3 * mag * mag, rtol=1e-3)


def test_row_constant_score_tangent_cancels():
    # keys share a large mean: tq·mean(k) is a per-row constant in tS, which must cancel in t_o exactly
    seed = fresh_seed()
    q, k, v, tq, tk, tv = _inputs(1, 128, 96, 2, 32, torch.float16, seed)
    k = (k.float() + 4.0 * torch.randn(1, 1, 2, 32, generator=torch.Generator().manual_seed(seed))
         .to(DEVICE)).half()
    tq = (tq.float() * 8).half()
    got = jvp_attention_forward(q, k, v, tq, tk, tv, block_n=16)
    expected = jvp_attention_oracle(q, k, v, tq, tk, tv)
    # ~3e-4 in the interpreter with the kernel's first-tile centring of tS, ~1e-3 without it
    assert _rel(got[1], expected[1]) < 6e-4, (seed, _rel(got[1], expected[1]))


def test_arbitrary_strides():
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    b, sq, sk, h, d = 2, 96, 60, 2, 32
    q = torch.randn(b, h, sq, d, generator=g).to(DEVICE).transpose(1, 2)  # [B, H, S, D] storage
    kv = torch.randn(b, sk, 2, h, d, generator=g).to(DEVICE)  # packed k/v
    k, v = kv[:, :, 0], kv[:, :, 1]
    tq = torch.randn(b, sq, d, h, generator=g).to(DEVICE).transpose(2, 3)  # head dim not contiguous
    tk = torch.randn(b, sk, h, 2 * d, generator=g).to(DEVICE)[..., ::2]  # stride 2 along D
    tv = torch.randn(sk, b, h, d, generator=g).to(DEVICE).transpose(0, 1)
    got = jvp_attention_forward(q, k, v, tq, tk, tv, block_m=32, block_n=16)
    assert got[0].is_contiguous() and got[1].is_contiguous()
    _check(got, jvp_attention_oracle(q, k, v, tq, tk, tv), torch.float32, seed)


def test_boundary_checks():
    q, k, v, tq, tk, tv = _inputs(1, 32, 16, 2, 32, torch.float32, 0)
    with pytest.raises(ValueError, match="head dim"):
        jvp_attention_forward(*(x[..., :24] for x in (q, k, v, tq, tk, tv)))
    with pytest.raises(ValueError, match="tangent"):
        jvp_attention_forward(q, k, v, tq[:, :8], tk, tv)
    with pytest.raises(ValueError, match="dtype"):
        jvp_attention_forward(q, k, v, tq.half(), tk, tv)
    with pytest.raises(ValueError, match="k and v"):
        jvp_attention_forward(q, k, v[:, :8], tq, tk, tv[:, :8])


def test_custom_op_fake_and_compile():
    args = _inputs(1, 80, 40, 2, 32, torch.float32, 1)
    torch.library.opcheck(jvp_attention_op, args, {"scale": 0.2},
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fakes = [mode.from_tensor(x) for x in args]
        o, t_o, lse = torch.ops.turbo.jvp_attention(*fakes)
    assert o.shape == t_o.shape == (1, 80, 2, 32) and lse.shape == (1, 2, 80) and lse.dtype == torch.float32

    def step(q, k, v, tq, tk, tv):
        o, t_o, lse = torch.ops.turbo.jvp_attention(q, k, v, tq, tk, tv, 0.2)
        return o * 2 + t_o, lse.exp()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(*args)
    o, t_o, lse = jvp_attention_forward(*args, scale=0.2)
    torch.testing.assert_close(got[0], o * 2 + t_o)
    torch.testing.assert_close(got[1], lse.exp())


def test_matches_chunked_reference():
    from turbo.distill.jvp_attention import jvp_attention_reference

    seed = fresh_seed()
    args = _inputs(2, 200, 77, 2, 32, torch.float32, seed)
    expected = jvp_attention_reference(*args)
    got = jvp_attention_forward(*args)
    for a, e in zip(got[:2], expected[:2], strict=True):
        assert _rel(a, e) < 10 * FP32_TOL, seed
    if len(expected) > 2:
        torch.testing.assert_close(got[2], expected[2].to(got[2]), atol=1e-4, rtol=1e-4)


def test_plugs_into_attention_with_jvp():
    from turbo.distill.jvp_attention import attention_with_jvp

    seed = fresh_seed()
    q, k, v, tq, tk, tv = _inputs(1, 100, 40, 2, 32, torch.float32, seed)
    o, t_o = torch.func.jvp(lambda q, k, v: attention_with_jvp(q, k, v, jvp_fn=kernel_jvp_fn),
                            (q, k, v), (tq, tk, tv))
    eo, et_o, _ = jvp_attention_oracle(q, k, v, tq, tk, tv)
    assert _rel(o, eo) < 10 * FP32_TOL and _rel(t_o, et_o) < 10 * FP32_TOL, seed
    _, t_o_q = kernel_jvp_fn(q, k, v, tq, None, None)  # None tangents are zero
    torch.testing.assert_close(t_o_q, jvp_attention_forward(q, k, v, tq, 0 * k, 0 * v)[1])
