"""GPU (CUDA) checks of the SLA kernel path at real shapes in bf16, through the method module as a model uses it."""

import pytest
import torch

from turbo.attention import SLAAttention, reference
from turbo.config import AttentionConfig
from turbo.geometry import TokenGeometry
from turbo.runtime import AttentionCall

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Triton kernels)")]


@pytest.mark.parametrize("keep", [0.1, 0.05])
def test_sla_module_kernel_path_matches_reference_at_wan_480p(keep):
    torch.manual_seed(int(torch.randint(0, 2**31, ())))
    q, k, v = (torch.randn(1, 32760, 12, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    method = SLAAttention(AttentionConfig(method="sla", keep=keep), 12, 128).cuda()
    torch.nn.init.normal_(method.proj.weight, std=0.05)
    call = AttentionCall(TokenGeometry(21, 30, 52), 32760, dense=None)
    with torch.no_grad():
        assert method.use_kernel(q, None)
        out = method(q, k, v, call)
        ref = reference.sla_attention(q, k, v, keep, proj=method.proj)
    assert torch.isfinite(out).all()
    rel = float((out.float() - ref.float()).abs().sum() / ref.float().abs().sum())
    print(f"SLA keep={keep} bf16 480p rel-L1 vs reference: {rel:.5f}")
    assert rel < 0.01
