"""A model's turbo recipe: the `TurboConfig` a transformer was converted or trained for, saved beside its weights.

`turbo convert` (TurboDiffusion / rCM checkpoints) and the distillation export write
`<transformer dir>/turbo_config.json` (a `TurboConfig.to_dict()`: e.g. the rCM sampler with its steps and σ_max,
SLA in TurboDiffusion's form). When `turbo.accelerate(pipe)` gets no config, the recipe found beside the
transformers' weights is the starting point instead of the machine default, and flat overrides apply on top of it;
an explicit config or preset wins over it. So `from_pretrained` + `turbo.accelerate(pipe)` runs such a model as it
was made, with nothing to remember."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from .config import TurboConfig
from .errors import TurboConfigError

RECIPE_FILE = "turbo_config.json"


def save_recipe(directory, config: TurboConfig | dict) -> Path:
    """Write `config` as `<directory>/turbo_config.json`; returns the path."""
    data = config.to_dict() if isinstance(config, TurboConfig) else TurboConfig.from_dict(config).to_dict()
    path = Path(directory) / RECIPE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def recipe_path(model: nn.Module) -> Path | None:
    """The recipe file beside the weights `model` was loaded from (`from_pretrained` records the directory), or None."""
    source = getattr(getattr(model, "config", None), "_name_or_path", None)
    if not source:
        return None
    for path in (Path(source) / RECIPE_FILE, Path(source) / "transformer" / RECIPE_FILE):
        if path.is_file():
            return path
    return None


def load_recipe(path) -> TurboConfig:
    """Read a recipe file; a malformed one raises `TurboConfigError` naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise TurboConfigError(f"{path} is not a readable turbo recipe ({error}).") from None
    try:
        return TurboConfig.from_dict(data)
    except TurboConfigError as error:
        raise TurboConfigError(f"{path}: {error}") from None


def find_recipe(models: list[nn.Module]) -> tuple[TurboConfig, Path] | None:
    """The recipe shared by the transformers of a pipeline, or None if none has one. Experts with different recipes
    (e.g. two converted files made with different settings) are refused: one pipeline runs one config."""
    found = [(path, load_recipe(path)) for path in filter(None, (recipe_path(m) for m in models))]
    if not found:
        return None
    first_path, first = found[0]
    for path, config in found[1:]:
        if config.to_dict() != first.to_dict():
            raise TurboConfigError(
                f"the transformers' recipes differ ({first_path} vs {path}); pass a config to turbo.accelerate to "
                "choose one."
            )
    return first, first_path
