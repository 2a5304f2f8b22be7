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
from turbo.toyworld.graphed_step import GraphedStep
from turbo.toyworld.tokenizer import encode_prompts
from turbo.toyworld.videos import sample_videos

__all__ = [
    "CHECKSUMS_FILE",
    "StepPlan",
    "ToyWorldWeightsError",
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
]

logger = logging.getLogger("turbo")

CHECKSUMS_FILE = "checksums.json"
RECIPE_FILE = "toyworld_recipe.json"


class ToyWorldWeightsError(TurboError, OSError):
    """A ToyWorld weight directory is incomplete or a file does not match its recorded sha256."""


# ------------------------------------------------------------------------------------------------------------ helpers


def _autocast(device: torch.device):
    if device.type == "cuda":  # no cast cache: a captured CUDA graph must not keep casts across steps
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


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


class _EMA:
    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        pairs = [(self.shadow[n], p.detach()) for n, p in module.named_parameters() if n in self.shadow]
        if pairs:
            shadow, live = zip(*pairs, strict=True)
            torch._foreach_lerp_(list(shadow), list(live), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        for n, p in module.named_parameters():
            if n in self.shadow:
                p.copy_(self.shadow[n])


class StepPlan:
    """How many steps a loop runs: a fixed count, or as many as fit in `minutes` of wall time.

    With `minutes`, the loop runs `probe` steps, measures the time per step over the last ``probe // 2`` of them and
    fixes ``total`` (at most `max_steps` when given); every `probe` steps after that it re-estimates ``total`` from the
    rate since the probe (other processes on the same GPU come and go), and it stops once the wall time is spent
    whatever the estimate. The learning-rate schedule reads ``total`` lazily, so a cosine decay follows the estimate;
    `stop(step)` says when to leave the loop.
    """

    def __init__(self, steps: int | None, minutes: float | None = None, probe: int = 30):
        if steps is None and minutes is None:
            raise ValueError("give steps, minutes or both")
        if steps is not None and steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if minutes is not None and minutes <= 0:
            raise ValueError(f"minutes must be > 0, got {minutes}")
        self.max_steps, self.minutes, self.probe = steps, minutes, max(4, probe)
        self.total = steps if minutes is None else (steps or 10**9)
        self._times: list[float] = []
        self._start = None

    def _fit(self, step: int, now: float) -> None:
        """``total`` from the rate since step ``probe // 2`` (the first steps include warm-up costs)."""
        since_step = self.probe // 2
        per_step = (now - self._times[since_step]) / max(1, step - since_step)
        fit = step + int((self.minutes * 60.0 - (now - self._start)) / max(per_step, 1e-6))
        self.total = max(self.probe, fit if self.max_steps is None else min(fit, self.max_steps))

    def stop(self, step: int) -> bool:
        import time

        now = time.perf_counter()
        if self._start is None:
            self._start = now
        if self.minutes is not None:
            if step <= self.probe:
                self._times.append(now)
            if step >= self.probe and step % self.probe == 0:
                self._fit(step, now)
            if step > self.probe and now - self._start > self.minutes * 60.0:
                self.total = step
        return step >= self.total


class _TensorLambdaLR:
    """`LambdaLR` for an optimizer whose learning rate is a device tensor (capturable AdamW): the rate is written into
    that tensor in place, so a captured CUDA graph reads each step's value."""

    def __init__(self, optimizer: torch.optim.Optimizer, factor):
        self.optimizer, self.factor, self.last_epoch = optimizer, factor, 0
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self._apply()

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"].fill_(base * self.factor(self.last_epoch))

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()


def _optimizer(module, lr, weight_decay, plan: StepPlan, warmup, schedule: str = "constant", min_lr: float = 0.1,
               beta2: float = 0.99, capturable: bool = False):
    """AdamW with a linear warm-up, then a constant rate or a cosine decay to ``min_lr * lr`` at ``plan.total``.

    `capturable`: an AdamW that a CUDA graph can capture (state and learning rate on the device)."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    params = [p for p in module.parameters() if p.requires_grad]
    if capturable:
        opt = torch.optim.AdamW(params, lr=torch.tensor(float(lr), device=params[0].device), betas=(0.9, beta2),
                                weight_decay=weight_decay, capturable=True, foreach=True)
    else:
        opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, beta2), weight_decay=weight_decay)
    warmup = max(0, warmup if plan.max_steps is None else min(warmup, plan.max_steps // 10))

    def factor(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        if schedule == "constant":
            return 1.0
        span = max(1, plan.total - warmup)
        progress = min(1.0, (s - warmup) / span)
        return min_lr + (1 - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))

    sched = _TensorLambdaLR(opt, factor) if capturable else torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return params, opt, sched


def _progress(plan: StepPlan, desc: str, show: bool | None):
    """A tqdm bar over the steps of `plan` (its total is refreshed once a time budget fixes it)."""
    import itertools

    from tqdm.auto import tqdm

    bar = tqdm(total=plan.total if plan.minutes is None else None, desc=desc, leave=False,
               disable=(not show) if show is not None else None)
    for step in itertools.count():
        if plan.stop(step):
            break
        if plan.minutes is not None and bar.total != plan.total and step == plan.probe:
            bar.total = plan.total
            bar.refresh()
        yield step
        bar.update(1)
    bar.close()


def _log(name: str, step: int, plan: StepPlan, losses: list, log_every: int) -> None:
    """Every `log_every` steps: check the losses since the last check are finite (one GPU sync) and log their mean.

    `losses` holds detached 0-d tensors (no per-step synchronisation); they are checked and logged in windows.
    """
    if not log_every or (step + 1) % log_every:
        return
    window = torch.stack(losses[-log_every:]).float().cpu()
    if not torch.isfinite(window).all():
        bad = int((~torch.isfinite(window)).nonzero()[0]) + step + 1 - len(window)
        raise FloatingPointError(f"{name}: loss became {float(window[bad - step - 1 + len(window)])} at step {bad}; "
                                 "lower the learning rate")
    total = "?" if plan.minutes is not None and step < plan.probe else plan.total
    memory = (f", GPU memory {torch.cuda.memory_allocated() / 2**30:.1f} GiB (peak "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f})" if torch.cuda.is_available() else "")
    logger.info("%s step %d/%s loss %.5f (mean of last %d: %.5f)%s", name, step + 1, total, float(window[-1]),
                len(window), float(window.mean()), memory)


def _finish(name: str, losses: list) -> list[float]:
    """Loss tensors -> floats; raises FloatingPointError if any is not finite."""
    values = torch.stack(losses).float().cpu().tolist() if losses else []
    for step, value in enumerate(values):
        if not math.isfinite(value):
            raise FloatingPointError(f"{name}: loss became {value} at step {step}; lower the learning rate")
    return values


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


def _update(loss, opt, params, grad_clip, ema, model) -> None:
    """Backward, optional gradient clipping, optimizer step and EMA (no CPU synchronisation: CUDA-graph safe)."""
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    if ema is not None:
        ema.update(model)


def train_vae(
    vae,
    steps: int | None,
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
    calibrate_frames: int | None = None,
    fg_weight: float = 0.0,
    crop: int | None = None,
    sample_scale: float = 1.0,
    mse_weight: float = 0.0,
    beta2: float = 0.99,
    minutes: float | None = None,
    schedule: str = "constant",
    num_objects=(1, 2),
    long_frames: int | None = None,
    long_every: int = 0,
    decoder_only: bool = False,
    cuda_graphs: bool = True,
    show_progress: bool | None = None,
) -> list[float]:
    """Train `vae` (AutoencoderKLWan or AutoencoderKLHunyuanVideo) in place; returns the loss of every step.

    `steps` steps, or with `minutes` as many as fit in that wall time (at most `steps` when also given; see
    `StepPlan`); `schedule` "cosine" decays the learning rate to a tenth at the last step. `fg_weight` multiplies
    the reconstruction loss on object pixels by ``1 + fg_weight``; `crop` trains on random square crops.
    `num_objects` (an int or choices) sets the objects per training video: more objects, more object pixels per step.
    Every `long_every`-th step trains on `long_frames`-frame clips instead of `frames`: the causal VAEs do not
    extrapolate past the clip length they trained on (the zero padding at the start is in every receptive field of a
    short clip), so the longest clip the pipelines generate must be seen. `sample_scale` scales the posterior noise
    of the decoded sample (0: a plain autoencoder on the posterior mean, which is what the pipelines encode with; it
    learns much faster). `mse_weight` adds that times the squared error to the per-pixel L1; `beta2` is AdamW's
    second-moment decay; ``grad_clip=0`` disables clipping. Batches are fresh `sample_videos` draws (seed derived
    from `seed` and the step); with `fixed_batch` every step sees the same batch and the same posterior noise (an
    overfit check). The VAE trains in fp32 (also on CUDA: the Wan causal convolutions are small and bf16 hurts
    reconstruction). Afterwards `calibrate_vae` sets the latent normalisation (unless `calibrate` is False) and the
    VAE is left in eval mode. On CUDA with `cuda_graphs` each step (forward, backward, update) replays a CUDA graph
    per clip length (see `GraphedStep`).
    `decoder_only` trains the decoder (and ``post_quant_conv``) of a trained VAE and freezes the rest: the latents do
    not change, so transformers trained on them stay valid and the latent normalisation is kept (no calibration).
    """
    _check_shape(frames, height, width)
    if long_every:
        _check_shape(long_frames or 0, height, width)
    device = torch.device(device)
    torch.manual_seed(seed)
    _to_fp32(vae.to(device)).train()
    if decoder_only:
        decoding = ("decoder.", "post_quant_conv.")
        for name, param in vae.named_parameters():
            param.requires_grad_(name.startswith(decoding))
        calibrate = False
    plan = StepPlan(steps, minutes)
    graphs = cuda_graphs and device.type == "cuda"
    params, opt, sched = _optimizer(vae, lr, weight_decay, plan, warmup, schedule, beta2=beta2, capturable=graphs)
    ema = _EMA(vae, ema_decay) if ema_decay else None

    def step_fn(x, weight, *noise):
        loss = _vae_step_loss(vae, x, weight, noise[0] if noise else None, kl_weight, mse_weight)
        _update(loss, opt, params, grad_clip, ema, vae)
        return loss

    step_fn = GraphedStep(step_fn, opt, graphs)
    losses: list[torch.Tensor] = []
    for step in _progress(plan, "vae", show_progress):
        clip = long_frames if long_every and step % long_every == long_every - 1 else frames
        x, _ = _videos(_step_seed(seed, step, fixed_batch), batch_size, clip, height, width, device, num_objects)
        gen = torch.Generator().manual_seed(_step_seed(seed + 17, step, fixed_batch))
        weight = _foreground_weight(x, fg_weight) if fg_weight else torch.ones_like(x[:, :1])
        both = _random_crop(torch.cat([x, weight], dim=1), crop, gen)  # one window for video and weight
        x, weight = both[:, :3], both[:, 3:]
        noise = (sample_scale * torch.randn(_latent_shape(x), generator=gen).to(device),) if sample_scale else ()
        losses.append(step_fn(x, weight, *noise))
        sched.step()
        _log("vae", step, plan, losses, log_every)
    values = _finish("train_vae", losses)
    if ema is not None:
        ema.copy_to(vae)
    vae.requires_grad_(True).eval()
    if calibrate:
        calibrate_vae(vae, calibrate_count, frames=calibrate_frames or frames, height=height, width=width,
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


class _CompiledForward:
    """``torch.compile(module)`` when `enabled`, called like the module; if compiling fails, warns once and calls the
    module eagerly from then on (a failed first call has changed nothing: no backward or update ran yet)."""

    def __init__(self, module: torch.nn.Module, enabled: bool):
        self.module = module
        self.compiled = torch.compile(module, dynamic=False) if enabled else None  # one graph per clip length

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - any compiler failure: train eagerly
                logger.warning("torch.compile of the transformer failed (%s: %s); training eagerly",
                               type(error).__name__, str(error).splitlines()[0] if str(error) else "")
                self.compiled = None
        return self.module(*args, **kwargs)


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
    steps: int | None,
    batch_size: int = 2,
    frames: int | tuple[int, ...] = 33,
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
    pool_size: int = 0,
    minutes: float | None = None,
    schedule: str = "constant",
    cuda_graphs: bool = True,
    compile_model: bool = False,
    show_progress: bool | None = None,
) -> list[float]:
    """Train `transformer` in place with rectified flow matching; returns the loss of every step.

    `kind` is "wan-t2v", "wan-i2v" (also needs `image_encoder`, `image_processor`) or "hunyuan-t2v" (`text_encoder`
    is the Llama model, `text_encoder_2` the CLIP text model; `tokenizer_2` defaults to `tokenizer`). The VAE and the
    text/image encoders are frozen. `max_sequence_length` defaults to the pipelines' (Wan 512, Hunyuan 256): the Wan
    transformers cross-attend to the zero-padded positions too, so training must pad as sampling does.

    `frames` may be a tuple of frame counts (step k uses ``frames[k % len(frames)]``), so one model serves both the
    evaluation and the demo clip length. With `pool_size` > 0 the VAE encodes `pool_size` videos per frame count once
    and each step draws its batch from that pool (fresh caption dropout, noise and t every step): the VAE encoder then
    costs nothing per step. `steps`, `minutes` and `schedule` work as in `train_vae`.
    With `fixed_batch` every step uses the same videos, captions, caption dropout, noise and t (an overfit check).
    On CUDA with `cuda_graphs` each step (forward, backward, update) replays a CUDA graph (see `GraphedStep`);
    `compile_model` runs the forward through ``torch.compile`` (fuses the memory-bound elementwise work that dominates
    at these widths; compiling takes a minute per clip length; falls back to eager if compiling fails).
    """
    from turbo.toyworld.models import KINDS

    if kind not in KINDS:
        raise ValueError(f"unknown ToyWorld kind {kind!r}; known: {', '.join(KINDS)}")
    if kind == "wan-i2v" and (image_encoder is None or image_processor is None):
        raise ValueError("train_transformer(kind='wan-i2v') needs image_encoder and image_processor")
    if kind == "hunyuan-t2v" and text_encoder_2 is None:
        raise ValueError("train_transformer(kind='hunyuan-t2v') needs text_encoder_2 (the CLIP text model)")
    frame_counts = (frames,) if isinstance(frames, int) else tuple(frames)
    for f in frame_counts:
        _check_shape(f, height, width)
    tokenizer_2 = tokenizer_2 or tokenizer
    max_len = max_sequence_length or (256 if kind == "hunyuan-t2v" else 512)
    device = torch.device(device)
    torch.manual_seed(seed)
    for module in (vae, text_encoder, text_encoder_2, image_encoder):
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    encoders = (vae, image_encoder, image_processor)
    pools = {}
    if pool_size and not fixed_batch:
        for i, f in enumerate(frame_counts):
            pools[f] = _latent_pool(kind, seed + 101 * i, pool_size, batch_size, f, height, width, device, *encoders)
            _pool_text(pools[f], kind, batch_size, max_len, device, tokenizer, text_encoder, tokenizer_2,
                       text_encoder_2)
        logger.info("%s: latent pool of %d videos per frame count %s ready", kind, pool_size, frame_counts)
    _to_fp32(transformer.to(device)).train()
    plan = StepPlan(steps, minutes)
    graphs = cuda_graphs and device.type == "cuda"
    params, opt, sched = _optimizer(transformer, lr, weight_decay, plan, warmup, schedule, capturable=graphs)
    ema = _EMA(transformer, ema_decay) if ema_decay else None
    cond_keys: list[str] = []
    forward = _CompiledForward(transformer, enabled=compile_model)

    def step_fn(xt, timestep, target, *cond_values):
        cond = dict(zip(cond_keys, cond_values, strict=True))
        with _autocast(device):
            pred = forward(hidden_states=xt, timestep=timestep, return_dict=False, **cond)[0]
        loss = F.mse_loss(pred.float(), target.float())
        _update(loss, opt, params, grad_clip, ema, transformer)
        return loss

    step_fn = GraphedStep(step_fn, opt, graphs)
    losses: list[torch.Tensor] = []
    cached = None
    for step in _progress(plan, kind, show_progress):
        f = frame_counts[step % len(frame_counts)]
        s = _step_seed(seed, step, fixed_batch)
        gen = torch.Generator().manual_seed(s + 31)
        if cached is None:
            if f in pools:
                clean = _take(pools[f], torch.randint(pool_size, (batch_size,), generator=gen))
            else:
                clean = _clean_batch(kind, s, batch_size, f, height, width, device, *encoders)
            cached = _flow_batch(kind, clean, gen, cfg_dropout, timestep_shift, logit_mean, logit_std, max_len,
                                 device, tokenizer, text_encoder, tokenizer_2, text_encoder_2)
        xt, timestep, target, cond = cached
        if not fixed_batch:
            cached = None
        cond_keys[:] = sorted(cond)
        losses.append(step_fn(xt, timestep, target, *(cond[k] for k in cond_keys)))
        sched.step()
        _log(kind, step, plan, losses, log_every)
    values = _finish(f"train_transformer({kind})", losses)
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
    return _seal(directory, recipe)


def _seal(directory: Path, recipe: dict | None) -> dict:
    """Write the recipe (if any) and ``checksums.json`` over every other file of `directory`."""
    if recipe is not None:
        (directory / RECIPE_FILE).write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")
    sums = {
        p.relative_to(directory).as_posix(): _sha256(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != CHECKSUMS_FILE
    }
    (directory / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n")
    return sums


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
