"""Gradients of the SLA / SLA2 kernel ops (Triton sparse backward + linear-branch algebra) vs autograd through the
PyTorch reference (TRITON_INTERPRET=1 on CPU)."""

import pytest
import torch

from turbo.attention import reference
from turbo.attention.kernels import ops  # noqa: F401  (registers torch.ops.turbo.*)
from turbo.attention.kernels.router import sla_router

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 5e-3 if DEVICE == "cuda" else 1e-4  # fp32 tl.dot is TF32 on the GPU


def _rel(a, b):
    return float((a.float() - b.float()).abs().sum() / b.float().abs().sum().clamp_min(1e-12))


def _inputs(seed, s=200, h=2, d=32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, s, h, d, generator=g).to(DEVICE).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("keep, block_q, block_k", [(0.3, 64, 32), (0.6, 64, 32), (1.0, 64, 32), (0.1, 32, 16)])
def test_sla_op_gradients_match_reference(keep, block_q, block_k):
    seed = int(torch.randint(0, 2**31, ()))
    q, k, v = _inputs(seed)
    proj = torch.nn.Linear(32, 32).to(DEVICE)
    torch.nn.init.normal_(proj.weight, std=0.3)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE)
    with torch.no_grad():
        lut, count = sla_router(q, k, block_q, block_k, keep)
    out, _ = torch.ops.turbo.sla_forward(q, k, v, lut, count, proj.weight, proj.bias, block_q, block_k, 32 ** -0.5)
    got = torch.autograd.grad(out, [q, k, v, proj.weight, proj.bias], grad)
    ref = reference.sla_attention(q, k, v, keep, block_q=block_q, block_k=block_k, proj=proj)
    expected = torch.autograd.grad(ref, [q, k, v, proj.weight, proj.bias], grad)
    for name, a, b in zip(["dq", "dk", "dv", "dW", "db"], got, expected, strict=True):
        assert torch.isfinite(a).all()
        assert _rel(a, b) < TOL, (seed, keep, name, _rel(a, b))


def test_sla2_op_gradients_match_reference():
    seed = int(torch.randint(0, 2**31, ()))
    q, k, v = _inputs(seed)
    logits = torch.randn(2, 4, generator=torch.Generator().manual_seed(seed)).to(DEVICE).requires_grad_()
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE)
    with torch.no_grad():
        lut, count = sla_router(q, k, 64, 32, 0.4)
    out, _ = torch.ops.turbo.sla2_forward(q, k, v, lut, count, torch.sigmoid(logits), 64, 32, 32 ** -0.5)
    got = torch.autograd.grad(out, [q, k, v, logits], grad)
    ref = reference.sla2_attention(q, k, v, 0.4, torch.sigmoid(logits), block_q=64, block_k=32)
    expected = torch.autograd.grad(ref, [q, k, v, logits], grad)
    for name, a, b in zip(["dq", "dk", "dv", "dlogits"], got, expected, strict=True):
        assert _rel(a, b) < TOL, (seed, name, _rel(a, b))


@pytest.mark.parametrize("mode, keep, dtype", [("sla", 0.3, torch.float32), ("sla", 1.0, torch.float32),
                                               ("sla2", 0.4, torch.float32), ("sla", 0.5, torch.float16)])
def test_fused_linear_backward_matches_the_torch_oracle(mode, keep, dtype):
    from turbo.attention.kernels.sla_backward import sla_backward
    from turbo.attention.kernels.sla_forward import sla_forward

    seed = int(torch.randint(0, 2**31, ()))
    g = torch.Generator().manual_seed(seed)
    q, k, v, grad = (torch.randn(2, 200, 2, 32, generator=g).to(DEVICE, dtype) for _ in range(4))
    proj = torch.nn.Linear(32, 32).to(DEVICE)
    torch.nn.init.normal_(proj.weight, std=0.3)
    alpha = (torch.rand(2, 4, generator=g) * 0.8 + 0.1).to(DEVICE)
    with torch.no_grad():
        lut, count = sla_router(q, k, 64, 32, keep)
        extra = {"alpha": alpha} if mode == "sla2" else {"proj_weight": proj.weight, "proj_bias": proj.bias}
        _, lse = sla_forward(q, k, v, lut, count, 64, 32, **extra)
        args = (grad, q, k, v, lse, lut, count, 64, 32, 32 ** -0.5)
        fused = sla_backward(*args, **extra, fused=True)
        oracle = sla_backward(*args, **extra, fused=False)
    tol = TOL if dtype == torch.float32 else 2e-2
    for name, a, b in zip(["dq", "dk", "dv", "dW", "db", "dalpha"], fused, oracle, strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.isfinite(a).all(), name
            assert _rel(a, b) < tol, (seed, mode, name, _rel(a, b))
