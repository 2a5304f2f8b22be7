"""Adapters: the only layer that knows diffusers class names, module paths and pipeline components."""

from __future__ import annotations

from torch import nn

from ..errors import UnsupportedModelError
from .base import METHOD_ATTR, ModelAdapter, SelfAttentionSite
from .hunyuan import HunyuanVideoAdapter
from .hunyuan15 import HunyuanVideo15Adapter
from .wan import WanAdapter

ADAPTERS: tuple[ModelAdapter, ...] = (WanAdapter(), HunyuanVideoAdapter(), HunyuanVideo15Adapter())
SUPPORTED_PIPELINES = (
    "WanPipeline", "WanImageToVideoPipeline", "Wan2.2 pipelines with transformer_2", "HunyuanVideoPipeline",
    "HunyuanVideo15Pipeline", "HunyuanVideo15ImageToVideoPipeline",
)
TRANSFORMER_COMPONENTS = ("transformer", "transformer_2")

__all__ = ["ADAPTERS", "METHOD_ATTR", "ModelAdapter", "SelfAttentionSite", "adapter_for", "find_transformers"]


def _supported_sentence(got: object) -> str:
    classes = ", ".join(name for adapter in ADAPTERS for name in adapter.class_names)
    return (
        f"turbo cannot accelerate {type(got).__name__}; supported: {', '.join(SUPPORTED_PIPELINES)}, "
        f"or a transformer of class {classes}."
    )


def adapter_for(model: nn.Module) -> ModelAdapter:
    for adapter in ADAPTERS:
        if adapter.matches(model):
            return adapter
    raise UnsupportedModelError(_supported_sentence(model))


def find_transformers(obj) -> list[tuple[str, nn.Module]]:
    """The transformers to accelerate in a pipeline (`transformer`, and `transformer_2` for Wan2.2), or the object
    itself when it is a supported transformer. Raises `UnsupportedModelError` for anything else."""
    if isinstance(obj, nn.Module):
        adapter_for(obj)
        return [("transformer", obj)]
    components = getattr(obj, "components", None)
    if not isinstance(components, dict):
        raise UnsupportedModelError(_supported_sentence(obj))
    found = [(name, components[name]) for name in TRANSFORMER_COMPONENTS if components.get(name) is not None]
    if not found:
        raise UnsupportedModelError(_supported_sentence(obj))
    for _, model in found:
        if not any(adapter.matches(model) for adapter in ADAPTERS):
            raise UnsupportedModelError(_supported_sentence(obj) + f" (its transformer is {type(model).__name__})")
    return found
