import torch

from turbo.attention import SLAAttention, SVGAttention
from turbo.config import AttentionConfig
from turbo.geometry import TokenGeometry
from turbo.runtime import AttentionCall


def _sdpa(mask):
    def dense(q, k, v):
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return out.transpose(1, 2)
    return dense


def _joint_inputs(seed=0, video=(4, 4, 8), text=12, real_text=7, heads=2, dim=16):
    torch.manual_seed(seed)
    geometry = TokenGeometry(*video)
    n = geometry.num_tokens + text
    q, k, v = (torch.randn(1, n, heads, dim) for _ in range(3))
    mask = torch.ones(1, n, dtype=torch.bool)
    mask[:, geometry.num_tokens + real_text:] = False
    return geometry, q, k, v, mask[:, None, None, :]


def test_text_rows_including_padding_stay_exact_under_sparse_methods():
    geometry, q, k, v, mask = _joint_inputs()
    nv = geometry.num_tokens
    dense = _sdpa(mask)
    expected = dense(q, k, v)
    call = AttentionCall(geometry, nv, dense, attn_mask=mask, text_mask=mask[:, 0, 0, nv:])
    for method in (SLAAttention(AttentionConfig(method="sla", keep=0.25, block_q=16, block_k=16), 2, 16),
                   SVGAttention(AttentionConfig(method="svg", density=0.3, block_q=16, block_k=16))):
        out = method(q, k, v, call)
        assert torch.equal(out[:, nv:], dense(q[:, nv:], k, v))
        torch.testing.assert_close(out[:, nv:], expected[:, nv:], atol=1e-6, rtol=0)
        # video rows are really sparse (they differ from dense) yet finite
        assert not torch.allclose(out[:, :nv], expected[:, :nv], atol=1e-4)
        assert torch.isfinite(out).all()


def test_padding_text_keys_are_never_attended_by_video_rows():
    geometry, q, k, v, mask = _joint_inputs()
    nv = geometry.num_tokens
    call = AttentionCall(geometry, nv, _sdpa(mask), attn_mask=mask, text_mask=mask[:, 0, 0, nv:])
    method = SLAAttention(AttentionConfig(method="sla", keep=1.0, block_q=16, block_k=16), 2, 16)
    out = method(q, k, v, call)
    k2, v2 = k.clone(), v.clone()
    k2[:, nv + 7:] = 100.0  # garbage in padding slots must not change anything
    v2[:, nv + 7:] = -100.0
    out2 = method(q, k2, v2, call)
    torch.testing.assert_close(out[:, :nv], out2[:, :nv], atol=0, rtol=0)
    torch.testing.assert_close(out[:, :nv], _sdpa(mask)(q, k, v)[:, :nv], atol=1e-5, rtol=0)
