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
        out, labels = method.kernel_forward(
            q, k, v, frames, tokens_per_frame, torch.Generator(device=DEVICE).manual_seed(seed))
        got_density = method.band_density_value
        expected, expected_labels, expected_density = reference.svg_attention(
            q, k, v, frames, tokens_per_frame, density, block_q=32, block_k=32, profile_rows=16,
            generator=torch.Generator(device=DEVICE).manual_seed(seed))
    assert torch.equal(labels, expected_labels)
    assert got_density == pytest.approx(expected_density)
    rel = float((out - expected).abs().sum() / expected.abs().sum())
    assert rel < (3e-3 if DEVICE == "cuda" else 1e-5), (seed, rel)


def test_fast_profiling_matches_reference_labels_with_text_tail():
    from turbo.attention.svg import profile_heads

    seed = int(torch.randint(0, 2**31, ()))
    g = torch.Generator().manual_seed(seed)
    frames, per_frame, heads = 4, 30, 6
    q, k, v = (torch.randn(2, frames * per_frame, heads, 16, generator=g).to(DEVICE) for _ in range(3))
    # make half the heads clearly temporal: keys equal across frames at the same spatial position
    k[:, :, :3] = k[:, :per_frame, :3].repeat(1, frames, 1, 1) * 3
    tk, tv = (torch.randn(2, 10, heads, 16, generator=g).to(DEVICE) for _ in range(2))
    mask = torch.ones(2, 10, dtype=torch.bool, device=DEVICE)
    mask[1, 6:] = False
    args = (q, k, v, frames, per_frame, 12, per_frame, 24)
    tail = {"tail_k": tk, "tail_v": tv, "tail_mask": mask}
    got = profile_heads(*args, torch.Generator(device=DEVICE).manual_seed(seed), **tail)
    expected = reference.svg_profile_heads(*args, torch.Generator(device=DEVICE).manual_seed(seed), **tail)
    assert torch.equal(got, expected), seed
    assert got.min() == 0 and got.max() == 1, (seed, got)
