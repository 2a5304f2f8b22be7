"""Linear-layer quantisation of the transformer blocks (W8A8 FP8 and INT8, weight-only NVFP4, NVFP4/INT8 mixed).

`turbo.accelerate(pipe, quant="fp8")` swaps the `nn.Linear`s inside the transformer blocks (attention q/k/v/out,
cross-attention, feed-forward; not projections whose input is ≥ 4× wider than their output, where quantising the
activations costs more than the FP8 GEMM saves) for `FP8Linear` (turbo/quant/fp8.py: e4m3 weights per output channel,
activations per token, cuBLASLt FP8 GEMM on GPUs with FP8 tensor cores). Embeddings, time/text projections, the
final head, modulation linears and turbo's own attention parts stay in their dtype. The original linears are kept
on the CPU while quantised (the GPU holds only the FP8 weights) and `turbo.restore` puts them back exactly.
On a CPU the same numerics run simulated (for accuracy studies; not faster). `quant="int8"` swaps the same linears for
`INT8Linear` (turbo/quant/int8.py: int8 weights per output channel, activations per token; on CUDA turbo's Triton
INT8 GEMM with the scales fused, turbo/quant/int8_gemm.py; `torch._int_mm` on CPUs). Measured on an H200 at Wan-14B
shapes (docs/BENCHMARKS.md, 2026-11-30), compiled, incl. the activation pass: FP8 1.56–1.85× bf16 (fast
accumulation; eager, with turbo's Triton activation pass and the bias in the GEMM epilogue, 1.42–1.63×, 1.47–1.84×
with fast accumulation), INT8 1.25–1.51×; a Wan-14B 720p forward with
SLA keep 5 % + FP8 is 4.08× stock.
`quant="nvfp4"` stores the weights of every block linear whose in_features is a multiple of 16 (the wide-input rule
is about the activation pass, which weight-only quantisation does not have) as `NVFP4Linear` (turbo/quant/nvfp4.py:
e2m1 codes, an e4m3 scale per 16 weights, an fp32 tensor scale; 0.28× the bytes of bf16); the activations stay in
their dtype. Hopper has no FP4 tensor cores: on CUDA each call dequantises the weight to bf16 with turbo's one-pass
Triton kernel (turbo/quant/nvfp4_dequant.py) for a cuBLAS GEMM, measured 0.96–1.05× bf16 at Wan shapes on an H200
(a Wan-14B 480p forward as fast as bf16 at 11.4 GiB peak instead of 30.1). `quant_nvfp4_compute="fp8"` re-rounds the
dequantised weight to e4m3 per output channel and runs FP8 W8A8 GEMMs instead: NVFP4's memory at most of FP8's speed
(1.35–1.72× bf16 eager at Wan-14B shapes; a 14B 480p forward 1.14× bf16), one more rounding. turbo's Triton GEMM
that dequantises in registers (turbo/quant/nvfp4_gemm.py) measured 0.22–0.27× and is only a selectable backend. On
CPUs the weights are dequantised in PyTorch (fp32).
`quant="nvfp4-mixed"` (6Bit-Diffusion's dynamic mixed precision) swaps the same linears as nvfp4 for `MixedLinear`
(turbo/quant/mixed.py: NVFP4 weights; per call either "low" = NVFP4-emulated activations, an accuracy-study path on
Hopper, or "high" = INT8 W8A8 on the NVFP4 weight re-quantised to int8) and puts a router hook on every block
(turbo/quant/router.py): per block and CFG branch, "high" when α·Γ_prev + β > `mixed_max_error`, Γ_prev being the
relative L1 of the block's residual at its previous call in that branch. α and β come from `calibration`, a JSON
written by `turbo calibrate` (`turbo.quant.calibrate_mixed`) for this transformer; without one it raises.

LoRA (diffusers' `load_lora_weights`, turbo/quant/lora.py): load it before `accelerate`. Fused (`pipe.fuse_lora()`),
the fused weights are what gets quantised; unfused, only the base layer inside peft's `lora.Linear` is swapped and
`lora_A`/`lora_B` run beside it in their dtype (set_adapters and scales keep working; DoRA and other variants must be
fused first). `restore` gives back the fused weights, or the un-quantised peft model. Loading, fusing or unfusing a
LoRA after `accelerate` on a quantised linear raises `TurboConfigError` (the quantised layers have no `weight`).

`turbo.save_quantized` / `turbo.load_quantized` (turbo/quant/io.py) save a transformer accelerated with quant="fp8",
"int8" or "nvfp4" once and load it without its original weights (NVFP4: 0.28× the bf16 bytes of the linears, read
straight onto the GPU); nvfp4-mixed is refused (its calibration is checked against the unquantised linears). On such
a model the feature swaps nothing (the linears are `FP8Linear` / `INT8Linear` / `NVFP4Linear` already) and `restore`
leaves them quantised; the warning line in `pipe.turbo` and the refusal of another mode on top cover loaded FP8
linears only so far."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..config import option, validate_options
from ..errors import NotImplementedMethodError, TurboConfigError
from ..registry import Feature, register_feature
from .fp8 import WIDE_INPUT_RATIO
from .lora import adapter_parts, check_unfused, merged_lists, module_slots, repair_merged

QUANT_MODES = ("off", "fp8", "int8", "nvfp4", "nvfp4-mixed")
NOT_BUILT: dict[str, str] = {}  # modes in the schema that are not implemented yet
MIN_CAPABILITY = {"fp8": ((8, 9), "FP8 tensor cores (compute capability 8.9 or newer: Ada, Hopper, Blackwell)"),
                  "int8": ((8, 0), "INT8 tensor-core GEMMs through torch._int_mm (compute capability 8.0 or newer)"),
                  "nvfp4": ((8, 0), "bf16 tensor cores for the dequantised NVFP4 weights (cuBLAS, or bf16 dots in "
                            "turbo's Triton GEMM; compute capability 8.0 or newer)"),
                  "nvfp4-mixed": ((8, 0), "INT8 tensor-core GEMMs for the high-precision path (compute capability "
                                  "8.0 or newer)")}
CPU_NUMERICS = {"fp8": "simulated FP8 numerics", "int8": "INT8 numerics",
                "nvfp4": "NVFP4 numerics with the weights dequantised in PyTorch",
                "nvfp4-mixed": "NVFP4/INT8 mixed numerics (NVFP4 activations emulated)"}
SKIPPED_NAMES = ("norm", "turbo_attention")  # modulation linears (one token per sample) and turbo's own parts
logger = logging.getLogger("turbo")


@dataclass(frozen=True)
class QuantConfig:
    """Linear-layer quantisation."""

    mode: str = option("off", "linear-layer quantisation of the transformer blocks (fp8 = W8A8 e4m3, int8 = W8A8 "
                       "int8: per-channel weights, per-token activations; nvfp4 = weight-only NVFP4, e2m1 weights "
                       "with an e4m3 scale per 16; nvfp4-mixed = NVFP4 weights, per block and step NVFP4 or INT8 "
                       "activations by a calibrated router, needs quant_calibration)", choices=QUANT_MODES)
    fast_accum: bool = option(False, "fp8 (and nvfp4 with nvfp4_compute='fp8'): cuBLASLt fast accumulation (faster "
                              "on Hopper, less exact sums)")
    nvfp4_compute: str = option("bf16", "nvfp4: the GEMM's inputs; bf16 = the weights dequantised to the activations' "
                                "dtype (exact NVFP4 weights); fp8 = the weights re-rounded to e4m3 per output channel "
                                "and the activations quantised per token, FP8 tensor cores (faster, one more "
                                "rounding; needs compute capability 8.9+)", choices=("bf16", "fp8"))
    calibration: str = option("", "nvfp4-mixed: the router's calibration JSON (alpha, beta) for this transformer, "
                              "written by `turbo calibrate`; required for nvfp4-mixed")
    mixed_max_error: float = option(0.05, "nvfp4-mixed: a block runs INT8 (high) when the predicted relative L1 error "
                                    "of its NVFP4 path, alpha * Gamma_prev + beta, exceeds this, else NVFP4 (low); "
                                    "lower = more blocks high (0.05 is turbo's default; the paper gives no value)",
                                    range=(0.0, 1000.0))

    def __post_init__(self):
        validate_options(self, "quant")


def block_linears(blocks: list[nn.Module], weight_only: bool = False) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, linear) for every `nn.Linear` inside `blocks` that gets quantised. `weight_only` (NVFP4)
    keeps the wide-input linears too: without an activation pass they cost nothing extra. Inside a peft LoRA layer only
    its `base_layer` counts; the adapter parts (`lora_A`, `lora_B`) stay in their dtype (turbo/quant/lora.py)."""
    found = []
    for block in blocks:
        adapters = adapter_parts(block)
        for name, module in block.named_modules():
            if not isinstance(module, nn.Linear) or id(module) in adapters:
                continue
            if any(part in name for part in SKIPPED_NAMES):
                continue
            if not weight_only and module.in_features >= WIDE_INPUT_RATIO * module.out_features:
                continue  # the activation pass costs more than the FP8 GEMM saves (turbo/quant/fp8.py)
            parent_name, _, attr = name.rpartition(".")
            found.append((block.get_submodule(parent_name) if parent_name else block, attr, module))
    return found


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _swaps(target, mode: str) -> list[tuple[nn.Module, str, nn.Linear]]:
    """The (parent, attribute, linear) that `install` swaps in `target` for `mode`."""
    from .nvfp4 import nvfp4_ready

    found = block_linears(target.adapter.denoising_blocks(target.model), weight_only=mode in ("nvfp4", "nvfp4-mixed"))
    return [f for f in found if mode in ("fp8", "int8") or nvfp4_ready(f[2].in_features)]


class QuantFeature(Feature):
    name = "quant"
    config_cls = QuantConfig
    order = 20

    def check_config(self, section: QuantConfig) -> None:
        if section.mode in NOT_BUILT:
            raise NotImplementedMethodError(
                f"quant.mode='{section.mode}': {NOT_BUILT[section.mode]} is not implemented yet; choose quant='fp8', "
                "quant='int8', quant='nvfp4' or quant='off'."
            )
        if section.mode == "nvfp4-mixed" and not section.calibration:
            raise TurboConfigError("quant='nvfp4-mixed' needs a router calibration: run `turbo calibrate --model "
                                   "NAME_OR_DIR --out FILE.json` and pass quant_calibration=FILE.json.")

    def check(self, context, section: QuantConfig) -> None:
        devices = {_device_of(t.model) for t in context.targets}
        gpus = [d for d in devices if d.type == "cuda"]
        least, what = MIN_CAPABILITY[section.mode]
        if section.mode == "nvfp4" and section.nvfp4_compute == "fp8":
            least, what = MIN_CAPABILITY["fp8"]
        for device in gpus:
            capability = torch.cuda.get_device_capability(device)
            if capability < least:
                raise TurboConfigError(
                    f"quant='{section.mode}' needs a GPU with {what}; {torch.cuda.get_device_name(device)} is "
                    f"sm_{capability[0]}{capability[1]}."
                )
        if section.mode == "nvfp4-mixed":
            from .router import load_calibration

            for target in context.targets:
                load_calibration(section.calibration, target.model)
        for target in context.targets:  # an unfused DoRA (or other peft variant) reads the weight turbo quantises
            check_unfused(section.mode, target.model, _swaps(target, section.mode))
        if len(gpus) < len(devices):
            context.warnings.append(f"quant='{section.mode}' on the CPU runs {CPU_NUMERICS[section.mode]} (for "
                                    "accuracy studies): slower than the original linears.")

    def install(self, context, section: QuantConfig) -> dict:
        from .fp8 import FP8Linear
        from .int8 import INT8Linear
        from .mixed import MixedLinear
        from .nvfp4 import NVFP4Linear, nvfp4_ready
        from .router import RouterSettings, TransformerRouter

        swapped = []  # (parent, attribute, original linear, its device)
        kept = []  # (linear loaded quantised, its mode, (fast_accum, NVFP4 backend) before): restore leaves them so
        loaded_modes = {FP8Linear: "fp8", INT8Linear: "int8", NVFP4Linear: "nvfp4"}
        routers = []  # nvfp4-mixed: one TransformerRouter per transformer
        merged = []  # (peft LoRA layer around a swapped linear, its merged adapters): turbo/quant/lora.py
        weight_only = section.mode in ("nvfp4", "nvfp4-mixed")
        nvfp4_backend = "fp8" if section.nvfp4_compute == "fp8" else None  # None: NVFP4Linear's default
        try:
            for target in context.targets:
                device = _device_of(target.model)
                use_gemm = device.type == "cuda"
                for module in target.model.modules():
                    loaded = loaded_modes.get(type(module))  # loaded quantised (turbo.load_quantized)
                    if loaded is None:
                        continue
                    if section.mode != loaded:
                        raise TurboConfigError(f"this model was loaded already quantised to {loaded.upper()}; "
                                               f"quant='{section.mode}' cannot apply on top (use quant='{loaded}').")
                    before = (getattr(module, "fast_accum", None), getattr(module, "backend", None))
                    kept.append((module, loaded, before))
                    if loaded in ("fp8", "nvfp4"):
                        module.fast_accum = section.fast_accum
                    if loaded == "nvfp4":
                        module.backend = nvfp4_backend or module.backend
                blocks = target.adapter.denoising_blocks(target.model)
                if section.mode == "nvfp4-mixed":  # checked before the swap changes the fingerprint
                    calibration = load_calibration(section.calibration, target.model)
                for parent, attr, linear in block_linears(blocks, weight_only=weight_only):
                    if section.mode == "fp8":
                        quantised = FP8Linear(linear, use_gemm, section.fast_accum)
                    elif section.mode == "int8":
                        quantised = INT8Linear(linear)
                    elif not nvfp4_ready(linear.in_features):
                        continue  # K not a multiple of the 16-value block: stays in its dtype
                    elif section.mode == "nvfp4":
                        quantised = NVFP4Linear(linear, nvfp4_backend)
                        quantised.fast_accum = section.fast_accum
                    else:
                        quantised = MixedLinear(linear)
                    merged.extend(merged_lists([(parent, attr, linear)]))
                    setattr(parent, attr, quantised)
                    swapped.append((parent, attr, linear, linear.weight.device))
                    linear.to("cpu")  # in place: the GPU keeps only the quantised copy; restore moves it back
                if section.mode == "nvfp4-mixed":
                    settings = RouterSettings(float(calibration["alpha"]), float(calibration["beta"]),
                                              float(section.mixed_max_error))
                    switches = [[m for m in block.modules() if isinstance(m, MixedLinear)] for block in blocks]
                    router = TransformerRouter(target.model, blocks, switches, context.runtime, settings)
                    routers.append(router)
                    router.install()
        except BaseException:
            self.undo(context, {"swapped": swapped, "kept": kept, "routers": routers, "merged": merged})
            raise
        if kept:
            mode = kept[0][1].upper()
            context.warnings.append(
                f"{len(kept)} linear layers were loaded already quantised to {mode} (turbo.load_quantized); "
                f"turbo.restore leaves them {mode}, there are no original weights to bring back."
            )
        if swapped:
            logger.info("turbo: %d linear layers quantised to %s", len(swapped), section.mode.upper())
        if merged:
            logger.info("turbo: %d of them are LoRA base layers; their unfused adapters run beside them in their "
                        "dtype", len(merged))
        return {"swapped": swapped, "kept": kept, "routers": routers, "merged": merged}

    def undo(self, context, token: dict) -> None:
        for router in reversed(token.get("routers", [])):
            router.remove()
        slots = module_slots([t.model for t in context.targets])  # unload_lora_weights may have moved the copies
        for parent, attr, linear, device in reversed(token["swapped"]):
            linear.to(device)
            for holder, name in slots.get(id(getattr(parent, attr)), [(parent, attr)]):
                setattr(holder, name, linear)
        repair_merged(token.get("merged", []))
        for module, mode, (fast_accum, backend) in token["kept"]:
            if mode in ("fp8", "nvfp4"):
                module.fast_accum = fast_accum
            if mode == "nvfp4":
                module.backend = backend
        if token["kept"]:
            logger.warning("turbo: restore keeps %d linear layers %s (they were loaded quantised).",
                           len(token["kept"]), token["kept"][0][1].upper())

    def activity(self, context, token) -> str | None:
        components = {id(t.model): t.component for t in context.targets}
        parts = [f"{components.get(id(router.model), 'transformer')} {branch} {c['low']}/{c['high']}"
                 for router in token.get("routers", []) for branch, c in sorted(router.counts.items())
                 if c["low"] + c["high"]]
        return ("quant: block evaluations low (NVFP4) / high (INT8) " + ", ".join(parts)) if parts else None

    def describe(self, section: QuantConfig) -> str:
        if section.mode == "nvfp4-mixed":
            try:  # install checked it against the model; describe only reports it
                with open(section.calibration, encoding="utf-8") as handle:
                    data = json.load(handle)
                fit = f"alpha {float(data['alpha']):.4g}, beta {float(data['beta']):.4g}"
            except (OSError, ValueError, KeyError, TypeError) as error:
                fit = f"calibration {section.calibration!r} unreadable now ({type(error).__name__})"
            return (f"nvfp4-mixed: NVFP4 weights, per block and step NVFP4 activations (low) or INT8 W8A8 (high) "
                    f"when alpha·Γ + beta > max error; {fit}, max error {section.mixed_max_error:g}")
        extra = ", fast accumulation" if section.fast_accum and section.mode == "fp8" else ""
        if section.mode == "nvfp4" and section.nvfp4_compute == "fp8":
            extra = ", fast accumulation" if section.fast_accum else ""
            return "nvfp4: NVFP4 weights in the transformer blocks (e2m1, e4m3 scale per 16, fp32 tensor scale), " \
                   f"re-rounded to e4m3 per output channel for FP8 GEMMs with per-token activations{extra}"
        if section.mode == "nvfp4":
            return "nvfp4: weight-only NVFP4 linears in the transformer blocks (e2m1 weights, e4m3 scale per 16, " \
                   "fp32 tensor scale; activations in their dtype)"
        kind = "e4m3" if section.mode == "fp8" else "int8"
        return f"{section.mode}: W8A8 {kind} linears in the transformer blocks (per-channel weights, per-token " \
               f"activations{extra})"


register_feature(QuantFeature())

from .router import calibrate_mixed, load_calibration, save_calibration  # noqa: E402, F401  (the public API)
