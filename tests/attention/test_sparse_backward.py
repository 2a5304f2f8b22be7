"""Block-sparse attention backward (Triton) vs autograd through `reference.block_sparse_attention`.

CPU: TRITON_INTERPRET=1 (tests/conftest.py), fp32 and fp16, small shapes. CUDA: the same tests on the GPU, plus bf16.
Every test draws a fresh seed and reports it on failure."""

import pytest
import torch

from turbo.attention import reference
from turbo.attention.kernels.router import mask_to_lut
from turbo.attention.kernels.sla_forward import sla_forward
from turbo.attention.kernels.sparse_backward import block_sparse_attention_backward, key_major_index

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
# rel-L1 bounds per dtype; fp32 tl.dot is TF32 on the GPU.
TOL = {torch.float32: 3e-3 if DEVICE == "cuda" else 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def _seed() -> int:
    return int(torch.randint(0, 2**31 - 1, ()))


def _rel(a, b) -> float:
    return float((a.float() - b.float()).abs().sum() / b.float().abs().sum().clamp_min(1e-30))


def _random_mask(g, b, h, nq, nk, density, empty_rows=False):
    """bool [b, h, nq, nk] on DEVICE with at least one block per row (unless empty_rows)."""
    mask = torch.rand(b, h, nq, nk, generator=g) < density
    if not empty_rows:
        first = torch.randint(0, nk, (b, h, nq, 1), generator=g)
        mask.scatter_(-1, first, True)
    return mask.to(DEVICE)


def _lut_from_mask(mask, g, width_extra=1):
    """mask_to_lut with `width_extra` more columns and garbage (in-range) padding beyond each row's count."""
    lut, count = mask_to_lut(mask)
    nk = mask.shape[-1]
    pad = torch.randint(0, nk, (*lut.shape[:-1], width_extra), generator=g).to(DEVICE, torch.int32)
    lut = torch.cat([lut, pad], -1)
    garbage = torch.randint(0, nk, lut.shape, generator=g).to(DEVICE, torch.int32)
    valid = torch.arange(lut.shape[-1], device=DEVICE) < count[..., None]
    return torch.where(valid, lut, garbage).contiguous(), count


def _mask_from_lut(lut, count, nk):
    valid = torch.arange(lut.shape[-1], device=lut.device) < count[..., None]
    mask = torch.zeros(*lut.shape[:-1], nk + 1, dtype=torch.bool, device=lut.device)
    return mask.scatter(-1, torch.where(valid, lut.long(), nk), True)[..., :nk]


def _reference_grads(q, k, v, do, mask, block_q, block_k):
    """Autograd through the reference in fp32 (whatever the inputs' dtype)."""
    leaves = [x.detach().float().requires_grad_(True) for x in (q, k, v)]
    out, _ = reference.block_sparse_attention(*leaves, mask, block_q, block_k)
    return torch.autograd.grad(out, leaves, do.float())


def _naive_key_major(lut, count, nk):
    b, h, nq, _ = lut.shape
    cols = [[[[] for _ in range(nk)] for _ in range(h)] for _ in range(b)]
    for bi in range(b):
        for hi in range(h):
            for i in range(nq):
                for t in range(int(count[bi, hi, i])):
                    cols[bi][hi][int(lut[bi, hi, i, t])].append(i)
    return cols


@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_key_major_index_matches_naive_loop(density):
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    b, h, nq, nk = 2, 3, 6, 9
    mask = _random_mask(g, b, h, nq, nk, density, empty_rows=True)
    lut, count = _lut_from_mask(mask, g, width_extra=2)  # rows with count < W and garbage padding
    qidx, qcount = key_major_index(lut, count, nk)
    assert qidx.dtype == torch.int32 and qcount.dtype == torch.int32, seed
    assert qcount.shape == (b, h, nk) and qidx.shape[:3] == (b, h, nk), seed
    naive = _naive_key_major(lut.cpu(), count.cpu(), nk)
    assert qidx.shape[-1] == max(1, max(len(c) for bb in naive for hh in bb for c in hh)), seed
    for bi in range(b):
        for hi in range(h):
            for j in range(nk):
                n = int(qcount[bi, hi, j])
                assert n == len(naive[bi][hi][j]), (seed, bi, hi, j)
                assert qidx[bi, hi, j, :n].tolist() == naive[bi][hi][j], (seed, bi, hi, j)  # ascending


def test_key_major_index_rejects_bad_luts():
    lut = torch.tensor([[[[0, 1], [2, 5]]]], dtype=torch.int32)
    with pytest.raises(ValueError, match="LUT entries"):
        key_major_index(lut, torch.tensor([[[2, 2]]], dtype=torch.int32), 3)
    qidx, qcount = key_major_index(lut, torch.tensor([[[2, 1]]], dtype=torch.int32), 3)  # 5 is padding: ignored
    assert qcount.tolist() == [[[1, 1, 1]]] and qidx[..., 0].tolist() == [[[0, 0, 1]]]
    with pytest.raises(ValueError, match="count"):
        key_major_index(lut, torch.tensor([[[3, 1]]], dtype=torch.int32), 3)
    qidx, qcount = key_major_index(lut[..., :0], torch.zeros(1, 1, 2, dtype=torch.int32), 3)  # empty LUT
    assert qidx.shape == (1, 1, 3, 1) and not qcount.any() and not qidx.any()


CASES = {
    # name: (B, S, H, D, block_q, block_k, block_m, density)
    "ragged_s200": (1, 200, 2, 32, 64, 32, None, 0.4),
    "one_block_per_row": (1, 256, 2, 16, 64, 32, None, 0.0),
    "all_blocks_ragged": (1, 130, 1, 64, 64, 32, None, 1.0),
    "block_m_lt_block_q": (1, 200, 2, 32, 64, 32, 16, 0.5),
    "batch2_bq32_bk64": (2, 150, 1, 32, 32, 64, None, 0.5),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_backward_matches_autograd_reference(case, dtype):
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    b, s, h, d, block_q, block_k, block_m, density = CASES[case]
    nq, nk = -(-s // block_q), -(-s // block_k)
    q, k, v, do = (torch.randn(b, s, h, d, generator=g).to(DEVICE, dtype) for _ in range(4))
    mask = _random_mask(g, b, h, nq, nk, density)
    lut, count = _lut_from_mask(mask, g)
    assert torch.equal(_mask_from_lut(lut, count, nk), mask)
    with torch.no_grad():
        out, lse = sla_forward(q, k, v, lut, count, block_q, block_k, block_m=block_m)
    dq, dk, dv = block_sparse_attention_backward(do, q, k, v, out, lse, lut, count, block_q, block_k,
                                                 block_m=block_m)
    expected = _reference_grads(q, k, v, do, mask, block_q, block_k)
    for name, got, exp in zip("qkv", (dq, dk, dv), expected, strict=True):
        assert got.dtype == dtype and got.shape == q.shape, (seed, name)
        assert torch.isfinite(got).all(), (seed, name)
        err = _rel(got, exp)
        assert err < TOL[dtype], f"seed {seed}: d{name} rel-L1 {err:.2e} >= {TOL[dtype]:.0e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_inputs_and_reference_forward(dtype):
    """q, k, v slices of one [B, S, 3, H, D] tensor, dO a transposed view, out / lse from the reference."""
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    b, s, h, d, block_q, block_k = 2, 160, 2, 32, 64, 32
    qkv = torch.randn(b, s, 3, h, d, generator=g).to(DEVICE, dtype)
    q, k, v = qkv.unbind(2)
    do = torch.randn(b, h, s, d, generator=g).to(DEVICE, dtype).transpose(1, 2)
    mask = _random_mask(g, b, h, -(-s // block_q), -(-s // block_k), 0.4)
    lut, count = _lut_from_mask(mask, g)
    with torch.no_grad():
        out, lse = reference.block_sparse_attention(q, k, v, mask, block_q, block_k)
        out_k, lse_k = sla_forward(q, k, v, lut, count, block_q, block_k)
    assert _rel(out_k, out) < TOL[dtype] and _rel(lse_k, lse) < TOL[dtype], seed
    key_index = key_major_index(lut, count, -(-s // block_k))  # precomputed, as a forward could
    dq, dk, dv = block_sparse_attention_backward(do, q, k, v, out, lse, lut, count, block_q, block_k, block_m=32,
                                                 key_index=key_index)
    expected = _reference_grads(q, k, v, do, mask, block_q, block_k)
    for name, got, exp in zip("qkv", (dq, dk, dv), expected, strict=True):
        err = _rel(got, exp)
        assert err < TOL[dtype], f"seed {seed}: d{name} rel-L1 {err:.2e} >= {TOL[dtype]:.0e}"


def test_unselected_key_blocks_and_empty_rows_give_exact_zeros():
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    b, s, h, d, block_q, block_k = 1, 200, 2, 16, 32, 32
    nq, nk = -(-s // block_q), -(-s // block_k)
    q, k, v, do = (torch.randn(b, s, h, d, generator=g).to(DEVICE) for _ in range(4))
    mask = _random_mask(g, b, h, nq, nk, 0.3)
    mask[:, :, :, 2] = False  # key block 2: selected by nobody
    mask[:, 1, :, nk - 1] = False  # the ragged last key block of head 1 as well
    mask[:, 0, 3] = False  # query block 3 of head 0: no key at all (count 0)
    mask[:, 1, 3, 0] = True  # keep every other row non-empty
    mask[:, 0, [r for r in range(nq) if r != 3], 0] = True
    lut, count = _lut_from_mask(mask, g)
    with torch.no_grad():
        out, lse = reference.block_sparse_attention(q, k, v, mask, block_q, block_k)  # row 3: out 0, lse -inf
    dq, dk, dv = block_sparse_attention_backward(do, q, k, v, out, lse, lut, count, block_q, block_k)
    for x in (dq, dk, dv):
        assert torch.isfinite(x).all(), seed
    assert (dk[:, 2 * block_k:3 * block_k] == 0).all() and (dv[:, 2 * block_k:3 * block_k] == 0).all(), seed
    assert (dk[:, (nk - 1) * block_k:, 1] == 0).all() and (dv[:, (nk - 1) * block_k:, 1] == 0).all(), seed
    assert (dq[:, 3 * block_q:4 * block_q, 0] == 0).all(), seed
    expected = _reference_grads(q, k, v, do, mask, block_q, block_k)
    for name, got, exp in zip("qkv", (dq, dk, dv), expected, strict=True):
        assert _rel(got, exp) < TOL[torch.float32], (seed, name, _rel(got, exp))


def test_bad_inputs_raise_value_error():
    b, s, h, d = 1, 100, 1, 32
    q = torch.randn(b, s, h, d, device=DEVICE)
    out, lse = q.clone(), torch.zeros(b, h, s, device=DEVICE)
    lut, count = torch.zeros(b, h, 2, 1, dtype=torch.int32, device=DEVICE), torch.ones(b, h, 2, dtype=torch.int32,
                                                                                       device=DEVICE)
    ok = dict(block_q=64, block_k=32)
    with pytest.raises(ValueError, match="lut"):
        block_sparse_attention_backward(q, q, q, q, out, lse, lut[:, :, :1], count, **ok)
    with pytest.raises(ValueError, match="count"):
        block_sparse_attention_backward(q, q, q, q, out, lse, lut, count[..., :1], **ok)
    with pytest.raises(ValueError, match="shape"):
        block_sparse_attention_backward(q[:, :50], q, q, q, out, lse, lut, count, **ok)
    with pytest.raises(ValueError, match="lse"):
        block_sparse_attention_backward(q, q, q, q, out, lse[..., :50], lut, count, **ok)
    with pytest.raises(ValueError, match="divide"):
        block_sparse_attention_backward(q, q, q, q, out, lse, lut, count, block_m=128, **ok)
    with pytest.raises(ValueError, match="block_k"):
        block_sparse_attention_backward(q, q, q, q, out, lse, lut, count, block_q=64, block_k=24)
    q24 = torch.randn(b, s, h, 24, device=DEVICE)
    with pytest.raises(ValueError, match="head dim"):
        block_sparse_attention_backward(q24, q24, q24, q24, q24, lse, lut, count, **ok)
    wrong_index = key_major_index(lut, count, 3)  # S = 100 has 4 key blocks of 32
    with pytest.raises(ValueError, match="key_index"):
        block_sparse_attention_backward(q, q, q, q, out, lse, lut, count, key_index=wrong_index, **ok)
