"""LoRA adapters (peft layers, loaded by diffusers' `pipe.load_lora_weights`) beside turbo's quantised linears.

What works (the quant feature, turbo/quant/__init__.py, with these helpers):
- a LoRA loaded and fused before `turbo.accelerate(pipe, quant=...)`: the fused weights are what gets quantised (peft
  keeps its `lora.Linear` wrapper, whose `base_layer` holds the fused weight and is what turbo swaps; a merged
  wrapper runs only its base layer); `turbo.restore` gives the fused weights back exactly;
- a LoRA loaded and left unfused: turbo swaps the wrapper's `base_layer` and leaves the adapter parts (`lora_A`,
  `lora_B`, dropout) in their dtype, so the LoRA runs as a high-precision side branch next to the quantised product
  (y = Q(x·Wᵀ) + s·B·A·x); `set_adapters`, `disable_lora` / `enable_lora` and adapter scales keep working, and
  `turbo.restore` puts the un-quantised base layers back inside the same wrappers. Only plain LoRA qualifies: DoRA
  and other variants (and LoKr/LoHa layers) read the base weight on every call, so `accelerate` refuses them unfused.

What is refused, with a `TurboConfigError` (`weight_error`) that says to load (and optionally fuse) the LoRA first:
- loading a LoRA after `turbo.accelerate` onto a linear turbo quantised: peft wraps `nn.Linear` and a fixed list of
  library types; its custom-layer registry lives on the `LoraConfig` that diffusers builds inside `load_lora_weights`,
  so turbo cannot register its layers there without patching diffusers;
- `fuse_lora` / `unfuse_lora` after `turbo.accelerate` on a quantised base layer: peft merges by writing into
  `base_layer.weight`, which turbo's layers do not have (a fused, re-quantised copy would also leave `turbo.restore`
  without the weights to give back).
Both meet the quantised layer's `weight` property (`QuantisedWeightOnly`), which raises that error: peft reads
`weight` when it wraps a layer (its dispatch and device checks) and when it merges into one. Caveats: so does
`hasattr(layer, "weight")`; peft's `unmerge` marks one layer unfused before it meets the weight (`repair_merged` puts
that back at `restore`); diffusers' `fuse_lora(lora_scale=s)` scales the first layer's adapter before the merge is
refused (`pipe.set_adapters` resets it); a refused load onto a layer that already has an adapter can leave the new,
inactive adapter's parts in that one layer (diffusers' clean-up only deletes active adapters)."""

from __future__ import annotations

import sys

from torch import nn

from ..errors import TurboConfigError


def weight_error(module: nn.Module) -> TurboConfigError:
    """The one-sentence refusal for anything that needs the high-precision weight of a turbo quantised linear."""
    return TurboConfigError(
        f"turbo's quantised {type(module).__name__} keeps no high-precision weight to load, fuse or unfuse a LoRA "
        "into: load (and optionally fuse) the LoRA before turbo.accelerate, or call turbo.restore(pipe) first."
    )


class QuantisedWeightOnly:
    """Mixin of turbo's quantised linears (FP8Linear, INT8Linear, NVFP4Linear, MixedLinear): they have no `weight`,
    and reading it (`hasattr` too) raises `weight_error` instead of an AttributeError, so that peft's LoRA loading and
    merging, which read it, stop with turbo's sentence rather than peft's list of supported layer types."""

    @property
    def weight(self):
        raise weight_error(self)


def is_tuner_layer(module: nn.Module) -> bool:
    """Whether `module` is one of peft's adapter layers (`BaseTunerLayer`, e.g. LoRA's `lora.Linear`); never when peft
    was not imported (then nothing can have loaded an adapter)."""
    tuners = sys.modules.get("peft.tuners.tuners_utils")
    return tuners is not None and isinstance(module, tuners.BaseTunerLayer)


def tuner_layers(model: nn.Module) -> list[nn.Module]:
    """peft's adapter layers inside `model` (`is_tuner_layer`)."""
    if "peft.tuners.tuners_utils" not in sys.modules:
        return []
    return [m for m in model.modules() if is_tuner_layer(m)]


def adapter_parts(model: nn.Module) -> set[int]:
    """ids of the modules inside `model` that belong to peft adapters (`lora_A`, `lora_B`, dropout, DoRA magnitudes):
    everything under a tuner layer except its `base_layer`. The quant feature leaves these in their dtype."""
    parts = set()
    for layer in tuner_layers(model):
        for name, child in layer.named_children():
            if name != "base_layer":
                parts.update(id(m) for m in child.modules())
    return parts


def _adapter_names(layer: nn.Module) -> set[str]:
    names = set()
    for attr in getattr(layer, "adapter_layer_names", ()):
        names.update(getattr(layer, attr, {}).keys())
    return names


def unfused_problem(layer: nn.Module) -> str | None:
    """Why the peft tuner `layer` cannot run beside a quantised base layer, or None: every adapter is fused, or the
    unfused ones are plain LoRA (a side branch that never reads the base weight)."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    unfused = _adapter_names(layer) - set(getattr(layer, "merged_adapters", []))
    if not unfused:
        return None
    if not isinstance(layer, LoraLinear):
        return f"a {type(layer).__name__} adapter"
    variants = set(getattr(layer, "lora_variant", {}) or {}) | set(getattr(layer, "lora_magnitude_vector", {}) or {})
    variant = sorted(unfused & variants)
    return f"the DoRA/variant adapter '{variant[0]}'" if variant else None


def check_unfused(mode: str, model: nn.Module, swaps: list[tuple[nn.Module, str, nn.Linear]]) -> None:
    """Raise `TurboConfigError` if one of the `swaps` (parent, attribute, linear) of `model` is the base layer of a peft
    layer with an unfused adapter that reads the base weight (`unfused_problem`)."""
    names = None
    for parent, attr, _ in swaps:
        if attr != "base_layer" or not is_tuner_layer(parent):
            continue
        problem = unfused_problem(parent)
        if problem is None:
            continue
        names = names or {id(m): n for n, m in model.named_modules()}
        raise TurboConfigError(
            f"quant='{mode}' keeps only plain LoRA unfused beside a quantised linear, not {problem} on "
            f"{names.get(id(parent), type(parent).__name__)}: fuse it before turbo.accelerate (pipe.fuse_lora()) or "
            "accelerate without quant."
        )


def merged_lists(swaps: list[tuple[nn.Module, str, nn.Linear]]) -> list[tuple[nn.Module, list[str]]]:
    """(peft layer, a copy of its `merged_adapters`) for every swap that is a peft layer's base layer, recorded by
    `install` for `repair_merged`."""
    return [(parent, list(parent.merged_adapters)) for parent, attr, _ in swaps
            if attr == "base_layer" and is_tuner_layer(parent)]


def repair_merged(records: list[tuple[nn.Module, list[str]]]) -> None:
    """Put back the `merged_adapters` lists recorded by `merged_lists`. peft's `unmerge` (diffusers' `unfuse_lora`) pops
    an adapter from that list before it reads the base weight, so a refused unfuse leaves one layer marked unfused
    while its base layer still holds the fused weight; nothing can have merged or unmerged a quantised base layer
    for real, so the recorded lists are the truth when `restore` gives the weights back."""
    for layer, merged in records:
        layer.merged_adapters[:] = merged


def module_slots(models: list[nn.Module]) -> dict[int, list[tuple[nn.Module, str]]]:
    """id(module) -> every (parent, attribute) in `models` that holds it now. `restore` puts the original linear
    wherever its quantised copy sits now: after `pipe.unload_lora_weights()` peft has moved the base layers (the
    quantised copies) up into the wrappers' places."""
    slots: dict[int, list[tuple[nn.Module, str]]] = {}
    for model in models:
        for parent in model.modules():
            for attr, child in parent.named_children():
                slots.setdefault(id(child), []).append((parent, attr))
    return slots
