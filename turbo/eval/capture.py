"""Capture the self-attention inputs (post QK-norm and RoPE) of chosen layers / steps / CFG branches during a real
pipeline run, and score any attention method against dense attention on them (attention fidelity), e.g. to pick
keep ratios or to train SLA2's router (stage 1).

    with capture_qkv(pipe, layers=[0, 10], steps=[0, 25]) as captured:
        pipe(prompt, ...)
    for row in attention_fidelity(captured, AttentionConfig(method="sla", keep=0.1)):
        print(row)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attention import build_method
from ..config import AttentionConfig, TurboConfig
from ..geometry import TokenGeometry
from ..runtime import AttentionCall, StepInfo


@dataclass
class CapturedAttention:
    """One self-attention call: q, k, v [B, S, H, D] (video tokens first, then text), as the method would see them."""

    layer: int
    step: int
    branch: str
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    num_video: int
    attn_mask: torch.Tensor | None
    geometry: TokenGeometry


class QKVCapture:
    """Records the calls whose layer, step and branch are selected (None = all). Tensors are detached and moved to
    `device` (default: CPU, so long runs do not hold GPU memory) in `dtype` (default: unchanged)."""

    def __init__(self, layers=None, steps=None, branches=None, device="cpu", dtype=None, limit: int = 10_000):
        self.layers = None if layers is None else set(layers)
        self.steps = None if steps is None else set(steps)
        self.branches = None if branches is None else set(branches)
        self.device = device
        self.dtype = dtype
        self.limit = limit
        self.items: list[CapturedAttention] = []

    def wants(self, layer: int, step: int, branch: str) -> bool:
        return (
            len(self.items) < self.limit
            and (self.layers is None or layer in self.layers)
            and (self.steps is None or step in self.steps)
            and (self.branches is None or branch in self.branches)
        )

    def record(self, layer, step, branch, q, k, v, num_video, attn_mask, geometry) -> None:
        if not self.wants(layer, step, branch):
            return

        def keep(x):
            return None if x is None else x.detach().to(device=self.device, dtype=self.dtype or x.dtype)

        self.items.append(CapturedAttention(layer, step, branch, keep(q), keep(k), keep(v), num_video,
                                            keep(attn_mask), geometry))

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


@contextlib.contextmanager
def capture_qkv(pipe, layers=None, steps=None, branches=None, device="cpu", dtype=None, limit: int = 10_000):
    """Context manager yielding a `QKVCapture` filled while the pipeline runs inside it. Works on an accelerated
    pipeline (its turbo processors record) or a plain one (it is accelerated with dense attention — bit-identical —
    for the duration and restored afterwards)."""
    from ..acceleration import accelerate, restore

    temporary = getattr(pipe, "turbo", None) is None
    if temporary:
        accelerate(pipe, TurboConfig())
    capture = QKVCapture(layers, steps, branches, device, dtype, limit)
    runtime = pipe.turbo.runtime
    runtime.capture = capture
    try:
        yield capture
    finally:
        runtime.capture = None
        if temporary:
            restore(pipe)


def _sdpa(attn_mask):
    def dense(q, k, v):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=attn_mask)
        return out.transpose(1, 2)

    return dense


def layer_parts(path) -> tuple[AttentionConfig, dict[int, dict[str, torch.Tensor]]]:
    """A ``turbo_attention.safetensors`` file (a fine-tuned model's attention parts) as (its attention config,
    {layer index: the method module's state dict}); layers are the ``blocks.N`` / ``transformer_blocks.N`` index."""
    import json
    import re

    from safetensors import safe_open

    parts: dict[int, dict[str, torch.Tensor]] = {}
    with safe_open(str(path), framework="pt") as handle:
        config = AttentionConfig(**json.loads((handle.metadata() or {})["turbo.attention.config"]))
        for key in handle.keys():
            match = re.match(r"^(?:.*\.)?(?:blocks|transformer_blocks)\.(\d+)\..*?turbo_attention\.(.+)$", key)
            if match:
                parts.setdefault(int(match.group(1)), {})[match.group(2)] = handle.get_tensor(key)
    return config, parts


def attention_fidelity(captured, config: AttentionConfig, device=None,
                       parts: dict[int, dict[str, torch.Tensor]] | None = None) -> list[dict]:
    """Per captured call: rel-L1 and cosine of the method's output vs exact dense attention (same q, k, v, same text
    mask), computed with a fresh method module: learnable parts at their initial values, or, with `parts` ({layer:
    state dict}, e.g. from `layer_parts`), the trained parts of that layer (every key must fit)."""
    rows = []
    for item in captured:
        q, k, v = (x.to(device) if device else x for x in (item.q, item.k, item.v))
        mask = None if item.attn_mask is None else item.attn_mask.to(q.device)
        method = build_method(config, q.shape[2], q.shape[3]).to(q.device)
        if parts is not None:
            method.load_state_dict({k: t.to(q.device) for k, t in parts[item.layer].items()})
        text_mask = None
        if mask is not None and item.num_video < q.shape[1]:
            text_mask = mask.reshape(mask.shape[0], -1)[:, item.num_video:].bool()
        call = AttentionCall(item.geometry, item.num_video, _sdpa(mask), attn_mask=mask, text_mask=text_mask)
        method.prepare(StepInfo(item.step, item.branch, item.layer, item.geometry, q.device))
        with torch.no_grad():
            exact = _sdpa(mask)(q, k, v).float()
            out = method(q, k, v, call).float()
        rel = float((out - exact).abs().sum() / exact.abs().sum().clamp_min(1e-12))
        cos = float(F.cosine_similarity(out.flatten(), exact.flatten(), dim=0))
        rows.append({"layer": item.layer, "step": item.step, "branch": item.branch, "method": config.method,
                     "rel_l1": rel, "cosine": cos})
    return rows
