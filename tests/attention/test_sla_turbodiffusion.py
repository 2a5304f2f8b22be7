"""SLA in TurboDiffusion's released form (`linear="all"`, `topk_rule="floor"`): the reference against an explicit
dense-mask implementation written here, the Triton kernel (TRITON_INTERPRET=1 on CPU: fp16/fp32, small shapes) and its
backward against the reference, the config rule, and the method through a tiny Wan pipeline."""

import pytest
import torch

from turbo.attention import SLAAttention, reference
from turbo.attention.kernels import ops  # noqa: F401  (registers torch.ops.turbo.*)
from turbo.attention.kernels.router import sla_router
from turbo.attention.kernels.sla_forward import sla_forward, sla_global_linear_state
from turbo.config import AttentionConfig
from turbo.errors import TurboConfigError

from .kernel_env import DEVICE, fresh_seed, single_thread  # noqa: F401  (autouse fixture)


def _rel(a, b):
    return float((a.float() - b.float()).abs().sum() / b.float().abs().sum().clamp_min(1e-12))


def _qkv(b, s, h, d, dtype, seed, grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, s, h, d, generator=g).to(DEVICE, dtype).requires_grad_(grad) for _ in range(3)]


def _explicit_sla(q, k, v, keep, block_q, block_k, weight, bias, linear, rule, tail_k=None, tail_v=None):
    """Straightforward fp64 SLA from the formulas: dense [S, S] block mask, masked softmax, explicit linear branch.
    q, k, v [B, S, H, D] -> [B, S, H, D] fp64."""
    q, k, v = (x.double().transpose(1, 2) for x in (q, k, v))  # [B, H, S, D]
    batch, heads, seq, dim = q.shape
    nq, nk = -(-seq // block_q), -(-seq // block_k)
    pooled_q = torch.stack([q[:, :, i * block_q:(i + 1) * block_q].mean(2) for i in range(nq)], 2)
    smooth = k - k.mean(2, keepdim=True)
    pooled_k = torch.stack([smooth[:, :, j * block_k:(j + 1) * block_k].mean(2) for j in range(nk)], 2)
    scores = pooled_q @ pooled_k.transpose(-1, -2)
    count = int(keep * nk) if rule == "floor" else round(keep * nk)
    count = min(nk, max(1, count))
    selected = torch.zeros(batch, heads, nq, nk, dtype=torch.bool, device=q.device)
    selected.scatter_(-1, scores.topk(count, -1).indices, True)
    token_mask = selected.repeat_interleave(block_q, 2)[:, :, :seq].repeat_interleave(block_k, 3)[..., :seq]
    logits = (q @ k.transpose(-1, -2)) * dim ** -0.5
    logits = logits.masked_fill(~token_mask, float("-inf"))
    values = v
    if tail_k is not None:
        tk, tv = tail_k.double().transpose(1, 2), tail_v.double().transpose(1, 2)
        logits = torch.cat([logits, (q @ tk.transpose(-1, -2)) * dim ** -0.5], -1)
        values = torch.cat([v, tv], 2)
    o_s = torch.softmax(logits, -1) @ values
    phi_q, phi_k = torch.softmax(q, -1), torch.softmax(k, -1)
    w, bb = weight.double(), bias.double()
    if linear == "all":
        o_l = (phi_q @ (phi_k.transpose(-1, -2) @ v)) / (1e-5 + phi_q @ phi_k.sum(2)[..., None])
        out = o_s + o_l @ w.T + bb
    else:
        marginal = ~token_mask
        num = torch.einsum("bhqk,bhqd,bhkd,bhke->bhqe", marginal.double(), phi_q, phi_k, v)
        den = torch.einsum("bhqk,bhqd,bhkd->bhq", marginal.double(), phi_q, phi_k)[..., None]
        has = marginal.any(-1, keepdim=True)
        out = o_s + torch.where(has, (num / torch.where(has, den, 1.0)) @ w.T + bb, 0.0)
    return out.transpose(1, 2)


def _proj(d, seed, std=0.3, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(d, d, generator=g) * std).to(DEVICE, dtype), (torch.randn(d, generator=g) * 0.1).to(DEVICE,
                                                                                                            dtype)


# ---------------------------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------------------------


def test_floor_rule_counts():
    assert reference.kept_blocks(0.1, 25, "floor") == 2  # int(2.5)
    assert reference.kept_blocks(0.15, 25, "floor") == 3 and reference.kept_blocks(0.15, 25) == 4
    assert reference.kept_blocks(0.01, 25, "floor") == 1  # TurboDiffusion would take 0 blocks (NaN rows)
    assert reference.kept_blocks(1.0, 25, "floor") == 25
    with pytest.raises(ValueError):
        reference.kept_blocks(0.1, 25, "ceil")
    scores = torch.randn(2, 3, 4, 25)
    assert (reference.topk_block_mask(scores, 0.1, "floor").sum(-1) == 2).all()
    assert (reference.topk_block_mask(scores, 0.15, "floor").sum(-1) == 3).all()
    assert (reference.topk_block_mask(scores, 0.15).sum(-1) == 4).all()


@pytest.mark.parametrize("linear", ["all", "complement"])
@pytest.mark.parametrize("rule, keep, seq", [("floor", 0.1, 400), ("floor", 0.45, 150), ("round", 0.45, 150),
                                             ("floor", 0.01, 150)])
def test_reference_matches_explicit_formulas(linear, rule, keep, seq):
    seed = fresh_seed()
    q, k, v = _qkv(2, seq, 2, 16, torch.float64, seed)
    w, b = _proj(16, seed + 1, dtype=torch.float64)
    out = reference.sla_attention(q, k, v, keep, block_q=32, block_k=16, proj=lambda x: x @ w.T + b, linear=linear,
                                  topk_rule=rule)
    expected = _explicit_sla(q, k, v, keep, 32, 16, w, b, linear, rule)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-9, msg=f"seed {seed}")


def test_all_linear_attention_and_tail_keys_stay_out_of_the_linear_branch():
    seed = fresh_seed()
    q, k, v = _qkv(1, 96, 2, 16, torch.float64, seed)
    tail_k, tail_v, _ = _qkv(1, 7, 2, 16, torch.float64, seed + 2)
    phi_q, phi_k = torch.softmax(q, -1), torch.softmax(k, -1)
    explicit = torch.einsum("bqhd,bkhd,bkhe->bqhe", phi_q, phi_k, v) / (
        1e-5 + torch.einsum("bqhd,bkhd->bqh", phi_q, phi_k)[..., None])
    torch.testing.assert_close(reference.all_linear_attention(q, k, v), explicit)
    w, b = _proj(16, seed + 1, dtype=torch.float64)
    out = reference.sla_attention(q, k, v, 0.3, 32, 16, proj=lambda x: x @ w.T + b, tail_k=tail_k, tail_v=tail_v,
                                  linear="all", topk_rule="floor")
    expected = _explicit_sla(q, k, v, 0.3, 32, 16, w, b, "all", "floor", tail_k, tail_v)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-9)


def test_zero_proj_is_pure_block_sparse():
    q, k, v = _qkv(1, 130, 2, 16, torch.float32, fresh_seed())
    zero = torch.nn.Linear(16, 16).to(DEVICE)
    torch.nn.init.zeros_(zero.weight)
    torch.nn.init.zeros_(zero.bias)
    mask = reference.topk_block_mask(reference.block_scores(q, k, 32, 16), 0.2, "floor")
    sparse, _ = reference.block_sparse_attention(q, k, v, mask, 32, 16)
    out = reference.sla_attention(q, k, v, 0.2, 32, 16, proj=zero, linear="all", topk_rule="floor")
    torch.testing.assert_close(out, sparse, atol=0, rtol=0)


def test_full_keep_is_dense_only_for_the_complement_form():
    q, k, v = _qkv(1, 100, 2, 16, torch.float64, fresh_seed())
    w, b = _proj(16, 3, dtype=torch.float64)
    proj = lambda x: x @ w.T + b  # noqa: E731
    dense = reference.dense_attention(q, k, v)
    complement = reference.sla_attention(q, k, v, 1.0, 32, 16, proj=proj)
    torch.testing.assert_close(complement, dense)
    full_all = reference.sla_attention(q, k, v, 1.0, 32, 16, proj=proj, linear="all", topk_rule="floor")
    assert not torch.allclose(full_all, dense, atol=1e-3)
    torch.testing.assert_close(full_all, dense + proj(reference.all_linear_attention(q, k, v)))


def test_negligible_needs_the_complement_form():
    with pytest.raises(TurboConfigError, match="negligible"):
        AttentionConfig(method="sla", keep=0.1, negligible=0.1, linear="all")
    AttentionConfig(method="sla", keep=0.1, negligible=0.1)  # fine with the complement
    q, k, v = _qkv(1, 64, 1, 16, torch.float32, 0)
    with pytest.raises(ValueError, match="negligible"):
        reference.sla_attention(q, k, v, 0.2, 32, 16, proj=torch.nn.Linear(16, 16), negligible=0.2, linear="all")


def test_reference_all_form_is_differentiable():
    q, k, v = _qkv(1, 12, 1, 4, torch.float64, fresh_seed(), grad=True)
    w = (torch.randn(4, 4, dtype=torch.float64, device=DEVICE) * 0.5).requires_grad_()
    b = torch.randn(4, dtype=torch.float64, device=DEVICE).requires_grad_()

    def fn(q, k, v, w, b):
        return reference.sla_attention(q, k, v, 0.5, block_q=4, block_k=4, proj=lambda x: x @ w.T + b,
                                       linear="all", topk_rule="floor")

    assert torch.autograd.gradcheck(fn, (q, k, v, w, b))


# ---------------------------------------------------------------------------------------------------------------
# Kernel
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "linear, rule, b, s, d, dtype, blocks",
    [("all", "floor", 1, 200, 32, torch.float32, (64, 32)),
     ("all", "floor", 2, 320, 64, torch.float16, (128, 64)),
     ("all", "round", 2, 200, 32, torch.float16, (64, 32)),
     ("complement", "floor", 1, 320, 32, torch.float32, (128, 64)),
     ("complement", "round", 2, 200, 64, torch.float16, (64, 32))],
)
def test_kernel_matches_reference(linear, rule, b, s, d, dtype, blocks):
    seed = fresh_seed()
    q, k, v = _qkv(b, s, 2, d, dtype, seed)
    block_q, block_k = blocks
    proj = torch.nn.Linear(d, d).to(DEVICE)
    torch.nn.init.normal_(proj.weight, std=0.3)
    keep = 0.25
    lut, count = sla_router(q, k, block_q, block_k, keep, rule=rule)
    assert int(count[0, 0, 0]) == reference.kept_blocks(keep, -(-s // block_k), rule)
    with torch.no_grad():
        out, lse = torch.ops.turbo.sla_forward(q, k, v, lut, count, proj.weight, proj.bias, block_q, block_k,
                                               d ** -0.5, None, None, None, linear == "all")
        expected = reference.sla_attention(q, k, v, keep, block_q=block_q, block_k=block_k, proj=proj,
                                           linear=linear, topk_rule=rule)
    tol = 2e-3 if dtype == torch.float32 else 1e-2
    assert torch.isfinite(out).all()
    assert _rel(out, expected) < tol, (seed, _rel(out, expected))


def test_kernel_global_state_and_full_keep_adds_linear_everywhere():
    seed = fresh_seed()
    q, k, v = _qkv(1, 200, 2, 16, torch.float32, seed)
    state = sla_global_linear_state(k, v, 64)
    phi = torch.softmax(k.float(), -1)
    tol = 1e-5 if DEVICE == "cpu" else 3e-3  # fp32 tl.dot is TF32 on the GPU
    assert _rel(state[..., :256].unflatten(-1, (16, 16)), torch.einsum("bshd,bshe->bhde", phi, v)) < tol
    assert _rel(state[..., 256:], phi.sum(1)) < tol
    w, bias = _proj(16, seed)
    lut, count = sla_router(q, k, 64, 32, 1.0, rule="floor")
    out, _ = sla_forward(q, k, v, lut, count, 64, 32, w, bias, linear_all=True, block_m=32)
    dense = reference.dense_attention(q, k, v)
    expected = dense + reference.all_linear_attention(q, k, v) @ w.T + bias
    assert _rel(out, expected) < 2e-3, seed
    with pytest.raises(ValueError):
        sla_forward(q, k, v, lut, count, 64, 32, linear_all=True)


def test_custom_op_with_linear_all_traces_without_graph_breaks():
    from turbo.attention.kernels.router import topk_lut

    q, k, v = _qkv(1, 128, 2, 32, torch.float32, 5)
    proj = torch.nn.Linear(32, 32).to(DEVICE)

    def sla(q, k, v):
        scores = torch.ops.turbo.block_pool(q, 64) @ torch.ops.turbo.block_pool(k, 32).transpose(-1, -2)
        lut, count = topk_lut(scores, 0.3, "floor")
        return torch.ops.turbo.sla_forward(q, k, v, lut, count, proj.weight, proj.bias, 64, 32, 32 ** -0.5,
                                           None, None, None, True)[0]

    with torch.no_grad():
        eager = sla(q, k, v)
        compiled = torch.compile(sla, fullgraph=True, backend="aot_eager")(q, k, v)
    torch.testing.assert_close(compiled, eager)


@pytest.mark.parametrize("rule, keep", [("floor", 0.3), ("floor", 1.0)])
def test_kernel_gradients_for_linear_all_match_reference_autograd(rule, keep):
    seed = fresh_seed()
    q, k, v = _qkv(1, 200, 2, 32, torch.float32, seed, grad=True)
    proj = torch.nn.Linear(32, 32).to(DEVICE)
    torch.nn.init.normal_(proj.weight, std=0.3)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE)
    with torch.no_grad():
        lut, count = sla_router(q, k, 64, 32, keep, rule=rule)
    out, _ = torch.ops.turbo.sla_forward(q, k, v, lut, count, proj.weight, proj.bias, 64, 32, 32 ** -0.5, None,
                                         None, None, True)
    got = torch.autograd.grad(out, [q, k, v, proj.weight, proj.bias], grad)
    ref = reference.sla_attention(q, k, v, keep, block_q=64, block_k=32, proj=proj, linear="all", topk_rule=rule)
    expected = torch.autograd.grad(ref, [q, k, v, proj.weight, proj.bias], grad)
    tol = 5e-3 if DEVICE == "cuda" else 1e-4
    for name, a, b in zip(["dq", "dk", "dv", "dW", "db"], got, expected, strict=True):
        assert torch.isfinite(a).all()
        assert _rel(a, b) < tol, (seed, name, _rel(a, b))


# ---------------------------------------------------------------------------------------------------------------
# Method and pipeline
# ---------------------------------------------------------------------------------------------------------------


def test_method_reads_the_options_and_runs_its_reference_path():
    config = AttentionConfig(method="sla", keep=0.2, block_q=32, block_k=16, linear="all", topk_rule="floor")
    method = SLAAttention(config, 2, 16).to(DEVICE)
    assert (method.linear, method.topk_rule) == ("all", "floor")
    assert "linear=all" in repr(method) and "topk_rule=floor" in repr(method)
    torch.nn.init.normal_(method.proj.weight, std=0.3)
    q, k, v = _qkv(1, 96, 2, 16, torch.float32, fresh_seed())
    with torch.no_grad():
        out = method.video_attention(q, k, v, call=None)
    expected = reference.sla_attention(q, k, v, 0.2, 32, 16, proj=method.proj, linear="all", topk_rule="floor")
    tol = {} if DEVICE == "cpu" else {"atol": 5e-3, "rtol": 5e-3}  # CUDA: the kernel path, TF32 dots
    torch.testing.assert_close(out, expected, **tol)


def test_accelerate_a_tiny_wan_pipeline_with_the_turbodiffusion_form():
    import turbo

    from ..pipes import build, run

    pipe = build("wan-t2v")
    turbo.accelerate(pipe, attention="sla", linear="all", topk_rule="floor", keep=0.25, block_q=32, block_k=16,
                     allow_untuned=True)
    try:
        methods = [m for m in pipe.transformer.modules() if isinstance(m, SLAAttention)]
        assert methods and all(m.linear == "all" and m.topk_rule == "floor" for m in methods)
        for m in methods:  # a non-zero proj so the linear branch is exercised
            torch.nn.init.normal_(m.proj.weight, std=0.1)
        frames = run(pipe, "wan-t2v")
        assert pipe.turbo.runtime.stats.calls["sla"] > 0
    finally:
        turbo.restore(pipe)
    assert frames.shape[0] > 0 and torch.isfinite(torch.as_tensor(frames)).all()


# ---------------------------------------------------------------------------------------------------------------
# GPU (bf16 at a real shape)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Triton kernels in bf16)")
def test_gpu_module_kernel_path_matches_reference_in_bf16():
    from turbo.geometry import TokenGeometry
    from turbo.runtime import AttentionCall

    torch.manual_seed(fresh_seed())
    q, k, v = (torch.randn(1, 4680, 12, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    config = AttentionConfig(method="sla", keep=0.1, linear="all", topk_rule="floor")
    method = SLAAttention(config, 12, 128).cuda()
    torch.nn.init.normal_(method.proj.weight, std=0.05)
    call = AttentionCall(TokenGeometry(3, 30, 52), 4680, dense=None)
    with torch.no_grad():
        assert method.use_kernel(q, None)
        out = method(q, k, v, call)
        ref = reference.sla_attention(q, k, v, 0.1, proj=method.proj, linear="all", topk_rule="floor")
    assert torch.isfinite(out).all()
    rel = _rel(out, ref)
    print(f"SLA linear=all floor bf16 S=4680 rel-L1 vs reference: {rel:.5f}")
    assert rel < 0.01


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Triton kernels in bf16)")
def test_gpu_linear_all_gradients_match_reference_in_bf16():
    seed = fresh_seed()
    q, k, v = _qkv(1, 4680, 12, 128, torch.bfloat16, seed, grad=True)
    proj = torch.nn.Linear(128, 128).cuda()
    torch.nn.init.normal_(proj.weight, std=0.05)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 1)).to("cuda", torch.bfloat16)
    with torch.no_grad():
        lut, count = sla_router(q, k, 128, 64, 0.1, rule="floor")
    out, _ = torch.ops.turbo.sla_forward(q, k, v, lut, count, proj.weight, proj.bias, 128, 64, 128 ** -0.5, None,
                                         None, None, True)
    got = torch.autograd.grad(out, [q, k, v, proj.weight, proj.bias], grad)
    ref = reference.sla_attention(q, k, v, 0.1, proj=proj, linear="all", topk_rule="floor")
    expected = torch.autograd.grad(ref, [q, k, v, proj.weight, proj.bias], grad)
    for name, a, b in zip(["dq", "dk", "dv", "dW", "db"], got, expected, strict=True):
        rel = _rel(a, b)
        print(f"SLA linear=all bf16 S=4680 {name} rel-L1 vs reference autograd: {rel:.5f}")
        assert torch.isfinite(a).all() and rel < 0.02, (seed, name, rel)
