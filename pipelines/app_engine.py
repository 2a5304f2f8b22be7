"""What the web app runs behind its buttons: a cache of loaded pipelines, one generation with timings (text encoder,
transformer, VAE measured with forward hooks), peak GPU memory and the applied-config report, and the same-seed
comparison with the unaccelerated run. No gradio here, so it is testable on its own.

    engine = Engine(device="cpu")
    result = engine.generate(request, config)          # request: pipelines.options.Request; config: TurboConfig|None
    result.video_path, result.seconds, result.timings, result.report
    engine.close()                                      # removes every output file

Loaded models stay cached; switching configs uses `turbo.accelerate` / `turbo.restore` on the cached pipeline, never a
reload.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipelines import registry

__all__ = ["Engine", "GenerationResult", "OutOfMemory", "module_timer", "psnr"]

# pipeline component -> timing bucket; VAE time is its encoder (image-to-video conditioning) plus its decoder
_TIMED = {
    "text_encoder": "text encoder",
    "text_encoder_2": "text encoder",
    "image_encoder": "image encoder",
    "transformer": "transformer",
    "transformer_2": "transformer",
    "vae.encoder": "VAE",
    "vae.decoder": "VAE",
}


class OutOfMemory(RuntimeError):
    """CUDA ran out of memory; the message suggests what to lower."""


def _sync(device: str) -> None:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def _component(pipe, dotted: str):
    obj = pipe
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, torch.nn.Module) else None


@contextmanager
def module_timer(pipe, device: str = "cpu"):
    """Time the pipeline's text encoder(s), transformer(s) and VAE encoder/decoder with forward pre/post hooks
    (outermost call only, CUDA synchronised). Yields a dict bucket -> seconds that fills while the pipeline runs."""
    totals: dict[str, float] = {}
    handles = []
    for dotted, bucket in _TIMED.items():
        module = _component(pipe, dotted)
        if module is None:
            continue
        totals.setdefault(bucket, 0.0)
        state = {"depth": 0, "start": 0.0}

        def pre(_module, _args, state=state):
            if state["depth"] == 0:
                _sync(device)
                state["start"] = time.perf_counter()
            state["depth"] += 1

        def post(_module, _args, _output, state=state, bucket=bucket):
            state["depth"] -= 1
            if state["depth"] == 0:
                _sync(device)
                totals[bucket] += time.perf_counter() - state["start"]

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield totals
    finally:
        for handle in handles:
            handle.remove()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two videos with values in [0, 1] (inf when identical)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


@dataclass
class GenerationResult:
    """One generated video: its mp4 path, frames (float [F, H, W, 3] in [0, 1]), wall seconds, seconds per bucket,
    peak GPU memory in bytes (None on a CPU), the `pipe.turbo` report (None when unaccelerated) and the config label."""

    video_path: str
    frames: np.ndarray = field(repr=False)
    seconds: float
    timings: dict[str, float]
    peak_memory: int | None
    report: str | None
    label: str
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-safe numbers and texts of this result (no frames)."""
        return {
            "video": os.path.basename(self.video_path),
            "config": self.label,
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "peak_gpu_memory_mb": None if self.peak_memory is None else round(self.peak_memory / 2**20, 1),
            "report": self.report,
            **self.settings,
        }


class Engine:
    """Loads (once) and runs pipelines for the app; one generation at a time (a lock), outputs in a temporary folder
    that `close()` removes."""

    def __init__(self, device: str | None = None, dtype: torch.dtype | None = None, fps: int = 16,
                 output_dir: str | None = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype
        self.fps = fps
        self.output_dir = output_dir or tempfile.mkdtemp(prefix="turbo-app-")
        os.makedirs(self.output_dir, exist_ok=True)
        self._pipes: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.extra_models: dict[str, registry.ModelPreset] = {}  # the app's --model directory
        self.loads = 0  # how many times a pipeline was loaded (tests check configs never reload)

    # ------------------------------------------------------------------------------------------------------ models

    def pipeline(self, preset: registry.ModelPreset):
        """The cached pipeline of `preset`, loaded on first use (unaccelerated; `turbo.restore` after each run)."""
        if preset.name not in self._pipes:
            if not registry.is_available(preset):
                raise registry.RegistryError(registry.how_to_get(preset))
            pipe = registry.load_pipeline(preset, self.device, self.dtype)
            pipe.set_progress_bar_config(disable=True)
            self._pipes[preset.name] = pipe
            self.loads += 1
        return self._pipes[preset.name]

    # ------------------------------------------------------------------------------------------------------ running

    def _run(self, pipe, kwargs: dict, seed: int, config, label: str,
             progress: Callable[[int, int, str], None] | None, allow_untuned: bool = False) -> GenerationResult:
        import turbo

        total = int(kwargs["num_inference_steps"])

        def on_step(_pipe, step, _timestep, callback_kwargs):
            if progress is not None:
                progress(step + 1, total, label)
            return callback_kwargs

        if config is not None:
            turbo.accelerate(pipe, config, allow_untuned=allow_untuned)
        try:
            report = str(pipe.turbo) if config is not None else None
            if self.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            with module_timer(pipe, self.device) as timings:
                _sync(self.device)
                start = time.perf_counter()
                try:
                    output = pipe(**kwargs, generator=torch.Generator(device="cpu").manual_seed(int(seed)),
                                  callback_on_step_end=on_step)
                except torch.cuda.OutOfMemoryError:
                    raise OutOfMemory(
                        f"CUDA ran out of memory at {kwargs['width']}x{kwargs['height']}, {kwargs['num_frames']} "
                        "frames; try a smaller size or fewer frames, a lighter model, or a sparser attention preset."
                    ) from None
                _sync(self.device)
                seconds = time.perf_counter() - start
            if config is not None:
                report = str(pipe.turbo)  # after the run it also holds calls, density and grid
        finally:
            if config is not None:
                turbo.restore(pipe)
        peak = torch.cuda.max_memory_allocated() if self.device.startswith("cuda") else None
        frames = output.frames[0]
        if hasattr(frames, "detach"):
            frames = frames.detach().cpu().float().numpy()
        frames = np.asarray(frames, dtype=np.float32)
        timings = dict(timings)
        timings["other"] = max(0.0, seconds - sum(timings.values()))
        return GenerationResult(self._write(frames), frames, seconds, timings, peak, report, label)

    def _write(self, frames: np.ndarray) -> str:
        from diffusers.utils import export_to_video

        path = os.path.join(self.output_dir, f"{uuid.uuid4().hex[:12]}.mp4")
        export_to_video(list(frames), path, fps=self.fps)
        return path

    def generate(self, request, config=None, label: str = "turbo", compare: bool = False,
                 progress: Callable[[int, int, str], None] | None = None,
                 allow_untuned: bool = False) -> tuple[GenerationResult, GenerationResult | None]:
        """Run a checked `pipelines.options.Request` with `config` (a TurboConfig; None = unaccelerated; methods that
        need fine-tuned weights only with `allow_untuned`). With `compare`, first run the unaccelerated pipeline with
        the same seed. Returns (result, baseline or None); `progress(step, total, label)` is called after every
        denoising step."""
        with self._lock:
            pipe = self.pipeline(request.model)
            kwargs = request.call_kwargs(image=request.load_image())
            baseline = None
            if compare:
                baseline = self._run(pipe, kwargs, request.seed, None, "unaccelerated", progress)
            result = self._run(pipe, kwargs, request.seed, config, label if config is not None else "unaccelerated",
                               progress, allow_untuned)
            settings = {"model": request.model.name, "seed": request.seed, "height": request.height,
                        "width": request.width, "frames": request.frames, "steps": request.steps}
            result.settings = settings
            if baseline is not None:
                baseline.settings = dict(settings)
            return result, baseline

    def close(self) -> None:
        """Drop the cached pipelines and delete the output folder."""
        self._pipes.clear()
        shutil.rmtree(self.output_dir, ignore_errors=True)
