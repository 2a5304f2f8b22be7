"""Low-bit (INT8 Q·Kᵀ, FP8 P·V) Triton attention forward vs the PyTorch reference.

On CPU the kernels run under TRITON_INTERPRET=1 (tests/conftest.py) with fp32 / fp16 inputs and small shapes; on CUDA
the same tests run with bf16 in place of fp16. Inputs are fresh random each run: the seed is in every failure message
and TURBO_TEST_SEED=<seed> replays it."""

import pytest
import torch
import torch.nn.functional as F

from turbo.attention import reference
from turbo.attention.kernels.lowbit_forward import LOG2E, lowbit_attention, quantize_qk, quantize_v_fp8

from .kernel_env import DEVICE, HALF, fresh_seed, single_thread  # noqa: F401  (autouse fixture)

_seed = fresh_seed


def _randn(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen).to(DEVICE, dtype)


def _qkv(gen, batch, q_len, k_len, heads, dim, dtype, realistic=False):
    q = _randn(gen, batch, q_len, heads, dim)
    k = _randn(gen, batch, k_len, heads, dim)
    v = _randn(gen, batch, k_len, heads, dim)
    if realistic:
        # Real DiT keys carry a large shared channel bias (what smoothing removes) and values a per-channel offset
        # (as in tests/attention/test_reference.py).
        k = k + 4.0 * _randn(gen, 1, 1, heads, dim)
        v = v + 0.5 * _randn(gen, 1, 1, heads, dim)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _rel(x, y):
    return float((x.float() - y.float()).abs().sum() / y.float().abs().sum())


def _cos(x, y):
    return float(F.cosine_similarity(x.flatten().double(), y.flatten().double(), dim=0))


def _assert_same_numbers(x, y, seed):
    """Two runs that must agree up to float summation order: tight on CPU; on the GPU the MMA shape (and the FP8
    MMA's reduced-precision accumulation within a tile) changes with the tile, so ~1e-3 there."""
    if DEVICE == "cpu":
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5, msg=f"seed {seed}")
    else:
        assert _rel(x, y) <= 2e-3, (seed, _rel(x, y))


def _expand_blocks(scales, length, block):
    """[B, H, nb] -> [B, length, H, 1]: each token's block scale."""
    return scales.repeat_interleave(block, dim=2)[:, :, :length].transpose(1, 2)[..., None]


def _dequant_int8(codes, scales, block):
    """int8 [B, H, S, D] codes and per-block scales -> fp32 [B, S, H, D]."""
    return codes.float().transpose(1, 2) * _expand_blocks(scales, codes.shape[2], block)


def _masked_smooth(k, valid):
    """The reference's smoothing rule in fp32: minus the mean over the valid keys, invalid keys zeroed."""
    k = k.float()
    if valid is None:
        return k - k.mean(1, keepdim=True)
    keep = valid[:, :, None, None]
    mean = torch.where(keep, k, 0.0).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp(min=1)
    return torch.where(keep, k - mean, 0.0)


# ------------------------------------------------------------------------------------------------ quantisation


@pytest.mark.parametrize("dtype", [torch.float32, HALF])
@pytest.mark.parametrize("masked", [False, True])
def test_quantize_qk_matches_reference_fake_quant(dtype, masked):
    seed = _seed()
    gen = torch.Generator().manual_seed(seed)
    batch, q_len, k_len, heads, dim, block_q, block_k = 2, 200, 150, 2, 64, 64, 32
    q, k, _ = _qkv(gen, batch, q_len, k_len, heads, dim, dtype, realistic=True)
    valid = None
    if masked:
        valid = (torch.rand(batch, k_len, generator=gen) < 0.7).to(DEVICE)
        k = torch.where(valid[:, :, None, None], k, torch.full_like(k, 1e3))  # garbage in the masked slots
    q8, q_scale, k8, k_scale = quantize_qk(q, k, block_q, block_k, scale=0.1, attn_mask=valid)
    assert q8.dtype == k8.dtype == torch.int8 and q_scale.dtype == k_scale.dtype == torch.float32
    assert q8.shape == (batch, heads, q_len, dim) and k8.shape == (batch, heads, k_len, dim)
    assert q_scale.shape == (batch, heads, 4) and k_scale.shape == (batch, heads, 5)
    assert int(q8.abs().max()) == 127 and int(k8.abs().max()) == 127 and int(k8.min()) >= -127

    # Q: the softmax scale · log2(e) is folded into the scales; dequantised values match within one step.
    q_step = _expand_blocks(q_scale, q_len, block_q) / (0.1 * LOG2E)
    q_err = (_dequant_int8(q8, q_scale, block_q) / (0.1 * LOG2E) - reference.fake_quant_int8(q, block_q)).abs()
    assert bool((q_err <= q_step * 1.001).all()), seed
    assert float((q_err > q_step * 1e-3).float().mean()) < 1e-3, seed  # virtually all codes equal

    # K: smoothed by the mean over the valid keys, masked keys out of the scales and coded 0.
    smooth = _masked_smooth(k, valid)
    k_step = _expand_blocks(k_scale, k_len, block_k)
    k_err = (_dequant_int8(k8, k_scale, block_k) - reference.fake_quant_int8(smooth, block_k)).abs()
    assert bool((k_err <= k_step * 1.001).all()), seed
    assert float((k_err > k_step * 1e-3).float().mean()) < 1e-3, seed
    block_amax = F.pad(smooth.abs().amax(-1), (0, 0, 0, 5 * block_k - k_len)).reshape(batch, 5, block_k, heads)
    torch.testing.assert_close(k_scale, block_amax.amax(2).transpose(1, 2) / 127, rtol=1e-4, atol=1e-6,
                               msg=f"seed {seed}")
    if masked:
        assert bool((k8.transpose(1, 2)[~valid] == 0).all())


def test_quantize_rounds_half_away_from_zero():
    q = torch.zeros(1, 16, 1, 16)
    q[0, :5, 0, 0] = torch.tensor([127.0, 0.5, -0.5, 1.5, -2.5])  # amax 127: step 1, codes at exact ties
    q8, q_scale, _, _ = quantize_qk(q.to(DEVICE), q.to(DEVICE), block_q=16, block_k=16, scale=1.0)
    assert q8[0, 0, :5, 0].tolist() == [127, 1, -1, 2, -3]
    torch.testing.assert_close(q_scale.cpu(), torch.full((1, 1, 1), LOG2E))


@pytest.mark.parametrize("dtype", [torch.float32, HALF])
def test_quantize_v_fp8_layout_and_values(dtype):
    seed = _seed()
    gen = torch.Generator().manual_seed(seed)
    batch, seq_len, heads, dim = 2, 130, 2, 32
    v = (3.0 * _randn(gen, batch, seq_len, heads, dim) + _randn(gen, 1, 1, heads, dim)).to(dtype)
    v[..., 5] = 0.0  # an all-zero channel stays zero with scale 1
    v8_t, v_scale = quantize_v_fp8(v)
    assert v8_t.dtype == torch.float8_e4m3fn and v8_t.shape == (batch, heads, dim, 192)
    assert v_scale.dtype == torch.float32 and v_scale.shape == (batch, heads, dim)
    assert v8_t.stride(-1) == 1  # tokens contiguous: the K-contiguous operand of P·V
    assert bool((v8_t[..., seq_len:].float() == 0).all())  # zero padding
    amax = v.float().abs().amax(1)
    expected_scale = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
    torch.testing.assert_close(v_scale, expected_scale, rtol=0, atol=0)
    dequant = (v8_t[..., :seq_len].float() * v_scale[..., None]).permute(0, 3, 1, 2)  # [B, S, H, D]
    expected = reference.fake_quant_fp8(v, dim=1)
    if DEVICE == "cpu":
        torch.testing.assert_close(dequant, expected, rtol=0, atol=0, msg=f"seed {seed}")  # same division, RNE
    else:  # the GPU's division may round the other way at an FP8 tie: one e4m3 step at most
        torch.testing.assert_close(dequant, expected, rtol=0.0625, atol=2**-9 * float(v_scale.max()))


def test_fp8_conversion_rounds_to_nearest_even():
    # Channel 0 holds 448 so its step is exactly 1: the other values hit e4m3 ties, binade tops and subnormals.
    values = torch.tensor([448.0, 1.0625, 1.1875, 17.0, 19.0, 31.2, 31.9, 0.0029296875, 0.0087890625, 0.001,
                           -0.0009765625, 447.9, 240.0, 232.0, -125.5, 1e-9, 0.0, -7.9, 0.99, 2**-6, 2**-7, 3e-3])
    v = torch.zeros(1, 64, 1, 16)
    v[0, : len(values), 0, 0] = values
    v8_t, v_scale = quantize_v_fp8(v.to(DEVICE))
    assert float(v_scale[0, 0, 0]) == 1.0
    got = v8_t[0, 0, 0, : len(values)].cpu().view(torch.uint8)
    assert got.tolist() == values.to(torch.float8_e4m3fn).view(torch.uint8).tolist()


def test_quantize_v_fp8_key_padding_mask():
    seed = _seed()
    gen = torch.Generator().manual_seed(seed)
    v = _randn(gen, 2, 100, 2, 16)
    valid = (torch.rand(2, 100, generator=gen) < 0.6).to(DEVICE)
    garbage = torch.where(valid[:, :, None, None], v, torch.full_like(v, -1e4))
    v8_t, v_scale = quantize_v_fp8(garbage, attn_mask=valid, pad_to=128)
    assert v8_t.shape[-1] == 128
    kept = torch.where(valid[:, :, None, None], v, 0.0)
    torch.testing.assert_close(v_scale, kept.abs().amax(1) / 448.0, rtol=0, atol=0)
    assert bool((v8_t[..., :100].float().permute(0, 3, 1, 2)[~valid] == 0).all())


# ------------------------------------------------------------------------------------------------ attention


ACCURACY_CASES = [
    # batch, q_len, k_len, heads, dim, dtype, block_m
    (1, 256, 256, 2, 64, torch.float32, None),
    (2, 200, 200, 1, 128, HALF, None),  # ragged S
    (2, 200, 130, 2, 32, HALF, 64),  # S_q != S_k, block_m < block_q
    (1, 300, 100, 2, 16, torch.float32, 32),  # D = 16 reads Q/K zero-padded to 32
]


@pytest.mark.parametrize("batch, q_len, k_len, heads, dim, dtype, block_m", ACCURACY_CASES)
def test_lowbit_attention_accuracy_random_inputs(batch, q_len, k_len, heads, dim, dtype, block_m):
    # Zero-mean random V with near-uniform attention: the FP8 floor shows fully (reference.py tests: ~0.036 rel-L1).
    # The kernel quantises P against the running row max, the reference against the global one: ~0.015 apart.
    seed = _seed()
    q, k, v = _qkv(torch.Generator().manual_seed(seed), batch, q_len, k_len, heads, dim, dtype)
    out = lowbit_attention(q, k, v, block_m=block_m)
    assert out.dtype == dtype and out.shape == q.shape and bool(torch.isfinite(out).all())
    simulated = reference.lowbit_attention(q, k, v)
    exact = reference.dense_attention(q.float(), k.float(), v.float())
    msg = (seed, _rel(out, simulated), _cos(out, exact), _rel(out, exact))
    assert _rel(out, simulated) <= 0.02, msg
    assert _cos(out, exact) >= 0.999 and _rel(out, exact) <= 0.045, msg


@pytest.mark.parametrize("dim, dtype", [(64, torch.float32), (128, HALF), (32, HALF)])
def test_lowbit_attention_accuracy_bar_on_realistic_inputs(dim, dtype):
    seed = _seed()
    q, k, v = _qkv(torch.Generator().manual_seed(seed), 1, 256, 256, 2, dim, dtype, realistic=True)
    out = lowbit_attention(q, k, v)
    exact = reference.dense_attention(q.float(), k.float(), v.float())
    msg = (seed, _cos(out, exact), _rel(out, exact), _rel(out, reference.lowbit_attention(q, k, v)))
    assert _cos(out, exact) >= 0.9995 and _rel(out, exact) <= 0.02, msg  # ALGORITHMS.md §3 bar
    assert msg[3] <= 0.01, msg


def test_lowbit_attention_block_options_agree():
    seed = _seed()
    q, k, v = _qkv(torch.Generator().manual_seed(seed), 1, 192, 192, 1, 64, torch.float32, realistic=True)
    base = lowbit_attention(q, k, v, block_q=64, block_k=64)
    # the query tile does not change the numbers (Q scales are per block_q, gathered per row)
    _assert_same_numbers(lowbit_attention(q, k, v, block_q=64, block_k=64, block_m=32, num_warps=2), base, seed)
    _assert_same_numbers(lowbit_attention(q, k, v, block_q=64, block_k=64, block_m=128), base, seed)
    exact = reference.dense_attention(q, k, v)
    for block_q, block_k in [(32, 32), (128, 128)]:  # other quantisation blocks / key tiles, V padded to 128
        out = lowbit_attention(q, k, v, block_q=block_q, block_k=block_k)
        assert _rel(out, reference.lowbit_attention(q, k, v, block_q=block_q, block_k=block_k)) <= 0.01, seed
        assert _cos(out, exact) >= 0.9995 and _rel(out, exact) <= 0.02, seed


def test_lowbit_attention_key_padding_mask():
    seed = _seed()
    gen = torch.Generator().manual_seed(seed)
    q, k, v = _qkv(gen, 2, 150, 200, 2, 64, torch.float32, realistic=True)
    valid = 141
    k_pad, v_pad = k.clone(), v.clone()
    k_pad[:, valid:] = 1e3  # garbage that must not leak into the softmax, the key mean or any scale
    v_pad[:, valid:] = -1e3
    mask = torch.zeros(2, 200, dtype=torch.bool, device=DEVICE)
    mask[:, :valid] = True
    out = lowbit_attention(q, k_pad, v_pad, attn_mask=mask)
    truncated = lowbit_attention(q, k[:, :valid], v[:, :valid])
    _assert_same_numbers(out, truncated, seed)
    torch.testing.assert_close(lowbit_attention(q, k_pad, v_pad, attn_mask=mask[:, None, None, :]), out)

    # a scattered mask with garbage, and a batch row that keeps no key at all (its output is 0, as the reference's)
    scattered = (torch.rand(2, 200, generator=gen) < 0.6).to(DEVICE)
    scattered[1] = False
    keep = scattered[:, :, None, None]
    k_bad = torch.where(keep, k, torch.full_like(k, 5e2))
    v_bad = torch.where(keep, v, torch.full_like(v, float("nan")))
    out = lowbit_attention(q, k_bad, v_bad, attn_mask=scattered)
    assert bool(torch.isfinite(out).all()) and bool((out[1] == 0).all()), seed
    simulated = reference.lowbit_attention(q, k, v, attn_mask=scattered)
    exact = reference.dense_attention(q, k, v, attn_mask=scattered)
    assert _rel(out[0], simulated[0]) <= 0.01, seed
    assert _cos(out[0], exact[0]) >= 0.9995 and _rel(out[0], exact[0]) <= 0.02, seed


def test_lowbit_attention_strided_inputs_and_no_mutation():
    seed = _seed()
    gen = torch.Generator().manual_seed(seed)
    qkv = _randn(gen, 1, 100, 3, 2, 32, dtype=HALF)  # a fused projection's output, sliced without copies
    q, k, v = qkv.unbind(2)
    before = qkv.clone()
    out = lowbit_attention(q, k, v, scale=0.2)
    assert torch.equal(qkv, before)
    expected = lowbit_attention(q.contiguous(), k.contiguous(), v.contiguous(), scale=0.2)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    exact = reference.dense_attention(q.float(), k.float(), v.float(), scale=0.2)
    assert _cos(out, exact) >= 0.999, seed


def test_lowbit_attention_rejects_bad_arguments():
    q = torch.zeros(1, 8, 1, 24, device=DEVICE)
    with pytest.raises(ValueError):
        lowbit_attention(q, q, q)  # D not a power of two
    q = torch.zeros(1, 8, 1, 32, device=DEVICE)
    with pytest.raises(TypeError):
        lowbit_attention(q, q, q, attn_mask=torch.ones(1, 8, device=DEVICE))  # not bool
    with pytest.raises(ValueError):
        lowbit_attention(q, q[:, :4], q)  # k / v lengths differ


def test_fast_exp_option():
    seed = _seed()
    q, k, v = _qkv(torch.Generator().manual_seed(seed), 1, 160, 160, 2, 64, HALF, realistic=True)
    if DEVICE == "cpu":
        with pytest.raises(ValueError):  # inline PTX: CUDA only
            lowbit_attention(q, k, v, fast_exp=True)
        return
    exact = reference.dense_attention(q.float(), k.float(), v.float())
    fast, precise = lowbit_attention(q, k, v, fast_exp=True), lowbit_attention(q, k, v, fast_exp=False)
    for out in (fast, precise):
        assert _cos(out, exact) >= 0.9995 and _rel(out, exact) <= 0.02, seed
    assert _rel(fast, precise) <= 5e-3, (seed, _rel(fast, precise))
