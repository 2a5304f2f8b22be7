"""ToyWorld training loops (plain PyTorch) and the checksummed save/load of trained pipelines.

* `train_vae`: reconstruction (L1 + a small KL) of `sample_videos` batches, then `calibrate_vae` sets the latent
  normalisation the pipelines use when decoding (Wan: per-channel ``latents_mean/std``; Hunyuan: ``scaling_factor``).
* `train_transformer`: rectified flow matching exactly as diffusers' Wan/Hunyuan pipelines sample it with
  `FlowMatchEulerDiscreteScheduler`: ``x_t = (1 - t) x0 + t eps``, target ``v = eps - x0``, timestep ``1000 t``, with x0
  the VAE latent (posterior mode) normalised as the pipeline de-normalises it. Captions are dropped to the empty
  prompt (the pipelines' default negative prompt) with probability ``cfg_dropout``, for classifier-free guidance.
* `save_toyworld` / `load_toyworld`: ``save_pretrained`` (safetensors) plus ``checksums.json`` (sha256 of every file);
  loading verifies every checksum first and names the file and the expected checksum on any mismatch.

On CUDA the transformer trains in bf16 autocast with fp32 master weights; on a CPU everything is fp32. The budget,
optimizer and schedule, EMA, CUDA-graph/compiled steps and checksums are `turbo.training`'s (a `TrainConfig` per
run); this module holds what is ToyWorld's: its data (`VAETask`, `FlowTask`), losses and pipeline directories.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from turbo.toyworld.tokenizer import encode_prompts
from turbo.toyworld.videos import sample_videos
from turbo.training import (
    CHECKSUMS_FILE,
    ChecksumError,
    CompiledForward,
    GraphedStep,
    StepPlan,
    TrainConfig,
    autocast,
    backward_and_step,
    build_optimizer,
    check_and_log,
    finite_values,
    make_ema,
    progress,
    seal_directory,
    use_cuda_graphs,
)
from turbo.training import verify_checksums as _verify_checksums

__all__ = [
    "CHECKSUMS_FILE",
    "FlowTask",
    "StepPlan",
    "ToyWorldWeightsError",
    "TrainConfig",
    "VAETask",
    "calibrate_vae",
    "denormalize_latents",
    "encode_latents",
    "load_toyworld",
    "normalize_latents",
    "reconstruction_check",
    "load_vae",
    "init_from",
    "save_toyworld",
    "save_vae",
    "train_pipeline",
    "train_transformer",
    "train_vae",
    "verify_checksums",
]

logger = logging.getLogger("turbo")

RECIPE_FILE = "toyworld_recipe.json"


class ToyWorldWeightsError(ChecksumError):
    """A ToyWorld weight directory is incomplete or a file does not match its recorded sha256."""


@dataclasses.dataclass(frozen=True)
class VAETask:
    """What `train_vae` trains on and with which loss (the budget/optimizer/EMA are the `TrainConfig`).

    Clips of `frames` x `height` x `width` (every `long_every`-th step `long_frames` frames instead: the causal VAEs
    do not extrapolate past the clip length they trained on); `num_objects` per video (an int or choices); `crop`
    trains on random square crops. Loss: L1 (+ `mse_weight` x squared error) weighted ``1 + fg_weight`` on object
    pixels, plus `kl_weight` x KL; `sample_scale` scales the posterior noise of the decoded sample (0: the posterior
    mean, what the pipelines encode with). `fixed_batch`: every step the same batch and noise (an overfit check).
    `decoder_only`: train the decoder (and ``post_quant_conv``) only, keeping the latents and their normalisation.
    `calibrate`: afterwards `calibrate_vae` on `calibrate_count` videos of `calibrate_frames` (default `frames`).
    """

    frames: int = 33
    height: int = 256
    width: int = 256
    kl_weight: float = 1e-4
    fg_weight: float = 0.0
    crop: int | None = None
    sample_scale: float = 1.0
    mse_weight: float = 0.0
    num_objects: int | tuple[int, ...] = (1, 2)
    long_frames: int | None = None
    long_every: int = 0
    decoder_only: bool = False
    fixed_batch: bool = False
    calibrate: bool = True
    calibrate_count: int = 16
    calibrate_frames: int | None = None


@dataclasses.dataclass(frozen=True)
class FlowTask:
    """What `train_transformer` trains on: rectified flow matching on ToyWorld clips.

    `frames` may be a tuple of frame counts (step k uses ``frames[k % len(frames)]``). Captions are dropped to the
    empty prompt with probability `cfg_dropout`; t is logit-normal(`logit_mean`, `logit_std`) shifted by
    `timestep_shift`. `max_sequence_length` defaults to the pipelines' (Wan 512, Hunyuan 256). `pool_size` > 0: the
    VAE encodes that many videos per frame count once and each step draws its batch from the pool. `fixed_batch`:
    every step the same videos, captions, dropout, noise and t (an overfit check).
    """

    frames: int | tuple[int, ...] = 33
    height: int = 256
    width: int = 256
    cfg_dropout: float = 0.1
    max_sequence_length: int | None = None
    timestep_shift: float = 1.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    pool_size: int = 0
    fixed_batch: bool = False


# ------------------------------------------------------------------------------------------------------------ helpers


def _videos(seed: int, batch_size: int, frames: int, height: int, width: int, device,
            num_objects=(1, 2)) -> tuple[torch.Tensor, list]:
    """([B, 3, F, H, W] in [-1, 1], captions) — the layout the diffusers VAEs take."""
    videos, _, captions = sample_videos(seed, batch_size, frames, height, width, num_objects, device=device)
    return videos.permute(0, 2, 1, 3, 4).mul(2).sub(1).contiguous(), captions


def _step_seed(seed: int, step: int, fixed_batch: bool) -> int:
    return seed if fixed_batch else seed * 1_000_003 + step + 1


def _check_shape(frames: int, height: int, width: int) -> None:
    if (frames - 1) % 4 or height % 16 or width % 16:
        raise ValueError(f"frames must be 4k+1 and height, width multiples of 16, got {frames}, {height}, {width}")


def _to_fp32(module: torch.nn.Module) -> torch.nn.Module:
    """fp32 master weights (without ModelMixin.to(dtype)'s keep-in-fp32 warning)."""
    for param in module.parameters():
        if param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()
    return module


def _optimizer(module: torch.nn.Module, config: TrainConfig, plan: StepPlan, capturable: bool = False):
    """(trainable params, AdamW, LR scheduler) of `module`; ToyWorld caps the warm-up at a tenth of a fixed budget."""
    params = [p for p in module.parameters() if p.requires_grad]
    warmup = max(0, config.warmup if plan.max_steps is None else min(config.warmup, plan.max_steps // 10))
    opt, sched = build_optimizer(params, config, plan, capturable=capturable, warmup=warmup)
    return params, opt, sched


# ---------------------------------------------------------------------------------------------------------------- VAE


def _is_wan_vae(vae) -> bool:
    return getattr(vae.config, "latents_mean", None) is not None


def normalize_latents(vae, z: torch.Tensor) -> torch.Tensor:
    """VAE latents -> the space the transformer works in (inverse of the pipelines' decode path)."""
    if _is_wan_vae(vae):
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(z.device, z.dtype)
        std_inv = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(z.device, z.dtype)
        return (z - mean) * std_inv  # pipeline_wan_i2v.prepare_latents; decode does latents / std_inv + mean
    return z * vae.config.scaling_factor  # pipeline_hunyuan_video decodes latents / scaling_factor


def denormalize_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    if _is_wan_vae(vae):
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latents.device, latents.dtype)
        std_inv = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(latents.device, latents.dtype)
        return latents / std_inv + mean
    return latents / vae.config.scaling_factor


@torch.no_grad()
def encode_latents(vae, videos: torch.Tensor) -> torch.Tensor:
    """Normalised latents (posterior mode, as the pipelines' ``retrieve_latents(..., "argmax")``) of [B,3,F,H,W]."""
    dist = vae.encode(videos.to(vae.dtype)).latent_dist
    return normalize_latents(vae, dist.mode().float())


def _foreground_weight(x: torch.Tensor, fg_weight: float) -> torch.Tensor:
    """[B, 1, F, H, W] loss weight: 1 + `fg_weight` where a pixel differs from the background (its video's corner
    pixel; objects never touch the corners). Objects cover a few percent of a ToyWorld frame: without this a small
    VAE learns the background and drops the objects."""
    background = x[:, :, :1, :1, :1]
    mask = ((x - background).abs().amax(dim=1, keepdim=True) > 0.1).to(x.dtype)
    return 1.0 + fg_weight * mask


def _random_crop(x: torch.Tensor, crop: int | None, generator: torch.Generator) -> torch.Tensor:
    """The same random `crop` x `crop` window of every video (a convolutional VAE trains as well on crops, faster)."""
    height, width = x.shape[-2:]
    if not crop or crop >= min(height, width):
        return x
    top = int(torch.randint(0, height - crop + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - crop + 1, (1,), generator=generator))
    return x[..., top:top + crop, left:left + crop]


def _decode_unclamped(vae, z: torch.Tensor) -> torch.Tensor:
    """``vae.decode(z).sample`` without AutoencoderKLWan's final clamp to [-1, 1] (for training).

    The clamp has zero gradient wherever the decoder overshoots, and ToyWorld's black and white backgrounds sit on
    the bounds: object pixels inside an overshooting background region then never receive a gradient and the VAE
    learns the background only. This replays AutoencoderKLWan's frame-by-frame causal decode (diffusers 0.3x-0.4x
    ``_decode``, untiled, no patchify) and stops before the clamp; other VAEs decode as usual.
    """
    if type(vae).__name__ != "AutoencoderKLWan" or getattr(vae.config, "patch_size", None) is not None:
        return vae.decode(z).sample
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    frames = []
    for i in range(x.shape[2]):
        vae._conv_idx = [0]
        frames.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                  first_chunk=(i == 0)))
    vae.clear_cache()
    return torch.cat(frames, dim=2)


def _vae_step_loss(vae, x: torch.Tensor, weight: torch.Tensor, noise: torch.Tensor | None, kl_weight: float,
                   mse_weight: float = 0.0) -> torch.Tensor:
    """Weighted L1 (+ `mse_weight` x squared error) reconstruction of `x` [B, 3, F, H, W] plus `kl_weight` x KL.

    The decoded latent is the posterior mean plus ``noise * std`` (`noise` already scaled; None: the mean itself).
    `weight` [B, 1, F, H, W] weighs the pixels (the loss is normalised by its mean)."""
    dist = vae.encode(x).latent_dist
    z = dist.mean if noise is None else dist.mean + dist.std * noise
    rec = _decode_unclamped(vae, z)
    kl = 0.5 * (dist.mean.pow(2) + dist.var - 1.0 - dist.logvar).mean()
    diff = rec.float() - x.float()
    error = diff.abs() + mse_weight * diff.pow(2) if mse_weight else diff.abs()
    return (error * weight).mean() / weight.mean() + kl_weight * kl


def _latent_shape(x: torch.Tensor, z_dim: int = 16) -> tuple[int, ...]:
    """Latent shape of a [B, 3, F, H, W] video: both VAE families compress 4x in time (causally) and 8x in space."""
    b, _, f, h, w = x.shape
    return (b, z_dim, (f - 1) // 4 + 1, h // 8, w // 8)


def train_vae(vae, config: TrainConfig, task: VAETask = VAETask()) -> list[float]:
    """Train `vae` (AutoencoderKLWan or AutoencoderKLHunyuanVideo) in place on `task`; returns the loss of every step.

    `config` gives the budget (`StepPlan`: steps and/or minutes), batch size, seed, device, AdamW + schedule, EMA and
    CUDA graphs. Batches are fresh `sample_videos` draws (seed derived from ``config.seed`` and the step). The VAE
    trains in fp32 (also on CUDA: the Wan causal convolutions are small and bf16 hurts reconstruction). Afterwards
    `calibrate_vae` sets the latent normalisation (unless ``task.calibrate`` is False or ``task.decoder_only``) and
    the VAE is left in eval mode. On CUDA with ``config.cuda_graphs`` each step (forward, backward, update) replays a
    CUDA graph per clip length (see `GraphedStep`).
    """
    t = task
    _check_shape(t.frames, t.height, t.width)
    if t.long_every:
        _check_shape(t.long_frames or 0, t.height, t.width)
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    _to_fp32(vae.to(device)).train()
    calibrate = t.calibrate
    if t.decoder_only:
        decoding = ("decoder.", "post_quant_conv.")
        for name, param in vae.named_parameters():
            param.requires_grad_(name.startswith(decoding))
        calibrate = False
    plan = StepPlan.from_config(config)
    graphs = use_cuda_graphs(config.cuda_graphs, device, "VAE training step")
    params, opt, sched = _optimizer(vae, config, plan, capturable=graphs)
    ema = make_ema(vae, config)

    def step_fn(x, weight, *noise):
        loss = _vae_step_loss(vae, x, weight, noise[0] if noise else None, t.kl_weight, t.mse_weight)
        backward_and_step(loss, opt, params, config.grad_clip, ema, vae)
        return loss

    step_fn = GraphedStep(step_fn, opt, graphs, device=device, name="VAE training step")
    losses: list[torch.Tensor] = []
    seed, batch_size = config.seed, config.batch_size
    for step in progress(plan, "vae", config.show_progress):
        clip = t.long_frames if t.long_every and step % t.long_every == t.long_every - 1 else t.frames
        x, _ = _videos(_step_seed(seed, step, t.fixed_batch), batch_size, clip, t.height, t.width, device,
                       t.num_objects)
        gen = torch.Generator().manual_seed(_step_seed(seed + 17, step, t.fixed_batch))
        weight = _foreground_weight(x, t.fg_weight) if t.fg_weight else torch.ones_like(x[:, :1])
        both = _random_crop(torch.cat([x, weight], dim=1), t.crop, gen)  # one window for video and weight
        x, weight = both[:, :3], both[:, 3:]
        noise = (t.sample_scale * torch.randn(_latent_shape(x), generator=gen).to(device),) if t.sample_scale else ()
        losses.append(step_fn(x, weight, *noise))
        sched.step()
        check_and_log("vae", step, plan, losses, config.log_every)
    values = finite_values("train_vae", losses)
    if ema is not None:
        ema.copy_to(vae)
    vae.requires_grad_(True).eval()
    if calibrate:
        calibrate_vae(vae, t.calibrate_count, frames=t.calibrate_frames or t.frames, height=t.height, width=t.width,
                      seed=seed + 1, device=device)
    return values


@torch.no_grad()
def reconstruction_check(vae, count: int = 8, frames: int = 33, height: int = 256, width: int = 256, seed: int = 12345,
                         device="cpu", batch_size: int = 4) -> dict:
    """How well `vae` keeps the objects: L1 on object / background pixels (in [-1, 1]) and the judge's accuracy on
    reconstructions of `count` fresh videos (posterior mode, as the pipelines encode)."""
    from turbo.eval.judge import aggregate, judge

    vae.eval()
    fg_err, bg_err, results = [], [], []
    for i in range(0, count, batch_size):
        x, captions = _videos(seed + i, min(batch_size, count - i), frames, height, width, device)
        rec = vae.decode(vae.encode(x.to(vae.dtype)).latent_dist.mode()).sample.float().clamp(-1, 1)
        mask = _foreground_weight(x, 1.0) - 1.0
        err = (rec - x).abs().mean(1, keepdim=True)
        fg_err.append(float((err * mask).sum() / mask.sum().clamp_min(1)))
        bg_err.append(float((err * (1 - mask)).sum() / (1 - mask).sum().clamp_min(1)))
        videos = ((rec + 1) / 2).permute(0, 2, 3, 4, 1).cpu().numpy()
        results += [judge(v, c) for v, c in zip(videos, captions, strict=True)]
    return {"videos": count, "frames": frames, "object_l1": sum(fg_err) / len(fg_err),
            "background_l1": sum(bg_err) / len(bg_err), "judge_accuracy": aggregate(results)}


@torch.no_grad()
def calibrate_vae(vae, count: int = 16, frames: int = 33, height: int = 256, width: int = 256, seed: int = 1,
                  device="cpu", batch_size: int = 4) -> None:
    """Measure the latent statistics on `count` fresh videos and store them in the VAE config.

    AutoencoderKLWan: per-channel ``latents_mean`` / ``latents_std``; AutoencoderKLHunyuanVideo: ``scaling_factor``
    = 1 / std of all latent values. The pipelines read these when decoding, so the transformer's latents have zero
    mean and unit variance.
    """
    vae.eval()
    zs = []
    for i in range(0, count, batch_size):
        x, _ = _videos(seed * 7919 + i, min(batch_size, count - i), frames, height, width, device)
        zs.append(vae.encode(x.to(vae.dtype)).latent_dist.mode().float().cpu())
    z = torch.cat(zs).transpose(0, 1).reshape(zs[0].shape[1], -1)
    if _is_wan_vae(vae):
        vae.register_to_config(latents_mean=[round(float(v), 6) for v in z.mean(1)],
                               latents_std=[round(float(v), 6) for v in z.std(1).clamp_min(1e-4)])
    else:
        vae.register_to_config(scaling_factor=round(1.0 / float(z.std().clamp_min(1e-4)), 6))


# ------------------------------------------------------------------------------------------------------- transformer


def _first_frame_condition(vae, x: torch.Tensor, vae_scale_factor_temporal: int = 4):
    """(condition [B, 20, F_lat, h, w], uint8 first frames [B, H, W, 3]) exactly as WanImageToVideoPipeline builds it.

    The first frame is quantised to uint8 (users pass images), mapped back to [-1, 1], followed by zero frames,
    encoded (posterior mode), normalised, and preceded by the 4 mask channels (1 on the first frame's 4 slots).
    """
    b, _, num_frames, height, width = x.shape
    frame_u8 = ((x[:, :, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)  # [B, 3, H, W]
    image = frame_u8.float() / 127.5 - 1
    video_condition = torch.cat([image.unsqueeze(2), image.new_zeros(b, 3, num_frames - 1, height, width)], dim=2)
    latent_condition = encode_latents(vae, video_condition)
    lat_f, lat_h, lat_w = latent_condition.shape[2:]
    mask = torch.ones(b, 1, num_frames, lat_h, lat_w, device=x.device)
    mask[:, :, 1:] = 0
    first = torch.repeat_interleave(mask[:, :, 0:1], dim=2, repeats=vae_scale_factor_temporal)
    mask = torch.cat([first, mask[:, :, 1:]], dim=2)
    mask = mask.view(b, -1, vae_scale_factor_temporal, lat_h, lat_w).transpose(1, 2)
    return torch.cat([mask.to(latent_condition.dtype), latent_condition], dim=1), frame_u8.permute(0, 2, 3, 1)


@torch.no_grad()
def _image_embeds(image_encoder, image_processor, frames_u8: torch.Tensor, device) -> torch.Tensor:
    """CLIP-vision ``hidden_states[-2]`` of the first frames, through the pipeline's own image processor."""
    from PIL import Image

    images = [Image.fromarray(f.cpu().numpy()) for f in frames_u8]
    pixels = image_processor(images=images, return_tensors="pt").pixel_values.to(device, image_encoder.dtype)
    return image_encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-2].float()


@torch.no_grad()
def _text_condition(kind, captions, tokenizer, text_encoder, tokenizer_2, text_encoder_2, max_len, device) -> dict:
    ids, mask = encode_prompts(tokenizer, captions, max_len, warn=False)
    ids, mask = ids.to(device), mask.to(device)
    if kind.startswith("wan"):
        # WanPipeline._get_t5_prompt_embeds: last_hidden_state, positions past the prompt zeroed
        emb = text_encoder(ids, mask).last_hidden_state.float()
        return {"encoder_hidden_states": emb * mask.unsqueeze(-1).to(emb.dtype)}
    # HunyuanVideoPipeline with prompt_template {"template": "{}", "crop_start": 0}
    emb = text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-3].float()
    ids2, _ = encode_prompts(tokenizer_2, captions, 77, warn=False)
    pooled = text_encoder_2(ids2.to(device), output_hidden_states=False).pooler_output.float()
    return {"encoder_hidden_states": emb, "encoder_attention_mask": mask.float(), "pooled_projections": pooled}


def _sample_t(generator: torch.Generator, n: int, mean: float, std: float, shift: float) -> torch.Tensor:
    """Logit-normal t in (0, 1), optionally shifted towards noise like the scheduler's ``shift``."""
    t = torch.sigmoid(mean + std * torch.randn(n, generator=generator))
    if shift != 1.0:
        t = shift * t / (1 + (shift - 1) * t)
    return t.clamp(1e-4, 1 - 1e-4)


@torch.no_grad()
def _clean_batch(kind, s, batch_size, frames, height, width, device, vae, image_encoder, image_processor) -> dict:
    """Fresh videos of seed `s` as the transformer sees them: normalised latents ``x0``, ``captions`` and for wan-i2v
    the first-frame ``condition`` channels and CLIP ``image_embeds``."""
    x, captions = _videos(s, batch_size, frames, height, width, device)
    clean = {"x0": encode_latents(vae, x), "captions": list(captions)}
    if kind == "wan-i2v":
        clean["condition"], first_u8 = _first_frame_condition(vae, x)
        clean["image_embeds"] = _image_embeds(image_encoder, image_processor, first_u8, device)
    return clean


def _latent_pool(kind, seed, size, chunk, frames, height, width, device, vae, image_encoder, image_processor) -> dict:
    """`size` clean samples (`_clean_batch` in chunks of `chunk`), tensors stored in bf16 on `device` to save memory."""
    parts = [
        _clean_batch(kind, seed * 7_777 + 500_000 + i, min(chunk, size - i), frames, height, width, device, vae,
                     image_encoder, image_processor)
        for i in range(0, size, chunk)
    ]
    pool: dict = {"captions": [c for p in parts for c in p["captions"]]}
    for key in parts[0]:
        if key != "captions":
            pool[key] = torch.cat([p[key] for p in parts]).to(torch.bfloat16)
    return pool


def _pool_text(pool: dict, kind, chunk, max_len, device, tokenizer, text_encoder, tokenizer_2, text_encoder_2) -> None:
    """Encode the pool's captions and the empty prompt once (``pool["text"]``, ``pool["empty_text"]``, fp32): the text
    encoders are frozen and deterministic, so the steps then only gather rows."""
    def encode(caps: list[str]) -> dict:
        return _text_condition(kind, caps, tokenizer, text_encoder, tokenizer_2, text_encoder_2, max_len, device)

    captions = pool["captions"]
    parts = [encode(captions[i:i + chunk]) for i in range(0, len(captions), chunk)]
    pool["text"] = {k: torch.cat([part[k] for part in parts]) for k in parts[0]}
    pool["empty_text"] = encode([""])


def _take(pool: dict, index: torch.Tensor) -> dict:
    picked = {k: v[index.to(v.device)].float() for k, v in pool.items() if isinstance(v, torch.Tensor)}
    picked["captions"] = [pool["captions"][i] for i in index.tolist()]
    if "text" in pool:
        picked["text"] = {k: v[index.to(v.device)] for k, v in pool["text"].items()}
        picked["empty_text"] = pool["empty_text"]
    return picked


def _dropped_condition(text: dict, empty: dict, drop: torch.Tensor) -> dict:
    """Per sample, the empty prompt's text condition where `drop` [B] (bool) is set, else the caption's."""
    out = {}
    for key, value in text.items():
        mask = drop.to(value.device).view(-1, *([1] * (value.dim() - 1)))
        out[key] = torch.where(mask, empty[key].expand_as(value), value)
    return out


def _flow_batch(kind, clean, gen, cfg_dropout, timestep_shift, logit_mean, logit_std, max_len, device, tokenizer,
                text_encoder, tokenizer_2, text_encoder_2):
    """(x_t [with the I2V condition channels], 1000 t, target eps - x0, transformer kwargs) of one training batch.

    Captions are dropped to the empty prompt with probability `cfg_dropout` (the I2V image condition is kept, as the
    pipeline's negative branch keeps it); dropout and t come from the CPU generator `gen`, the noise from a device
    generator seeded from it. A pooled batch carries its text condition (`_pool_text`): no text encoder runs here.
    """
    x0 = clean["x0"]
    batch_size = x0.shape[0]
    drop = torch.rand(batch_size, generator=gen) < cfg_dropout
    if "text" in clean:  # encoded with the pool
        cond = _dropped_condition(clean["text"], clean["empty_text"], drop)
    else:
        captions = ["" if d else c for c, d in zip(clean["captions"], drop.tolist(), strict=True)]
        cond = _text_condition(kind, captions, tokenizer, text_encoder, tokenizer_2, text_encoder_2, max_len, device)
    noise_seed = int(torch.randint(2**62, (1,), generator=gen))  # the noise is drawn on the device (large batches)
    noise = torch.randn(x0.shape, generator=torch.Generator(device).manual_seed(noise_seed), device=device)
    t = _sample_t(gen, batch_size, logit_mean, logit_std, timestep_shift).to(device)
    tt = t.view(-1, 1, 1, 1, 1)
    xt = (1 - tt) * x0 + tt * noise
    target = noise - x0
    timestep = 1000.0 * t
    if kind == "wan-i2v":
        cond["encoder_hidden_states_image"] = clean["image_embeds"]
        xt = torch.cat([xt, clean["condition"]], dim=1)
    if kind == "hunyuan-t2v":
        cond["guidance"] = torch.full((batch_size,), 1000.0, device=device)  # ignored: guidance_embeds=False
    return xt, timestep, target, cond


def train_transformer(
    transformer,
    vae,
    text_encoder,
    tokenizer,
    kind: str,
    config: TrainConfig,
    task: FlowTask = FlowTask(),
    *,
    text_encoder_2=None,
    tokenizer_2=None,
    image_encoder=None,
    image_processor=None,
) -> list[float]:
    """Train `transformer` in place with rectified flow matching on `task`; returns the loss of every step.

    `kind` is "wan-t2v", "wan-i2v" (also needs `image_encoder`, `image_processor`) or "hunyuan-t2v" (`text_encoder`
    is the Llama model, `text_encoder_2` the CLIP text model; `tokenizer_2` defaults to `tokenizer`). The VAE and the
    text/image encoders are frozen. The default ``task.max_sequence_length`` is the pipelines' (Wan 512, Hunyuan
    256): the Wan transformers cross-attend to the zero-padded positions too, so training must pad as sampling does.

    `config` gives the budget, batch size, seed, device, AdamW + schedule and EMA (its average is copied into the
    transformer at the end). On CUDA the transformer trains in bf16 autocast with fp32 master weights; with
    ``config.cuda_graphs`` each step (forward, backward, update) replays a CUDA graph (see `GraphedStep`);
    ``config.compile`` runs the forward through ``torch.compile`` (fuses the memory-bound elementwise work that
    dominates at these widths; compiling takes a minute per clip length; a failure is logged and the forward runs
    eagerly).
    """
    from turbo.toyworld.models import KINDS

    if kind not in KINDS:
        raise ValueError(f"unknown ToyWorld kind {kind!r}; known: {', '.join(KINDS)}")
    if kind == "wan-i2v" and (image_encoder is None or image_processor is None):
        raise ValueError("train_transformer(kind='wan-i2v') needs image_encoder and image_processor")
    if kind == "hunyuan-t2v" and text_encoder_2 is None:
        raise ValueError("train_transformer(kind='hunyuan-t2v') needs text_encoder_2 (the CLIP text model)")
    t = task
    frame_counts = (t.frames,) if isinstance(t.frames, int) else tuple(t.frames)
    for f in frame_counts:
        _check_shape(f, t.height, t.width)
    tokenizer_2 = tokenizer_2 or tokenizer
    max_len = t.max_sequence_length or (256 if kind == "hunyuan-t2v" else 512)
    device = torch.device(config.device)
    seed, batch_size = config.seed, config.batch_size
    torch.manual_seed(seed)
    for module in (vae, text_encoder, text_encoder_2, image_encoder):
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    encoders = (vae, image_encoder, image_processor)
    pools = {}
    if t.pool_size and not t.fixed_batch:
        for i, f in enumerate(frame_counts):
            pools[f] = _latent_pool(kind, seed + 101 * i, t.pool_size, batch_size, f, t.height, t.width, device,
                                    *encoders)
            _pool_text(pools[f], kind, batch_size, max_len, device, tokenizer, text_encoder, tokenizer_2,
                       text_encoder_2)
        logger.info("%s: latent pool of %d videos per frame count %s ready", kind, t.pool_size, frame_counts)
    _to_fp32(transformer.to(device)).train()
    plan = StepPlan.from_config(config)
    graphs = use_cuda_graphs(config.cuda_graphs, device, f"{kind} training step")
    params, opt, sched = _optimizer(transformer, config, plan, capturable=graphs)
    ema = make_ema(transformer, config)
    cond_keys: list[str] = []
    forward = CompiledForward(transformer, enabled=config.compile, name=f"{kind} transformer")

    def step_fn(xt, timestep, target, *cond_values):
        cond = dict(zip(cond_keys, cond_values, strict=True))
        with autocast(device):
            pred = forward(hidden_states=xt, timestep=timestep, return_dict=False, **cond)[0]
        loss = F.mse_loss(pred.float(), target.float())
        backward_and_step(loss, opt, params, config.grad_clip, ema, transformer)
        return loss

    step_fn = GraphedStep(step_fn, opt, graphs, device=device, name=f"{kind} training step")
    losses: list[torch.Tensor] = []
    cached = None
    for step in progress(plan, kind, config.show_progress):
        f = frame_counts[step % len(frame_counts)]
        s = _step_seed(seed, step, t.fixed_batch)
        gen = torch.Generator().manual_seed(s + 31)
        if cached is None:
            if f in pools:
                clean = _take(pools[f], torch.randint(t.pool_size, (batch_size,), generator=gen))
            else:
                clean = _clean_batch(kind, s, batch_size, f, t.height, t.width, device, *encoders)
            cached = _flow_batch(kind, clean, gen, t.cfg_dropout, t.timestep_shift, t.logit_mean, t.logit_std,
                                 max_len, device, tokenizer, text_encoder, tokenizer_2, text_encoder_2)
        xt, timestep, target, cond = cached
        if not t.fixed_batch:
            cached = None
        cond_keys[:] = sorted(cond)
        losses.append(step_fn(xt, timestep, target, *(cond[k] for k in cond_keys)))
        sched.step()
        check_and_log(kind, step, plan, losses, config.log_every)
    values = finite_values(f"train_transformer({kind})", losses)
    if ema is not None:
        ema.copy_to(transformer)
    transformer.eval()
    return values


@torch.no_grad()
def init_from(module: torch.nn.Module, source: torch.nn.Module) -> list[str]:
    """Copy into `module` every tensor of `source` with the same name and shape (e.g. a Wan T2V transformer into the
    I2V one); a weight whose input channels grew (the I2V patch embedding takes 36 channels instead of 16) gets the
    source's channels first and zeros after them, so the new inputs start switched off. Returns the names of
    `module`'s tensors left as initialised (the I2V image-attention projections and image embedder)."""
    theirs = source.state_dict()
    mine = module.state_dict()
    left = []
    for name, tensor in mine.items():
        other = theirs.get(name)
        if other is not None and other.shape == tensor.shape:
            tensor.copy_(other)
        elif (other is not None and other.dim() >= 2 and other.shape[0] == tensor.shape[0]
              and other.shape[2:] == tensor.shape[2:] and other.shape[1] < tensor.shape[1]):
            tensor.zero_()
            tensor[:, :other.shape[1]].copy_(other)
        else:
            left.append(name)
    return left


def train_pipeline(pipe, kind: str, config: TrainConfig, task: FlowTask = FlowTask()) -> list[float]:
    """`train_transformer` on the components of a ToyWorld pipeline (from `models.build_pipeline`)."""
    return train_transformer(
        pipe.transformer,
        pipe.vae,
        pipe.text_encoder,
        pipe.tokenizer,
        kind,
        config,
        task,
        text_encoder_2=getattr(pipe, "text_encoder_2", None),
        tokenizer_2=getattr(pipe, "tokenizer_2", None),
        image_encoder=getattr(pipe, "image_encoder", None),
        image_processor=getattr(pipe, "image_processor", None),
    )


# ------------------------------------------------------------------------------------------------------ save / load


def _cast_module(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast floating parameters to `dtype`, keeping the model's ``_keep_in_fp32_modules`` in float32."""
    keep = set(getattr(module, "_keep_in_fp32_modules", None) or [])
    for name, param in module.named_parameters():
        if param.is_floating_point() and not keep.intersection(name.split(".")):
            param.data = param.data.to(dtype)


def save_toyworld(pipe, directory, dtype: torch.dtype | None = torch.bfloat16, recipe: dict | None = None) -> dict:
    """``pipe.save_pretrained(directory)`` (safetensors) + ``checksums.json``; returns {relative path: sha256}.

    The transformer is cast **in place** to `dtype` first (bf16 by default, as shipped; its ``_keep_in_fp32_modules``
    stay fp32); the VAE and the small frozen text/image encoders stay fp32. ``dtype=None`` keeps the current dtypes.
    `recipe` (the command, seeds, wall time...) is written to ``toyworld_recipe.json`` and covered by the checksums too.
    """
    directory = Path(directory)
    if dtype is not None:
        for name, module in pipe.components.items():
            if isinstance(module, torch.nn.Module) and name in ("transformer", "transformer_2"):
                _cast_module(module, dtype)
    pipe.save_pretrained(directory, safe_serialization=True)
    return _seal(directory, recipe)


def _seal(directory: Path, recipe: dict | None) -> dict:
    """Write the recipe (if any) and ``checksums.json`` over every other file of `directory`."""
    files = {RECIPE_FILE: json.dumps(recipe, indent=2, sort_keys=True) + "\n"} if recipe is not None else None
    return seal_directory(directory, files)


def save_vae(vae, directory, recipe: dict | None = None) -> dict:
    """A trained VAE alone (fp32 safetensors) + ``checksums.json``, for `load_vae` (the three pipelines share two)."""
    directory = Path(directory)
    vae.save_pretrained(directory, safe_serialization=True)
    return _seal(directory, recipe)


def load_vae(directory):
    """The fp32 VAE of a `save_vae` directory or of a ToyWorld pipeline directory (its ``vae/``), checksums verified."""
    import diffusers

    directory = Path(directory)
    if not directory.is_dir():
        raise ToyWorldWeightsError(f"{directory}: no such ToyWorld VAE or pipeline directory")
    verify_checksums(directory)
    sub = directory / "vae" if (directory / "vae").is_dir() else directory
    class_name = json.loads((sub / "config.json").read_text())["_class_name"]
    if not class_name.startswith("AutoencoderKL"):
        raise ToyWorldWeightsError(f"{sub / 'config.json'}: {class_name} is not a VAE")
    vae = getattr(diffusers, class_name).from_pretrained(os.fspath(sub), torch_dtype=torch.float32,
                                                          local_files_only=True)
    for tensor in list(vae.parameters()) + list(vae.buffers()):
        tensor.data = tensor.data.clone()
    return vae.eval()


def verify_checksums(directory) -> dict:
    """Check every file listed in ``checksums.json``; raise `ToyWorldWeightsError` naming the file and checksum."""
    return _verify_checksums(directory, error=ToyWorldWeightsError, what="ToyWorld model")


def _stored_dtypes(directory: Path) -> dict:
    """{component: the floating dtype holding most parameters in its safetensors files}."""
    from safetensors import safe_open

    out: dict = {"default": torch.float32}
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
        counts: dict = {}
        for f in sub.glob("*.safetensors"):
            with safe_open(f, framework="pt") as st:
                for key in st.keys():
                    sl = st.get_slice(key)
                    dt = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}.get(sl.get_dtype())
                    if dt is not None:
                        counts[dt] = counts.get(dt, 0) + math.prod(sl.get_shape())
        if counts:
            out[sub.name] = max(counts, key=counts.get)
    return out


def load_toyworld(directory, dtype: torch.dtype | None = None, device=None):
    """Verify ``checksums.json`` then ``DiffusionPipeline.from_pretrained(directory)`` offline.

    `dtype` None keeps each component's stored dtype (the bit-identical round trip of `save_toyworld`); e.g.
    ``torch.float32`` upcasts everything (exact for bf16 weights; the CPU demo uses it). The weights are copied out
    of the memory-mapped files (unaligned mmap tensors make CPU GEMMs round differently).
    """
    from diffusers import DiffusionPipeline

    directory = Path(directory)
    if not directory.is_dir():
        raise ToyWorldWeightsError(f"{directory}: no such ToyWorld model directory")
    verify_checksums(directory)
    dtypes = _stored_dtypes(directory) if dtype is None else dtype
    pipe = DiffusionPipeline.from_pretrained(os.fspath(directory), torch_dtype=dtypes, local_files_only=True)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in list(component.parameters()) + list(component.buffers()):
                tensor.data = tensor.data.clone()
    if device is not None:
        pipe.to(device)
    return pipe


def clone_pipeline(pipe):
    """A deep copy of a pipeline (for comparisons in tests and the CLI)."""
    return copy.deepcopy(pipe)
