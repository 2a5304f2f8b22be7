"""Native Wan (original repo / rCM / TurboDiffusion) state dicts → diffusers `WanTransformer3DModel` state dicts.

Before diffusers' own renamer (`convert_wan_transformer_to_diffusers`) runs: TurboDiffusion's INT8 linears are
dequantised, SLA's `proj_l` is taken out, and the Linear-form patch embedding goes back to the Conv3d shape. The
diffusers config is inferred from the tensor shapes."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from ..errors import TurboError

HEAD_DIM = 128  # every released Wan uses 128-dim heads
PATCH = (1, 2, 2)
QUANT_TILE = 128  # TurboDiffusion's Int8Linear: one fp32 scale per 128×128 weight tile
_PROJ_L = re.compile(r"^blocks\.(\d+)\.self_attn\.attn_op\.local_attn\.proj_l\.(weight|bias)$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def dequantize_int8(int8_weight: torch.Tensor, scale: torch.Tensor, dtype=torch.bfloat16,
                    name: str = "weight") -> torch.Tensor:
    """int8 [N, K] with fp32 scales [ceil(N/128), ceil(K/128)] (one per 128×128 tile, scale = amax/128) → `dtype`
    [N, K]: each entry times the scale of its tile (the last row/column tiles may be ragged)."""
    if int8_weight.dtype != torch.int8 or int8_weight.dim() != 2:
        raise TurboError(f"{name}.int8_weight must be a 2-D int8 tensor, found {tuple(int8_weight.shape)} "
                         f"{int8_weight.dtype}.")
    n, k = int8_weight.shape
    expected = (math.ceil(n / QUANT_TILE), math.ceil(k / QUANT_TILE))
    if tuple(scale.shape) != expected:
        raise TurboError(f"{name}.scale has shape {tuple(scale.shape)} but its int8 weight [{n}, {k}] needs "
                         f"{list(expected)} (one scale per {QUANT_TILE}×{QUANT_TILE} tile).")
    full = scale.float().repeat_interleave(QUANT_TILE, 0)[:n].repeat_interleave(QUANT_TILE, 1)[:, :k]
    return (int8_weight.float() * full).to(dtype)


def dequantize_state(state: dict[str, torch.Tensor], dtype=torch.bfloat16) -> int:
    """Replace every `<name>.int8_weight` + `<name>.scale` pair in `state` (in place) by `<name>.weight`; returns how
    many linears were dequantised."""
    count = 0
    for key in [k for k in state if k.endswith(".int8_weight")]:
        name = key[: -len(".int8_weight")]
        if f"{name}.scale" not in state:
            raise TurboError(f"{key} has no {name}.scale beside it; the INT8 checkpoint is incomplete.")
        state[f"{name}.weight"] = dequantize_int8(state.pop(key), state.pop(f"{name}.scale"), dtype, name)
        count += 1
    return count


def extract_proj_l(state: dict[str, torch.Tensor]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Pop SLA's `blocks.N.self_attn.attn_op.local_attn.proj_l.{weight,bias}` from `state`:
    {N: (weight fp32 [head_dim, head_dim], bias fp32 [head_dim])}."""
    found: dict[int, dict[str, torch.Tensor]] = {}
    for key in list(state):
        match = _PROJ_L.match(key)
        if match:
            found.setdefault(int(match[1]), {})[match[2]] = state.pop(key)
    parts = {}
    for block, pair in sorted(found.items()):
        if set(pair) != {"weight", "bias"}:
            lacking = ({"weight", "bias"} - set(pair)).pop()
            raise TurboError(f"blocks.{block}.self_attn.attn_op.local_attn.proj_l.{lacking} is missing.")
        parts[block] = (pair["weight"].float().contiguous(), pair["bias"].float().contiguous())
    return parts


def _need(state, key) -> torch.Tensor:
    if key not in state:
        raise TurboError(f"this is not a Wan transformer checkpoint: it has no {key} (its first key is "
                         f"{next(iter(state), 'nothing')}).")
    return state[key]


def infer_config(state: dict[str, torch.Tensor], heads: int | None = None) -> dict:
    """The `WanTransformer3DModel` config of a native state dict, from its shapes (attention_head_dim 128 unless
    `heads` is given)."""
    patch = _need(state, "patch_embedding.weight")
    dim = patch.shape[0]
    in_features = math.prod(patch.shape[1:])
    if in_features % math.prod(PATCH):
        raise TurboError(f"patch_embedding.weight has {in_features} inputs per output, not a multiple of the "
                         f"{'×'.join(map(str, PATCH))} patch.")
    if heads is None:
        if dim % HEAD_DIM:
            raise TurboError(f"the model width {dim} is not a multiple of Wan's head size {HEAD_DIM}; pass heads=.")
        heads = dim // HEAD_DIM
    if heads <= 0 or dim % heads:
        raise TurboError(f"heads={heads} does not divide the model width {dim}.")
    blocks = {int(m[1]) for m in map(_BLOCK.match, state) if m}
    if not blocks:
        raise TurboError("this is not a Wan transformer checkpoint: it has no blocks.N.* keys.")
    config = {
        "patch_size": list(PATCH),
        "num_attention_heads": heads,
        "attention_head_dim": dim // heads,
        "in_channels": in_features // math.prod(PATCH),
        "out_channels": _need(state, "head.head.weight").shape[0] // math.prod(PATCH),
        "text_dim": _need(state, "text_embedding.0.weight").shape[1],
        "freq_dim": _need(state, "time_embedding.0.weight").shape[1],
        "ffn_dim": _need(state, "blocks.0.ffn.0.weight").shape[0],
        "num_layers": max(blocks) + 1,
        "cross_attn_norm": "blocks.0.norm3.weight" in state,
        "qk_norm": "rms_norm_across_heads" if "blocks.0.self_attn.norm_q.weight" in state else None,
        "eps": 1e-6,
        "image_dim": None,
        "added_kv_proj_dim": None,
        "rope_max_seq_len": 1024,
        "pos_embed_seq_len": None,
    }
    if "img_emb.proj.0.weight" in state:
        config["image_dim"] = state["img_emb.proj.0.weight"].shape[0]
    if "blocks.0.cross_attn.k_img.weight" in state:
        config["added_kv_proj_dim"] = dim
    if "img_emb.emb_pos" in state:
        config["pos_embed_seq_len"] = state["img_emb.emb_pos"].shape[1]
    return config


def model_name(config: dict, experts: int = 1) -> str:
    """A guess of the released model a config belongs to, e.g. "Wan2.1-T2V-1.3B (30 blocks, dim 1536)"."""
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    layers, channels = config["num_layers"], config["in_channels"]
    key = (dim, layers, channels, config["image_dim"] is not None)
    names = {
        (1536, 30, 16, False): "Wan2.1-T2V-1.3B",
        (5120, 40, 16, False): "Wan2.2-T2V-A14B" if experts == 2 else "Wan2.1-T2V-14B (or one Wan2.2-T2V-A14B expert)",
        (5120, 40, 36, True): "Wan2.1-I2V-14B",
        (5120, 40, 36, False): "Wan2.2-I2V-A14B" if experts == 2 else "one Wan2.2-I2V-A14B expert",
        (3072, 30, 48, False): "Wan2.2-TI2V-5B",
    }
    kind = "I2V" if channels > config["out_channels"] else "T2V"
    return f"{names.get(key, f'Wan-architecture {kind} transformer')} ({layers} blocks, dim {dim})"


@dataclass
class ConvertedState:
    """What `convert_state` found: the diffusers state dict and config, SLA's proj_l per block, how many INT8 linears
    were dequantised, and {diffusers key: native key} for error messages."""

    state: dict[str, torch.Tensor]
    config: dict
    proj_l: dict[int, tuple[torch.Tensor, torch.Tensor]]
    int8_linears: int
    names: dict[str, str] = field(default_factory=dict)


def convert_state(state_dict: dict[str, torch.Tensor], heads: int | None = None, *,
                  dtype: torch.dtype | None = torch.bfloat16) -> ConvertedState:
    """`native_to_diffusers` with the INT8 count and the key names kept (see there)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    state = dict(state_dict)
    state_dict.clear()
    proj_l = extract_proj_l(state)
    quantized = dequantize_state(state, dtype or torch.bfloat16)
    config = infer_config(state, heads)
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    state["patch_embedding.weight"] = state["patch_embedding.weight"].reshape(dim, config["in_channels"], *PATCH)
    emb_pos = state.pop("img_emb.emb_pos", None)
    names = native_names(state)
    converted = convert_wan_transformer_to_diffusers(state)
    if emb_pos is not None:
        converted["condition_embedder.image_embedder.pos_embed"] = emb_pos
        names["condition_embedder.image_embedder.pos_embed"] = "img_emb.emb_pos"
    if dtype is not None:
        converted = {k: v.to(dtype) if v.is_floating_point() else v for k, v in converted.items()}
    return ConvertedState(converted, config, proj_l, quantized, names)


def native_to_diffusers(state_dict: dict[str, torch.Tensor], heads: int | None = None, *,
                        dtype: torch.dtype | None = torch.bfloat16):
    """A native Wan state dict (prefixes already stripped) → (diffusers state dict, diffusers config dict,
    proj_l {block: (weight fp32 [d, d], bias fp32 [d])}).

    INT8 linears are dequantised to `dtype`; every floating tensor is cast to `dtype` (None keeps the source dtypes,
    INT8 dequantised to bf16). The patch embedding becomes [dim, in_channels, 1, 2, 2]. `state_dict` is consumed
    (its entries are moved out). Keys and shapes are not checked here: `check_against` does that against a model."""
    result = convert_state(state_dict, heads, dtype=dtype)
    return result.state, result.config, result.proj_l


def native_names(keys) -> dict[str, str]:
    """{diffusers key: native key} for native keys, by running diffusers' renamer on the names alone."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    keys = list(keys)
    try:
        renamed = convert_wan_transformer_to_diffusers({k: k for k in keys})
    except Exception:  # the renamer's tensor handlers (Wan-Animate keys) need tensors: fall back to diffusers names
        return {}
    return {new: old for new, old in renamed.items() if isinstance(old, str)}


_NATIVE_PIECES = (  # diffusers name piece → native piece, for naming a missing key the way the user's file names it
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"), ("condition_embedder.image_embedder.norm2",
                                                                     "img_emb.proj.4"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.pos_embed", "img_emb.emb_pos"),
    (".attn1.", ".self_attn."), (".attn2.", ".cross_attn."), (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."),
    (".to_out.0.", ".o."), (".add_k_proj.", ".k_img."), (".add_v_proj.", ".v_img."),
    (".norm_added_k.", ".norm_k_img."), (".norm2.", ".norm3."), (".ffn.net.0.proj.", ".ffn.0."),
    (".ffn.net.2.", ".ffn.2."), (".scale_shift_table", ".modulation"),
)


def native_name(key: str) -> str:
    """The native Wan name of a diffusers `WanTransformer3DModel` key (inverse of diffusers' renamer)."""
    if key == "scale_shift_table":
        return "head.modulation"
    if key.startswith("proj_out."):
        return "head.head." + key[len("proj_out."):]
    for piece, native in _NATIVE_PIECES:
        key = key.replace(piece, native)
    return key


def check_against(model: torch.nn.Module, state: dict[str, torch.Tensor], names: dict[str, str]) -> None:
    """Every key of `model` present in `state` with its shape, and nothing else; one-sentence `TurboError`
    otherwise (keys named in the native layout where known)."""
    own = model.state_dict()
    native = lambda key: names.get(key) or native_name(key)  # noqa: E731
    unknown = [key for key in state if key not in own]
    if unknown:
        raise TurboError(f"the checkpoint has {len(unknown)} key(s) a Wan transformer does not have (first: "
                         f"{native(unknown[0])}); it is not a supported Wan checkpoint.")
    missing = [key for key in own if key not in state]
    if missing:
        raise TurboError(f"the checkpoint lacks {len(missing)} key(s) of a Wan transformer with this shape (first: "
                         f"{native(missing[0])}).")
    for key, tensor in own.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise TurboError(f"{native(key)} has shape {list(state[key].shape)} but a Wan transformer with this "
                             f"config expects {list(tensor.shape)}.")
