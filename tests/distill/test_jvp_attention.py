"""JVP attention: the chunked reference vs torch.func.jvp through materialised softmax attention, the autograd
Function, and a whole tiny Wan transformer under torch.func.jvp."""

from __future__ import annotations

import pytest
import torch

from turbo.adapters import METHOD_ATTR
from turbo.distill import jvp_attention as ja
from turbo.distill.trigflow import TrigFlowModel
from turbo.errors import TurboError

from . import LATENT, TEXT_DIM, tiny_wan


def materialised(q, k, v, scale=None):
    """softmax(Q·Kᵀ·scale)·V on [B, S, H, D], plain differentiable ops."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    p = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) * scale, dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", p, v)


def _inputs(b, sq, sk, h, d, dv=None, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(b, sq, h, d), (b, sk, h, d), (b, sk, h, dv or d)]
    primals = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    tangents = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    return primals, tangents


@pytest.mark.parametrize("sq,sk,chunk", [(7, 7, 1024), (7, 7, 1), (13, 5, 4), (5, 19, 3), (16, 16, 16)])
def test_reference_matches_materialised_jvp(sq, sk, chunk):
    (q, k, v), (tq, tk, tv) = _inputs(2, sq, sk, 3, 8, dv=6)
    o_ref, to_ref = torch.func.jvp(materialised, (q, k, v), (tq, tk, tv))
    o, to = ja.jvp_attention_reference(q, k, v, tq, tk, tv, chunk=chunk)
    assert o.shape == to.shape == (2, sq, 3, 6)
    torch.testing.assert_close(o, o_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(to, to_ref, atol=1e-12, rtol=1e-12)


def test_reference_scale_none_tangents_and_fp32():
    (q, k, v), (tq, tk, tv) = _inputs(1, 9, 6, 2, 4)
    _, to_ref = torch.func.jvp(lambda a: materialised(a, k, v, 0.3), (q,), (tq,))
    _, to = ja.jvp_attention_reference(q, k, v, tq, None, None, scale=0.3, chunk=2)
    torch.testing.assert_close(to, to_ref, atol=1e-12, rtol=1e-12)
    _, to_zero = ja.jvp_attention_reference(q, k, v, tq, torch.zeros_like(k), torch.zeros_like(v), scale=0.3)
    torch.testing.assert_close(to, to_zero, atol=1e-14, rtol=0)
    o32, to32 = ja.jvp_attention_reference(*(x.float() for x in (q, k, v, tq, tk, tv)), chunk=4)
    o64, to64 = ja.jvp_attention_reference(q, k, v, tq, tk, tv)
    assert o32.dtype == to32.dtype == torch.float32
    torch.testing.assert_close(to32.double(), to64, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ja.attention_reference(q, k, v, chunk=4), o64, atol=1e-14, rtol=0)


def test_function_forward_jvp_and_backward():
    (q, k, v), (tq, tk, tv) = _inputs(2, 6, 10, 2, 4, seed=1)
    o_ref, to_ref = torch.func.jvp(materialised, (q, k, v), (tq, tk, tv))
    o, to = torch.func.jvp(lambda a, b, c: ja.attention_with_jvp(a, b, c, chunk=4), (q, k, v), (tq, tk, tv))
    torch.testing.assert_close(o, o_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(to, to_ref, atol=1e-12, rtol=1e-12)
    with torch.no_grad():  # rCM runs its JVP pass under no_grad; cross-attention K/V carry no tangent
        _, to_q = torch.func.jvp(lambda a: ja.attention_with_jvp(a, k, v), (q,), (tq,))
    _, to_q_ref = torch.func.jvp(lambda a: materialised(a, k, v), (q,), (tq,))
    torch.testing.assert_close(to_q, to_q_ref, atol=1e-12, rtol=1e-12)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    grad = torch.randn_like(o)
    expected = torch.autograd.grad(materialised(*leaves), leaves, grad)
    for got, want in zip(torch.autograd.grad(ja.attention_with_jvp(*leaves), leaves, grad), expected, strict=False):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    for got, want in zip(ja.attention_backward_reference(q, k, v, grad, chunk=4), expected, strict=False):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_bad_shapes_raise():
    (q, k, v), _ = _inputs(1, 4, 4, 2, 4)
    with pytest.raises(TurboError):
        ja.attention_with_jvp(q, k[:, :, :1], v)


class MaterialisedWanProcessor(ja.JVPWanAttnProcessor):
    """Same processor with plain einsum/softmax attention: the independent JVP oracle for a whole model."""

    def _attend(self, q, k, v):
        return materialised(q, k, v)


@pytest.fixture(scope="module")
def wan64():
    return tiny_wan(seed=0, dtype=torch.float64)


def _wan_inputs(batch=2):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, *LATENT, generator=g, dtype=torch.float64)
    ctx = torch.randn(batch, 10, TEXT_DIM, generator=g, dtype=torch.float64)
    theta = torch.tensor([0.7, 1.2], dtype=torch.float64)[:batch]
    t_x = torch.randn(x.shape, generator=g, dtype=torch.float64)
    t_theta = torch.tensor([0.3, -0.2], dtype=torch.float64)[:batch]
    return x, ctx, theta, t_x, t_theta


def test_wan_jvp_matches_materialised_attention_and_finite_difference(wan64):
    x, ctx, theta, t_x, t_theta = _wan_inputs()
    model = TrigFlowModel(wan64, bf16_timesteps=False)
    with torch.no_grad():
        F_stock = model(x, theta, encoder_hidden_states=ctx)
    originals = ja.install_jvp_attention(wan64, chunk=16)
    try:
        assert all(isinstance(p, ja.JVPWanAttnProcessor) for p in wan64.attn_processors.values())
        assert len(originals) == 4  # 2 blocks × (self, cross)
        F, tF = model.F_and_tangent(x, theta, t_x, t_theta, encoder_hidden_states=ctx)
        wan64.set_attn_processor({n: MaterialisedWanProcessor(p) for n, p in originals.items()})
        F_ref, tF_ref = model.F_and_tangent(x, theta, t_x, t_theta, encoder_hidden_states=ctx)
    finally:
        ja.remove_jvp_attention(wan64, originals)
    assert {n: id(p) for n, p in wan64.attn_processors.items()} == {n: id(p) for n, p in originals.items()}
    torch.testing.assert_close(F, F_stock, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(tF, tF_ref, atol=1e-10, rtol=1e-10)
    assert float(tF.abs().max()) > 1e-2
    # finite difference: Wan runs its LayerNorms and time embedding in float32, so FD is only ~1e-3 accurate
    h = 1e-3
    with torch.no_grad():
        fd = (model(x + h * t_x, theta + h * t_theta, encoder_hidden_states=ctx)
              - model(x - h * t_x, theta - h * t_theta, encoder_hidden_states=ctx)) / (2 * h)
    assert float((fd - tF).norm() / tF.norm()) < 1e-2


def test_wan_processor_gradients_match_stock(wan64):
    x, ctx, theta, _, _ = _wan_inputs(batch=1)
    model = TrigFlowModel(wan64, bf16_timesteps=True)
    params = [p for p in wan64.parameters() if p.requires_grad][:6]
    loss = model(x, theta, encoder_hidden_states=ctx).square().sum()
    want = torch.autograd.grad(loss, params)
    with ja.using_jvp_attention(wan64):
        loss_jvp = model(x, theta, encoder_hidden_states=ctx).square().sum()
        got = torch.autograd.grad(loss_jvp, params)
    torch.testing.assert_close(loss_jvp, loss, atol=1e-9, rtol=1e-9)
    for a, b in zip(got, want, strict=False):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)


def test_install_refuses_sparse_methods_and_other_models(wan64):
    attn = wan64.blocks[1].attn1
    attn.add_module(METHOD_ATTR, torch.nn.Identity())
    before = dict(wan64.attn_processors)
    try:
        with pytest.raises(TurboError, match="JVP needs dense attention"):
            ja.install_jvp_attention(wan64)
    finally:
        delattr(attn, METHOD_ATTR)
    assert wan64.attn_processors == before
    with pytest.raises(TurboError, match="WanTransformer3DModel"):
        ja.install_jvp_attention(torch.nn.Linear(2, 2))


def test_masked_jvp_reference_matches_torch_func_jvp():
    g = torch.Generator().manual_seed(5)
    q, k, v, tq, tk, tv = (torch.randn(2, 12, 2, 8, generator=g, dtype=torch.float64) for _ in range(6))
    mask = torch.ones(2, 1, 1, 12, dtype=torch.bool)
    mask[0, ..., 9:] = False  # padded keys of the first sample
    out, t_out = ja.jvp_attention_reference(q, k, v, tq, tk, tv, chunk=5, mask=mask)

    def masked(q_, k_, v_):
        s = (q_.transpose(1, 2) @ k_.transpose(1, 2).transpose(-1, -2)) * 8 ** -0.5
        return (torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v_.transpose(1, 2)).transpose(1, 2)

    want, t_want = torch.func.jvp(masked, (q, k, v), (tq, tk, tv))
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(t_out, t_want)
    torch.testing.assert_close(ja.attention_with_jvp(q, k, v, chunk=5, mask=mask), want)


def test_hunyuan_jvp_matches_finite_difference_with_padded_text():
    from pipelines.tiny import build_hunyuan_t2v

    net = build_hunyuan_t2v(guidance_embeds=False).transformer.to(torch.float64)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 16, 2, 8, 8, generator=g, dtype=torch.float64)
    cond = {"encoder_hidden_states": torch.randn(2, 7, 16, generator=g, dtype=torch.float64),
            "encoder_attention_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3]),
            "pooled_projections": torch.randn(2, 8, generator=g, dtype=torch.float64)}
    theta, t_theta = torch.tensor([0.7, 1.2], dtype=torch.float64), torch.tensor([0.3, -0.2], dtype=torch.float64)
    t_x = torch.randn(x.shape, generator=g, dtype=torch.float64)
    model = TrigFlowModel(net, bf16_timesteps=False)
    with torch.no_grad():
        F_stock = model(x, theta, **cond)
    with ja.using_jvp_attention(net, chunk=16):
        kinds = {type(p).__name__ for p in net.attn_processors.values()}
        assert kinds == {"JVPHunyuanVideoAttnProcessor", "JVPAttnProcessor"}  # joint blocks + token refiner
        F, tF = model.F_and_tangent(x, theta, t_x, t_theta, **cond)
    torch.testing.assert_close(F, F_stock, atol=1e-9, rtol=1e-9)
    h = 1e-4
    with torch.no_grad():
        fd = (model(x + h * t_x, theta + h * t_theta, **cond)
              - model(x - h * t_x, theta - h * t_theta, **cond)) / (2 * h)
    assert float(tF.abs().max()) > 1e-3
    assert float((fd - tF).norm() / tF.norm()) < 1e-2, float((fd - tF).norm() / tF.norm())
