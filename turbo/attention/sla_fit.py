"""Closed-form start for SLA's projection: least squares on a model's own captured attention.

SLA's output is O = O^s + proj(O^l) with proj zero-initialised (`SLAAttention`), so an untrained SLA is block-sparse
attention alone and fine-tuning must first grow proj from zero. Given captured (q, k, v) of the dense model
(`turbo.eval.capture`), the proj that best maps the linear branch onto the missing attention, min over (W, b) of
‖O_dense − O^s − (O^l Wᵀ + b)‖² over every captured row and head, is a (D+1)-column least-squares problem per layer.
`fit_sla_projections` solves it (PyTorch reference attention, fp64 solve); `load_sla_projections` writes the result
into the SLA modules turbo installed, e.g. before a fine-tune. Rows without a linear branch (complement form: query
blocks with no marginal block) are left out, as SLA adds nothing there.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor, nn

from ..config import AttentionConfig
from . import reference

__all__ = ["fit_sla_projections", "load_sla_projections", "sla_fidelity"]


def _parts(q: Tensor, k: Tensor, v: Tensor, config: AttentionConfig) -> tuple[Tensor, Tensor, Tensor]:
    """(O_dense, O^s, O^l) fp32 [B, S, H, D] for one call of video tokens."""
    q, k, v = q.float(), k.float(), v.float()
    kw = {"keep": config.keep, "block_q": config.block_q, "block_k": config.block_k, "linear": config.linear,
          "topk_rule": config.topk_rule}
    dense = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                       v.transpose(1, 2)).transpose(1, 2)
    # O^s: proj None drops the complement branch; "all" always adds proj(O^l), so a zero map drops it there
    sparse = reference.sla_attention(q, k, v, proj=None if config.linear == "complement" else torch.zeros_like, **kw)
    linear = reference.sla_attention(q, k, v, proj=lambda x: x, **kw) - sparse
    return dense, sparse, linear


def _video(item) -> tuple[Tensor, Tensor, Tensor]:
    n = item.num_video
    return item.q[:, :n], item.k[:, :n], item.v[:, :n]


def fit_sla_projections(captured, config: AttentionConfig) -> dict[int, tuple[Tensor, Tensor]]:
    """{layer: (weight [D, D], bias [D])} fp32, the least-squares proj of each captured layer for SLA `config`
    (method "sla"). captured: `CapturedAttention` items (video tokens first; text tokens are ignored)."""
    if config.method != "sla":
        raise ValueError(f"fit_sla_projections fits SLA's proj; got attention method {config.method!r}")
    gram: dict[int, Tensor] = defaultdict(lambda: 0)
    cross: dict[int, Tensor] = defaultdict(lambda: 0)
    for item in captured:
        dense, sparse, linear = _parts(*_video(item), config.options)
        d = dense.shape[-1]
        x = linear.reshape(-1, d)
        y = (dense - sparse).reshape(-1, d)
        rows = x.abs().sum(-1) > 0
        design = torch.cat([x[rows], torch.ones(int(rows.sum()), 1)], dim=1).double()
        gram[item.layer] = gram[item.layer] + design.T @ design
        cross[item.layer] = cross[item.layer] + design.T @ y[rows].double()
    out = {}
    for layer, g in gram.items():
        ridge = 1e-6 * g.diagonal().mean() * torch.eye(g.shape[0], dtype=g.dtype)  # rank-deficient layers stay finite
        solution = torch.linalg.solve(g + ridge, cross[layer]).float()
        out[layer] = (solution[:-1].T.contiguous(), solution[-1].contiguous())  # nn.Linear: y = x Wᵀ + b
    return out


@torch.no_grad()
def load_sla_projections(model: nn.Module, projections: dict[int, tuple[Tensor, Tensor]]) -> int:
    """Copy fitted projections into the SLA modules turbo installed on `model` (an accelerated transformer); returns
    how many layers were set. Layers without an SLA module or without a fit are left as they are."""
    from ..adapters import METHOD_ATTR, adapter_for

    done = 0
    for site in adapter_for(model).self_attention_sites(model):
        method = getattr(site.module, METHOD_ATTR, None)
        if method is None or not hasattr(method, "proj") or site.layer_index not in projections:
            continue
        weight, bias = projections[site.layer_index]
        method.proj.weight.copy_(weight)
        method.proj.bias.copy_(bias)
        done += 1
    return done


def sla_fidelity(captured, config: AttentionConfig, projections=None) -> dict[int, float]:
    """{layer: rel-L1 of SLA against dense attention} over the captured calls, with `projections` (None: proj 0)."""
    num, den = defaultdict(float), defaultdict(float)
    for item in captured:
        dense, sparse, linear = _parts(*_video(item), config.options)
        out = sparse
        if projections is not None and item.layer in projections:
            weight, bias = projections[item.layer]
            rows = linear.abs().sum(-1, keepdim=True) > 0
            out = sparse + torch.where(rows, linear @ weight.T + bias, torch.zeros_like(sparse))
        num[item.layer] += float((out - dense).abs().sum())
        den[item.layer] += float(dense.abs().sum())
    return {layer: num[layer] / max(den[layer], 1e-12) for layer in num}
