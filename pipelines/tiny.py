"""Small random-weight diffusers video pipelines, built fully offline (no model hub, tokenizers built in-process),
and the embedded default model (the trained ToyWorld Wan T2V pipeline in models/toyworld/).

Recipes and traps (see shared/research/diffusers_probe.md §1):
* Wan: Unigram ``T5Tokenizer`` from an in-memory vocab (pad=0, eos=1, unk=2; lowercase caption words, rest -> <unk>);
  Hunyuan: character-level Llama/CLIP BPE tokenizers; the Llama one gets a pad token (O4), CLIP text 77 positions (O5).
* Widths must match: UMT5 d_model = ``text_dim``, Llama = ``text_embed_dim``, CLIP text = ``pooled_projection_dim``,
  CLIP vision = Wan I2V ``image_dim``. Wan I2V needs ``max_sequence_length=512`` (O2) and ``ftfy`` (O1).
* Wan transformers use ``rope_max_seq_len=1024`` so big grids work (O6); H, W multiples of 16, frames 4k+1 (O7).
  Hunyuan uses ``patch_size=2`` like the real model, so tokens = F_lat*(H/16)*(W/16) for both; call it with
  ``HUNYUAN_CALL_KWARGS``. Each component is built right after ``torch.manual_seed(seed + k)`` (deterministic).
* Reloaded safetensors weights sit at unaligned mmap offsets (CPU GEMMs round differently): ``save_and_reload`` copies.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from turbo.toyworld.models import hunyuan_rope_axes

__all__ = [
    "DEFAULT_DEMO",
    "DEFAULT_MODEL_DIR",
    "TOYWORLD_MODELS",
    "HUNYUAN_CALL_KWARGS",
    "META_TRANSFORMER_NAMES",
    "build_default",
    "build_hunyuan15_t2v",
    "build_hunyuan_t2v",
    "build_wan22_t2v",
    "build_wan_i2v",
    "build_wan_t2v",
    "meta_transformer",
    "save_and_reload",
    "wan_tokenizer",
]

# Words known to the tiny Wan tokenizer (anything else becomes <unk>).
_CAPTION_WORDS = """
a an the one two three four five some many of on in at to from with and or but by over under above below into onto
through across around near far behind between against along up down left right top bottom center middle side
is are was be being moves moving move moved slowly quickly fast slow spinning spins spin rotating rotates rolling
rolls bouncing bounces falling falls rising rises flying flies floating floats walking walks running runs jumping
jumps swimming sliding slides growing shrinking turning turns dancing waving shaking flowing drifting glowing
shining pulsing zooming panning sitting standing looking
red green blue yellow orange purple pink white black gray grey brown cyan magenta gold silver dark light bright pale
colorful striped dotted small large big tiny huge little tall short long wide thin thick round square flat smooth soft
circle circles square squares triangle triangles ball balls dot dots line lines box boxes cube cubes star stars ring
shape shapes disk rectangle sphere pattern grid wave waves stripe stripes
background foreground scene sky cloud clouds sun moon water sea ocean river lake wave beach sand grass tree trees
forest flower flowers field mountain mountains hill road street city building house room wall floor window door
snow rain fire smoke light shadow night day morning evening sunset sunrise
cat cats dog dogs bird birds fish horse car cars boat train plane person man woman child people face hand
camera video frame shot view close closeup wide aerial static motion still animation cartoon realistic photo style
high quality detailed blurry noisy worst low best clear sharp text watermark static
"""

_SPECIAL_WAN = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]


def _caption_words() -> list[str]:
    seen: dict[str, None] = {}
    for word in _CAPTION_WORDS.split():
        seen.setdefault(word, None)
    return list(seen)


def wan_tokenizer():
    """UMT5/T5-style Unigram tokenizer (``T5Tokenizer``, the class the real Wan pipelines use) from an in-memory vocab.

    ids: ``<pad>``=0, ``</s>``=1, ``<unk>``=2; every caption word is one ``▁word`` piece, punctuation has its own
    pieces, unknown words become ``<unk>`` (possibly after a bare ``▁``). There is no normalizer (it would not survive
    ``save_pretrained``), so prompts should be lowercase like the vocabulary.
    """
    from transformers import T5Tokenizer

    vocab = list(_SPECIAL_WAN)
    vocab.append(("▁", -2.0))
    vocab += [(p, -3.0) for p in [",", ".", "!", "?", ";", ":", "-", "'", '"', "(", ")"]]
    vocab += [("▁" + w, -1.0) for w in _caption_words()]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _llama_tokenizer():
    """Character-level Llama BPE tokenizer (no merges) with a pad token (probe O4)."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "▁": 4}
    for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?;:'\"()-":
        vocab.setdefault(c, len(vocab))
    tok = LlamaTokenizer(vocab=vocab, merges=[])
    tok.pad_token = "<pad>"
    return tok


def _clip_tokenizer():
    """Character-level CLIP BPE tokenizer (no merges); pads with ``<|endoftext|>`` like the real one."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?;:'\"()-":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[])


def _round_up(n: int, multiple: int = 64) -> int:
    return (n + multiple - 1) // multiple * multiple


# ----------------------------------------------------------------------------------------------------------- Wan family


def _wan_text_encoder(vocab_size: int, d_model: int, seed: int):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config = UMT5Config(
        vocab_size=_round_up(vocab_size),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=d_model // 8,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return UMT5EncoderModel(config).eval()


def _wan_vae(seed: int, base_dim: int = 4):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    # z_dim must stay 16: the pipeline reshapes the default latents_mean/std (length 16) with z_dim.
    return AutoencoderKLWan(
        base_dim=base_dim,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    ).eval()


def _wan_transformer(
    *,
    num_layers: int,
    num_heads: int,
    head_dim: int,
    text_dim: int,
    seed: int,
    in_channels: int = 16,
    ffn_mult: int = 2,
    image_dim: int | None = None,
    added_kv_proj_dim: int | None = None,
):
    from diffusers import WanTransformer3DModel

    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"Wan head_dim must be even and >= 6 (3-axis RoPE), got {head_dim}")
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=num_heads,
        attention_head_dim=head_dim,
        in_channels=in_channels,
        out_channels=16,
        text_dim=text_dim,
        freq_dim=256,
        ffn_dim=ffn_mult * num_heads * head_dim,
        num_layers=num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=image_dim,
        added_kv_proj_dim=added_kv_proj_dim,
        rope_max_seq_len=1024,  # probe O6: 32 would cap each post-patch axis at 32
    ).eval()


def _flow_scheduler(shift: float):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=shift)


_WAN_TEXT_DIM = 32


def _build_wan_t2v(
    *,
    num_layers: int,
    num_heads: int,
    head_dim: int,
    seed: int,
    dtype: torch.dtype,
    text_dim: int = _WAN_TEXT_DIM,
    vae_base_dim: int = 4,
    ffn_mult: int = 2,
    shift: float = 5.0,
    second_expert: bool = False,
    boundary_ratio: float | None = None,
):
    from diffusers import WanPipeline

    tokenizer = wan_tokenizer()
    text_encoder = _wan_text_encoder(len(tokenizer), text_dim, seed)
    vae = _wan_vae(seed + 1, vae_base_dim)
    kw = dict(num_layers=num_layers, num_heads=num_heads, head_dim=head_dim, text_dim=text_dim, ffn_mult=ffn_mult)
    transformer = _wan_transformer(seed=seed + 2, **kw)
    transformer_2 = _wan_transformer(seed=seed + 3, **kw) if second_expert else None
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=_flow_scheduler(shift),
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=boundary_ratio,
    )
    return _cast(pipe, dtype)


def _cast_module(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast floating parameters to ``dtype``, keeping the model's ``_keep_in_fp32_modules`` in float32.

    Same rule as ``from_pretrained(..., dtype=dtype)`` (a parameter stays fp32 if any component of its dotted name is
    listed, e.g. ``blocks.0.scale_shift_table``); a plain ``ModelMixin.to(dtype)`` would cast those too (and warns).
    Buffers (RoPE tables) are left alone.
    """
    keep = set(getattr(module, "_keep_in_fp32_modules", None) or [])
    for name, param in module.named_parameters():
        if param.is_floating_point() and not keep.intersection(name.split(".")):
            param.data = param.data.to(dtype)


def _cast(pipe, dtype: torch.dtype):
    """Cast denoiser(s) and text encoder to ``dtype``; VAE and image encoder stay float32 (as in the real recipes)."""
    if dtype != torch.float32:
        for name in ("transformer", "transformer_2", "text_encoder"):
            module = getattr(pipe, name, None)
            if module is not None:
                _cast_module(module, dtype)
    return pipe


def build_wan_t2v(*, num_layers=2, num_heads=2, head_dim=12, seed=0, dtype=torch.float32):
    """Tiny Wan2.1-style text-to-video ``WanPipeline`` (random weights, UMT5 d_model 32, FlowMatch Euler shift 5)."""
    return _build_wan_t2v(num_layers=num_layers, num_heads=num_heads, head_dim=head_dim, seed=seed, dtype=dtype)


def build_wan22_t2v(*, num_layers=2, num_heads=2, head_dim=12, seed=0, boundary_ratio=0.875):
    """Tiny Wan2.2-style two-expert ``WanPipeline``.

    ``transformer`` (high-noise expert) runs while ``t >= boundary_ratio * 1000``, ``transformer_2`` (low-noise expert,
    different random weights) afterwards; both are constructor arguments of ``WanPipeline`` and ``boundary_ratio`` is
    stored in the pipeline config. ``guidance_scale_2`` may be passed at call time.
    """
    return _build_wan_t2v(
        num_layers=num_layers,
        num_heads=num_heads,
        head_dim=head_dim,
        seed=seed,
        dtype=torch.float32,
        second_expert=True,
        boundary_ratio=boundary_ratio,
    )


def _image_processor(size: int):
    try:
        from transformers import CLIPImageProcessorPil as Processor  # transformers >= 5 (probe O3)
    except ImportError:  # pragma: no cover - transformers 4.x
        from transformers import CLIPImageProcessor as Processor
    return Processor(crop_size=size, size=size)


def build_wan_i2v(*, num_layers=2, num_heads=2, head_dim=12, seed=0, dtype=torch.float32):
    """Tiny Wan2.1-style ``WanImageToVideoPipeline``. Call with ``max_sequence_length=512`` (probe O2).

    Transformer ``in_channels=36`` (16 noise + 4 mask + 16 image latents), ``image_dim`` = CLIP vision width (8),
    ``added_kv_proj_dim`` = heads * head_dim; a 2-layer ``CLIPVisionModel`` on 32 px images gives 65 image tokens.
    """
    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPVisionConfig, CLIPVisionModel

    image_size, vision_dim = 32, 8
    tokenizer = wan_tokenizer()
    text_encoder = _wan_text_encoder(len(tokenizer), _WAN_TEXT_DIM, seed)
    vae = _wan_vae(seed + 1)
    transformer = _wan_transformer(
        num_layers=num_layers,
        num_heads=num_heads,
        head_dim=head_dim,
        text_dim=_WAN_TEXT_DIM,
        seed=seed + 2,
        in_channels=36,
        image_dim=vision_dim,
        added_kv_proj_dim=num_heads * head_dim,
    )
    torch.manual_seed(seed + 4)
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=vision_dim,
            projection_dim=vision_dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=16,
            image_size=image_size,
            patch_size=4,
        )
    ).eval()
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=_flow_scheduler(5.0),
        image_processor=_image_processor(image_size),
        image_encoder=image_encoder,
        transformer=transformer,
    )
    return _cast(pipe, dtype)


# ------------------------------------------------------------------------------------------------------------ Hunyuan

HUNYUAN_CALL_KWARGS: dict = {"prompt_template": {"template": "{}", "crop_start": 0}}


def build_hunyuan_t2v(*, num_layers=1, num_single_layers=1, num_heads=2, head_dim=10, seed=0, guidance_embeds=True):
    """Tiny ``HunyuanVideoPipeline``: 3-layer Llama (width 16) + CLIP text (width 8, 77 positions), patch_size=2.

    Call with ``**HUNYUAN_CALL_KWARGS``. ``guidance_scale`` is the embedded guidance (``guidance_embeds=True``, as
    the released HunyuanVideo; False: no guidance input, as the ToyWorld HunyuanVideo teacher); real CFG needs
    ``true_cfg_scale > 1`` and a ``negative_prompt``.
    """
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    llama_dim, clip_dim, latent_channels = 16, 8, 16
    tokenizer = _llama_tokenizer()
    tokenizer_2 = _clip_tokenizer()

    torch.manual_seed(seed)
    text_encoder = LlamaModel(
        LlamaConfig(
            vocab_size=_round_up(len(tokenizer)),
            hidden_size=llama_dim,
            intermediate_size=37,
            num_attention_heads=4,
            num_key_value_heads=4,
            num_hidden_layers=3,  # the pipeline reads hidden_states[-3]
            max_position_embeddings=512,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
        )
    ).eval()
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=_round_up(len(tokenizer_2)),
            hidden_size=clip_dim,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,  # probe O5: the pipeline pads CLIP prompts to 77 tokens
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    ).eval()
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        act_fn="silu",
        norm_num_groups=4,
        scaling_factor=0.476986,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    ).eval()
    torch.manual_seed(seed + 3)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_attention_heads=num_heads,
        attention_head_dim=head_dim,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        num_refiner_layers=1,
        mlp_ratio=4.0,
        patch_size=2,
        patch_size_t=1,
        qk_norm="rms_norm",
        guidance_embeds=guidance_embeds,
        text_embed_dim=llama_dim,
        pooled_projection_dim=clip_dim,
        rope_axes_dim=hunyuan_rope_axes(head_dim),
    ).eval()
    return HunyuanVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        tokenizer_2=tokenizer_2,
        text_encoder_2=text_encoder_2,
        vae=vae,
        scheduler=_flow_scheduler(7.0),
        transformer=transformer,
    )


def _qwen_chat_tokenizer():
    """Character-level Qwen2 BPE tokenizer (no merges) with ChatML's markers, pad token and chat template (what the
    HunyuanVideo 1.5 pipeline's `apply_chat_template` call needs)."""
    from transformers import Qwen2Tokenizer

    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "\n": 3, " ": 4}
    for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?;:'\"()-_/":
        vocab.setdefault(c, len(vocab))
    tok = Qwen2Tokenizer(vocab=vocab, merges=[])
    tok.pad_token = "<|endoftext|>"
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tok


def build_hunyuan15_t2v(*, num_layers=2, num_heads=2, head_dim=16, seed=0):
    """Tiny ``HunyuanVideo15Pipeline`` (text-to-video): 3-layer Qwen2.5-VL text model (width 32) + ByT5 (T5 encoder,
    width 24), a 16× spatial / 4× temporal VAE with 4 latent channels, patch size 1, CFG through the pipeline's
    ``ClassifierFreeGuidance`` guider (scale 6: two transformer calls per step, cache contexts "pred_cond" and
    "pred_uncond"). The text part of the joint attention is 729 image (zeros for T2V, masked) + 256 ByT5 + 1000 MLLM
    tokens, mostly padding."""
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    mllm_dim, byt5_dim, latent_channels = 32, 24, 4
    tokenizer = _qwen_chat_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=_round_up(len(tokenizer)), hidden_size=mllm_dim, intermediate_size=37, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=None,
        eos_token_id=2, pad_token_id=0, rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]})).eval()
    torch.manual_seed(seed + 1)
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=384, d_model=byt5_dim, d_kv=8, d_ff=37, num_layers=1,
                                             num_heads=3)).eval()
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLHunyuanVideo15(latent_channels=latent_channels, block_out_channels=(8, 8, 8, 8, 8),
                                      layers_per_block=1).eval()
    torch.manual_seed(seed + 3)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=2 * latent_channels + 1, out_channels=latent_channels, num_attention_heads=num_heads,
        attention_head_dim=head_dim, num_layers=num_layers, num_refiner_layers=1, mlp_ratio=2.0,
        text_embed_dim=mllm_dim, text_embed_2_dim=byt5_dim, image_embed_dim=24,
        rope_axes_dim=hunyuan_rope_axes(head_dim), task_type="t2v",
    ).eval()
    return HunyuanVideo15Pipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=_flow_scheduler(5.0), text_encoder_2=text_encoder_2, tokenizer_2=ByT5Tokenizer(),
        guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )


# ------------------------------------------------------------------------------------------------- embedded default

# Demo size: latents 16 x 5 x 32 x 32 -> 5 * 16 * 16 = 1280 video tokens per video (1024+ so sparse attention can skip).
DEFAULT_DEMO: dict = {
    "height": 256,
    "width": 256,
    "num_frames": 17,
    "num_inference_steps": 16,
    "guidance_scale": 5.0,
}

# The trained ToyWorld models live in the repository, next to this package.
TOYWORLD_MODELS = Path(__file__).resolve().parent.parent / "models" / "toyworld"
DEFAULT_MODEL_DIR = TOYWORLD_MODELS / "wan-t2v"


def build_default():
    """The embedded default model of the CLI demo: the trained ToyWorld Wan T2V pipeline (`DEFAULT_MODEL_DIR`, fp32,
    checksums verified; issue 4). Transformer 6 layers x 6 heads x 32 (3.95 M params), UMT5 width 64, residual
    AutoencoderKLWan base_dim 16. ``DEFAULT_DEMO`` (1280 video tokens, 16 steps with CFG) takes about 8 s on 2 CPU
    cores, ~5 s of it in the transformer. Raises `ToyWorldWeightsError` naming the file if the weights are missing or
    do not match their checksums."""
    from turbo.toyworld.train import ToyWorldWeightsError, load_toyworld

    if not DEFAULT_MODEL_DIR.is_dir():
        raise ToyWorldWeightsError(f"{DEFAULT_MODEL_DIR}: the embedded default model is missing (it ships in the "
                                   "turbo repository under models/toyworld/; pass --model DIR for another pipeline)")
    return load_toyworld(DEFAULT_MODEL_DIR, dtype=torch.float32)


# ------------------------------------------------------------------------------------------ real sizes on meta device

_WAN_COMMON = dict(
    patch_size=(1, 2, 2),
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)

_META_CONFIGS: dict[str, tuple[str, dict]] = {
    "wan2.1-t2v-1.3b": (
        "WanTransformer3DModel",
        dict(_WAN_COMMON, num_attention_heads=12, ffn_dim=8960, num_layers=30),
    ),
    "wan2.1-t2v-14b": (
        "WanTransformer3DModel",
        dict(_WAN_COMMON, num_attention_heads=40, ffn_dim=13824, num_layers=40),
    ),
    "wan2.1-i2v-14b": (
        "WanTransformer3DModel",
        dict(
            _WAN_COMMON,
            num_attention_heads=40,
            ffn_dim=13824,
            num_layers=40,
            in_channels=36,
            image_dim=1280,
            added_kv_proj_dim=5120,
        ),
    ),
    "hunyuanvideo": (
        "HunyuanVideoTransformer3DModel",
        dict(
            in_channels=16,
            out_channels=16,
            num_attention_heads=24,
            attention_head_dim=128,
            num_layers=20,
            num_single_layers=40,
            num_refiner_layers=2,
            mlp_ratio=4.0,
            patch_size=2,
            patch_size_t=1,
            qk_norm="rms_norm",
            guidance_embeds=True,
            text_embed_dim=4096,
            pooled_projection_dim=768,
            rope_theta=256.0,
            rope_axes_dim=(16, 56, 56),
        ),
    ),
}

META_TRANSFORMER_NAMES = tuple(_META_CONFIGS)


def meta_transformer(name: str) -> torch.nn.Module:
    """A real-size transformer (config as published) with all parameters on the ``meta`` device (no memory)."""
    import diffusers

    if name not in _META_CONFIGS:
        raise ValueError(f"unknown transformer {name!r}; known: {', '.join(META_TRANSFORMER_NAMES)}")
    class_name, config = _META_CONFIGS[name]
    cls = getattr(diffusers, class_name)
    with torch.device("meta"):
        return cls(**config).eval()


# ------------------------------------------------------------------------------------------------------- round trip


def _main_dtype(module: torch.nn.Module) -> torch.dtype:
    """The floating dtype holding most parameters (fp32-kept norms/embedders do not count as the model's dtype)."""
    counts: dict[torch.dtype, int] = {}
    for param in module.parameters():
        if param.is_floating_point():
            counts[param.dtype] = counts.get(param.dtype, 0) + param.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def save_and_reload(pipe, directory):
    """``save_pretrained`` into ``directory`` then ``from_pretrained`` from it (local files only), keeping dtypes.

    The loaded weights are copied out of the memory-mapped safetensors files: mmapped tensors sit at unaligned
    offsets, which makes CPU GEMMs pick other kernels and differ from the original pipeline by ~1 ulp. With the copy
    the reloaded pipeline reproduces the original output bit for bit (and ``directory`` may be deleted afterwards).
    """
    directory = os.fspath(directory)
    pipe.save_pretrained(directory)
    dtypes: dict = {"default": torch.float32}
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            dtypes[name] = _main_dtype(component)
    reloaded = type(pipe).from_pretrained(directory, dtype=dtypes, local_files_only=True)
    for component in reloaded.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in list(component.parameters()) + list(component.buffers()):
                tensor.data = tensor.data.clone()
    return reloaded
