"""SVG2 reference: k-means, centroid top-p routing, attention over the selected clusters."""

import pytest
import torch

from turbo.attention import SVG2Attention, reference
from turbo.config import AttentionConfig
from turbo.geometry import TokenGeometry
from turbo.runtime import AttentionCall, StepInfo


def _seed():
    return int(torch.randint(0, 2**31, ()))


def test_kmeans_recovers_separated_blobs_and_warm_start_is_stable():
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(1, 2, 4, 8, generator=g) * 20
    labels = torch.randint(0, 4, (1, 2, 200), generator=g)
    x = centers.gather(2, labels[..., None].expand(-1, -1, -1, 8)) + 0.1 * torch.randn(1, 2, 200, 8, generator=g)
    # Lloyd from a rough start near the true centres recovers the partition exactly
    centroids, found = reference.kmeans(x, 4, 5, init=centers + torch.randn(1, 2, 4, 8, generator=g))
    assert torch.equal(found, labels), seed
    again, again_labels = reference.kmeans(x, 4, 2, init=centroids)
    torch.testing.assert_close(again, centroids, atol=1e-4, rtol=1e-4)
    assert torch.equal(again_labels, found)


def test_kmeans_from_random_tokens_reaches_a_lloyd_fixed_point():
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 150, 8, generator=g)
    centroids, labels = reference.kmeans(x, 6, 50, generator=torch.Generator().manual_seed(seed))
    assert centroids.shape == (2, 3, 6, 8) and labels.shape == (2, 3, 150)
    distances = ((x[..., :, None, :] - centroids[..., None, :, :]) ** 2).sum(-1)
    assert torch.equal(labels, distances.argmin(-1)), seed  # every token sits with its nearest centroid
    for c in range(6):  # every non-empty centroid is the mean of its tokens
        members = (labels == c)[..., None].float()
        count = members.sum(2)
        mean = (x * members).sum(2) / count.clamp(min=1)
        torch.testing.assert_close(torch.where(count > 0, mean, centroids[:, :, c]), centroids[:, :, c], atol=1e-4,
                                   rtol=1e-4)
    assert reference.kmeans(x, 500, 1)[0].shape[2] == 150  # clusters are capped at the token count


def test_cluster_mask_top_p_floor_and_empty_clusters():
    qc = torch.tensor([[[[1.0, 0.0]]]])
    kc = torch.tensor([[[[4.0, 0.0], [0.0, 0.0], [-4.0, 0.0], [0.0, 1.0]]]])
    sizes = torch.tensor([[[10.0, 10.0, 10.0, 0.0]]])
    full = reference.svg2_cluster_mask(qc, kc, sizes, top_p=1.0, scale=1.0)
    assert full.tolist() == [[[[True, True, True, False]]]]  # every non-empty cluster, never the empty one
    top = reference.svg2_cluster_mask(qc, kc, sizes, top_p=0.5, scale=1.0)
    assert top.tolist() == [[[[True, False, False, False]]]]
    floor = reference.svg2_cluster_mask(qc, kc, sizes, top_p=0.01, min_fraction=0.5, scale=1.0)
    assert int(floor.sum()) == 2  # ceil(0.5 · 3 non-empty)


@pytest.mark.parametrize("tail", [False, True])
def test_top_p_one_is_dense_and_lower_top_p_is_sparse(tail):
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 96, 2, 16, generator=g) for _ in range(3))
    extra = {}
    if tail:
        tk, tv = (torch.randn(1, 8, 2, 16, generator=g) for _ in range(2))
        mask = torch.tensor([[True] * 5 + [False] * 3])
        extra = {"tail_k": tk, "tail_v": tv, "tail_mask": mask}
    out, state, density = reference.svg2_attention(q, k, v, 6, 12, top_p=1.0, generator=torch.Generator(), **extra)
    keys = torch.cat([k, extra["tail_k"]], 1) if tail else k
    values = torch.cat([v, extra["tail_v"]], 1) if tail else v
    key_mask = torch.cat([torch.ones(1, 96, dtype=torch.bool), extra["tail_mask"]], 1) if tail else None
    torch.testing.assert_close(out, reference.dense_attention(q, keys, values, attn_mask=key_mask), atol=1e-5,
                               rtol=1e-5)
    assert density == pytest.approx(1.0) and state[0].shape == (1, 2, 6, 16) and state[1].shape == (1, 2, 12, 16)
    sparse, _, sparse_density = reference.svg2_attention(q, k, v, 6, 12, top_p=0.3, state=state, **extra)
    assert sparse_density < 1.0 and torch.isfinite(sparse).all()


def test_method_keeps_warm_starts_per_cfg_branch_and_resets_at_step_zero():
    method = SVG2Attention(AttentionConfig(method="svg2", q_clusters=4, k_clusters=8, top_p=0.8))
    q, k, v = (torch.randn(1, 64, 2, 16) for _ in range(3))

    geometry = TokenGeometry(4, 4, 4)
    call = AttentionCall(geometry, 64, dense=None)

    def at(step, branch):  # what the step hook does before each forward
        method.prepare(StepInfo(step, branch, 0, geometry, q.device))
        return call

    method(q, k, v, at(0, "cond"))
    cond0 = method.centroids["cond"]
    method(q, k, v, at(0, "uncond"))
    assert set(method.centroids) == {"cond", "uncond"}
    method(q, k, v, at(1, "cond"))
    assert method.centroids["cond"][0].shape == cond0[0].shape
    assert method.last_density is not None and 0 < method.last_density <= 1
