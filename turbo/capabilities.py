"""What this machine can run: torch / CUDA / Triton versions, GPU features, and per method whether a fast kernel
exists here or the PyTorch reference is used instead."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field

import torch

from .registry import attention_methods


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Capabilities:
    torch: str
    cuda: str | None
    triton: str | None
    diffusers: str | None
    gpu: str | None
    compute_capability: tuple[int, int] | None
    bf16: bool
    fp8: bool
    methods: dict[str, str] = field(default_factory=dict)  # method -> stock | kernel | reference

    def has_kernel(self, method: str) -> bool:
        return self.methods.get(method) == "kernel"

    def lines(self) -> list[str]:
        out = [
            f"torch      {self.torch}",
            f"CUDA       {self.cuda or 'not available'}",
            f"GPU        {self.gpu or 'none'}" + (f" (sm_{self.compute_capability[0]}{self.compute_capability[1]})"
                                                   if self.compute_capability else ""),
            f"triton     {self.triton or 'not installed'}",
            f"diffusers  {self.diffusers or 'not installed'}",
            f"bf16 {'yes' if self.bf16 else 'no'}, fp8 tensor cores {'yes' if self.fp8 else 'no'}",
            "attention methods:",
        ]
        labels = {
            "stock": "the model's own attention (SDPA)",
            "kernel": "fast Triton kernel",
            "reference": "PyTorch reference (correct, not fast)",
            "not built": "not implemented yet",
        }
        out += [f"  {name:<7} {labels.get(state, state)}" for name, state in self.methods.items()]
        return out


def detect() -> Capabilities:
    """Inspect this machine (cheap; no kernels are compiled)."""
    cuda = torch.cuda.is_available()
    cc = torch.cuda.get_device_capability() if cuda else None
    triton = _version("triton")
    methods = {}
    for method, spec in attention_methods().items():
        if method == "dense":
            methods[method] = "stock"
        elif cuda and triton and spec.kernel is not None and cc >= spec.kernel:
            methods[method] = "kernel"
        else:
            methods[method] = "reference"
    return Capabilities(
        torch=torch.__version__,
        cuda=torch.version.cuda if cuda else None,
        triton=triton,
        diffusers=_version("diffusers"),
        gpu=torch.cuda.get_device_name() if cuda else None,
        compute_capability=cc,
        bf16=bool(cuda and torch.cuda.is_bf16_supported()),
        fp8=bool(cc and cc >= (8, 9)),
        methods=methods,
    )
