"""ToyWorld model builders: small diffusers components sized for the ToyWorld videos (see `ToyWorldSizes`).

Everything is built offline and deterministically: each component is created right after ``torch.manual_seed(seed +
k)`` with a fixed k per component, so the same seed gives bit-identical random initial weights. The text encoders
(UMT5 for Wan, Llama + CLIP text for HunyuanVideo) and the Wan I2V image encoder (CLIP vision) stay *frozen at their
random initialisation*: a fixed random embedding of a 31-word vocabulary is an injective, deterministic code for the
caption, which is all the denoiser needs; only the VAEs and the transformers are trained (`turbo.toyworld.train`).

Sizes with the default `ToyWorldSizes` (``param_report``; MB = shipped safetensors: transformers in bf16, VAEs and
the frozen text/image encoders in fp32):

=====================================  ==========  ========
component                                  params        MB
=====================================  ==========  ========
Wan VAE (AutoencoderKLWan, base_dim 8)    220,107      0.88
shipped: residual, base_dim 16            877,555      3.51
UMT5 text encoder (d_model 64, 2 lay.)     86,400      0.35
Wan T2V transformer (6 x 192, ffn 768)  3,951,232      7.90
Wan I2V transformer (+ image attn)      4,429,568      8.86
CLIP vision image encoder (I2V)            83,712      0.33
HunyuanVideo transformer (2+3 blocks)   5,227,520     10.46
HunyuanVideo VAE (16/16/32/32)            790,531      3.16
Llama (64) + CLIP text (32) encoders      149,088      0.60
=====================================  ==========  ========

The three shipped pipeline directories (models/toyworld/: wan-t2v 12.0 MB, wan-i2v 13.3 MB, hunyuan-t2v 14.3 MB,
each with its own copy of the shared components; the Wan ones with the residual base_dim-16 VAE) total **39.6 MB**
<= 40 MB. Demo cost: one unaccelerated Wan T2V generation at the demo setting (17 x 256², 16 steps, CFG) takes 8.5 s
on 2 CPU cores (2026-11-26).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from turbo.toyworld.tokenizer import EOS_ID, PAD_ID, caption_tokenizer

__all__ = [
    "KINDS",
    "ToyWorldSizes",
    "build_clip_text_encoder",
    "build_hunyuan_transformer",
    "build_hunyuan_vae",
    "build_image_encoder",
    "build_image_processor",
    "build_llama_text_encoder",
    "build_pipeline",
    "build_scheduler",
    "build_text_encoder",
    "build_vae",
    "build_wan_transformer",
    "param_report",
    "sampling_kwargs",
    "video_tokens",
]

KINDS = ("wan-t2v", "wan-i2v", "hunyuan-t2v")

# HunyuanVideoPipeline must be called with this template (the default Llama-3 chat template crops 95 tokens).
HUNYUAN_PROMPT_TEMPLATE = {"template": "{}", "crop_start": 0}


def video_tokens(frames: int, height: int, width: int) -> int:
    """Transformer video tokens per sample: VAE 4x temporal / 8x spatial, then patch 1x2x2 (Wan and Hunyuan alike)."""
    return ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)


@dataclass(frozen=True)
class ToyWorldSizes:
    """Widths and depths of every ToyWorld component, and the two video settings.

    Main evaluation setting: 256 x 256, 33 frames -> latents 16 x 9 x 32 x 32 -> 9 * 16 * 16 = **2,304 video tokens**
    per sample (>= 2,048). CPU demo setting: 256 x 256, 17 frames -> 5 * 16 * 16 = **1,280 video tokens** (the
    sparse methods still have 20 key blocks of 64 to choose from). Training uses the main setting by default.
    """

    # settings
    frames: int = 33
    height: int = 256
    width: int = 256
    demo_frames: int = 17
    demo_height: int = 256
    demo_width: int = 256
    # Wan VAE (AutoencoderKLWan, 8x spatial, 4x temporal, z_dim 16 as the pipelines require); `vae_residual`: the
    # Wan2.2-style blocks (average-pool / duplicate shortcuts around every down- and up-sampling)
    vae_base_dim: int = 8
    vae_residual: bool = False
    # UMT5 text encoder (Wan)
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_sequence_length: int = 512  # Wan pipelines' default; WanImageToVideoPipeline needs exactly 512
    # Wan transformer
    wan_layers: int = 6
    wan_heads: int = 6
    wan_head_dim: int = 32
    wan_ffn_mult: int = 4
    # CLIP vision image encoder (Wan I2V)
    image_size: int = 64
    image_patch: int = 8
    vision_dim: int = 64
    # HunyuanVideo
    hunyuan_layers: int = 2
    hunyuan_single_layers: int = 3
    hunyuan_heads: int = 6
    hunyuan_head_dim: int = 32
    hunyuan_vae_channels: int = 16
    llama_dim: int = 64
    clip_text_dim: int = 32
    hunyuan_max_sequence_length: int = 256  # HunyuanVideoPipeline's default

    @property
    def video_tokens(self) -> int:
        return video_tokens(self.frames, self.height, self.width)

    @property
    def demo_video_tokens(self) -> int:
        return video_tokens(self.demo_frames, self.demo_height, self.demo_width)

    @classmethod
    def tiny(cls) -> ToyWorldSizes:
        """Test size (seconds on a CPU): 32 x 32, 5 frames, 2-layer models of width 24."""
        return cls(
            frames=5, height=32, width=32, demo_frames=5, demo_height=32, demo_width=32,
            vae_base_dim=4, text_dim=32, text_layers=1, text_heads=2,
            wan_layers=2, wan_heads=2, wan_head_dim=12, wan_ffn_mult=2,
            image_size=32, image_patch=8, vision_dim=16,
            hunyuan_layers=1, hunyuan_single_layers=1, hunyuan_heads=2, hunyuan_head_dim=12,
            hunyuan_vae_channels=8, llama_dim=16, clip_text_dim=16, hunyuan_max_sequence_length=32,
        )  # fmt: skip


DEFAULT_SIZES = ToyWorldSizes()


def _round_up(n: int, multiple: int = 64) -> int:
    return (n + multiple - 1) // multiple * multiple


def _vocab_size() -> int:
    return _round_up(len(caption_tokenizer()))


# --------------------------------------------------------------------------------------------------------------- Wan


def build_vae(sizes: ToyWorldSizes = DEFAULT_SIZES, seed: int = 0):
    """`AutoencoderKLWan` (8x spatial, 4x temporal, z_dim 16). `latents_mean/std` are set by `train.calibrate_vae`."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed + 1)
    return AutoencoderKLWan(
        base_dim=sizes.vae_base_dim,
        z_dim=16,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 16,
        latents_std=[1.0] * 16,
        is_residual=sizes.vae_residual,
    )


def sizes_with_vae(sizes: ToyWorldSizes, vae) -> ToyWorldSizes:
    """`sizes` with its VAE fields read from a built or loaded `vae` (Wan ``base_dim`` / ``is_residual``, HunyuanVideo
    channels), so a recipe records the VAE a pipeline really has."""
    import dataclasses

    if type(vae).__name__ == "AutoencoderKLWan":
        return dataclasses.replace(sizes, vae_base_dim=int(vae.config.base_dim),
                                   vae_residual=bool(getattr(vae.config, "is_residual", False)))
    return dataclasses.replace(sizes, hunyuan_vae_channels=int(vae.config.block_out_channels[0]))


def build_text_encoder(sizes: ToyWorldSizes = DEFAULT_SIZES, seed: int = 0):
    """Small `UMT5EncoderModel` (d_model = `text_dim`), deterministic for `seed`, frozen random (never trained)."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config = UMT5Config(
        vocab_size=_vocab_size(),
        d_model=sizes.text_dim,
        d_kv=sizes.text_dim // sizes.text_heads,
        d_ff=2 * sizes.text_dim,
        num_layers=sizes.text_layers,
        num_heads=sizes.text_heads,
        relative_attention_num_buckets=8,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
    )
    return UMT5EncoderModel(config).eval().requires_grad_(False)


def build_wan_transformer(sizes: ToyWorldSizes = DEFAULT_SIZES, seed: int = 0, i2v: bool = False):
    """`WanTransformer3DModel`, patch 1x2x2; with `i2v`: 36 input channels + CLIP-vision image cross-attention."""
    from diffusers import WanTransformer3DModel

    inner = sizes.wan_heads * sizes.wan_head_dim
    torch.manual_seed(seed + (5 if i2v else 2))
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=sizes.wan_heads,
        attention_head_dim=sizes.wan_head_dim,
        in_channels=36 if i2v else 16,
        out_channels=16,
        text_dim=sizes.text_dim,
        freq_dim=256,
        ffn_dim=sizes.wan_ffn_mult * inner,
        num_layers=sizes.wan_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=sizes.vision_dim if i2v else None,
        added_kv_proj_dim=inner if i2v else None,
        rope_max_seq_len=1024,
    )


def build_image_encoder(sizes: ToyWorldSizes = DEFAULT_SIZES, seed: int = 0):
    """Small `CLIPVisionModel` for Wan I2V (the pipeline uses ``hidden_states[-2]``); frozen random."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed + 4)
    return (
        CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=sizes.vision_dim,
                projection_dim=sizes.vision_dim,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=2 * sizes.vision_dim,
                image_size=sizes.image_size,
                patch_size=sizes.image_patch,
            )
        )
        .eval()
        .requires_grad_(False)
    )


def build_image_processor(sizes: ToyWorldSizes = DEFAULT_SIZES):
    try:
        from transformers import CLIPImageProcessorPil as Processor  # transformers >= 5
    except ImportError:  # pragma: no cover - transformers 4.x
        from transformers import CLIPImageProcessor as Processor
    return Processor(crop_size=sizes.image_size, size=sizes.image_size)


def build_scheduler(kind: str = "wan-t2v"):
    """`FlowMatchEulerDiscreteScheduler`: shift 5 for Wan (as Wan2.1 at 480p), 7 for HunyuanVideo."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=7.0 if kind.startswith("hunyuan") else 5.0)


# ----------------------------------------------------------------------------------------------------------- Hunyuan


def hunyuan_rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Split ``head_dim`` into even (t, h, w) RoPE axes in the real model's proportions (128 -> 16, 56, 56)."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"Hunyuan head_dim must be even and >= 6, got {head_dim}")
    hw = max(2, 2 * round(head_dim * 56 / 128 / 2))
    t = head_dim - 2 * hw
    if t < 2:
        hw = (head_dim - 2) // 4 * 2
        t = head_dim - 2 * hw
    return (t, hw, hw)


def build_hunyuan_vae(sizes: ToyWorldSizes = DEFAULT_SIZES, seed: int = 0):
    """`AutoencoderKLHunyuanVideo` (8x spatial, 4x temporal, 16 channels); calibration sets `scaling_factor`."""
    from diffusers import AutoencoderKLHunyuanVideo

    c = sizes.hunyuan_vae_channels
    torch.manual_seed(seed + 8)
    return AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(c, c, 2 * c, 2 * c),
        layers_per_block=1,
        act_fn="silu",
        norm_num_groups=4,
        scaling_factor=1.0,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )


def build_llama_text_encoder(sizes: ToyWorldSizes = DEFAULT_SIZES, seed: int = 0):
    """3-layer `LlamaModel` (the pipeline reads ``hidden_states[-3]``), frozen random."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(seed + 6)
    return (
        LlamaModel(
            LlamaConfig(
                vocab_size=_vocab_size(),
                hidden_size=sizes.llama_dim,
                intermediate_size=2 * sizes.llama_dim,
                num_attention_heads=4,
                num_key_value_heads=4,
                num_hidden_layers=3,
                max_position_embeddings=1024,
                bos_token_id=EOS_ID,
                eos_token_id=EOS_ID,
                pad_token_id=PAD_ID,
            )
        )
        .eval()
        .requires_grad_(False)
    )


def build_clip_text_encoder(sizes: ToyWorldSizes = DEFAULT_SIZES, seed: int = 0):
    """`CLIPTextModel` with 77 positions; pooled output at the ``</s>`` (id 1) token; frozen random."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed + 7)
    return (
        CLIPTextModel(
            CLIPTextConfig(
                vocab_size=_vocab_size(),
                hidden_size=sizes.clip_text_dim,
                intermediate_size=2 * sizes.clip_text_dim,
                num_attention_heads=4,
                num_hidden_layers=2,
                max_position_embeddings=77,
                bos_token_id=EOS_ID,
                eos_token_id=EOS_ID,
                pad_token_id=PAD_ID,
            )
        )
        .eval()
        .requires_grad_(False)
    )


def build_hunyuan_transformer(sizes: ToyWorldSizes = DEFAULT_SIZES, seed: int = 0):
    """`HunyuanVideoTransformer3DModel`, patch 2 (tokens as Wan), no guidance embedding: real CFG at sampling time
    (call the pipeline with ``true_cfg_scale > 1, negative_prompt=""`` and ``prompt_template=HUNYUAN_PROMPT_TEMPLATE``).
    """
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(seed + 3)
    return HunyuanVideoTransformer3DModel(
        in_channels=16,
        out_channels=16,
        num_attention_heads=sizes.hunyuan_heads,
        attention_head_dim=sizes.hunyuan_head_dim,
        num_layers=sizes.hunyuan_layers,
        num_single_layers=sizes.hunyuan_single_layers,
        num_refiner_layers=1,
        mlp_ratio=4.0,
        patch_size=2,
        patch_size_t=1,
        qk_norm="rms_norm",
        guidance_embeds=False,
        text_embed_dim=sizes.llama_dim,
        pooled_projection_dim=sizes.clip_text_dim,
        rope_axes_dim=hunyuan_rope_axes(sizes.hunyuan_head_dim),
    )


# ---------------------------------------------------------------------------------------------------------- pipelines


def build_pipeline(kind: str, sizes: ToyWorldSizes = DEFAULT_SIZES, seed: int = 0, **components):
    """A diffusers pipeline of `kind` ("wan-t2v", "wan-i2v", "hunyuan-t2v"); components not given are built.

    Component names are the pipelines' own: ``vae, text_encoder, tokenizer, transformer, scheduler`` plus
    ``image_encoder, image_processor`` (wan-i2v) or ``text_encoder_2, tokenizer_2`` (hunyuan-t2v).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown ToyWorld kind {kind!r}; known: {', '.join(KINDS)}")
    c = dict(components)
    unknown = set(c) - {"vae", "text_encoder", "tokenizer", "transformer", "scheduler", "image_encoder",
                        "image_processor", "text_encoder_2", "tokenizer_2"}  # fmt: skip
    if unknown:
        raise TypeError(f"build_pipeline: unexpected components {sorted(unknown)}")
    tokenizer = c.get("tokenizer") or caption_tokenizer()
    scheduler = c.get("scheduler") or build_scheduler(kind)
    if kind == "hunyuan-t2v":
        from diffusers import HunyuanVideoPipeline

        return HunyuanVideoPipeline(
            tokenizer=tokenizer,
            text_encoder=c.get("text_encoder") or build_llama_text_encoder(sizes, seed),
            tokenizer_2=c.get("tokenizer_2") or tokenizer,
            text_encoder_2=c.get("text_encoder_2") or build_clip_text_encoder(sizes, seed),
            vae=c.get("vae") or build_hunyuan_vae(sizes, seed),
            scheduler=scheduler,
            transformer=c.get("transformer") or build_hunyuan_transformer(sizes, seed),
        )
    common = dict(
        tokenizer=tokenizer,
        text_encoder=c.get("text_encoder") or build_text_encoder(sizes, seed),
        vae=c.get("vae") or build_vae(sizes, seed),
        scheduler=scheduler,
    )
    if kind == "wan-t2v":
        from diffusers import WanPipeline

        return WanPipeline(transformer=c.get("transformer") or build_wan_transformer(sizes, seed), **common)
    from diffusers import WanImageToVideoPipeline

    return WanImageToVideoPipeline(
        transformer=c.get("transformer") or build_wan_transformer(sizes, seed, i2v=True),
        image_encoder=c.get("image_encoder") or build_image_encoder(sizes, seed),
        image_processor=c.get("image_processor") or build_image_processor(sizes),
        **common,
    )


_BF16_COMPONENTS = ("transformer", "transformer_2")


def param_report(pipe) -> dict[str, tuple[int, float]]:
    """{component: (parameters, MB as shipped)}: transformers in bf16, VAEs and text/image encoders in fp32."""
    out = {}
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            n = sum(p.numel() for p in module.parameters())
            out[name] = (n, n * (2 if name in _BF16_COMPONENTS else 4) / 1e6)
    return out


def sampling_kwargs(pipe, guidance_scale: float = 5.0) -> dict:
    """Call arguments that give classifier-free guidance of `guidance_scale` on a ToyWorld pipeline.

    Wan: ``guidance_scale`` (the empty negative prompt is the pipeline's default). HunyuanVideo (no guidance
    embedding): ``true_cfg_scale`` with an empty ``negative_prompt`` and the plain prompt template training used
    (`HUNYUAN_PROMPT_TEMPLATE`).
    """
    if type(pipe).__name__.startswith("HunyuanVideo"):
        return {"prompt_template": dict(HUNYUAN_PROMPT_TEMPLATE), "true_cfg_scale": float(guidance_scale),
                "negative_prompt": ""}
    return {"guidance_scale": float(guidance_scale)}
