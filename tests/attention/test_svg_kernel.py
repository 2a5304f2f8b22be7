"""SVG on the Triton block-sparse kernel vs `reference.svg_attention` (TRITON_INTERPRET=1 on CPU)."""

import pytest
import torch

from turbo.attention import SVGAttention, reference
from turbo.config import AttentionConfig

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("density, frames, tokens_per_frame", [(0.3, 4, 48), (0.5, 3, 40), (1.0, 2, 64)])
def test_svg_kernel_path_matches_reference(density, frames, tokens_per_frame):
    seed = int(torch.randint(0, 2**31, ()))
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, frames * tokens_per_frame, 2, 32, generator=g).to(DEVICE) for _ in range(3))
    method = SVGAttention(AttentionConfig(method="svg", density=density, block_q=32, block_k=32, profile_rows=16))
    with torch.no_grad():
        out, labels, got_density = method.kernel_forward(
            q, k, v, frames, tokens_per_frame, torch.Generator(device=DEVICE).manual_seed(seed))
        expected, expected_labels, expected_density = reference.svg_attention(
            q, k, v, frames, tokens_per_frame, density, block_q=32, block_k=32, profile_rows=16,
            generator=torch.Generator(device=DEVICE).manual_seed(seed))
    assert torch.equal(labels, expected_labels)
    assert got_density == pytest.approx(expected_density)
    rel = float((out - expected).abs().sum() / expected.abs().sum())
    assert rel < (3e-3 if DEVICE == "cuda" else 1e-5), (seed, rel)
