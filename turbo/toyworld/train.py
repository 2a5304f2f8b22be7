"""ToyWorld training loops (plain PyTorch) and the checksummed save/load of trained pipelines.

* `train_vae`: reconstruction (L1 + a small KL) of `sample_videos` batches, then `calibrate_vae` sets the latent
  normalisation the pipelines use when decoding (Wan: per-channel ``latents_mean/std``; Hunyuan: ``scaling_factor``).
* `train_transformer`: rectified flow matching exactly as diffusers' Wan/Hunyuan pipelines sample it with
  `FlowMatchEulerDiscreteScheduler`: ``x_t = (1 - t) x0 + t eps``, target ``v = eps - x0``, timestep ``1000 t``, with x0
  the VAE latent (posterior mode) normalised as the pipeline de-normalises it. Captions are dropped to the empty
  prompt (the pipelines' default negative prompt) with probability ``cfg_dropout``, for classifier-free guidance.
* `save_toyworld` / `load_toyworld`: ``save_pretrained`` (safetensors) plus ``checksums.json`` (sha256 of every file);
  loading verifies every checksum first and names the file and the expected checksum on any mismatch.

On CUDA the transformer trains in bf16 autocast with fp32 master weights; on a CPU everything is fp32.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from turbo.errors import TurboError
from turbo.toyworld.tokenizer import encode_prompts
from turbo.toyworld.videos import sample_videos

__all__ = [
    "CHECKSUMS_FILE",
    "ToyWorldWeightsError",
    "calibrate_vae",
    "denormalize_latents",
    "encode_latents",
    "load_toyworld",
    "normalize_latents",
    "save_toyworld",
    "train_pipeline",
    "train_transformer",
    "train_vae",
]

logger = logging.getLogger("turbo")

CHECKSUMS_FILE = "checksums.json"
RECIPE_FILE = "toyworld_recipe.json"


class ToyWorldWeightsError(TurboError, OSError):
    """A ToyWorld weight directory is incomplete or a file does not match its recorded sha256."""


# ------------------------------------------------------------------------------------------------------------ helpers


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _videos(seed: int, batch_size: int, frames: int, height: int, width: int, device) -> tuple[torch.Tensor, list]:
    """([B, 3, F, H, W] in [-1, 1], captions) — the layout the diffusers VAEs take."""
    videos, _, captions = sample_videos(seed, batch_size, frames, height, width, device=device)
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


class _EMA:
    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for n, p in module.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        for n, p in module.named_parameters():
            if n in self.shadow:
                p.copy_(self.shadow[n])


def _optimizer(module, lr, weight_decay, steps, warmup):
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    warmup = max(0, min(warmup, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    return params, opt, sched


def _progress(steps: int, desc: str, show: bool | None):
    from tqdm.auto import tqdm

    return tqdm(range(steps), desc=desc, disable=(not show) if show is not None else None, leave=False)


def _log(name: str, step: int, steps: int, losses: list[float], log_every: int, bar) -> None:
    if bar is not None and hasattr(bar, "set_postfix"):
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
        window = losses[-log_every:]
        logger.info("%s step %d/%d loss %.5f (mean of last %d: %.5f)", name, step + 1, steps, losses[-1], len(window),
                    sum(window) / len(window))


def _finite(loss: torch.Tensor, name: str, step: int) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{name}: loss became {loss.item()} at step {step}; lower the learning rate")


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


def _vae_step_loss(vae, x: torch.Tensor, kl_weight: float, generator: torch.Generator | None):
    dist = vae.encode(x).latent_dist
    z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator).to(x.device, dist.mean.dtype)
    rec = vae.decode(z).sample
    kl = 0.5 * (dist.mean.pow(2) + dist.var - 1.0 - dist.logvar).mean()
    return F.l1_loss(rec.float(), x.float()) + kl_weight * kl


def _optimizer_step(loss, opt, sched, params, grad_clip, ema, model) -> float:
    """One update: backward, optional gradient clipping, optimizer and schedule step, EMA. Returns the loss value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    sched.step()
    if ema is not None:
        ema.update(model)
    return float(loss.detach())


def train_vae(
    vae,
    steps: int,
    batch_size: int = 2,
    frames: int = 33,
    height: int = 256,
    width: int = 256,
    seed: int = 0,
    device="cpu",
    lr: float = 1e-3,
    *,
    kl_weight: float = 1e-4,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    ema_decay: float | None = None,
    warmup: int = 100,
    log_every: int = 50,
    fixed_batch: bool = False,
    calibrate: bool = True,
    calibrate_count: int = 16,
    show_progress: bool | None = None,
) -> list[float]:
    """Train `vae` (AutoencoderKLWan or AutoencoderKLHunyuanVideo) in place; returns the loss of every step.

    Batches are fresh `sample_videos` draws (seed derived from `seed` and the step); with `fixed_batch` every step
    sees the same batch and the same posterior noise (an overfit check). The VAE trains in fp32 (also on CUDA: the
    Wan causal convolutions are small and bf16 hurts reconstruction). Afterwards `calibrate_vae` sets the latent
    normalisation (unless `calibrate` is False) and the VAE is left in eval mode.
    """
    _check_shape(frames, height, width)
    device = torch.device(device)
    torch.manual_seed(seed)
    _to_fp32(vae.to(device)).train()
    params, opt, sched = _optimizer(vae, lr, weight_decay, steps, warmup)
    ema = _EMA(vae, ema_decay) if ema_decay else None
    losses: list[float] = []
    bar = _progress(steps, "vae", show_progress)
    for step in bar:
        x, _ = _videos(_step_seed(seed, step, fixed_batch), batch_size, frames, height, width, device)
        gen = torch.Generator().manual_seed(_step_seed(seed + 17, step, fixed_batch))
        loss = _vae_step_loss(vae, x, kl_weight, gen)
        _finite(loss, "train_vae", step)
        losses.append(_optimizer_step(loss, opt, sched, params, grad_clip, ema, vae))
        _log("vae", step, steps, losses, log_every, bar)
    if ema is not None:
        ema.copy_to(vae)
    vae.eval()
    if calibrate:
        calibrate_vae(vae, calibrate_count, frames=frames, height=height, width=width, seed=seed + 1, device=device)
    return losses


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


def _flow_batch(kind, s, batch_size, frames, height, width, cfg_dropout, timestep_shift, logit_mean, logit_std,
            max_len, device, vae, tokenizer, text_encoder, tokenizer_2, text_encoder_2, image_encoder,
            image_processor):
    """(x_t [with the I2V condition channels], 1000 t, target eps - x0, transformer kwargs) of one training batch."""
    gen = torch.Generator().manual_seed(s + 31)
    x, captions = _videos(s, batch_size, frames, height, width, device)
    drop = torch.rand(batch_size, generator=gen) < cfg_dropout
    captions = ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
    cond = _text_condition(kind, captions, tokenizer, text_encoder, tokenizer_2, text_encoder_2, max_len, device)
    x0 = encode_latents(vae, x)
    noise = torch.randn(x0.shape, generator=gen).to(device)
    t = _sample_t(gen, batch_size, logit_mean, logit_std, timestep_shift).to(device)
    tt = t.view(-1, 1, 1, 1, 1)
    xt = (1 - tt) * x0 + tt * noise
    target = noise - x0
    timestep = 1000.0 * t
    if kind == "wan-i2v":
        condition, first_u8 = _first_frame_condition(vae, x)
        cond["encoder_hidden_states_image"] = _image_embeds(image_encoder, image_processor, first_u8, device)
        xt = torch.cat([xt, condition], dim=1)
    if kind == "hunyuan-t2v":
        cond["guidance"] = torch.full((batch_size,), 1000.0, device=device)  # ignored: guidance_embeds=False
    return xt, timestep, target, cond


def train_transformer(
    transformer,
    vae,
    text_encoder,
    tokenizer,
    kind: str,
    steps: int,
    batch_size: int = 2,
    frames: int = 33,
    height: int = 256,
    width: int = 256,
    seed: int = 0,
    device="cpu",
    lr: float = 3e-4,
    cfg_dropout: float = 0.1,
    *,
    text_encoder_2=None,
    tokenizer_2=None,
    image_encoder=None,
    image_processor=None,
    max_sequence_length: int | None = None,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    ema_decay: float | None = None,
    warmup: int = 100,
    timestep_shift: float = 1.0,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    log_every: int = 50,
    fixed_batch: bool = False,
    show_progress: bool | None = None,
) -> list[float]:
    """Train `transformer` in place with rectified flow matching; returns the loss of every step.

    `kind` is "wan-t2v", "wan-i2v" (also needs `image_encoder`, `image_processor`) or "hunyuan-t2v" (`text_encoder`
    is the Llama model, `text_encoder_2` the CLIP text model; `tokenizer_2` defaults to `tokenizer`). The VAE and the
    text/image encoders are frozen. `max_sequence_length` defaults to the pipelines' (Wan 512, Hunyuan 256): the Wan
    transformers cross-attend to the zero-padded positions too, so training must pad as sampling does.

    With `fixed_batch` every step uses the same videos, captions, caption dropout, noise and t (an overfit check).
    """
    from turbo.toyworld.models import KINDS

    if kind not in KINDS:
        raise ValueError(f"unknown ToyWorld kind {kind!r}; known: {', '.join(KINDS)}")
    if kind == "wan-i2v" and (image_encoder is None or image_processor is None):
        raise ValueError("train_transformer(kind='wan-i2v') needs image_encoder and image_processor")
    if kind == "hunyuan-t2v" and text_encoder_2 is None:
        raise ValueError("train_transformer(kind='hunyuan-t2v') needs text_encoder_2 (the CLIP text model)")
    _check_shape(frames, height, width)
    tokenizer_2 = tokenizer_2 or tokenizer
    max_len = max_sequence_length or (256 if kind == "hunyuan-t2v" else 512)
    device = torch.device(device)
    torch.manual_seed(seed)
    for module in (vae, text_encoder, text_encoder_2, image_encoder):
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    _to_fp32(transformer.to(device)).train()
    params, opt, sched = _optimizer(transformer, lr, weight_decay, steps, warmup)
    ema = _EMA(transformer, ema_decay) if ema_decay else None
    losses: list[float] = []
    bar = _progress(steps, kind, show_progress)
    cached = None
    for step in bar:
        if cached is None:
            cached = _flow_batch(
                kind, _step_seed(seed, step, fixed_batch), batch_size, frames, height, width, cfg_dropout,
                timestep_shift, logit_mean, logit_std, max_len, device, vae, tokenizer, text_encoder, tokenizer_2,
                text_encoder_2, image_encoder, image_processor,
            )
        xt, timestep, target, cond = cached
        if not fixed_batch:
            cached = None
        with _autocast(device):
            pred = transformer(hidden_states=xt, timestep=timestep, return_dict=False, **cond)[0]
        loss = F.mse_loss(pred.float(), target.float())
        _finite(loss, f"train_transformer({kind})", step)
        losses.append(_optimizer_step(loss, opt, sched, params, grad_clip, ema, transformer))
        _log(kind, step, steps, losses, log_every, bar)
    if ema is not None:
        ema.copy_to(transformer)
    transformer.eval()
    return losses


def train_pipeline(pipe, kind: str, steps: int, **kwargs) -> list[float]:
    """`train_transformer` on the components of a ToyWorld pipeline (from `models.build_pipeline`)."""
    return train_transformer(
        pipe.transformer,
        pipe.vae,
        pipe.text_encoder,
        pipe.tokenizer,
        kind,
        steps,
        text_encoder_2=getattr(pipe, "text_encoder_2", None),
        tokenizer_2=getattr(pipe, "tokenizer_2", None),
        image_encoder=getattr(pipe, "image_encoder", None),
        image_processor=getattr(pipe, "image_processor", None),
        **kwargs,
    )


# ------------------------------------------------------------------------------------------------------ save / load


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    if recipe is not None:
        (directory / RECIPE_FILE).write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")
    sums = {
        p.relative_to(directory).as_posix(): _sha256(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != CHECKSUMS_FILE
    }
    (directory / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n")
    return sums


def verify_checksums(directory) -> dict:
    """Check every file listed in ``checksums.json``; raise `ToyWorldWeightsError` naming the file and checksum."""
    directory = Path(directory)
    listing = directory / CHECKSUMS_FILE
    if not listing.is_file():
        raise ToyWorldWeightsError(f"{listing}: missing; a ToyWorld model directory needs its {CHECKSUMS_FILE}")
    try:
        sums = json.loads(listing.read_text())
    except json.JSONDecodeError as e:
        raise ToyWorldWeightsError(f"{listing}: not valid JSON ({e})") from e
    for rel, expected in sorted(sums.items()):
        path = directory / rel
        if not path.is_file():
            raise ToyWorldWeightsError(f"{path}: missing (expected sha256 {expected}); re-download or retrain it")
        actual = _sha256(path)
        if actual != expected:
            raise ToyWorldWeightsError(
                f"{path}: sha256 {actual} does not match the recorded {expected}; the file is corrupt or was changed"
            )
    unlisted = [p for p in directory.rglob("*.safetensors") if p.relative_to(directory).as_posix() not in sums]
    if unlisted:
        raise ToyWorldWeightsError(f"{unlisted[0]}: weight file not listed in {listing}; refusing to load it")
    return sums


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
