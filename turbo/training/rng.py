"""Random-number-generator state as JSON values (for a checkpoint's sidecar): Python's `random`, NumPy's global
generator, torch's CPU and CUDA generators and any named ``torch.Generator`` a trainer keeps (e.g. its data order)."""

from __future__ import annotations

import base64
import random

import torch

__all__ = ["capture_rng", "restore_rng"]


def _b64(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def _tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict:
    """{"python", "numpy", "torch", "cuda" (one per visible GPU), "generators": {name: state}}, all JSON values."""
    import numpy as np

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
        "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "generators": {name: _b64(g.get_state()) for name, g in (generators or {}).items()},
    }


def restore_rng(state: dict, generators: dict[str, torch.Generator] | None = None) -> None:
    """Put back what `capture_rng` returned (CUDA states only where GPUs are visible; named generators by name)."""
    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_tensor(state["torch"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_tensor(s) for s in state["cuda"]])
    for name, generator in (generators or {}).items():
        if name not in state.get("generators", {}):
            raise KeyError(f"the saved RNG state has no generator {name!r}")
        generator.set_state(_tensor(state["generators"][name]))
