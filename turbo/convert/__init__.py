"""Convert TurboDiffusion / rCM checkpoints (native Wan keys) into diffusers transformers that run with turbo.

    import turbo, torch
    from diffusers import WanPipeline, WanTransformer3DModel
    turbo.convert_checkpoint("TurboWan2.1-T2V-1.3B-480P.pth", "turbo-wan-1.3b")        # or `turbo convert ...`
    transformer = WanTransformer3DModel.from_pretrained("turbo-wan-1.3b", torch_dtype=torch.bfloat16)
    pipe = WanPipeline.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", transformer=transformer)
    turbo.accelerate(pipe)      # starts from the recipe beside the weights: SLA (proj_l loaded) + rCM, 4 steps
    video = pipe(prompt, num_inference_steps=4, guidance_scale=1.0).frames[0]

Wan2.2 A14B: `convert_checkpoint(high_noise, out, low_noise=low_noise)` writes `out/transformer` (high noise) and
`out/transformer_2`. Accepted: `.pth/.pt` (weights only), `.safetensors`, sharded `*.safetensors.index.json` dirs;
INT8 (`-quant`) checkpoints are dequantised to `dtype`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import TurboError
from .load import load_native
from .native_wan import convert_state, dequantize_int8, infer_config, model_name, native_to_diffusers

logger = logging.getLogger("turbo")

SLA_BLOCK_Q, SLA_BLOCK_K = 128, 64  # TurboDiffusion's Triton SLA at inference
SIGMA_MAX_T2V, SIGMA_MAX_I2V = 80.0, 200.0

__all__ = ["ConversionReport", "ConvertedModel", "convert_checkpoint", "convert_report", "dequantize_int8",
           "infer_config", "load_native", "native_to_diffusers", "recipe_for"]


@dataclass
class ConvertedModel:
    """One written transformer directory and what was found in its source file."""

    source: Path
    directory: Path
    config: dict
    sla: bool
    int8_linears: int
    recipe: dict = field(default_factory=dict)


@dataclass
class ConversionReport:
    """What `convert_report` wrote: the output directory and one `ConvertedModel` per transformer."""

    output: Path
    models: list[ConvertedModel]

    @property
    def name(self) -> str:
        return model_name(self.models[0].config, experts=len(self.models))


def recipe_for(*, sla: bool, in_channels: int, sla_topk: float = 0.1, sigma_max: float | None = None,
               steps: int = 4):
    """The `TurboConfig` a converted checkpoint runs with: TurboDiffusion's SLA (keep = sla_topk, 128/64 blocks,
    linear branch over all keys, floor top-k) when it has proj_l, dense otherwise; the rCM sampler with `steps` and
    σ_max (default 80 T2V, 200 I2V)."""
    from ..config import TurboConfig

    if sigma_max is None:
        sigma_max = SIGMA_MAX_I2V if in_channels == 36 else SIGMA_MAX_T2V
    attention = ({"method": "sla", "keep": sla_topk, "block_q": SLA_BLOCK_Q, "block_k": SLA_BLOCK_K,
                  "linear": "all", "topk_rule": "floor"} if sla else {"method": "dense"})
    return TurboConfig.from_dict({"attention": attention,
                                  "sampler": {"mode": "rcm", "steps": steps, "sigma_max": sigma_max}})


def _build_model(state: dict[str, torch.Tensor], config: dict, names: dict[str, str]):
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    from .native_wan import check_against

    with init_empty_weights():
        model = WanTransformer3DModel(**config)
    check_against(model, state, names)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _write_parts(directory: Path, proj_l: dict, recipe) -> Path:
    from safetensors.torch import save_file

    from ..attention.parts import CONFIG_KEY, METHOD_KEY, PARTS_FILE

    tensors = {}
    for block, (weight, bias) in proj_l.items():
        tensors[f"blocks.{block}.attn1.turbo_attention.proj.weight"] = weight.float().contiguous()
        tensors[f"blocks.{block}.attn1.turbo_attention.proj.bias"] = bias.float().contiguous()
    metadata = {METHOD_KEY: recipe.attention.method,
                CONFIG_KEY: json.dumps(recipe.attention.to_dict(), sort_keys=True)}
    save_file(tensors, str(directory / PARTS_FILE), metadata=metadata)
    return directory / PARTS_FILE


def _convert_one(source: Path, directory: Path, *, heads, dtype, sla_topk, sigma_max, steps) -> ConvertedModel:
    from ..recipe import save_recipe

    try:
        result = convert_state(load_native(source), heads, dtype=dtype)
    except TurboError as error:
        raise TurboError(str(error) if str(source) in str(error) else f"{source}: {error}") from None
    num_layers = result.config["num_layers"]
    outside = [block for block in result.proj_l if block >= num_layers]
    if outside:
        raise TurboError(f"{source} has SLA proj_l for block {outside[0]} but only {num_layers} blocks.")
    if result.proj_l and len(result.proj_l) != num_layers:
        lacking = next(i for i in range(num_layers) if i not in result.proj_l)
        raise TurboError(f"{source} has SLA proj_l for {len(result.proj_l)} of {num_layers} blocks (first without: "
                         f"blocks.{lacking}).")
    try:
        model = _build_model(result.state, result.config, result.names)
    except TurboError as error:
        raise TurboError(f"{source}: {error}") from None
    recipe = recipe_for(sla=bool(result.proj_l), in_channels=result.config["in_channels"], sla_topk=sla_topk,
                        sigma_max=sigma_max, steps=steps)
    directory.mkdir(parents=True, exist_ok=True)
    logger.info("writing %s", directory)
    model.save_pretrained(str(directory), safe_serialization=True)
    del model, result.state
    if result.proj_l:
        _write_parts(directory, result.proj_l, recipe)
    save_recipe(directory, recipe)
    return ConvertedModel(Path(source), directory, result.config, bool(result.proj_l), result.int8_linears,
                          recipe.to_dict())


def convert_report(source, output, *, low_noise=None, sla_topk: float = 0.1, sigma_max: float | None = None,
                   steps: int = 4, dtype: torch.dtype = torch.bfloat16, heads: int | None = None) -> ConversionReport:
    """`convert_checkpoint`, returning what was found and written (model guess, SLA parts, INT8) for display."""
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TurboError(f"dtype={dtype} is not one of bfloat16, float16, float32.")
    recipe_for(sla=True, in_channels=16, sla_topk=sla_topk, sigma_max=sigma_max, steps=steps)  # settings fail early
    output = Path(output)
    if output.is_file():
        raise TurboError(f"the output {output} is a file; give a directory.")
    sources = [Path(source)] + ([Path(low_noise)] if low_noise is not None else [])
    for path in sources:
        if not path.exists():
            raise TurboError(f"{path} does not exist.")
    options = {"heads": heads, "dtype": dtype, "sla_topk": sla_topk, "sigma_max": sigma_max, "steps": steps}
    if low_noise is None:
        models = [_convert_one(sources[0], output, **options)]
    else:  # diffusers' Wan2.2 pipelines run `transformer` while t >= boundary (high noise), `transformer_2` after
        models = [_convert_one(sources[0], output / "transformer", **options),
                  _convert_one(sources[1], output / "transformer_2", **options)]
        if models[0].config != models[1].config:
            raise TurboError(f"the two experts have different shapes ({sources[0]} vs {sources[1]}); pass the "
                             "high-noise and low-noise files of one model.")
    return ConversionReport(output, models)


def convert_checkpoint(source, output, *, low_noise=None, sla_topk: float = 0.1, sigma_max: float | None = None,
                       steps: int = 4, dtype: torch.dtype = torch.bfloat16, heads: int | None = None) -> Path:
    """Convert a TurboDiffusion / rCM checkpoint in native Wan layout into a diffusers `WanTransformer3DModel`
    directory (`config.json` + safetensors in `dtype`) with `turbo_attention.safetensors` (SLA proj_l, fp32, when
    present) and `turbo_config.json` (the recipe `turbo.accelerate` starts from). With `low_noise` (Wan2.2 A14B),
    `source` is the high-noise expert → `output/transformer`, `low_noise` → `output/transformer_2`.

    sla_topk: SLA keep ratio of the recipe (TurboDiffusion default 0.1); sigma_max: rCM σ_max (default 80 T2V, 200
    I2V); steps: rCM steps; heads: attention heads (default width / 128). Returns `output`."""
    return convert_report(source, output, low_noise=low_noise, sla_topk=sla_topk, sigma_max=sigma_max, steps=steps,
                          dtype=dtype, heads=heads).output
