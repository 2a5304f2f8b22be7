"""TurboDiffusion's own network and sampler, run from its exported source, as the reference turbo is compared with.

The source is thu-ml/TurboDiffusion's `turbodiffusion/` package exported by `benchmarks/get_turbodiffusion.sh` into the
git-ignored `.peer/TurboDiffusion/` (nothing of it is copied into turbo). `import_turbodiffusion()` puts it on
`sys.path` and bridges what this environment lacks, only on the paths used here:

* `turbo_diffusion_ops` (their compiled CUDA extension, W8A8 quant/GEMM) is not built: a dummy module whose functions
  raise is registered so that `ops` and `inference/modify_model.py` import. The int8 linears are never used here.
* `rcm.utils.model_utils` (their checkpoint-file reader, imported by modify_model; it pulls pandas, imageio, PIL):
  replaced by a dummy only when it does not import; checkpoints are passed to `build_td_model` as state dicts.
* `flash_attn` (their RoPE uses `flash_attn.layers.rotary.apply_rotary_emb(..., interleaved=True)`): when it is not
  installed, `rotary_interleaved` below (the same rotation of interleaved pairs, plain PyTorch) is set as the module's
  `flash_apply_rotary_emb`; when it is installed theirs is used.
* Their RoPE table builds its frequency tables with `.cuda()`; `place_rope` fills the same tables on another device.
* Their dense op (`rcm.utils.attention.attention`) allows only SDPA's memory-efficient backend for fp32 inputs, which
  PyTorch has on CUDA only; for CPU tensors its backend cache gets SDPA's CPU backends (flash, then math) instead.
* pure-Python packages they import (einops, loguru, nvidia-ml-py for `pynvml`) are installed with pip (wheels in
  `.whl/` for the GPU machine, see benchmarks/README.md).

Helpers for the equivalence check (`td_equivalence.py`) and speed benchmarks:
`build_td_model(name_or_config, attention=..., topk=..., device=..., dtype=...)` and
`td_sample(net, noise, text_emb, steps=4, sigma_max=80, fresh_noise=...)` (the rCM sampler loop of their
`inference/wan2.1_t2v_infer.py`, written here)."""

from __future__ import annotations

import importlib
import math
import os
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATH = ROOT / ".peer" / "TurboDiffusion"
PUBLISHED_MID_T = (1.5, 1.4, 1.0)  # their wan2.1_t2v_infer.py default intermediate TrigFlow angles

# Tiny Wan2.1-like native config: 2 heads x 128 (their SLA kernels and SageSLA need head_dim 64/128), 2 blocks.
TINY_CONFIG = dict(dim=256, eps=1e-6, ffn_dim=512, freq_dim=256, in_dim=16, model_type="t2v", num_heads=2,
                   num_layers=2, out_dim=16, text_len=512, text_dim=4096)

_MODULES: types.SimpleNamespace | None = None


def find_source(path: str | os.PathLike | None = None) -> Path | None:
    """The `turbodiffusion/` package directory under `path` (the export folder or the package itself), default
    `.peer/TurboDiffusion`; None when absent."""
    base = Path(path) if path is not None else DEFAULT_PATH
    for candidate in (base / "turbodiffusion", base):
        if (candidate / "rcm" / "networks" / "wan2pt1.py").is_file():
            return candidate.resolve()
    return None


def rotary_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = True,
                       inplace: bool = False, **_unused) -> torch.Tensor:
    """Rotate interleaved pairs (x[..., 2i], x[..., 2i+1]) by angle θ_i (cos/sin [S, D/2]); x [B, S, H, D].
    Stands in for flash_attn's `apply_rotary_emb` (interleaved form) when flash-attn is not installed."""
    if not interleaved:
        raise NotImplementedError("only the interleaved rotary form is used by TurboDiffusion's Wan2.1 network")
    pairs = x.unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    c = cos[None, :, None, :].to(x.dtype)
    s = sin[None, :, None, :].to(x.dtype)
    return torch.stack((even * c - odd * s, even * s + odd * c), dim=-1).flatten(-2)


def _stub_compiled_extension() -> None:
    """Register a dummy `turbo_diffusion_ops` (their compiled W8A8 extension, not built here) unless it imports."""
    try:
        importlib.import_module("turbo_diffusion_ops")
        return
    except ImportError:
        pass
    stub = types.ModuleType("turbo_diffusion_ops")
    stub.__doc__ = "Dummy for TurboDiffusion's compiled extension (not built); the harness never calls it."

    def _missing(*_args, **_kwargs):
        raise RuntimeError("turbo_diffusion_ops (TurboDiffusion's compiled CUDA extension) is not built here; "
                           "the int8 linear path is not available in this harness.")

    stub.quant_cuda = stub.gemm_cuda = _missing
    sys.modules["turbo_diffusion_ops"] = stub


def _stub_checkpoint_reader() -> None:
    """`modify_model` imports `rcm.utils.model_utils` only for `load_state_dict` (reading checkpoint files through
    their easy_io, which imports pandas, imageio and PIL). When those are missing, a dummy module stands in; the
    harness passes state dicts itself and never reads files through it."""
    try:
        importlib.import_module("rcm.utils.model_utils")
    except ImportError as error:
        reason = f"{type(error).__name__}: {error}"
        stub = types.ModuleType("rcm.utils.model_utils")
        stub.__doc__ = f"Dummy for TurboDiffusion's checkpoint reader (not importable here: {reason})."

        def load_state_dict(*_args, **_kwargs):
            raise RuntimeError(f"TurboDiffusion's checkpoint reader is not importable here ({reason}).")

        stub.load_state_dict = load_state_dict
        sys.modules["rcm.utils.model_utils"] = stub


def _allow_cpu_sdpa(attention_module) -> None:
    """Pre-fill their SDPA backend cache for CPU tensors (their fp32 choice, memory-efficient SDPA, is CUDA-only)."""
    from functools import partial

    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]
    try:
        with sdpa_kernel(backends=backends, set_priority_order=True):
            pass
        kern = partial(sdpa_kernel, set_priority_order=True)
    except TypeError:  # older torch: no priority order
        kern = sdpa_kernel
    for is_half in (False, True):
        attention_module._SDPA_CONFIG_CACHE[("cpu", None, is_half)] = (0, backends, kern)


def import_turbodiffusion(path: str | os.PathLike | None = None) -> types.SimpleNamespace:
    """Import TurboDiffusion's network, SLA and model-building code from the exported source.

    Returns a namespace with `wan2pt1` (rcm.networks.wan2pt1), `modify_model` (inference/modify_model.py), `SLA`,
    `source` (the package directory). Run on CPU with `TRITON_INTERPRET=1` in the environment before the first
    import of triton if their Triton kernels (SLA, mean pooling) are to run there."""
    global _MODULES
    if _MODULES is not None:
        return _MODULES
    source = find_source(path)
    if source is None:
        raise FileNotFoundError(f"TurboDiffusion source not found under {path or DEFAULT_PATH}; run "
                                "`bash benchmarks/get_turbodiffusion.sh` first.")
    for entry in (str(source), str(source / "inference")):  # appended: their top-level names never shadow others
        if entry not in sys.path:
            sys.path.append(entry)
    _stub_compiled_extension()
    wan2pt1 = importlib.import_module("rcm.networks.wan2pt1")
    if wan2pt1.flash_apply_rotary_emb is None:
        wan2pt1.flash_apply_rotary_emb = rotary_interleaved
    _allow_cpu_sdpa(importlib.import_module("rcm.utils.attention"))
    _stub_checkpoint_reader()
    modify_model = importlib.import_module("modify_model")
    sla = importlib.import_module("SLA")
    commit_file = source.parent / "COMMIT"
    commit = commit_file.read_text().strip() if commit_file.is_file() else "unknown"
    _MODULES = types.SimpleNamespace(wan2pt1=wan2pt1, modify_model=modify_model, SLA=sla, source=source,
                                     commit=commit)
    return _MODULES


def place_rope(net: torch.nn.Module, device: torch.device | str) -> None:
    """Fill their RoPE frequency tables on `device` (their `cache_parameters` hard-codes `.cuda()`)."""
    rope = net.rope_position_embedding
    device = torch.device(device)
    if device.type == "cuda":
        rope.cache_parameters()
        return
    dim_h, dim_t = rope._dim_h, rope._dim_t
    rope.seq = torch.arange(max(rope.max_h, rope.max_w, rope.max_t), device=device).float()
    rope.dim_spatial_range = torch.arange(0, dim_h, 2, device=device)[: dim_h // 2].float() / dim_h
    rope.dim_temporal_range = torch.arange(0, dim_t, 2, device=device)[: dim_t // 2].float() / dim_t
    rope._is_initialized = True


@torch.no_grad()
def randomize_(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (their init zeroes the output head, biases and SLA's proj_l, which would hide
    differences): matrices N(0, 1/fan_in), vectors N(0, 0.1²) (+1 for norm scales), modulation tables N(0, 1/dim).
    Drawn on each parameter's device (fast for full-size models on a GPU; the values depend on the device)."""
    generators: dict[torch.device, torch.Generator] = {}
    for name, param in net.named_parameters():
        shape, device = param.shape, param.device
        gen = generators.setdefault(device, torch.Generator(device=device).manual_seed(seed))
        value = torch.randn(shape, generator=gen, device=device)
        if name.endswith("modulation"):
            value /= math.sqrt(shape[-1])
        elif param.dim() >= 2:
            value /= math.sqrt(shape[1:].numel())
        else:
            value *= 0.1
            if "norm" in name and name.endswith("weight"):
                value += 1.0
        param.copy_(value)
    return net


def _emulate_cuda_autocast(linear: torch.nn.Module, dtype: torch.dtype) -> None:
    """Their SLA applies the fp32 proj_l to bf16/fp16 input under `torch.amp.autocast('cuda')`, a no-op off CUDA:
    there the input is cast to float32 and the output back to `dtype` instead (fp32 math instead of half)."""
    linear.register_forward_pre_hook(lambda _m, args: (args[0].float(),))
    linear.register_forward_hook(lambda _m, _args, out: out.to(dtype))


def build_td_model(name_or_config: str | dict = "Wan2.1-1.3B", attention: str = "original", topk: float = 0.1, *,
                   device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16,
                   state_dict: dict | None = None, seed: int | None = 0, sla_dtype: torch.dtype | None = None,
                   fast_norm: bool = False, path: str | os.PathLike | None = None) -> torch.nn.Module:
    """TurboDiffusion's Wan2.1 network as their inference builds it.

    Args:
        name_or_config: "Wan2.1-1.3B" / "Wan2.1-14B" (their `select_model`) or a dict of `WanModel` arguments
            (e.g. `TINY_CONFIG`).
        attention: "original" (their dense SDPA op) or "sla" (their `replace_attention`: Triton SLA, BLKQ 128, BLKK 64,
            at `attn_op.local_attn` of every self-attention). "sagesla" needs SpargeAttn (not used here).
        topk: SLA top-k ratio (their `--sla_topk`).
        state_dict: weights in their native layout (as `net.state_dict()` / modify_model saves them); missing keys
            (e.g. proj_l for an "original" model) are reported as an error, extra proj_l keys are ignored.
        seed: random weights (`randomize_`) when no state_dict is given; None keeps their init.
        sla_dtype: compute dtype of their SLA kernels (default bf16; fp16 = their `use_bf16=False`, needed by the
            Triton interpreter on CPU).
        fast_norm: their Triton FastLayerNorm/FastRMSNorm (inference default) instead of the PyTorch norms.
    """
    td = import_turbodiffusion(path)
    device = torch.device(device)
    with torch.device(device):
        if isinstance(name_or_config, str):
            net = td.modify_model.select_model(name_or_config)
        else:
            net = td.wan2pt1.WanModel(**name_or_config)
        if attention in ("sla", "sagesla"):
            td.modify_model.replace_attention(net, attention_type=attention, sla_topk=topk)
        elif attention != "original":
            raise ValueError(f"attention={attention!r}: use 'original', 'sla' or 'sagesla'")
    if state_dict is not None:
        missing, unexpected = net.load_state_dict(state_dict, strict=False)
        unexpected = [k for k in unexpected if "proj_l" not in k]
        if missing or unexpected:
            raise KeyError(f"checkpoint does not fit TurboDiffusion's model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    elif seed is not None:
        randomize_(net, seed)
    net = net.to(dtype)
    for module in net.modules():  # their SLA keeps proj_l in float32 (created with dtype=float32)
        if hasattr(module, "proj_l") and hasattr(module, "BLKQ"):
            module.proj_l.float()
            if sla_dtype is not None:
                module.dtype = sla_dtype
            if device.type != "cuda":
                _emulate_cuda_autocast(module.proj_l, module.dtype)
    if fast_norm:
        td.modify_model.replace_linear_norm(net, replace_linear=False, replace_norm=True)
        net.to(device)  # their fast norms create their weight buffers on the CPU (create_model moves the net after)
    place_rope(net, device)
    return net.eval()


def rcm_rf_times(steps: int = 4, sigma_max: float = 80.0, mid_t: Sequence[float] = PUBLISHED_MID_T) -> torch.Tensor:
    """Their 4-step grid: TrigFlow angles [atan(σ_max), *mid_t[:steps-1], 0] → RF time sin/(sin+cos), float64."""
    angles = torch.tensor([math.atan(sigma_max), *list(mid_t)[: steps - 1], 0.0], dtype=torch.float64)
    return torch.sin(angles) / (torch.sin(angles) + torch.cos(angles))


@torch.no_grad()
def td_sample(net: torch.nn.Module, noise: torch.Tensor, text_emb: torch.Tensor, steps: int = 4,
              sigma_max: float = 80.0, fresh_noise: Callable[[tuple, torch.device], torch.Tensor] | None = None, *,
              mid_t: Sequence[float] = PUBLISHED_MID_T, dtype: torch.dtype | None = None,
              timestep_dtype: torch.dtype | None = None) -> torch.Tensor:
    """TurboDiffusion's rCM sampler (their wan2.1_t2v_infer.py loop, stochastic form) around their network.

    noise: ε [B, C, T, H, W] (float32); the start is x = t_0·ε held in float64. Each step feeds the network x and the
    timestep 1000·t in `dtype` (default the network's dtype; their script uses bf16 for both), x0 = x − t·v, then
    x = (1 − t_next)·x0 + t_next·fresh with fresh = `fresh_noise(shape, device)` (float32; default torch.randn).
    `timestep_dtype` (default `dtype`) isolates their timestep rounding: in bf16, 1000·t is rounded to a multiple of
    4 (e.g. 933.8 → 932) before their float64 sinusoid; turbo's RCMScheduler passes float32 timesteps.
    Returns the final x0 (float32)."""
    dtype = dtype or next(net.parameters()).dtype
    timestep_dtype = timestep_dtype or dtype
    times = rcm_rf_times(steps, sigma_max, mid_t).to(noise.device)
    x = noise.to(torch.float64) * times[0]
    ones = torch.ones(x.shape[0], 1, device=x.device, dtype=torch.float64)
    draw = fresh_noise or (lambda shape, device: torch.randn(shape, device=device, dtype=torch.float32))
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        v = net(x_B_C_T_H_W=x.to(dtype), timesteps_B_T=(t.float() * ones * 1000).to(timestep_dtype),
                crossattn_emb=text_emb.to(dtype)).to(torch.float64)
        x0 = x - t * v
        x = x0 if float(t_next) == 0.0 else (1 - t_next) * x0 + t_next * draw(tuple(x.shape), x.device).double()
    return x.float()
