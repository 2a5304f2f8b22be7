"""Tests of the pure-PyTorch reference attention math against naive oracles (materialised masks, loops, SDPA)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from turbo.attention import reference as ref  # noqa: E402

# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    # These shapes are tiny: one thread avoids OpenMP spin-waiting that makes them several times slower on a busy box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randn(*shape, dtype=torch.float32, requires_grad=False):
    return torch.randn(*shape, dtype=dtype).requires_grad_(requires_grad)


def qkv(batch, tokens, heads, dim, dtype=torch.float32, requires_grad=False):
    return tuple(randn(batch, tokens, heads, dim, dtype=dtype, requires_grad=requires_grad) for _ in range(3))


def rel_l1(x, y):
    return ((x - y).abs().sum() / y.abs().sum()).item()


def cosine(x, y):
    return F.cosine_similarity(x.flatten().double(), y.flatten().double(), dim=0).item()


def token_mask_from_blocks(block_mask, queries, keys, block_q, block_k):
    """[B,H,nq,nk] -> [B,H,Sq,Sk] by repeating every block entry over its tokens."""
    expanded = block_mask.repeat_interleave(block_q, dim=-2)[..., :queries, :]
    return expanded.repeat_interleave(block_k, dim=-1)[..., :keys]


def naive_attention(q, k, v, weights=None, scale=None):
    """Materialised float64 softmax attention; weights [B,H,Sq,Sk] bool/float multiply exp(scores).

    Returns out [B,Sq,H,D] float64 and lse [B,H,Sq]."""
    q, k, v = (x.double().transpose(1, 2) for x in (q, k, v))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = q @ k.transpose(-1, -2) * scale
    if weights is None:
        weights = torch.ones_like(scores)
    weights = weights.double().expand_as(scores)
    logits = torch.where(weights > 0, scores + torch.log(weights.clamp(min=1e-300)), -math.inf)
    lse = torch.logsumexp(logits, dim=-1)
    probs = torch.where(torch.isneginf(lse)[..., None], 0.0, torch.exp(logits - lse[..., None]))
    return (probs @ v).transpose(1, 2), lse


def sdpa(q, k, v, mask=None):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def random_block_mask(batch, heads, nq, nk, density=0.5):
    return torch.rand(batch, heads, nq, nk) < density


# ------------------------------------------------------------------------------------------------ blocks


def test_num_blocks_and_kept_blocks():
    assert ref.num_blocks(128, 64) == 2
    assert ref.num_blocks(129, 64) == 3
    assert ref.num_blocks(1, 64) == 1
    assert ref.kept_blocks(0.0, 10) == 1  # floor of one block
    assert ref.kept_blocks(0.01, 40) == 1
    assert ref.kept_blocks(0.3, 10) == 3
    assert ref.kept_blocks(0.1, 64) == 6
    assert ref.kept_blocks(1.0, 7) == 7
    assert ref.kept_blocks(3.0, 7) == 7  # cap
    with pytest.raises(ValueError):
        ref.num_blocks(10, 0)


@pytest.mark.parametrize("tokens,block", [(100, 32), (64, 16), (257, 64), (5, 8)])
def test_block_mean_pool_ragged_matches_loop(tokens, block):
    x = randn(2, tokens, 3, 16, dtype=torch.float16)
    pooled = ref.block_mean_pool(x, block)
    assert pooled.dtype == torch.float32
    assert pooled.shape == (2, 3, ref.num_blocks(tokens, block), 16)
    for index, start in enumerate(range(0, tokens, block)):
        expected = x[:, start : start + block].float().mean(dim=1)  # [B, H, D], real tokens only
        torch.testing.assert_close(pooled[:, :, index], expected, atol=1e-5, rtol=1e-5)


def test_smooth_keys_is_mean_free_and_exact_for_softmax():
    q, k, v = qkv(2, 100, 2, 32)
    k = k + 3.0 * torch.randn(1, 1, 2, 32)
    smoothed = ref.smooth_keys(k)
    assert smoothed.dtype == k.dtype and smoothed.shape == k.shape
    assert smoothed.mean(dim=1).abs().max() < 1e-5
    torch.testing.assert_close(ref.dense_attention(q, smoothed, v), ref.dense_attention(q, k, v), atol=1e-5, rtol=1e-5)
    assert ref.smooth_keys(k.half()).dtype == torch.float16


# ------------------------------------------------------------------------------------------------ routers


def test_block_scores_matches_naive_and_projections_get_gradients():
    q, k, _ = qkv(2, 100, 2, 16)
    scores = ref.block_scores(q, k, 32, 16)
    assert scores.shape == (2, 2, 4, 7) and scores.dtype == torch.float32
    centred = k - k.mean(dim=1, keepdim=True)
    for i, qs in enumerate(range(0, 100, 32)):
        for j, ks in enumerate(range(0, 100, 16)):
            expected = (q[:, qs : qs + 32].mean(1) * centred[:, ks : ks + 16].mean(1)).sum(-1)
            torch.testing.assert_close(scores[:, :, i, j], expected, atol=1e-5, rtol=1e-5)

    proj_q, proj_k = torch.nn.Linear(16, 16, bias=False), torch.nn.Linear(16, 16, bias=False)
    projected = ref.block_scores(q, k, 32, 16, proj_q, proj_k)
    pooled_q, pooled_k = ref.block_mean_pool(q, 32), ref.block_mean_pool(centred, 16)
    torch.testing.assert_close(projected, proj_q(pooled_q) @ proj_k(pooled_k).transpose(-1, -2), atol=1e-5, rtol=1e-5)
    projected.square().sum().backward()
    assert proj_q.weight.grad.abs().sum() > 0 and proj_k.weight.grad.abs().sum() > 0


def test_topk_block_mask_keeps_the_highest_scores():
    scores = randn(2, 3, 5, 11)
    for keep, count in [(0.3, 3), (0.0, 1), (1.0, 11)]:
        mask = ref.topk_block_mask(scores, keep)
        assert mask.dtype == torch.bool and mask.shape == scores.shape
        assert (mask.sum(-1) == count).all()
        lowest_kept = scores.masked_fill(~mask, math.inf).amin(-1)
        highest_dropped = scores.masked_fill(mask, -math.inf).amax(-1)
        assert (lowest_kept > highest_dropped).all()


@pytest.mark.parametrize("keep,blocks", [(0.25, 16), (0.1, 40), (0.05, 7), (1.0, 9)])
def test_soft_topk_rows_sum_to_k(keep, blocks):
    probs = torch.softmax(randn(2, 2, 6, blocks) * 3.0, dim=-1)
    soft = ref.soft_topk_block_mask(probs, keep, tau=0.1)
    assert soft.dtype == probs.dtype and ((soft > 0) & (soft <= 1)).all()  # 1.0 only by fp32 rounding
    torch.testing.assert_close(soft.sum(-1), torch.full((2, 2, 6), float(ref.kept_blocks(keep, blocks))), atol=1e-3,
                               rtol=0)
    # order-preserving: along each row sorted by probability the soft mask never decreases
    assert (soft.gather(-1, probs.argsort(-1)).diff(dim=-1) >= 0).all()


def test_soft_topk_is_differentiable_with_detached_shift():
    probs = torch.softmax(randn(1, 1, 2, 8), dim=-1).requires_grad_(True)
    soft = ref.soft_topk_block_mask(probs, 0.25, tau=0.1)
    weights = torch.randn_like(soft)
    (soft * weights).sum().backward()
    # with lam detached, d soft / d scores is the plain sigmoid derivative / tau
    expected = soft * (1 - soft) / 0.1 * weights
    torch.testing.assert_close(probs.grad, expected.detach(), atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ block-sparse


@pytest.mark.parametrize("tokens,dim", [(64, 16), (100, 32), (257, 64)])
def test_block_sparse_all_true_equals_dense_and_sdpa(tokens, dim):
    q, k, v = qkv(2, tokens, 2, dim)
    mask = torch.ones(2, 2, ref.num_blocks(tokens, 32), ref.num_blocks(tokens, 16), dtype=torch.bool)
    out, lse = ref.block_sparse_attention(q, k, v, mask, 32, 16)
    assert out.dtype == torch.float32 and out.shape == q.shape and lse.shape == (2, 2, tokens)
    torch.testing.assert_close(out, ref.dense_attention(q, k, v), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, sdpa(q, k, v), atol=1e-5, rtol=1e-5)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * dim**-0.5
    torch.testing.assert_close(lse.double(), torch.logsumexp(scores, -1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("queries,keys,block_q,block_k", [(100, 100, 32, 16), (257, 257, 64, 64), (320, 300, 128, 64)])
def test_block_sparse_random_mask_matches_naive_oracle(queries, keys, block_q, block_k):
    q = randn(2, queries, 2, 32)
    k, v = randn(2, keys, 2, 32), randn(2, keys, 2, 32)
    nq, nk = ref.num_blocks(queries, block_q), ref.num_blocks(keys, block_k)
    mask = random_block_mask(2, 2, nq, nk, 0.4)
    mask[..., 0] |= ~mask.any(-1)  # every row sees something
    out, lse = ref.block_sparse_attention(q, k, v, mask, block_q, block_k, scale=0.2)
    expected, expected_lse = naive_attention(q, k, v, token_mask_from_blocks(mask, queries, keys, block_q, block_k),
                                             scale=0.2)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), expected_lse, atol=1e-5, rtol=1e-5)


def test_block_sparse_empty_row_gives_zero_and_neg_inf():
    q, k, v = qkv(1, 70, 2, 16)
    mask = random_block_mask(1, 2, 3, 5)
    mask[0, 1, 2] = False  # last (ragged) query block of head 1 sees nothing
    mask[0, 0, :, 0] = True  # head 0: every query block sees a key block
    out, lse = ref.block_sparse_attention(q, k, v, mask, 32, 16)
    assert torch.isfinite(out).all()
    assert (out[0, 64:, 1] == 0).all() and torch.isneginf(lse[0, 1, 64:]).all()
    assert torch.isfinite(lse[0, 0]).all()


@pytest.mark.parametrize("tokens", [100, 257])
def test_block_sparse_tail_keys_with_padding_match_oracle(tokens):
    q, k, v = qkv(2, tokens, 2, 32)
    tail_k, tail_v = randn(2, 12, 2, 32), randn(2, 12, 2, 32)
    tail_mask = torch.zeros(2, 12, dtype=torch.bool)
    tail_mask[0, :5] = True
    tail_mask[1, :9] = True
    tail_k[~tail_mask] = 50.0  # padded text keys would dominate if they leaked in
    mask = random_block_mask(2, 2, ref.num_blocks(tokens, 64), ref.num_blocks(tokens, 32), 0.3)
    out, lse = ref.block_sparse_attention(q, k, v, mask, 64, 32, tail_k=tail_k, tail_v=tail_v, tail_mask=tail_mask)
    video = token_mask_from_blocks(mask, tokens, tokens, 64, 32)
    tail = tail_mask[:, None, None, :].expand(2, 2, tokens, 12)
    expected, expected_lse = naive_attention(
        q, torch.cat([k, tail_k], 1), torch.cat([v, tail_v], 1), torch.cat([video, tail], -1)
    )
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), expected_lse, atol=1e-5, rtol=1e-5)
    # all tail keys valid when tail_mask is None
    out_all, _ = ref.block_sparse_attention(q, k, v, mask, 64, 32, tail_k=tail_k, tail_v=tail_v)
    expected_all, _ = naive_attention(q, torch.cat([k, tail_k], 1), torch.cat([v, tail_v], 1),
                                      torch.cat([video, torch.ones_like(tail)], -1))
    torch.testing.assert_close(out_all.double(), expected_all, atol=1e-5, rtol=1e-5)


def test_block_sparse_soft_weights_scale_exp_scores():
    q, k, v = qkv(1, 100, 2, 16)
    weights = torch.rand(1, 2, 4, 7)
    weights[0, 0, 1, 3] = 0.0
    out, lse = ref.block_sparse_attention(q, k, v, weights, 32, 16)
    expected, expected_lse = naive_attention(q, k, v, token_mask_from_blocks(weights, 100, 100, 32, 16))
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), expected_lse, atol=1e-5, rtol=1e-5)


def test_block_sparse_fp16_inputs_match_fp32_math():
    q, k, v = qkv(2, 100, 2, 32, dtype=torch.float16)
    mask = random_block_mask(2, 2, 4, 4, 0.6)
    mask[..., 0] = True
    out, lse = ref.block_sparse_attention(q, k, v, mask, 32, 32)
    out32, lse32 = ref.block_sparse_attention(q.float(), k.float(), v.float(), mask, 32, 32)
    assert out.dtype == torch.float16 and lse.dtype == torch.float32
    torch.testing.assert_close(out.float(), out32, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(lse, lse32)


def test_chunked_forward_and_backward_equal_unchunked(monkeypatch):
    q, k, v = qkv(1, 100, 2, 16, requires_grad=True)
    weights = torch.rand(1, 2, 4, 7, requires_grad=True)
    tail_k, tail_v = randn(1, 6, 2, 16), randn(1, 6, 2, 16)
    marginal = torch.rand(1, 2, 4, 7)

    def run():
        out, lse = ref.block_sparse_attention(q, k, v, weights, 32, 16, tail_k=tail_k, tail_v=tail_v)
        linear = ref.complement_linear_attention(q, k, v, marginal, 32, 16)
        loss = (out * torch.linspace(-1, 1, 16)).sum() + lse.sum() * 0.1 + linear.square().sum()
        grads = torch.autograd.grad(loss, (q, k, v, weights))
        return (out, lse, linear) + grads

    whole = run()
    monkeypatch.setattr(ref, "CHUNK_ELEMENTS", 2 * 106 * 7)  # 7 query rows per chunk; 1 query block per linear chunk
    chunked = run()
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_gradcheck_block_sparse_attention():
    q, k, v = qkv(1, 10, 2, 4, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(1, 2, 3, 3, dtype=torch.float64).requires_grad_(True)
    tail_k, tail_v = qkv(1, 3, 2, 4, dtype=torch.float64, requires_grad=True)[:2]
    tail_mask = torch.tensor([[True, False, True]])
    bool_mask = torch.rand(1, 2, 3, 3) < 0.6

    def soft(q, k, v, weights, tail_k, tail_v):
        out, lse = ref.block_sparse_attention(q, k, v, weights, 4, 4, tail_k=tail_k, tail_v=tail_v, tail_mask=tail_mask)
        return out, lse

    def hard(q, k, v):
        return ref.block_sparse_attention(q, k, v, bool_mask, 4, 4, tail_k=tail_k.detach(), tail_v=tail_v.detach())

    assert torch.autograd.gradcheck(soft, (q, k, v, weights, tail_k, tail_v))
    assert torch.autograd.gradcheck(hard, (q, k, v))


# ------------------------------------------------------------------------------------------------ linear branch


def naive_complement_linear(q, k, v, marginal, block_q, block_k):
    """Per query row: Σ_j∈marginal phi(q)·phi(k_j) v_j / Σ_j∈marginal phi(q)·phi(k_j), in float64."""
    phi_q, phi_k = torch.softmax(q.double(), -1), torch.softmax(k.double(), -1)
    out = torch.zeros(q.shape, dtype=torch.float64)
    batch, queries, heads, _ = q.shape
    for b in range(batch):
        for h in range(heads):
            for i in range(queries):
                weight = marginal[b, h, i // block_q].double()[torch.arange(k.shape[1]) // block_k]  # per key
                kernel = (phi_k[b, :, h] @ phi_q[b, i, h]) * weight
                if kernel.sum() > 0:
                    out[b, i, h] = kernel @ v[b, :, h].double() / kernel.sum()
    return out


@pytest.mark.parametrize("tokens,block_q,block_k", [(100, 32, 16), (64, 16, 32)])
def test_complement_linear_matches_naive(tokens, block_q, block_k):
    q, k, v = qkv(2, tokens, 2, 16)
    nq, nk = ref.num_blocks(tokens, block_q), ref.num_blocks(tokens, block_k)
    marginal = random_block_mask(2, 2, nq, nk, 0.5)
    marginal[0, 0, 0] = False  # an empty marginal set
    out = ref.complement_linear_attention(q, k, v, marginal, block_q, block_k)
    assert out.dtype == torch.float32 and out.shape == q.shape
    torch.testing.assert_close(out.double(), naive_complement_linear(q, k, v, marginal, block_q, block_k),
                               atol=1e-5, rtol=1e-5)
    assert (out[0, :block_q, 0] == 0).all()
    soft = torch.rand(2, 2, nq, nk)
    torch.testing.assert_close(ref.complement_linear_attention(q, k, v, soft, block_q, block_k).double(),
                               naive_complement_linear(q, k, v, soft, block_q, block_k), atol=1e-5, rtol=1e-5)


def test_complement_linear_all_selected_is_exact_zero():
    q, k, v = qkv(1, 100, 2, 16, dtype=torch.float16)
    q = q * 30  # extreme feature maps: still no NaN
    out = ref.complement_linear_attention(q, k, v, torch.zeros(1, 2, 4, 7, dtype=torch.bool), 32, 16)
    assert out.dtype == torch.float32 and (out == 0).all()
    full = ref.complement_linear_attention(q, k, v, torch.ones(1, 2, 4, 7, dtype=torch.bool), 32, 16)
    assert torch.isfinite(full).all() and full.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ SLA


def test_sla_keep_one_is_dense_for_any_projection():
    q, k, v = qkv(2, 100, 2, 32)
    proj = torch.nn.Linear(32, 32)
    torch.nn.init.normal_(proj.weight)
    torch.nn.init.normal_(proj.bias)
    out = ref.sla_attention(q, k, v, 1.0, block_q=32, block_k=16, proj=proj)
    torch.testing.assert_close(out, ref.dense_attention(q, k, v), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, sdpa(q, k, v), atol=1e-5, rtol=1e-5)


def test_sla_zero_projection_is_pure_block_sparse_and_linear_term_is_added():
    q, k, v = qkv(2, 257, 2, 32)
    critical = ref.topk_block_mask(ref.block_scores(q, k, 64, 32), 0.25)
    sparse, _ = ref.block_sparse_attention(q, k, v, critical, 64, 32)
    zero = torch.nn.Linear(32, 32)
    torch.nn.init.zeros_(zero.weight)
    torch.nn.init.zeros_(zero.bias)
    torch.testing.assert_close(ref.sla_attention(q, k, v, 0.25, 64, 32, proj=zero), sparse, atol=0, rtol=0)
    torch.testing.assert_close(ref.sla_attention(q, k, v, 0.25, 64, 32), sparse, atol=0, rtol=0)

    proj = torch.nn.Linear(32, 32)
    out = ref.sla_attention(q, k, v, 0.25, 64, 32, proj=proj)
    linear = ref.complement_linear_attention(q, k, v, ~critical, 64, 32)
    torch.testing.assert_close(out, sparse + proj(linear), atol=1e-5, rtol=1e-5)


def test_sla_negligible_blocks_leave_the_linear_sums():
    q, k, v = qkv(1, 128, 2, 16)
    scores = ref.block_scores(q, k, 32, 16)  # 4 x 8 blocks
    critical = ref.topk_block_mask(scores, 0.25)  # 2 per row
    lowest = scores.argsort(-1)[..., :2]  # round(0.25 * 8) = 2 negligible per row
    marginal = ~critical & ~torch.zeros_like(critical).scatter(-1, lowest, True)
    assert (marginal.sum(-1) == 4).all()
    proj = torch.nn.Linear(16, 16)
    sparse, _ = ref.block_sparse_attention(q, k, v, critical, 32, 16)
    expected = sparse + proj(ref.complement_linear_attention(q, k, v, marginal, 32, 16))
    out = ref.sla_attention(q, k, v, 0.25, 32, 16, proj=proj, negligible=0.25)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, ref.sla_attention(q, k, v, 0.25, 32, 16, proj=proj), atol=1e-4)


def test_sla_gradients_flow_and_gradcheck():
    q, k, v = qkv(1, 100, 2, 16, requires_grad=True)
    proj = torch.nn.Linear(16, 16)
    ref.sla_attention(q, k, v, 0.3, 32, 16, proj=proj).square().sum().backward()
    for tensor in (q, k, v, proj.weight, proj.bias):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0

    q, k, v = qkv(1, 12, 2, 4, dtype=torch.float64, requires_grad=True)
    weight = randn(4, 4, dtype=torch.float64, requires_grad=True)
    bias = randn(4, dtype=torch.float64, requires_grad=True)
    tail_k, tail_v = randn(1, 2, 2, 4, dtype=torch.float64), randn(1, 2, 2, 4, dtype=torch.float64)

    def sla(q, k, v, weight, bias):
        return ref.sla_attention(q, k, v, 0.5, block_q=4, block_k=4, proj=lambda x: x @ weight.T + bias,
                                 tail_k=tail_k, tail_v=tail_v)

    assert torch.autograd.gradcheck(sla, (q, k, v, weight, bias))


# ------------------------------------------------------------------------------------------------ SLA2


def test_sla2_alpha_one_keep_one_is_dense():
    q, k, v = qkv(2, 100, 2, 32)
    alpha = torch.ones(2, ref.num_blocks(100, 32))
    for soft in (False, True):
        out = ref.sla2_attention(q, k, v, 1.0, alpha, block_q=32, block_k=16, soft=soft)
        torch.testing.assert_close(out, ref.dense_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_sla2_mixes_sparse_and_linear_per_head_and_query_block():
    q, k, v = qkv(2, 100, 2, 16)
    proj_q = torch.nn.Linear(16, 16, bias=False)
    alpha = torch.rand(2, 4)
    out = ref.sla2_attention(q, k, v, 0.3, alpha, block_q=32, block_k=16, proj_q=proj_q)
    probs = torch.softmax(ref.block_scores(q, k, 32, 16, proj_q) / 4.0, -1)
    mask = ref.topk_block_mask(probs, 0.3)
    sparse, _ = ref.block_sparse_attention(q, k, v, mask, 32, 16)
    linear = ref.complement_linear_attention(q, k, v, ~mask, 32, 16)
    alpha_rows = alpha.repeat_interleave(32, dim=1)[:, :100].T[None, :, :, None]  # [1, S, H, 1]
    torch.testing.assert_close(out, alpha_rows * sparse + (1 - alpha_rows) * linear, atol=1e-5, rtol=1e-5)


def test_sla2_soft_mask_gradient_reaches_router_and_alpha():
    q, k, v = qkv(1, 100, 2, 16, requires_grad=True)
    proj_q, proj_k = torch.nn.Linear(16, 16, bias=False), torch.nn.Linear(16, 16, bias=False)
    torch.nn.init.eye_(proj_q.weight)
    torch.nn.init.eye_(proj_k.weight)
    alpha = torch.full((2, 4), 0.7, requires_grad=True)
    target = ref.dense_attention(q, k, v).detach()
    out = ref.sla2_attention(q, k, v, 0.25, alpha, 32, 16, proj_q=proj_q, proj_k=proj_k, soft=True)
    (out - target).square().mean().backward()
    for tensor in (proj_q.weight, proj_k.weight, alpha, q, k, v):
        assert torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0


def test_sla2_quantized_forward_is_close_and_gradient_is_straight_through():
    q, k, v = qkv(1, 256, 2, 64)
    v = v + 0.5 * torch.randn(1, 1, 2, 64)
    alpha = torch.full((2, 2), 0.9)
    upstream = torch.randn(1, 256, 2, 64)
    tail_k, tail_v = randn(1, 10, 2, 64), randn(1, 10, 2, 64) + 0.5
    tail_mask = torch.arange(10)[None] < 6
    tail_k[:, 6:], tail_v[:, 6:] = 1e3, -1e3  # padding must not reach the quantisation scales either
    grads = []
    outs = []
    for quantized in (False, True):
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
        out = ref.sla2_attention(*leaves, 0.5, alpha, 128, 64, quantized=quantized, tail_k=tail_k, tail_v=tail_v,
                                 tail_mask=tail_mask)
        (out * upstream).sum().backward()  # a loss linear in out, so its gradient does not see the forward values
        outs.append(out.detach())
        grads.append([x.grad for x in leaves])
    assert 0 < rel_l1(outs[1], outs[0]) < 0.05
    for exact, straight_through in zip(*grads, strict=True):
        torch.testing.assert_close(straight_through, exact, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ low-bit


def test_fake_quant_int8_per_block_grid():
    x = randn(2, 100, 3, 16)
    x[:, 64:] = 0.0  # an all-zero (ragged) block stays zero
    out = ref.fake_quant_int8(x, 32)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert (out[:, 96:] == 0).all()
    for start in range(0, 64, 32):
        block, quant = x[:, start : start + 32], out[:, start : start + 32]
        step = block.abs().amax(dim=(1, 3), keepdim=True) / 127  # per (b, block, h)
        codes = quant / step
        torch.testing.assert_close(codes, codes.round(), atol=1e-4, rtol=0)
        assert codes.abs().max() <= 127 + 1e-4
        torch.testing.assert_close(quant.abs().amax(dim=(1, 3)), block.abs().amax(dim=(1, 3)))
        assert ((quant - block).abs() <= step / 2 + 1e-6).all()
    # the token axis can sit elsewhere: [B, H, S, D] with dim=2 gives the same numbers
    torch.testing.assert_close(ref.fake_quant_int8(x.transpose(1, 2), 32, dim=2).transpose(1, 2), out)
    # half-way codes round away from zero, like the kernels
    tie = torch.tensor([127.0, 0.5, -0.5, 1.5, -2.5]).reshape(1, 5, 1, 1)
    assert ref.fake_quant_int8(tie, 8).flatten().tolist() == [127.0, 1.0, -1.0, 2.0, -3.0]


def test_fake_quant_fp8_per_slice():
    x = randn(2, 64, 2, 16) * 7
    x[..., 3] = 0.0
    out = ref.fake_quant_fp8(x, dim=1)
    assert out.dtype == torch.float32
    assert (out[..., 3] == 0).all() and not torch.isnan(out).any()
    torch.testing.assert_close(out.abs().amax(1), x.abs().amax(1))  # amax maps to 448, which e4m3 holds exactly
    assert rel_l1(out, x) < 0.03
    step = x.abs().amax(1, keepdim=True) / 448
    codes = out / torch.where(step > 0, step, 1)
    torch.testing.assert_close(codes.to(torch.float8_e4m3fn).float(), codes, atol=1e-4, rtol=1e-5)


def lowbit_error(q, k, v):
    exact, low = ref.dense_attention(q, k, v), ref.lowbit_attention(q, k, v)
    assert low.dtype == q.dtype and low.shape == q.shape
    return cosine(low, exact), rel_l1(low, exact)


@pytest.mark.parametrize("dim", [64, 128])
def test_lowbit_accuracy_bar_on_realistic_inputs(dim):
    # Real DiT keys carry a large shared channel bias (what smoothing removes) and values a per-channel offset.
    q, k, v = qkv(1, 256, 2, dim)
    k = k + 4.0 * torch.randn(1, 1, 2, dim)
    v = v + 0.5 * torch.randn(1, 1, 2, dim)
    cos, l1 = lowbit_error(q, k, v)
    assert cos >= 0.9995 and l1 <= 0.02


@pytest.mark.parametrize("dim", [64, 128])
def test_lowbit_accuracy_on_zero_mean_random_inputs(dim):
    # Zero-mean random V with near-uniform attention shrinks the output as fast as the FP8 noise, so the FP8 P and V
    # floor (~2.2% each per element) shows fully: ~0.036 rel-L1. The INT8 Q/K stage alone must meet the bar.
    q, k, v = qkv(1, 256, 2, dim)
    cos, l1 = lowbit_error(q, k, v)
    assert cos >= 0.999 and l1 <= 0.045
    qh, kh = ref.fake_quant_int8(q, 128), ref.fake_quant_int8(ref.smooth_keys(k), 64)
    exact = ref.dense_attention(q, k, v)
    int8_only = ref.dense_attention(qh, kh, v)
    assert cosine(int8_only, exact) >= 0.9995 and rel_l1(int8_only, exact) <= 0.02


def test_lowbit_key_padding_mask():
    q, k, v = qkv(2, 200, 2, 64)
    valid = 150
    k_pad, v_pad = k.clone(), v.clone()
    k_pad[:, valid:] = 1e3  # garbage that must not leak into the softmax, the key mean or any scale
    v_pad[:, valid:] = -1e3
    mask = torch.zeros(2, 200, dtype=torch.bool)
    mask[:, :valid] = True
    out = ref.lowbit_attention(q, k_pad, v_pad, attn_mask=mask)
    truncated = ref.lowbit_attention(q, k[:, :valid], v[:, :valid])
    torch.testing.assert_close(out, truncated, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref.lowbit_attention(q, k_pad, v_pad, attn_mask=mask[:, None, None, :]), out)
    exact = ref.dense_attention(q, k_pad, v_pad, attn_mask=mask)
    assert cosine(out, exact) > 0.999


def test_lowbit_fp16_returns_fp16():
    q, k, v = qkv(1, 100, 2, 64, dtype=torch.float16)
    out = ref.lowbit_attention(q, k, v, block_q=32, block_k=32)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert cosine(out, ref.dense_attention(q, k, v)) > 0.999


def test_dense_attention_masks_match_sdpa():
    q, k, v = qkv(2, 100, 2, 32, dtype=torch.float16)
    key_mask = torch.rand(2, 100) < 0.7
    out = ref.dense_attention(q, k, v, attn_mask=key_mask)
    assert out.dtype == torch.float16
    expected = sdpa(q.float(), k.float(), v.float(), key_mask[:, None, None, :])
    torch.testing.assert_close(out.float(), expected, atol=1e-3, rtol=1e-3)
    full_mask = torch.rand(2, 1, 100, 100) < 0.5
    full_mask[..., 0] = True
    expected = sdpa(q.float(), k.float(), v.float(), full_mask)
    torch.testing.assert_close(ref.dense_attention(q.float(), k.float(), v.float(), attn_mask=full_mask), expected,
                               atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ SVG


def test_frame_to_token_major_round_trip():
    frames, per_frame = 3, 5
    perm = ref.frame_to_token_major(frames, per_frame)
    for p in range(per_frame):
        for f in range(frames):
            assert perm[p * frames + f] == f * per_frame + p
    x = randn(2, 15, 2, 4)
    token_major = x[:, perm]
    torch.testing.assert_close(token_major[:, torch.argsort(perm)], x)
    assert sorted(perm.tolist()) == list(range(15))


def test_svg_band_block_mask_matches_token_definition():
    tokens, width, sink = 100, 20, 10
    for block_q, block_k in [(16, 16), (32, 16)]:
        band = ref.svg_band_block_mask(tokens, block_q, block_k, width, sink)
        nq, nk = ref.num_blocks(tokens, block_q), ref.num_blocks(tokens, block_k)
        assert band.shape == (nq, nk) and band.dtype == torch.bool
        i, j = torch.arange(tokens)[:, None], torch.arange(tokens)[None, :]
        near = ((i - j).abs() <= width) | (j < sink)
        expected = torch.zeros(nq, nk, dtype=torch.bool)
        for a in range(nq):
            for b in range(nk):
                expected[a, b] = near[a * block_q : (a + 1) * block_q, b * block_k : (b + 1) * block_k].any()
        assert torch.equal(band, expected)
    band = ref.svg_band_block_mask(tokens, 16, 16, width, 0)
    assert torch.equal(band, band.T)
    assert ref.svg_band_block_mask(tokens, 16, 16, 0, sink)[:, 0].all()


@pytest.mark.parametrize("density", [0.05, 0.2, 0.3, 0.36, 0.75, 1.0])
def test_svg_band_width_covers_density(density):
    tokens = 1000
    width = ref.svg_band_width(density, tokens)
    i, j = torch.arange(tokens)[:, None], torch.arange(tokens)[None, :]
    covered = lambda w: ((i - j).abs() <= w).float().mean().item()
    assert covered(width) >= density
    assert 1 - (1 - (width - 1) / tokens) ** 2 < density  # one token narrower is too thin in the continuous model
    assert ref.svg_band_width(1.0, tokens) == tokens
    with pytest.raises(ValueError):
        ref.svg_band_width(0.0, tokens)


def test_svg_attention_density_one_is_dense():
    q, k, v = qkv(2, 4 * 25, 2, 16)
    tail_k, tail_v = randn(2, 7, 2, 16), randn(2, 7, 2, 16)
    tail_mask = torch.rand(2, 7) < 0.6
    labels = torch.tensor([[0, 1], [1, 0]])
    out, out_labels, density = ref.svg_attention(q, k, v, 4, 25, 1.0, block_q=32, block_k=32, labels=labels,
                                                 tail_k=tail_k, tail_v=tail_v, tail_mask=tail_mask)
    assert density == 1.0 and torch.equal(out_labels, labels)
    weights = torch.cat([torch.ones(2, 2, 100, 100, dtype=torch.bool),
                         tail_mask[:, None, None, :].expand(2, 2, 100, 7)], -1)
    expected, _ = naive_attention(q, torch.cat([k, tail_k], 1), torch.cat([v, tail_v], 1), weights)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_svg_attention_matches_permuted_band_oracle_and_reports_density():
    frames, per_frame, block = 4, 30, 16
    tokens = frames * per_frame
    q, k, v = qkv(2, tokens, 2, 16)
    labels = torch.tensor([[0, 1], [1, 1]])
    out, _, density = ref.svg_attention(q, k, v, frames, per_frame, 0.3, block_q=block, block_k=block,
                                        labels=labels)
    width = ref.svg_band_width(0.3, tokens)
    band = ref.svg_band_block_mask(tokens, block, block, width, per_frame)
    band_tokens = token_mask_from_blocks(band, tokens, tokens, block, block)  # in each head's own layout
    token_major = torch.argsort(ref.frame_to_token_major(frames, per_frame))  # position of frame-major token i
    temporal_tokens = band_tokens[token_major][:, token_major]  # back in frame-major coordinates
    weights = torch.stack([torch.stack([temporal_tokens if labels[b, h] else band_tokens for h in range(2)])
                           for b in range(2)])
    expected, _ = naive_attention(q, k, v, weights)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    assert density == pytest.approx(band_tokens.double().mean().item(), abs=1e-12)
    assert 0.3 <= density < 1.0


def synthetic_heads(frames, per_frame, dim, temporal):
    """Keys/queries identical across frames at one spatial position (temporal) or across one frame (spatial)."""
    codes = torch.randn(per_frame if temporal else frames, dim) * 1.5
    index = torch.arange(frames * per_frame)
    rows = codes[index % per_frame] if temporal else codes[index // per_frame]
    return rows + 0.1 * torch.randn(frames * per_frame, dim)


def test_svg_profile_separates_temporal_and_spatial_heads():
    frames, per_frame, dim = 6, 24, 32
    tokens = frames * per_frame
    heads = [synthetic_heads(frames, per_frame, dim, temporal) for temporal in (True, False, False, True)]
    q = torch.stack(heads, dim=1)[None]  # [1, S, 4, D]
    k = q.clone()
    v = torch.randn(1, tokens, 4, dim)
    width = ref.svg_band_width(0.25, tokens)
    assert frames <= width < frames * per_frame  # the band spans all frames token-major, about one frame frame-major
    generator = torch.Generator().manual_seed(0)
    labels = ref.svg_profile_heads(q, k, v, frames, per_frame, width, per_frame, 48, generator=generator)
    assert labels.dtype == torch.long and labels.tolist() == [[1, 0, 0, 1]]
    out, labels2, _ = ref.svg_attention(q, k, v, frames, per_frame, 0.25, block_q=16, block_k=16, profile_rows=48,
                                        generator=torch.Generator().manual_seed(0))
    assert labels2.tolist() == [[1, 0, 0, 1]]
    # the label each head got is the better of the two layouts against exact attention
    exact = ref.dense_attention(q, k, v)
    flipped, _, _ = ref.svg_attention(q, k, v, frames, per_frame, 0.25, block_q=16, block_k=16,
                                      labels=1 - labels2)
    error = lambda x: (x - exact).square().mean(dim=(0, 1, 3))
    assert (error(out) < error(flipped)).all()
