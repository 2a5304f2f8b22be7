"""Evaluation harness: run a pipeline under a reference and a candidate turbo config on the same ToyWorld prompts and
seeds, and compare them (judge accuracy per attribute, PSNR / SSIM of candidate against reference, flicker, time).

    from turbo.eval.harness import evaluate, prompt_set
    table = evaluate(pipe, "dense", {"attention": {"method": "sla", "keep": 0.1}}, prompt_set(8, seed=0),
                     {"height": 256, "width": 256, "num_frames": 17, "num_inference_steps": 8})
    print(table)                  # markdown summary
    json.dumps(table.to_dict())   # JSON-safe (non-finite floats as "inf" / "-inf" / "nan")

A config is anything `turbo.accelerate(pipe, config)` takes: a `TurboConfig`, a preset name, a dict, or None (the
default config). A plain attention method name such as "dense" or "sla" is read as ``{"attention": {"method": name}}``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from turbo.eval.judge import ATTRIBUTES, JudgeResult, aggregate, judge
from turbo.eval.metrics import psnr, ssim, temporal_flicker

__all__ = ["AccuracyReport", "EvalRow", "EvalTable", "describe_config", "evaluate", "judge_prompts", "prompt_set"]

ACCURACY_KEYS = (*ATTRIBUTES, "background", "all")


# ------------------------------------------------------------------------------------------------------------ prompts


def prompt_set(count: int, seed: int = 0, num_objects: int | tuple[int, ...] = 1) -> list[tuple[str, int]]:
    """``count`` ToyWorld (caption, video seed) pairs, deterministic for ``seed``.

    Specs come from `turbo.toyworld.sample_spec` on one CPU generator seeded with ``seed`` (``num_objects`` objects per
    video, or one drawn uniformly from a tuple); each video seed is drawn from the same generator (0 ≤ seed < 2³¹).
    """
    from turbo.toyworld.videos import caption, sample_spec

    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    generator = torch.Generator().manual_seed(int(seed))
    choices = (num_objects,) if isinstance(num_objects, int) else tuple(num_objects)
    out = []
    for _ in range(count):
        n = choices[int(torch.randint(len(choices), (1,), generator=generator))]
        spec = sample_spec(generator, int(n))
        video_seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        out.append((caption(spec), video_seed))
    return out


def first_frame(prompt: str, seed: int, height: int, width: int, frames: int):
    """The conditioning image of an image-to-video eval video: frame 0 of the ToyWorld video of `prompt`, rendered from
    a spec with the caption's attributes (positions and sizes drawn from `seed`). Returns a PIL image."""
    from PIL import Image

    from turbo.toyworld.videos import ObjectSpec, VideoSpec, caption, parse_caption, render, sample_spec

    parsed = parse_caption(prompt)
    generator = torch.Generator().manual_seed(int(seed))
    for _ in range(1000):  # draw geometry until the sampled objects can carry the caption's attributes
        spec = sample_spec(generator, len(parsed.objects))
        objects = tuple(ObjectSpec(p.shape, p.colour, p.motion, o.x, o.y, o.size)
                        for p, o in zip(parsed.objects, spec.objects, strict=True))
        candidate = VideoSpec(objects, parsed.background)
        if caption(candidate) == prompt:
            break
    else:
        raise ValueError(f"cannot render a first frame for {prompt!r}")
    frame = render([candidate], frames, height, width)[0, 0]
    return Image.fromarray((frame.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy())


# ------------------------------------------------------------------------------------------------------------ configs


def _as_config(config):
    """A plain attention method name becomes ``{"attention": {"method": name}}``; anything else passes through."""
    from turbo.config import PRESETS
    from turbo.registry import attention_methods

    if isinstance(config, str) and config not in PRESETS and config in attention_methods():
        return {"attention": {"method": config}}
    return config


def describe_config(config) -> str:
    """Short label: the preset name (if any), the attention method and its options that differ from the defaults,
    e.g. ``"fast: sla keep=0.1"`` or ``"sla keep=0.25 block_q=16 block_k=16"``."""
    from dataclasses import fields

    from turbo import default_config
    from turbo.config import resolve_config
    from turbo.registry import features

    resolved, preset = resolve_config(_as_config(config), default_config())
    attention = resolved.attention
    defaults = type(attention.options)()
    parts = [attention.method]
    for name in ("dense_steps", "dense_layers"):
        if getattr(attention, name):
            parts.append(f"{name}={getattr(attention, name)}")
    for f in fields(attention.options):
        value = getattr(attention.options, f.name)
        if value != getattr(defaults, f.name) or f.name in ("keep", "density"):
            parts.append(f"{f.name}={value:g}" if isinstance(value, float) else f"{f.name}={value}")
    for section, feature in features().items():
        if section != "attention" and feature.active(resolved.sections[section]):
            parts.append(f"{section}={resolved.sections[section].mode}")
    label = " ".join(parts)
    return f"{preset}: {label}" if preset else label


# -------------------------------------------------------------------------------------------------------------- table


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else math.nan


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@dataclass
class EvalRow:
    """One prompt: both runs' judge results, times and flicker, and PSNR / SSIM of candidate against reference."""

    prompt: str
    seed: int
    reference_seconds: float
    candidate_seconds: float
    psnr: float
    ssim: float
    reference_flicker: float
    candidate_flicker: float
    reference_judge: JudgeResult = field(repr=False)
    candidate_judge: JudgeResult = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "seed": self.seed,
            "reference_seconds": self.reference_seconds,
            "candidate_seconds": self.candidate_seconds,
            "psnr": self.psnr,
            "ssim": self.ssim,
            "reference_flicker": self.reference_flicker,
            "candidate_flicker": self.candidate_flicker,
            "reference_accuracy": self.reference_judge.accuracy(),
            "candidate_accuracy": self.candidate_judge.accuracy(),
        }


@dataclass
class EvalTable:
    """Per-prompt rows and their summary (`summary()`); `str()` is a markdown table, `to_dict()` is JSON-safe."""

    reference: str
    candidate: str
    call_kwargs: dict[str, Any]
    rows: list[EvalRow] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Attribute accuracy (judge `aggregate`) and mean flicker / seconds per video for each config; mean PSNR
        over the videos that differ from the reference (``inf`` when all are identical), mean SSIM, the number of
        identical videos, and the speed-up (reference seconds per video / candidate seconds per video)."""
        finite = [r.psnr for r in self.rows if math.isfinite(r.psnr)]
        ref_s = _mean(r.reference_seconds for r in self.rows)
        cand_s = _mean(r.candidate_seconds for r in self.rows)
        return {
            "prompts": len(self.rows),
            "reference_accuracy": aggregate([r.reference_judge for r in self.rows]),
            "candidate_accuracy": aggregate([r.candidate_judge for r in self.rows]),
            "psnr": _mean(finite) if finite else (math.inf if self.rows else math.nan),
            "identical": sum(1 for r in self.rows if r.psnr == math.inf),
            "ssim": _mean(r.ssim for r in self.rows),
            "reference_flicker": _mean(r.reference_flicker for r in self.rows),
            "candidate_flicker": _mean(r.candidate_flicker for r in self.rows),
            "reference_seconds": ref_s,
            "candidate_seconds": cand_s,
            "speedup": ref_s / cand_s if cand_s > 0 else math.nan,
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain JSON types; non-finite floats become the strings "inf", "-inf" and "nan"."""
        scalar = (str, int, float, bool, type(None))  # images and tensors are left out; a dict of settings is kept
        kwargs = {k: v for k, v in self.call_kwargs.items()
                  if isinstance(v, scalar) or (isinstance(v, dict) and all(isinstance(x, scalar) for x in v.values()))}
        return _json_safe({
            "reference": self.reference,
            "candidate": self.candidate,
            "call_kwargs": kwargs,
            "summary": self.summary(),
            "rows": [r.to_dict() for r in self.rows],
        })

    def markdown(self, per_prompt: bool = False) -> str:
        """The summary table; with ``per_prompt`` also a table with one line per prompt."""
        s = self.summary()
        ref_acc, cand_acc = s["reference_accuracy"], s["candidate_accuracy"]
        psnr_text = "∞ (identical)" if s["psnr"] == math.inf else f"{s['psnr']:.2f} dB"
        if s["identical"] and s["psnr"] != math.inf:
            psnr_text += f" ({s['identical']} identical)"
        size = "×".join(str(self.call_kwargs[k]) for k in ("width", "height") if k in self.call_kwargs)
        setting = ", ".join(p for p in (
            size,
            f"{self.call_kwargs['num_frames']} frames" if "num_frames" in self.call_kwargs else "",
            f"{self.call_kwargs['num_inference_steps']} steps" if "num_inference_steps" in self.call_kwargs else "",
        ) if p)
        lines = [
            f"{s['prompts']} prompts" + (f", {setting}" if setting else ""),
            "",
            f"| metric | reference ({self.reference}) | candidate ({self.candidate}) |",
            "|---|---|---|",
        ]
        for key in ACCURACY_KEYS:
            lines.append(f"| accuracy {key} | {ref_acc[key]:.2f} | {cand_acc[key]:.2f} |")
        lines += [
            f"| flicker | {s['reference_flicker']:.4f} | {s['candidate_flicker']:.4f} |",
            f"| s / video | {s['reference_seconds']:.3f} | {s['candidate_seconds']:.3f} |",
            f"| speed-up | 1.00× | {s['speedup']:.2f}× |",
            f"| PSNR vs reference | — | {psnr_text} |",
            f"| SSIM vs reference | — | {s['ssim']:.4f} |",
        ]
        if per_prompt:
            lines += ["", "| # | prompt | seed | PSNR | SSIM | ref all | cand all | ref s | cand s |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for i, r in enumerate(self.rows):
                p = "∞" if r.psnr == math.inf else f"{r.psnr:.2f}"
                lines.append(
                    f"| {i} | {r.prompt} | {r.seed} | {p} | {r.ssim:.4f} | {int(r.reference_judge.all_ok)} "
                    f"| {int(r.candidate_judge.all_ok)} | {r.reference_seconds:.3f} | {r.candidate_seconds:.3f} |"
                )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.markdown()


# ----------------------------------------------------------------------------------------------------------- evaluate


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _generate(pipe, config, kwargs: dict, seed: int, quiet: bool = False) -> tuple[np.ndarray, float]:
    """Accelerate with ``config``, run once with a CPU generator seeded ``seed`` (timed), restore. ``quiet`` hides
    turbo's log warnings for this accelerate (they were already shown for the same config)."""
    import turbo

    turbo_logger = logging.getLogger("turbo")
    level = turbo_logger.level
    if quiet:
        turbo_logger.setLevel(logging.ERROR)
    try:
        turbo.accelerate(pipe, config, allow_untuned=True)  # evaluation measures untuned methods on purpose
    finally:
        turbo_logger.setLevel(level)
    try:
        _synchronize()
        start = time.perf_counter()
        frames = pipe(**kwargs, generator=torch.Generator(device="cpu").manual_seed(int(seed))).frames[0]
        _synchronize()
        elapsed = time.perf_counter() - start
    finally:
        turbo.restore(pipe)
    if hasattr(frames, "detach"):
        frames = frames.detach().cpu().float().numpy()
    return np.asarray(frames, dtype=np.float32), elapsed


def evaluate(pipe, reference, candidate, prompts, call_kwargs: dict | None = None, progress: bool = True,
             warmup: bool = True) -> EvalTable:
    """Generate every (prompt, seed) with the reference config and with the candidate config and compare them.

    Args:
        pipe: an unaccelerated diffusers pipeline turbo supports (it is left unaccelerated); for image-to-video
            pipelines each video is conditioned on frame 0 of the ToyWorld video of its caption (`first_frame`).
        reference, candidate: what `turbo.accelerate(pipe, config)` takes (TurboConfig, preset name, dict, None), or a
            plain attention method name ("dense", "sla", ...).
        prompts: (caption, seed) pairs, e.g. from `prompt_set`; both configs use the same seed (CPU generator).
        call_kwargs: the rest of the pipeline call (height, width, num_frames, num_inference_steps, guidance_scale,
            ...); ``prompt`` and ``generator`` are set per video and ``output_type`` is forced to "np".
        progress: a tqdm bar over prompts (the pipeline's own per-step bar is hidden while evaluating).
        warmup: first run each config once untimed with one denoising step (kernel compilation, allocator warm-up).

    Each video is timed with `time.perf_counter` around the whole pipeline call (CUDA synchronised when present), so
    seconds per video include text encoding and VAE decoding. Returns an `EvalTable`.
    """
    from tqdm.auto import tqdm

    reference, candidate = _as_config(reference), _as_config(candidate)
    table = EvalTable(describe_config(reference), describe_config(candidate), dict(call_kwargs or {}))
    kwargs = {k: v for k, v in table.call_kwargs.items() if k not in ("prompt", "generator")}
    kwargs["output_type"] = "np"
    table.call_kwargs = dict(kwargs)
    prompts = [(str(p), int(s)) for p, s in prompts]
    # image-to-video: each video is conditioned on frame 0 of the ToyWorld video its caption describes
    image_to_video = "ImageToVideo" in type(pipe).__name__
    if image_to_video and ("height" not in kwargs or "width" not in kwargs):
        raise ValueError("image-to-video eval needs height and width in call_kwargs (the first frame is rendered)")

    saved_bar = dict(getattr(pipe, "_progress_bar_config", {}) or {})
    pipe.set_progress_bar_config(**{**saved_bar, "disable": True})
    try:
        if warmup and prompts:
            warm = {**kwargs, "prompt": prompts[0][0], "num_inference_steps": 1}
            if image_to_video:
                warm["image"] = first_frame(prompts[0][0], prompts[0][1], kwargs["height"], kwargs["width"], 1)
            for config in (reference, candidate):
                _generate(pipe, config, warm, prompts[0][1])
        for index, (prompt, seed) in enumerate(tqdm(prompts, desc="eval", unit="prompt", disable=not progress)):
            run_kwargs = {**kwargs, "prompt": prompt}
            if image_to_video:
                run_kwargs["image"] = first_frame(prompt, seed, kwargs["height"], kwargs["width"],
                                                  kwargs.get("num_frames", 17))
            quiet = warmup or index > 0
            ref_video, ref_s = _generate(pipe, reference, run_kwargs, seed, quiet)
            cand_video, cand_s = _generate(pipe, candidate, run_kwargs, seed, quiet)
            table.rows.append(EvalRow(
                prompt=prompt,
                seed=seed,
                reference_seconds=ref_s,
                candidate_seconds=cand_s,
                psnr=psnr(cand_video, ref_video),
                ssim=ssim(cand_video, ref_video),
                reference_flicker=temporal_flicker(ref_video),
                candidate_flicker=temporal_flicker(cand_video),
                reference_judge=judge(ref_video, prompt),
                candidate_judge=judge(cand_video, prompt),
            ))
    finally:
        pipe._progress_bar_config = saved_bar
    return table


# ------------------------------------------------------------------------------------------------ accuracy alone


@dataclass
class AccuracyReport:
    """Judge accuracy of one config over a prompt set (`judge_prompts`); `to_dict()` is JSON-safe."""

    config: str
    call_kwargs: dict[str, Any]
    prompts: list[tuple[str, int]]
    results: list[JudgeResult] = field(repr=False)
    seconds: float
    flicker: float

    def accuracy(self) -> dict[str, float]:
        return aggregate(self.results)

    def to_dict(self) -> dict[str, Any]:
        scalar = (str, int, float, bool, type(None))  # images and tensors are left out; a dict of settings is kept
        kwargs = {k: v for k, v in self.call_kwargs.items()
                  if isinstance(v, scalar) or (isinstance(v, dict) and all(isinstance(x, scalar) for x in v.values()))}
        return _json_safe({
            "config": self.config,
            "call_kwargs": kwargs,
            "prompts": len(self.prompts),
            "accuracy": self.accuracy(),
            "seconds_per_video": self.seconds / max(1, len(self.prompts)),
            "flicker": self.flicker,
            "rows": [{"prompt": p, "seed": s, "accuracy": r.accuracy()}
                     for (p, s), r in zip(self.prompts, self.results, strict=True)],
        })

    def markdown(self) -> str:
        acc = self.accuracy()
        head = " | ".join(ACCURACY_KEYS)
        values = " | ".join(f"{acc[k]:.3f}" for k in ACCURACY_KEYS)
        per_video = self.seconds / max(1, len(self.prompts))
        return (f"{len(self.prompts)} prompts, {self.config}\n\n| {head} | s / video |\n|"
                + "---|" * (len(ACCURACY_KEYS) + 1) + f"\n| {values} | {per_video:.3f} |")

    def __str__(self) -> str:
        return self.markdown()


def judge_prompts(pipe, prompts, call_kwargs: dict | None = None, config="dense", batch_size: int = 16,
                  progress: bool = True, on_video=None, on_accelerated=None) -> AccuracyReport:
    """Generate every (prompt, seed) under one config, in batches, and judge each video against its prompt.

    The same videos as `evaluate` would make for that config (each sample's noise comes from its own CPU generator
    seeded with its seed, so batching changes nothing but speed). Image-to-video pipelines run one video at a time
    (diffusers' Wan I2V pipeline repeats one image over the batch). For HunyuanVideo pass ``negative_prompt`` as a
    string: it is repeated to the batch here. `on_video(index, prompt, seed, video)` (optional) sees each video as a
    [F, H, W, 3] float32 array in [0, 1]; `on_accelerated(pipe)` (optional) runs once turbo is installed, e.g. to load
    fitted method parts. Returns an `AccuracyReport` (accuracy per attribute, s / video).
    """
    from tqdm.auto import tqdm

    import turbo

    config = _as_config(config)
    kwargs = {k: v for k, v in dict(call_kwargs or {}).items() if k not in ("prompt", "generator")}
    kwargs["output_type"] = "np"
    prompts = [(str(p), int(s)) for p, s in prompts]
    image_to_video = "ImageToVideo" in type(pipe).__name__
    if image_to_video and ("height" not in kwargs or "width" not in kwargs):
        raise ValueError("image-to-video eval needs height and width in call_kwargs (the first frame is rendered)")
    step = 1 if image_to_video else max(1, int(batch_size))
    results: list[JudgeResult] = []
    flicker: list[float] = []
    saved_bar = dict(getattr(pipe, "_progress_bar_config", {}) or {})
    pipe.set_progress_bar_config(**{**saved_bar, "disable": True})
    turbo.accelerate(pipe, config, allow_untuned=True)  # evaluation measures untuned methods on purpose
    elapsed = 0.0
    try:
        if on_accelerated is not None:
            on_accelerated(pipe)
        for start in tqdm(range(0, len(prompts), step), desc="judge", unit="batch", disable=not progress):
            chunk = prompts[start:start + step]
            run = {**kwargs, "prompt": [p for p, _ in chunk]}
            if isinstance(kwargs.get("negative_prompt"), str):
                run["negative_prompt"] = [kwargs["negative_prompt"]] * len(chunk)
            if image_to_video:
                run["prompt"] = chunk[0][0]
                run["image"] = first_frame(chunk[0][0], chunk[0][1], kwargs["height"], kwargs["width"],
                                           kwargs.get("num_frames", 17))
            generators = [torch.Generator(device="cpu").manual_seed(s) for _, s in chunk]
            _synchronize()
            t0 = time.perf_counter()
            videos = pipe(**run, generator=generators if len(chunk) > 1 else generators[0]).frames
            _synchronize()
            elapsed += time.perf_counter() - t0
            for (prompt, seed), video in zip(chunk, videos, strict=True):
                video = np.asarray(video.detach().cpu().float().numpy() if hasattr(video, "detach") else video,
                                   dtype=np.float32)
                if on_video is not None:
                    on_video(len(results), prompt, seed, video)
                results.append(judge(video, prompt))
                flicker.append(temporal_flicker(video))
    finally:
        turbo.restore(pipe)
        pipe._progress_bar_config = saved_bar
    return AccuracyReport(describe_config(config), kwargs, prompts, results, elapsed, _mean(flicker))
