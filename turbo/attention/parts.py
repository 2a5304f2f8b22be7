"""turbo's fine-tuned attention parts (SLA proj, SLA2 router and α) saved beside a transformer's weights.

`save_attention_parts(pipe, directory)` writes each accelerated transformer's method modules into
`<directory>/<component>/turbo_attention.safetensors` (a transformer passed alone: `<directory>/...`), with the
attention section it was trained with in the metadata. `turbo.accelerate` finds the file beside the weights a
transformer was loaded from (`from_pretrained` records that directory) and loads it, so a fine-tuned model runs as
trained, and methods that need fine-tuning are refused on transformers without it unless `allow_untuned=True`."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..errors import TurboError

PARTS_FILE = "turbo_attention.safetensors"
METHOD_KEY = "turbo.attention.method"
CONFIG_KEY = "turbo.attention.config"


def _candidates(model: nn.Module) -> list[Path]:
    source = getattr(getattr(model, "config", None), "_name_or_path", None)
    if not source:
        return []
    root = Path(source)
    return [root / PARTS_FILE, root / "transformer" / PARTS_FILE]


def find_parts(model: nn.Module, method: str) -> Path | None:
    """The parts file for `method` beside the weights `model` was loaded from, or None."""
    from safetensors import safe_open

    for path in _candidates(model):
        if path.is_file():
            with safe_open(str(path), framework="pt") as handle:
                if (handle.metadata() or {}).get(METHOD_KEY) == method:
                    return path
    return None


def load_parts(model: nn.Module, path: Path) -> None:
    """Load a parts file into the installed method modules of `model`; every key must exist there."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    own = model.state_dict()
    unknown = [key for key in state if key not in own]
    if unknown:
        raise TurboError(f"{path} has {len(unknown)} keys this model lacks (first: {unknown[0]}); it belongs to "
                         "another model or attention config.")
    model.load_state_dict(state, strict=False)


def save_attention_parts(pipe, directory) -> list[Path]:
    """Save the turbo attention parts of an accelerated pipeline (or transformer) next to its weights layout:
    `<directory>/<component>/turbo_attention.safetensors` for a pipeline. Returns the written paths."""
    from safetensors.torch import save_file

    from ..adapters import METHOD_ATTR

    report = getattr(pipe, "turbo", None)
    if report is None:
        raise TurboError("this object is not accelerated by turbo; call turbo.accelerate first.")
    written = []
    single = isinstance(pipe, nn.Module)
    for component, model in report.models():
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if f".{METHOD_ATTR}." in k}
        folder = Path(directory) if single else Path(directory) / component
        folder.mkdir(parents=True, exist_ok=True)
        metadata = {METHOD_KEY: report.config.attention.method,
                    CONFIG_KEY: json.dumps(report.config.attention.to_dict(), sort_keys=True)}
        save_file(state, str(folder / PARTS_FILE), metadata=metadata)
        written.append(folder / PARTS_FILE)
    return written
