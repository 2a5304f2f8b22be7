"""SLA Triton forward vs the PyTorch reference (TRITON_INTERPRET=1 on CPU: fp16/fp32, small shapes)."""

import pytest
import torch

from turbo.attention import reference
from turbo.attention.kernels.router import mask_to_lut, sla_router
from turbo.attention.kernels.sla_forward import marginal_weights, sla_block_states, sla_forward

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 3e-3 if DEVICE == "cuda" else 1e-5  # fp32 tl.dot is TF32 on the GPU


def _qkv(b, s, h, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, s, h, d, generator=g).to(DEVICE, dtype) for _ in range(3)]


def _rel(a, b):
    return float((a.float() - b.float()).abs().sum() / b.float().abs().sum())


@pytest.mark.parametrize(
    "s, d, keep, dtype",
    [(256, 32, 0.25, torch.float32), (200, 64, 0.5, torch.float16), (130, 32, 1.0, torch.float32),
     (192, 16, 0.01, torch.float16)],
)
def test_sla_forward_matches_reference(s, d, keep, dtype):
    seed = int(torch.randint(0, 2**31, ()))
    q, k, v = _qkv(1, s, 2, d, dtype, seed)
    proj = torch.nn.Linear(d, d).to(DEVICE)
    torch.nn.init.normal_(proj.weight, std=0.3)
    block_q, block_k = 64, 32
    lut, count = sla_router(q, k, block_q, block_k, keep)
    with torch.no_grad():
        out, lse = sla_forward(q, k, v, lut, count, block_q, block_k, proj.weight, proj.bias, block_m=32)
        expected = reference.sla_attention(q, k, v, keep, block_q=block_q, block_k=block_k, proj=proj)
    tol = 2e-3 if dtype == torch.float32 else 1e-2
    assert torch.isfinite(out).all()
    assert _rel(out, expected) < tol, (seed, _rel(out, expected))


def test_pure_sparse_forward_and_lse_match_block_sparse_reference():
    seed = int(torch.randint(0, 2**31, ()))
    q, k, v = _qkv(2, 160, 2, 32, torch.float32, seed)
    torch.manual_seed(seed)
    mask = (torch.rand(2, 2, 3, 5) < 0.4).to(DEVICE)
    mask[..., 0] = True  # floor of one block per row
    lut, count = mask_to_lut(mask)
    out, lse = sla_forward(q, k, v, lut, count, 64, 32, block_m=64)
    exp_out, exp_lse = reference.block_sparse_attention(q, k, v, mask, 64, 32)
    assert _rel(out, exp_out) < max(TOL, 1e-4)
    torch.testing.assert_close(lse, exp_lse, atol=10 * TOL, rtol=TOL)


def test_block_states_and_marginal_lut():
    q, k, v = _qkv(1, 100, 2, 16, torch.float32, 3)
    states = sla_block_states(k, v, 32)
    h, z = states[..., :256].reshape(1, 2, 4, 16, 16), states[..., 256:]
    phi = torch.softmax(k.float(), dim=-1)
    padded = torch.nn.functional.pad(phi, (0, 0, 0, 0, 0, 28)).reshape(1, 4, 32, 2, 16)
    vpad = torch.nn.functional.pad(v, (0, 0, 0, 0, 0, 28)).reshape(1, 4, 32, 2, 16)
    torch.testing.assert_close(h, torch.einsum("bjshd,bjshe->bhjde", padded, vpad), atol=TOL, rtol=TOL)
    torch.testing.assert_close(z, padded.sum(2).transpose(1, 2), atol=TOL, rtol=TOL)
    lut = torch.tensor([[[[2, 0, 3], [1, 3, 3]]]], dtype=torch.int32)
    count = torch.tensor([[[2, 1]]], dtype=torch.int32)
    expected = torch.tensor([[[[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 1.0]]]])
    assert torch.equal(marginal_weights(lut, count, 4, torch.float32), expected)


def test_router_pooling_and_selection_match_reference():
    q, k, v = _qkv(2, 150, 2, 32, torch.float32, 11)
    from turbo.attention.kernels.router import block_pool, sla_router

    torch.testing.assert_close(block_pool(q, 64), reference.block_mean_pool(q, 64), atol=1e-5, rtol=1e-5)
    lut, count = sla_router(q, k, 64, 32, 0.4)
    expected = reference.topk_block_mask(reference.block_scores(q, k, 64, 32), 0.4)
    got = torch.zeros_like(expected).scatter(-1, lut.long(), True)
    assert torch.equal(got, expected) and bool((count == 2).all())


def test_custom_ops_trace_without_graph_breaks():
    from turbo.attention.kernels import ops  # noqa: F401  (registers torch.ops.turbo.*)
    from turbo.attention.kernels.router import topk_lut

    q, k, v = _qkv(1, 128, 2, 32, torch.float32, 5)
    proj = torch.nn.Linear(32, 32).to(DEVICE)

    def sla(q, k, v):
        lut, count = topk_lut(torch.ops.turbo.block_pool(q, 64) @ torch.ops.turbo.block_pool(k, 32).transpose(-1, -2),
                              0.5)
        return torch.ops.turbo.sla_forward(q, k, v, lut, count, proj.weight, proj.bias, 64, 32, 32 ** -0.5)[0]

    with torch.no_grad():
        eager = sla(q, k, v)
        compiled = torch.compile(sla, fullgraph=True, backend="aot_eager")(q, k, v)
    torch.testing.assert_close(compiled, eager)
    torch.library.opcheck(torch.ops.turbo.block_pool.default, (q, 64))


@pytest.mark.parametrize("keep, dtype", [(0.3, torch.float32), (1.0, torch.float32), (0.5, torch.float16)])
def test_sla2_mode_matches_reference(keep, dtype):
    from turbo.attention.kernels.router import sla_router

    seed = int(torch.randint(0, 2**31, ()))
    q, k, v = _qkv(1, 220, 2, 32, dtype, seed)
    torch.manual_seed(seed)
    proj_q = torch.nn.Linear(32, 32, bias=False).to(DEVICE)
    proj_k = torch.nn.Linear(32, 32, bias=False).to(DEVICE)
    alpha = torch.rand(2, 4, device=DEVICE) * 0.8 + 0.1
    if keep == 1.0:
        alpha.fill_(1.0)
    with torch.no_grad():
        lut, count = sla_router(q, k, 64, 32, keep, proj_q, proj_k)
        out, _ = sla_forward(q, k, v, lut, count, 64, 32, alpha=alpha, block_m=32)
        expected = reference.sla2_attention(q, k, v, keep, alpha, block_q=64, block_k=32, proj_q=proj_q,
                                            proj_k=proj_k)
    tol = 3e-3 if dtype == torch.float32 else 1e-2
    assert _rel(out, expected) < tol, (seed, _rel(out, expected))
    if keep == 1.0:
        assert _rel(out, reference.dense_attention(q, k, v)) < tol


@pytest.mark.parametrize("alpha_mode", [False, True])
def test_text_tail_keys_match_reference(alpha_mode):
    from turbo.attention.kernels.router import sla_router

    seed = int(torch.randint(0, 2**31, ()))
    q, k, v = _qkv(2, 160, 2, 32, torch.float32, seed)
    tk, tv = _qkv(2, 40, 2, 32, torch.float32, seed + 1)[:2]
    tail_mask = torch.ones(2, 40, dtype=torch.bool, device=DEVICE)
    tail_mask[0, 25:] = False
    tk[0, 25:] = 1e3  # padding slots hold garbage that must not matter
    proj = torch.nn.Linear(32, 32).to(DEVICE)
    alpha = torch.full((2, 3), 0.7, device=DEVICE)
    tail = {"tail_k": tk, "tail_v": tv, "tail_mask": tail_mask}
    with torch.no_grad():
        lut, count = sla_router(q, k, 64, 32, 0.4)
        if alpha_mode:
            out, _ = sla_forward(q, k, v, lut, count, 64, 32, alpha=alpha, block_m=32, **tail)
            expected = reference.sla2_attention(q, k, v, 0.4, alpha, block_q=64, block_k=32, **tail)
        else:
            out, _ = sla_forward(q, k, v, lut, count, 64, 32, proj.weight, proj.bias, block_m=32, **tail)
            expected = reference.sla_attention(q, k, v, 0.4, block_q=64, block_k=32, proj=proj, **tail)
    assert torch.isfinite(out).all()
    assert _rel(out, expected) < TOL * 3, (seed, _rel(out, expected))


def test_module_calling_the_ops_compiles_fullgraph_and_passes_opcheck():
    from turbo.attention.kernels import ops  # noqa: F401
    from turbo.attention.kernels.router import topk_lut

    class KernelSLA(torch.nn.Module):
        """What SLAAttention / SLA2Attention run on CUDA, as a module."""

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(32, 32)

        def forward(self, q, k, v, alpha):
            scores = torch.ops.turbo.block_pool(q, 64) @ torch.ops.turbo.block_pool(k, 32).transpose(-1, -2)
            lut, count = topk_lut(scores, 0.5)
            sla = torch.ops.turbo.sla_forward(q, k, v, lut, count, self.proj.weight, self.proj.bias, 64, 32,
                                              32 ** -0.5)[0]
            sla2 = torch.ops.turbo.sla2_forward(q, k, v, lut, count, alpha, 64, 32, 32 ** -0.5)[0]
            return sla + sla2

    q, k, v = _qkv(1, 128, 2, 32, torch.float32, 9)
    alpha = torch.full((2, 2), 0.6, device=DEVICE)
    module = KernelSLA().to(DEVICE)
    with torch.no_grad():
        eager = module(q, k, v, alpha)
        compiled = torch.compile(module, fullgraph=True, backend="aot_eager")(q, k, v, alpha)
    torch.testing.assert_close(compiled, eager)
    lut, count = topk_lut(reference.block_scores(q, k, 64, 32), 0.5)
    torch.library.opcheck(torch.ops.turbo.sla_forward.default,
                          (q, k, v, lut, count, module.proj.weight, module.proj.bias, 64, 32, 32 ** -0.5),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.turbo.sla2_forward.default, (q, k, v, lut, count, alpha, 64, 32, 32 ** -0.5),
                          test_utils=("test_schema", "test_faketensor"))
