"""Distillation data: latents and prompt embeddings encoded once and cached on disk, read back as a torch Dataset.

A cache directory::

    shard-00000.safetensors, shard-00001.safetensors, ...   each "latents" [N, C, F, H, W], "prompt_embeds" [N, L, D]
                                                            (HunyuanVideo also "pooled_prompt_embeds" [N, P] and
                                                            "prompt_attention_mask" [N, L], int64)
    negative_prompt_embeds.safetensors                      the same text keys for the negative prompt, batch 1
                                                            ("prompt_embeds" [1, L, D]); the teacher's CFG uses it
    manifest.json                                           count, shapes, dtype, source, pipeline class and model,
                                                            negative prompt, prompts, shards (count, sha256), skipped
    checksums.json                                          sha256 of every file (`seal_directory`); written last: a
                                                            directory without it is an unfinished cache

Latents are in the transformer's latent space, exactly what the pipeline's ``prepare_latents`` / denoising loop work
in and what its decode step undoes:

* Wan: ``(z - latents_mean) / latents_std`` (per channel, from ``vae.config``), z the posterior mode
  (``retrieve_latents(..., sample_mode="argmax")``). diffusers 0.42 ``pipeline_wan.py`` decodes with
  ``latents / (1 / latents_std) + latents_mean`` (``WanPipeline.__call__``, after the loop), and
  ``pipeline_wan_i2v.py`` ``prepare_latents`` encodes the condition video as ``(z - latents_mean) * (1 / latents_std)``.
* HunyuanVideo: ``z * scaling_factor``; ``pipeline_hunyuan_video.py`` decodes ``latents / vae.config.scaling_factor``.

Prompt embeddings are the pipeline's own ``encode_prompt`` output, padded as the pipeline pads (Wan: zeros up to
``max_sequence_length``, 512 as in ``WanPipeline.__call__``; HunyuanVideo: ``max_sequence_length`` 256 after the
template crop, with its attention mask). Floating tensors are stored in `dtype` (bfloat16 by default).

Builders (each encodes once, writes shards atomically under a tqdm bar and returns the directory):
`cache_teacher_latents` (the teacher's own samples, the rCM recipe), `cache_video_folder` (a folder of videos through
the VAE) and `cache_toyworld` (ToyWorld procedural clips, no download).
"""

from __future__ import annotations

import bisect
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from turbo.errors import TurboError, UnsupportedModelError
from turbo.training.checkpoint import CHECKSUMS_FILE, atomic_path, seal_directory, sha256_file, verify_checksums

__all__ = [
    "CACHE_FORMAT",
    "MANIFEST_FILE",
    "NEGATIVE_FILE",
    "VIDEO_EXTENSIONS",
    "LatentCache",
    "LatentCacheError",
    "cache_teacher_latents",
    "cache_toyworld",
    "cache_video_folder",
    "encode_videos",
    "normalize_latents",
    "read_video",
]

logger = logging.getLogger("turbo")

CACHE_FORMAT = "turbo-latent-cache-1"
MANIFEST_FILE = "manifest.json"
NEGATIVE_FILE = "negative_prompt_embeds.safetensors"
SHARD_NAME = "shard-{:05d}.safetensors"
VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif", ".mov", ".mkv", ".avi")
SUPPORTED = ("a text-to-video WanPipeline (Wan2.1, or Wan2.2 with transformer_2) or a HunyuanVideoPipeline, "
             "with its vae, tokenizer and text encoder")
_DEFAULT_MAX_SEQUENCE_LENGTH = {"wan": 512, "hunyuanvideo": 256}  # the pipelines' __call__ defaults


class LatentCacheError(TurboError, ValueError):
    """A directory is not a (complete, intact) latent cache, or a cache cannot be built there."""


# ------------------------------------------------------------------------------------------------ pipeline plumbing


def _family(pipe) -> str:
    """'wan' or 'hunyuanvideo' for a supported text-to-video pipeline; else `UnsupportedModelError` in one sentence."""
    from turbo.adapters import adapter_for

    transformer = getattr(pipe, "transformer", None)
    family = None
    if all(getattr(pipe, name, None) is not None for name in ("transformer", "vae", "text_encoder", "tokenizer")) \
            and callable(getattr(pipe, "encode_prompt", None)):
        try:
            family = adapter_for(transformer).family
        except UnsupportedModelError:
            family = None
        config = getattr(transformer, "config", None)
        if config is not None and config.get("in_channels") != config.get("out_channels"):
            family = None  # image-conditioned (Wan I2V: 36 input channels): its latents need an image condition
    if family not in _DEFAULT_MAX_SEQUENCE_LENGTH:
        raise UnsupportedModelError(f"{type(pipe).__name__} cannot build a distillation latent cache; supported: "
                                    f"{SUPPORTED}.")
    return family


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def normalize_latents(family: str, vae, z: torch.Tensor) -> torch.Tensor:
    """VAE posterior latents z [B, C, F, H, W] -> the transformer's latent space (see the module docstring)."""
    if family == "wan":
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(z.device, z.dtype)
        std = torch.tensor(vae.config.latents_std).view(shape).to(z.device, z.dtype)
        return (z - mean) / std
    return z * vae.config.scaling_factor


def _normalisation_text(family: str) -> str:
    if family == "wan":
        return "(z - vae.config.latents_mean) / vae.config.latents_std, z = posterior mode"
    return "z * vae.config.scaling_factor, z = posterior mode"


@torch.no_grad()
def encode_videos(pipe, videos: torch.Tensor) -> torch.Tensor:
    """Videos [B, 3, F, H, W] in [-1, 1] -> normalised latents [B, C, F', H', W'] float32 (posterior mode, as the
    pipelines' ``retrieve_latents(..., "argmax")``)."""
    family = _family(pipe)
    vae = pipe.vae
    z = vae.encode(videos.to(_device(vae), vae.dtype)).latent_dist.mode()
    return normalize_latents(family, vae, z.float())


@torch.no_grad()
def _encode_text(pipe, family: str, prompts: list[str], max_sequence_length: int, prompt_template) -> dict:
    """{"prompt_embeds": [B, L, D], (Hunyuan) "pooled_prompt_embeds": [B, P], "prompt_attention_mask": [B, L]}."""
    device = _device(pipe.text_encoder)
    if family == "wan":
        embeds, _ = pipe.encode_prompt(prompt=list(prompts), do_classifier_free_guidance=False,
                                       max_sequence_length=max_sequence_length, device=device)
        return {"prompt_embeds": embeds}
    kwargs = {} if prompt_template is None else {"prompt_template": prompt_template}
    embeds, pooled, mask = pipe.encode_prompt(prompt=list(prompts), max_sequence_length=max_sequence_length,
                                              device=device, **kwargs)
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "prompt_attention_mask": mask}


def _check_size(pipe, height: int, width: int, num_frames: int) -> None:
    temporal = getattr(pipe, "vae_scale_factor_temporal", 4)
    if height % 16 or width % 16 or height < 16 or width < 16 or num_frames < 1 or (num_frames - 1) % temporal:
        raise LatentCacheError(f"video size {height}x{width}x{num_frames} frames is not one the pipeline can encode; "
                               f"height and width must be multiples of 16 and num_frames = {temporal}k + 1")


class _QuietPipeline:
    """Turn the pipeline's own per-call progress bar off for the duration (ours shows the whole run)."""

    def __init__(self, pipe):
        self.pipe = pipe

    def __enter__(self):
        self.saved = dict(getattr(self.pipe, "_progress_bar_config", {}) or {})
        self.pipe.set_progress_bar_config(**{**self.saved, "disable": True})

    def __exit__(self, *exc):
        self.pipe._progress_bar_config = self.saved


def _bar(total: int, desc: str, progress: bool | None):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="clip", disable=None if progress is None else not progress)


# ------------------------------------------------------------------------------------------------------------ writing


class _CacheWriter:
    """Buffers rows and writes full shards atomically; `finish` writes the negative embeddings, the manifest and
    ``checksums.json`` (the commit: without it the directory is not a cache)."""

    def __init__(self, directory, *, dtype: torch.dtype, shard_size: int, overwrite: bool):
        if shard_size < 1:
            raise LatentCacheError(f"shard_size must be >= 1, got {shard_size}")
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise LatentCacheError(f"dtype must be torch.bfloat16, torch.float16 or torch.float32, got {dtype}")
        self.directory = Path(directory)
        self.dtype, self.shard_size = dtype, shard_size
        self._prepare(overwrite)
        self.buffer: dict[str, list[torch.Tensor]] = {}
        self.pending = 0
        self.count = 0
        self.prompts: list[str] = []
        self.shards: list[dict] = []

    def _prepare(self, overwrite: bool) -> None:
        d = self.directory
        if d.exists() and not d.is_dir():
            raise LatentCacheError(f"{d}: exists and is not a directory; choose another cache directory")
        if d.is_dir() and any(d.iterdir()):
            if not overwrite:
                raise LatentCacheError(f"{d}: already exists and is not empty; choose a new cache directory or pass "
                                       "overwrite=True")
            for name in (CHECKSUMS_FILE, MANIFEST_FILE, NEGATIVE_FILE):  # checksums first: no half-old cache opens
                (d / name).unlink(missing_ok=True)
            for stale in list(d.glob("shard-*.safetensors")) + list(d.glob(".*.tmp")):
                stale.unlink()
        d.mkdir(parents=True, exist_ok=True)

    def _store(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to("cpu")
        return (x.to(self.dtype) if x.is_floating_point() else x).contiguous()

    def add(self, latents: torch.Tensor, text: dict[str, torch.Tensor], prompts: Sequence[str]) -> None:
        """latents [B, C, F, H, W]; text {name: [B, ...]}; prompts: B captions."""
        rows = {"latents": latents, **text}
        for name, value in rows.items():
            if value.shape[0] != len(prompts):
                raise LatentCacheError(f"{name} has {value.shape[0]} rows for {len(prompts)} prompts")
            self.buffer.setdefault(name, []).append(self._store(value))
        self.pending += len(prompts)
        self.prompts += list(prompts)
        while self.pending >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        from safetensors.torch import save_file

        if n == 0:
            return
        tensors, rest = {}, {}
        for name, parts in self.buffer.items():
            whole = torch.cat(parts)
            tensors[name], rest[name] = whole[:n].contiguous(), [whole[n:]]
        self.buffer, self.pending = rest, self.pending - n
        path = self.directory / SHARD_NAME.format(len(self.shards))
        with atomic_path(path) as tmp:
            save_file(tensors, os.fspath(tmp), metadata={"format": CACHE_FORMAT, "first_index": str(self.count)})
        self.shards.append({"file": path.name, "count": n, "sha256": sha256_file(path)})
        self.count += n

    def finish(self, negative: dict[str, torch.Tensor], manifest: dict[str, Any]) -> Path:
        from safetensors.torch import save_file

        self._flush(self.pending)
        if self.count == 0:
            skipped = manifest.get("skipped", {}).get("count", 0)
            raise LatentCacheError(f"{self.directory}: nothing was cached ({skipped} inputs skipped; see the warning "
                                   "above), so no cache was written")
        with atomic_path(self.directory / NEGATIVE_FILE) as tmp:
            save_file({k: self._store(v) for k, v in negative.items()}, os.fspath(tmp),
                      metadata={"format": CACHE_FORMAT})
        from safetensors import safe_open

        with safe_open(os.fspath(self.directory / self.shards[0]["file"]), "pt") as f:
            first = {name: list(f.get_slice(name).get_shape()[1:]) for name in f.keys()}  # noqa: SIM118
        manifest = {
            "format": CACHE_FORMAT,
            "count": self.count,
            "shapes": first,
            "dtype": str(self.dtype).removeprefix("torch."),
            **manifest,
            "negative_prompt_embeds": {k: list(v.shape) for k, v in negative.items()},
            "shards": self.shards,
            "prompts": self.prompts,
        }
        seal_directory(self.directory, {MANIFEST_FILE: json.dumps(manifest, indent=1) + "\n"})
        logger.info("latent cache %s: %d clips in %d shards", self.directory, self.count, len(self.shards))
        return self.directory


def _pipeline_record(pipe, family: str, source: str, negative_prompt: str, max_sequence_length: int,
                     prompt_template, **settings) -> dict[str, Any]:
    return {
        "source": source,
        "pipeline": type(pipe).__name__,
        "family": family,
        "model": getattr(pipe, "name_or_path", None) or None,
        "transformer": type(pipe.transformer).__name__,
        "latent_normalisation": _normalisation_text(family),
        "negative_prompt": negative_prompt,
        "max_sequence_length": max_sequence_length,
        "prompt_template": prompt_template,
        "settings": settings,
    }


def _negative(pipe, family, negative_prompt, max_sequence_length, prompt_template) -> dict[str, torch.Tensor]:
    return _encode_text(pipe, family, [negative_prompt], max_sequence_length, prompt_template)


def _check_batch_size(size: int) -> None:
    if int(size) < 1:
        raise LatentCacheError(f"batch_size must be >= 1, got {size}")


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# ----------------------------------------------------------------------------------------------------------- builders


@torch.no_grad()
def cache_teacher_latents(pipe, prompts: list[str], directory, *, num_inference_steps: int, guidance_scale: float,
                          height: int, width: int, num_frames: int, seed: int = 0, batch_size: int = 1,
                          negative_prompt: str = "", max_sequence_length: int | None = None,
                          prompt_template: dict | None = None, pipeline_kwargs: dict | None = None,
                          dtype: torch.dtype = torch.bfloat16, shard_size: int = 64, overwrite: bool = False,
                          progress: bool | None = None) -> Path:
    """Run the teacher (``output_type="latent"``) on every prompt and cache its final latents with the prompt
    embeddings (the rCM recipe: teacher-generated data). Clip i starts from ``torch.Generator().manual_seed(seed + i)``
    whatever `batch_size`. Prompts and the negative prompt are encoded once with ``pipe.encode_prompt`` and passed as
    embeddings. `pipeline_kwargs` go to every pipeline call (e.g. ``true_cfg_scale`` for HunyuanVideo);
    `prompt_template`: HunyuanVideo's (None: the pipeline default). Returns `directory`."""
    family = _family(pipe)
    prompts = [str(p) for p in prompts]
    if not prompts:
        raise LatentCacheError("cache_teacher_latents needs at least one prompt")
    _check_size(pipe, height, width, num_frames)
    _check_batch_size(batch_size)
    max_len = max_sequence_length or _DEFAULT_MAX_SEQUENCE_LENGTH[family]
    writer = _CacheWriter(directory, dtype=dtype, shard_size=shard_size, overwrite=overwrite)
    negative = _negative(pipe, family, negative_prompt, max_len, prompt_template)
    extra = dict(pipeline_kwargs or {})
    if family == "hunyuanvideo" and prompt_template is not None:
        extra["prompt_template"] = prompt_template
    with _QuietPipeline(pipe), _bar(len(prompts), "teacher latents", progress) as bar:
        for start, batch in zip(range(0, len(prompts), batch_size), _batches(prompts, batch_size), strict=True):
            n = len(batch)
            text = _encode_text(pipe, family, batch, max_len, prompt_template)
            neg = {k: v.expand(n, *v.shape[1:]) for k, v in negative.items()}
            cond = dict(text) | {f"negative_{k}": v for k, v in neg.items()}
            generators = [torch.Generator().manual_seed(seed + start + i) for i in range(n)]
            out = pipe(**cond, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, height=height,
                       width=width, num_frames=num_frames, generator=generators, output_type="latent",
                       return_dict=False, **extra)[0]
            writer.add(out, text, batch)
            bar.update(n)
    record = _pipeline_record(pipe, family, "teacher", negative_prompt, max_len, prompt_template,
                              num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, height=height,
                              width=width, num_frames=num_frames, seed=seed, pipeline_kwargs=_jsonable(extra))
    return writer.finish(negative, {**record, "skipped": {"count": 0, "items": []}})


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)


def read_video(path, num_frames: int, height: int, width: int) -> torch.Tensor:
    """The first `num_frames` frames of a video file, resized to cover `height` x `width` (aspect kept, bilinear with
    antialiasing) and centre-cropped: [3, F, H, W] float32 in [-1, 1] (the layout the diffusers VAEs take).

    Read with imageio (GIF through Pillow, mp4/webm/mov through imageio-ffmpeg). Raises `LatentCacheError` when the
    file cannot be decoded or has fewer than `num_frames` frames."""
    import imageio.v2 as imageio
    import numpy as np

    path = Path(path)
    frames = []
    try:
        reader = imageio.get_reader(os.fspath(path))
        try:
            for frame in reader:
                frames.append(np.asarray(frame))
                if len(frames) == num_frames:
                    break
        finally:
            reader.close()
    except Exception as e:  # noqa: BLE001 - any decoder failure means "unreadable", reported by the caller
        raise LatentCacheError(f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if len(frames) < num_frames:
        raise LatentCacheError(f"too short ({len(frames)} frames, {num_frames} needed)")
    arrays = []
    for a in frames:
        a = a[..., None].repeat(3, axis=-1) if a.ndim == 2 else a[..., :3]
        if a.ndim != 3 or a.shape[-1] != 3 or a.shape[0] != frames[0].shape[0] or a.shape[1] != frames[0].shape[1]:
            raise LatentCacheError(f"unexpected frame shape {a.shape}")
        arrays.append(a)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    if np.issubdtype(arrays[0].dtype, np.integer):
        x = x / float(np.iinfo(arrays[0].dtype).max)
    h, w = x.shape[-2:]
    scale = max(height / h, width / w)
    size = (max(height, round(h * scale)), max(width, round(w * scale)))
    if size != (h, w):
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    x = x[..., top:top + height, left:left + width].clamp(0, 1)
    return (x * 2 - 1).permute(1, 0, 2, 3).contiguous()


def _caption_for(path: Path, folder: Path, captions: dict[str, str] | None) -> str:
    rel = path.relative_to(folder).as_posix()
    for key in (rel, path.name, path.stem):
        if captions and key in captions:
            return str(captions[key])
    sidecar = path.with_suffix(".txt")
    if sidecar.is_file():
        return sidecar.read_text().strip()
    return path.stem


def _report_skipped(skipped: list[dict], where) -> None:
    if skipped:
        first = ", ".join(f"{s['name']} ({s['reason']})" for s in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        logger.warning("%s: skipped %d video(s) that could not be used: %s%s", where, len(skipped), first, more)


@torch.no_grad()
def cache_video_folder(pipe, folder, directory, *, captions: dict[str, str] | None = None, height: int, width: int,
                       num_frames: int, batch_size: int = 1, negative_prompt: str = "",
                       max_sequence_length: int | None = None, prompt_template: dict | None = None,
                       dtype: torch.dtype = torch.bfloat16, shard_size: int = 64, overwrite: bool = False,
                       progress: bool | None = None) -> Path:
    """Encode every video in `folder` (recursively, sorted; extensions `VIDEO_EXTENSIONS`) once with the pipeline's
    VAE: first `num_frames` frames, resized to cover and centre-cropped to `height` x `width` (`read_video`).
    Caption of ``a/b.mp4``: `captions` keyed by relative path, file name or stem, else a sidecar ``a/b.txt``, else the
    stem ``"b"``. Unreadable or too-short videos are skipped: counted, listed in the manifest (``skipped``) and
    reported in one logging warning; the run only fails when nothing could be cached. Returns `directory`."""
    family = _family(pipe)
    folder = Path(folder)
    if not folder.is_dir():
        raise LatentCacheError(f"{folder}: not a directory of videos")
    _check_size(pipe, height, width, num_frames)
    _check_batch_size(batch_size)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
        raise LatentCacheError(f"{folder}: no video files ({', '.join(VIDEO_EXTENSIONS)})")
    max_len = max_sequence_length or _DEFAULT_MAX_SEQUENCE_LENGTH[family]
    writer = _CacheWriter(directory, dtype=dtype, shard_size=shard_size, overwrite=overwrite)
    negative = _negative(pipe, family, negative_prompt, max_len, prompt_template)
    skipped: list[dict] = []
    sources: list[str] = []
    pending: list[tuple[torch.Tensor, str]] = []

    def encode_pending():
        if pending:
            videos = torch.stack([v for v, _ in pending])
            texts = [c for _, c in pending]
            writer.add(encode_videos(pipe, videos), _encode_text(pipe, family, texts, max_len, prompt_template), texts)
            pending.clear()

    with _bar(len(files), "video folder", progress) as bar:
        for path in files:
            name = path.relative_to(folder).as_posix()
            try:
                video = read_video(path, num_frames, height, width)
            except LatentCacheError as e:
                skipped.append({"name": name, "reason": str(e)})
            else:
                pending.append((video, _caption_for(path, folder, captions)))
                sources.append(name)
                if len(pending) >= batch_size:
                    encode_pending()
            bar.update(1)
        encode_pending()
    _report_skipped(skipped, folder)
    record = _pipeline_record(pipe, family, "video_folder", negative_prompt, max_len, prompt_template,
                              folder=os.fspath(folder), height=height, width=width, num_frames=num_frames)
    return writer.finish(negative, {**record, "files": sources,
                                    "skipped": {"count": len(skipped), "items": skipped}})


@torch.no_grad()
def cache_toyworld(pipe, count: int, directory, *, seed: int = 0, height: int = 256, width: int = 256,
                   num_frames: int = 17, num_objects: int | Sequence[int] = (1, 2), batch_size: int = 4,
                   negative_prompt: str = "", max_sequence_length: int | None = None,
                   prompt_template: dict | None = None, dtype: torch.dtype = torch.bfloat16, shard_size: int = 64,
                   overwrite: bool = False, progress: bool | None = None) -> Path:
    """`count` ToyWorld procedural clips (`turbo.toyworld.videos`: coloured shapes moving on a plain background, with
    their attribute captions), encoded once with `pipe`'s VAE and text encoder: a distillation dataset with no
    download. Clips and captions equal ``sample_videos(seed, count, num_frames, height, width, num_objects)``
    (rendered `batch_size` at a time). Defaults are the ToyWorld demo size (256 x 256, 17 frames); a HunyuanVideo
    pipeline gets ToyWorld's prompt template ``{"template": "{}", "crop_start": 0}`` unless one is given."""
    from turbo.toyworld.videos import caption, render, sample_spec

    family = _family(pipe)
    if count < 1:
        raise LatentCacheError(f"count must be >= 1, got {count}")
    _check_size(pipe, height, width, num_frames)
    _check_batch_size(batch_size)
    if family == "hunyuanvideo" and prompt_template is None:
        from turbo.toyworld.models import HUNYUAN_PROMPT_TEMPLATE

        prompt_template = dict(HUNYUAN_PROMPT_TEMPLATE)
    max_len = max_sequence_length or _DEFAULT_MAX_SEQUENCE_LENGTH[family]
    writer = _CacheWriter(directory, dtype=dtype, shard_size=shard_size, overwrite=overwrite)
    negative = _negative(pipe, family, negative_prompt, max_len, prompt_template)
    # the draws of sample_videos: one generator, for each clip the object count then the spec
    generator = torch.Generator().manual_seed(int(seed))
    choices = [num_objects] if isinstance(num_objects, int) else list(num_objects)
    render_device = _device(pipe.vae)
    with _bar(count, "toyworld clips", progress) as bar:
        for start in range(0, count, batch_size):
            n = min(batch_size, count - start)
            specs = []
            for _ in range(n):
                k = choices[int(torch.randint(len(choices), (1,), generator=generator))]
                specs.append(sample_spec(generator, int(k)))
            videos = render(specs, num_frames, height, width, device=render_device)  # [n, F, 3, H, W] in [0, 1]
            videos = videos.permute(0, 2, 1, 3, 4).mul(2).sub(1)  # [n, 3, F, H, W] in [-1, 1]
            texts = [caption(s) for s in specs]
            writer.add(encode_videos(pipe, videos), _encode_text(pipe, family, texts, max_len, prompt_template), texts)
            bar.update(n)
    record = _pipeline_record(pipe, family, "toyworld", negative_prompt, max_len, prompt_template, seed=seed,
                              height=height, width=width, num_frames=num_frames, num_objects=choices)
    return writer.finish(negative, {**record, "skipped": {"count": 0, "items": []}})


# ------------------------------------------------------------------------------------------------------------ reading


class LatentCache(torch.utils.data.Dataset):
    """A latent cache directory as a Dataset (tensors are read lazily from the memory-mapped shards).

    Item i: ``{"latents": [C, F, H, W], "prompt_embeds": [L, D], "index": i}`` in the stored dtype (bfloat16 by
    default); HunyuanVideo caches add ``"pooled_prompt_embeds"`` [P] and ``"prompt_attention_mask"`` [L] (int64).
    ``negative_prompt_embeds`` [1, L, D] (and ``negative``: every negative text tensor by name), ``manifest`` (dict),
    ``prompts`` (list of str, one per item). Opening checks every file against ``checksums.json`` (``verify=False``
    skips it, e.g. on all but one rank); a missing, unfinished or corrupt cache raises `LatentCacheError` naming the
    file in one sentence.
    """

    def __init__(self, directory, *, verify: bool = True):
        from safetensors.torch import load_file

        self.directory = Path(directory)
        d = self.directory
        how = "build one with cache_teacher_latents, cache_video_folder or cache_toyworld (turbo.distill.data)"
        if not d.is_dir():
            raise LatentCacheError(f"{d}: not a latent cache (no such directory); {how}")
        if not (d / MANIFEST_FILE).is_file():
            raise LatentCacheError(f"{d}: not a latent cache (no {MANIFEST_FILE}); {how}")
        if not (d / CHECKSUMS_FILE).is_file():
            raise LatentCacheError(f"{d}: unfinished latent cache (no {CHECKSUMS_FILE}, its build did not complete); "
                                   "build it again")
        if verify:
            verify_checksums(d, error=LatentCacheError, what="latent cache")
        try:
            manifest = json.loads((d / MANIFEST_FILE).read_text())
            shards = [(s["file"], int(s["count"])) for s in manifest["shards"]]
            ok = manifest.get("format") == CACHE_FORMAT and sum(c for _, c in shards) == int(manifest["count"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise LatentCacheError(f"{d / MANIFEST_FILE}: not a latent cache manifest ({type(e).__name__}: {e})") from e
        if not ok:
            raise LatentCacheError(f"{d / MANIFEST_FILE}: not a {CACHE_FORMAT} manifest (format "
                                   f"{manifest.get('format')!r}, or its shard counts do not add up to its count)")
        for name, _ in shards:
            if not (d / name).is_file():
                raise LatentCacheError(f"{d / name}: missing shard listed in {MANIFEST_FILE}; build the cache again")
        self.manifest: dict[str, Any] = manifest
        self.prompts: list[str] = list(manifest.get("prompts", []))
        self._files = [name for name, _ in shards]
        self._starts = [0]
        for _, c in shards:
            self._starts.append(self._starts[-1] + c)
        self.negative: dict[str, torch.Tensor] = load_file(os.fspath(d / NEGATIVE_FILE))
        self._handles: dict[int, Any] = {}

    @property
    def negative_prompt_embeds(self) -> torch.Tensor:
        """[1, L, D]: the pipeline's encoding of the manifest's ``negative_prompt``."""
        return self.negative["prompt_embeds"]

    def __len__(self) -> int:
        return self._starts[-1]

    def _handle(self, shard: int):
        from safetensors import safe_open

        if shard not in self._handles:
            self._handles[shard] = safe_open(os.fspath(self.directory / self._files[shard]), "pt")
        return self._handles[shard]

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a latent cache of {len(self)} items")
        shard = bisect.bisect_right(self._starts, index) - 1
        row = index - self._starts[shard]
        f = self._handle(shard)
        item: dict[str, Any] = {name: f.get_slice(name)[row] for name in f.keys()}  # noqa: SIM118
        item["index"] = index
        return item

    def __getstate__(self):  # DataLoader workers: reopen the shards in each process
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def __repr__(self) -> str:
        m = self.manifest
        return (f"LatentCache({os.fspath(self.directory)!r}: {len(self)} clips from {m.get('source')} via "
                f"{m.get('pipeline')}, latents {m.get('shapes', {}).get('latents')} {m.get('dtype')})")
