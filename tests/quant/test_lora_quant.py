"""LoRA beside turbo's quantised linears (turbo/quant/lora.py): a LoRA loaded with diffusers' `load_lora_weights`
before `turbo.accelerate(pipe, quant=...)`, fused (the fused weights are quantised) or not (the adapter runs as a
high-precision side branch around the quantised base layer); loading or fusing one afterwards is refused."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import WanPipeline
from peft import LoraConfig, get_peft_model_state_dict
from torch import nn

import turbo
from pipelines import tiny
from turbo.quant.fp8 import FP8Linear
from turbo.quant.int8 import INT8Linear
from turbo.quant.nvfp4 import NVFP4Linear

from ..pipes import assert_same_snapshot, snapshot

MODES = {"fp8": FP8Linear, "int8": INT8Linear, "nvfp4": NVFP4Linear}
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "net.0.proj", "net.2"]  # attention (self and cross) and ffn linears
LATE = re.escape("keeps no high-precision weight to load, fuse or unfuse a LoRA into: load (and optionally fuse) the "
                 "LoRA before turbo.accelerate, or call turbo.restore(pipe) first.")


def build():
    """Tiny Wan T2V with head_dim 16: every block linear has K a multiple of 16, so NVFP4 quantises them all too."""
    pipe = tiny.build_wan_t2v(head_dim=16)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latents(pipe) -> torch.Tensor:
    return pipe(prompt="a red circle moving left", height=64, width=64, num_frames=9, num_inference_steps=2,
                output_type="latent", generator=torch.Generator().manual_seed(0)).frames


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def save_lora(directory, seed: int, std: float = 0.25) -> str:
    """A rank-4 LoRA on the block linears in diffusers' Wan format: peft's adapter on the tiny transformer, its state
    dict (get_peft_model_state_dict) with seeded random A and B, written by WanPipeline.save_lora_weights."""
    transformer = build().transformer
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS), adapter_name="new")
    shapes = get_peft_model_state_dict(transformer, adapter_name="new")
    generator = torch.Generator().manual_seed(seed)
    state = {key: torch.randn(value.shape, generator=generator) * std for key, value in shapes.items()}
    assert len(state) == 2 * 2 * 10 and all(t.abs().sum() > 0 for t in state.values())  # 2 blocks x 10 linears, A + B
    WanPipeline.save_lora_weights(str(directory), transformer_lora_layers=state)
    return str(directory)


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    return save_lora(tmp_path_factory.mktemp("lora"), seed=1)


@pytest.fixture(scope="module")
def reference(lora):
    """Un-quantised outputs (base, LoRA unfused at scale 1 and 0.5, fused); quantised without LoRA is added per mode."""
    out = {"base": latents(build())}
    pipe = build()
    pipe.load_lora_weights(lora, adapter_name="distill")
    out["lora"] = latents(pipe)
    pipe.set_adapters(["distill"], [0.5])
    out["half"] = latents(pipe)
    pipe.set_adapters(["distill"], [1.0])
    pipe.fuse_lora()
    out["fused"] = latents(pipe)
    assert rel(out["fused"], out["lora"]) < 1e-5 and rel(out["lora"], out["base"]) > 0.1
    return out


def quantised_without_lora(reference, mode: str) -> torch.Tensor:
    if mode not in reference:
        pipe = build()
        turbo.accelerate(pipe, quant=mode)
        reference[mode] = latents(pipe)
    return reference[mode]


def quantised_names(pipe, mode: str) -> set[str]:
    return {n for n, m in pipe.transformer.named_modules() if isinstance(m, MODES[mode])}


@pytest.mark.parametrize("mode", list(MODES))
def test_unfused_lora_runs_in_high_precision_beside_the_quantised_base_and_restore_is_exact(lora, reference, mode):
    pipe = build()
    pipe.load_lora_weights(lora, adapter_name="distill")
    before = snapshot(pipe)
    turbo.accelerate(pipe, quant=mode)
    names = quantised_names(pipe, mode)
    assert len(names) == 20 and all(n.endswith(".base_layer") for n in names)  # every targeted block linear's base
    lora_parts = [m for n, m in pipe.transformer.named_modules() if ".lora_A." in n or ".lora_B." in n]
    assert len(lora_parts) == 40 and all(type(m) is nn.Linear and m.weight.dtype == torch.float32 for m in lora_parts)

    out = latents(pipe)
    quant_error = rel(quantised_without_lora(reference, mode), reference["base"])  # the mode's own error
    lora_effect = rel(reference["lora"], reference["base"])
    error = rel(out, reference["lora"])
    assert 0 < error < 3 * quant_error and lora_effect > 10 * error  # the LoRA is there, the error is the quant's

    pipe.set_adapters(["distill"], [0.0])  # scale changes reach the side branch: scale 0 is the quantised base alone
    assert torch.equal(latents(pipe), reference[mode])
    pipe.set_adapters(["distill"], [0.5])
    half_error = rel(latents(pipe), reference["half"])
    assert half_error < 3 * quant_error and rel(reference["half"], reference["lora"]) > 5 * half_error
    pipe.disable_lora()
    assert torch.equal(latents(pipe), reference[mode])
    pipe.enable_lora()
    pipe.set_adapters(["distill"], [1.0])
    assert torch.equal(latents(pipe), out)

    with pytest.raises(turbo.TurboConfigError, match=LATE) as error_info:  # fusing into a quantised weight: refused
        pipe.fuse_lora()
    assert "\n" not in str(error_info.value) and MODES[mode].__name__ in str(error_info.value)
    assert torch.equal(latents(pipe), out)  # nothing was fused

    turbo.restore(pipe)
    assert_same_snapshot(before, snapshot(pipe))  # the un-quantised peft model: wrappers, base weights, adapters
    assert torch.equal(latents(pipe), reference["lora"])


@pytest.mark.parametrize("mode", list(MODES))
def test_fused_lora_is_what_gets_quantised_and_restore_gives_the_fused_weights_back(lora, reference, mode):
    plain = build()  # the fused weights in plain linears: quantising them is the expected result, bit for bit
    plain.load_lora_weights(lora, adapter_name="distill")
    plain.fuse_lora()
    plain.unload_lora_weights()
    turbo.accelerate(plain, quant=mode)
    expected = latents(plain)

    pipe = build()
    pipe.load_lora_weights(lora, adapter_name="distill")
    pipe.fuse_lora()
    before = snapshot(pipe)
    turbo.accelerate(pipe, quant=mode)
    assert len(quantised_names(pipe, mode)) == 20
    out = latents(pipe)
    assert torch.equal(out, expected)  # the normal error of quantising these weights, nothing added
    assert 0 < rel(out, reference["fused"]) < rel(reference["fused"], reference["base"]) / 5

    with pytest.raises(turbo.TurboConfigError, match=LATE):  # unfusing out of a quantised weight: refused
        pipe.unfuse_lora()
    turbo.restore(pipe)  # also puts back peft's merged list, which unmerge emptied before it met the weight
    assert_same_snapshot(before, snapshot(pipe))
    assert torch.equal(latents(pipe), reference["fused"])
    pipe.unfuse_lora()  # the restored model is a normal fused peft model again
    assert rel(latents(pipe), reference["lora"]) < 1e-5


@pytest.mark.parametrize("mode", list(MODES))
def test_lora_loaded_after_accelerate_is_refused_and_leaves_the_pipeline_as_it_was(lora, reference, mode):
    pipe = build()
    before = snapshot(pipe)
    turbo.accelerate(pipe, quant=mode)
    with pytest.raises(turbo.TurboConfigError, match=LATE) as error_info:
        pipe.load_lora_weights(lora, adapter_name="late")
    assert "\n" not in str(error_info.value)
    assert not getattr(pipe.transformer, "peft_config", None)  # diffusers dropped the half-loaded adapter
    assert torch.equal(latents(pipe), quantised_without_lora(reference, mode))
    turbo.restore(pipe)
    assert_same_snapshot(before, snapshot(pipe))
    pipe.load_lora_weights(lora, adapter_name="late")  # the order the error asks for works
    assert rel(latents(pipe), reference["lora"]) < 1e-5


def test_unfused_dora_is_refused_before_anything_changes():
    pipe = build()
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q"], use_dora=True,
                                            init_lora_weights=False), adapter_name="dora")
    before = snapshot(pipe)
    with pytest.raises(turbo.TurboConfigError, match=r"quant='int8' keeps only plain LoRA unfused .* DoRA/variant "
                                                     r"adapter 'dora' on blocks\.0\.attn1\.to_q: fuse it before "
                                                     r"turbo\.accelerate") as error_info:
        turbo.accelerate(pipe, quant="int8")
    assert "\n" not in str(error_info.value) and not hasattr(pipe, "turbo")
    assert_same_snapshot(before, snapshot(pipe))
    pipe.transformer.fuse_lora()  # fused, DoRA is just weights: accepted
    turbo.accelerate(pipe, quant="int8")
    assert len(quantised_names(pipe, "int8")) == 20


def test_restore_after_unload_lora_weights_puts_the_original_linears_where_peft_moved_the_quantised_ones(lora,
                                                                                                      reference):
    pipe = build()
    pipe.load_lora_weights(lora, adapter_name="distill")
    turbo.accelerate(pipe, quant="fp8")
    pipe.unload_lora_weights()  # peft puts each base layer (turbo's FP8Linear) where its wrapper was
    assert quantised_names(pipe, "fp8") and not any(n.endswith("base_layer") for n in quantised_names(pipe, "fp8"))
    assert torch.equal(latents(pipe), quantised_without_lora(reference, "fp8"))
    turbo.restore(pipe)
    block_linears = [m for m in pipe.transformer.blocks.modules() if isinstance(m, (nn.Linear, FP8Linear))]
    assert len(block_linears) == 20 and all(type(m) is nn.Linear for m in block_linears)
    assert torch.equal(latents(pipe), reference["base"])
