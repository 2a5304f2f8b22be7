"""Shared helpers for tests that run tiny offline pipelines (built by pipelines.tiny)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from pipelines import tiny

SMALL = {"height": 64, "width": 64, "num_frames": 9, "num_inference_steps": 2}
BUILDERS = {
    "wan-t2v": tiny.build_wan_t2v,
    "wan-i2v": tiny.build_wan_i2v,
    "wan22-t2v": tiny.build_wan22_t2v,
    "hunyuan-t2v": tiny.build_hunyuan_t2v,
    "hunyuan15-t2v": tiny.build_hunyuan15_t2v,
}


def build(kind: str):
    pipe = BUILDERS[kind]()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_kwargs(kind: str, **overrides) -> dict:
    kwargs = {"prompt": "a red circle moving left on a gray background", "output_type": "np", **SMALL}
    if kind == "wan-i2v":
        image = Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8))
        kwargs.update(image=image, max_sequence_length=512)
    if kind == "hunyuan-t2v":
        kwargs.update(tiny.HUNYUAN_CALL_KWARGS)
    kwargs.update(overrides)
    return kwargs


def run(pipe, kind: str, seed: int = 0, **overrides) -> np.ndarray:
    kwargs = call_kwargs(kind, **overrides)
    return pipe(**kwargs, generator=torch.Generator().manual_seed(seed)).frames[0]


def transformers_of(pipe) -> list[torch.nn.Module]:
    return [m for m in (pipe.transformer, getattr(pipe, "transformer_2", None)) if m is not None]


def snapshot(pipe) -> dict:
    """Everything restore() must put back: processors (by identity), module tree, parameters, forward attributes."""
    out = {}
    for index, model in enumerate(transformers_of(pipe)):
        out[index] = {
            "processors": {name: id(p) for name, p in model.attn_processors.items()},
            "modules": [name for name, _ in model.named_modules()],
            "state": {k: v.clone() for k, v in model.state_dict().items()},
            "forward_attr": "forward" in vars(model),
            "hooks": list(getattr(getattr(model, "_diffusers_hook", None), "hooks", {}) or {}),
        }
    return out


def assert_same_snapshot(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        assert x["processors"] == y["processors"]
        assert x["modules"] == y["modules"]
        assert x["forward_attr"] == y["forward_attr"]
        assert x["hooks"] == y["hooks"]
        assert x["state"].keys() == y["state"].keys()
        assert all(torch.equal(x["state"][k], y["state"][k]) for k in x["state"])


def assert_quantised_then_restored(pipe, kind: str, before: dict, reference: np.ndarray) -> None:
    """On a quantised `pipe`: its video is finite, changed, and close to `reference` (mean |Δ| < 0.02 on [0, 1]
    frames); then `turbo.restore` gives back `before`'s snapshot and exactly `reference`."""
    import turbo

    quantised = run(pipe, kind)
    error = float(np.abs(quantised - reference).mean())
    assert np.isfinite(quantised).all() and 0 < error < 0.02
    turbo.restore(pipe)
    assert_same_snapshot(before, snapshot(pipe))
    np.testing.assert_array_equal(run(pipe, kind), reference)
