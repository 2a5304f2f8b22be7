"""The arguments the `turbo` CLI and the Gradio app share, as data, and the one check of a generation request.

    from pipelines import options
    request = options.validate_request(model="default", prompt="a red circle moving left on a gray background",
                                       out="demo.mp4")              # RequestError (one sentence) before any loading
    config, preset = options.validate_acceleration("balanced", {"density": 0.3})

Generation arguments: `GENERATION_ARGUMENTS` (name, flag, type, default, help, choices). Acceleration options come from
`turbo.config.option_specs()`, so a new method, option or feature appears in the CLI and the app without a change
here (`acceleration_specs`, `add_acceleration_arguments`, `acceleration_overrides`).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import dataclass, replace
from typing import Any

from pipelines import registry

__all__ = [
    "DTYPES",
    "DEFAULT_PROMPT",
    "GENERATION_ARGUMENTS",
    "Argument",
    "Request",
    "RequestError",
    "acceleration_overrides",
    "acceleration_specs",
    "add_acceleration_arguments",
    "add_arguments",
    "argument",
    "check_device",
    "check_image",
    "check_output",
    "request_summary",
    "fit_request",
    "validate_acceleration",
    "validate_request",
]

DEFAULT_PROMPT = "a red circle moving left on a gray background"
DTYPES = ("float32", "bfloat16", "float16")


class RequestError(ValueError):
    """A generation request that cannot run (bad size, device, image, output path...); one-sentence message."""


@dataclass(frozen=True)
class Argument:
    """One user-facing argument: `name` (the keyword of `validate_request`), `flag` (the CLI flag), `type`, `default`
    (None = the model's own value or chosen by the machine), `help`, `choices` (empty = free)."""

    name: str
    flag: str
    type: type
    default: Any
    help: str
    choices: tuple = ()


GENERATION_ARGUMENTS: tuple[Argument, ...] = (
    Argument("model", "--model", str, registry.DEFAULT_MODEL,
             "a model name (`turbo info` lists them; default: the embedded ToyWorld Wan T2V) or a diffusers "
             "pipeline directory"),
    Argument("prompt", "--prompt", str, DEFAULT_PROMPT, "what the video shows"),
    Argument("negative_prompt", "--negative-prompt", str, None, "what the video should not show"),
    Argument("image", "--image", str, None, "first frame (a PNG/JPEG file), for image-to-video models only"),
    Argument("height", "--height", int, None, "pixels, a positive multiple of 16 (default: the model's)"),
    Argument("width", "--width", int, None, "pixels, a positive multiple of 16 (default: the model's)"),
    Argument("frames", "--frames", int, None, "number of frames, 4k+1 (default: the model's)"),
    Argument("steps", "--steps", int, None, "denoising steps, >= 1 (default: the model's)"),
    Argument("guidance", "--guidance", float, None, "classifier-free guidance scale, >= 0 (default: the model's)"),
    Argument("seed", "--seed", int, 0, "random seed (>= 0); the same seed gives the same video"),
    Argument("device", "--device", str, None, "cpu, cuda or cuda:N (default: cuda when available)"),
    Argument("dtype", "--dtype", str, None, "default: bfloat16 on CUDA, float32 on CPU", DTYPES),
    Argument("fps", "--fps", int, 16, "frames per second of the mp4"),
)
_BY_NAME = {a.name: a for a in GENERATION_ARGUMENTS}


def argument(name: str) -> Argument:
    """The generation argument called `name`."""
    return _BY_NAME[name]


def add_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None,
                  overrides: dict[str, dict] | None = None) -> None:
    """Add the generation arguments `names` (default: all) to `parser`; `overrides` maps a name to argparse keyword
    changes (e.g. another help text)."""
    for name in names or tuple(_BY_NAME):
        arg = _BY_NAME[name]
        kwargs: dict[str, Any] = {"dest": arg.name, "type": arg.type, "default": arg.default, "help": arg.help}
        if arg.choices:
            kwargs["choices"] = arg.choices
        kwargs.update((overrides or {}).get(name, {}))
        parser.add_argument(arg.flag, **kwargs)


# ------------------------------------------------------------------------------------------------------ the request


@dataclass(frozen=True)
class Request:
    """A checked generation request: the model preset, the call settings with the model's defaults filled in, the
    device and dtype name to load with, the image path (or None) and the output path (or None)."""

    model: registry.ModelPreset
    prompt: str | None
    negative_prompt: str | None
    image: str | None
    height: int
    width: int
    frames: int
    steps: int
    guidance: float | None
    seed: int
    device: str
    dtype: str
    fps: int
    out: str | None

    def torch_dtype(self):
        """The dtype as a torch.dtype."""
        import torch

        return getattr(torch, self.dtype)

    def call_kwargs(self, image=None, output_type: str = "np") -> dict[str, Any]:
        """The pipeline call keywords of this request (`image`: the decoded first frame, for image-to-video)."""
        return registry.call_kwargs(self.model, prompt=self.prompt, negative_prompt=self.negative_prompt, image=image,
                                    height=self.height, width=self.width, frames=self.frames, steps=self.steps,
                                    guidance=self.guidance, output_type=output_type)

    def load_image(self):
        """The first frame as an RGB PIL image (None for text-to-video)."""
        if self.image is None:
            return None
        from PIL import Image

        with Image.open(self.image) as img:
            return img.convert("RGB")


def _check_int(name: str, value, low: int | None = None, rule: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer, got {value!r}.")
    if low is not None and value < low:
        raise RequestError(f"{name}={value} {rule}.")


def check_device(device: str | None) -> str:
    """`device` (None: cuda when available, else cpu) if this machine has it; `RequestError` otherwise."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if device != "cpu" and match is None:
        raise RequestError(f"device {device!r} is not one of cpu, cuda, cuda:N.")
    if match is not None:
        if not torch.cuda.is_available():
            raise RequestError(f"device {device!r} was requested but this machine has no CUDA GPU; use cpu.")
        index = int(match.group(1) or 0)
        if index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise RequestError(f"device {device!r} does not exist; this machine has {count} CUDA device(s), "
                               f"cuda:0 to cuda:{count - 1}.")
    return device


def check_image(path: str) -> None:
    """`RequestError` unless `path` is a file that opens and decodes as an image."""
    if not os.path.isfile(path):
        raise RequestError(f"image {path!r} does not exist.")
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.convert("RGB")
    except Exception as error:  # PIL raises several types for undecodable files
        raise RequestError(f"image {path!r} is not a readable image ({type(error).__name__}).") from None


def check_output(out: str) -> None:
    """`RequestError` unless the folder of `out` exists and is writable (and `out` is not a folder)."""
    if os.path.isdir(out):
        raise RequestError(f"output {out!r} is a folder; give a file name such as {os.path.join(out, 'video.mp4')}.")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise RequestError(f"output folder {folder!r} does not exist.")
    if not os.access(folder, os.W_OK):
        raise RequestError(f"output folder {folder!r} is not writable.")


def validate_request(*, model: str | registry.ModelPreset = registry.DEFAULT_MODEL, prompt: str | None = DEFAULT_PROMPT,
                     negative_prompt: str | None = None, image: str | None = None, height: int | None = None,
                     width: int | None = None, frames: int | None = None, steps: int | None = None,
                     guidance: float | None = None, seed: int = 0, device: str | None = None,
                     dtype: str | None = None, fps: int = 16, out: str | None = None,
                     image_required: bool = True) -> Request:
    """Check everything about a generation request that can be checked before a model loads, fill in the model's
    defaults, and return the `Request`; raise `RequestError` (one sentence) on the first problem.

    None means "the model's default" for height/width/frames/steps/guidance (0 or negatives are refused, never
    replaced). `image_required=False` skips the image rules (`turbo eval` renders a first frame per prompt).
    """
    from turbo.errors import GeometryError
    from turbo.geometry import check_video_size

    try:
        preset = registry.resolve_model(model)
    except registry.RegistryError as error:
        raise RequestError(str(error)) from None
    if not registry.is_available(preset):
        raise RequestError(f"{preset.name} is not on this machine: {registry.how_to_get(preset)}")
    height = preset.height if height is None else height
    width = preset.width if width is None else width
    frames = preset.frames if frames is None else frames
    steps = preset.steps if steps is None else steps
    for name, value in (("height", height), ("width", width), ("frames", frames)):
        _check_int(name, value)
    try:
        check_video_size(height, width, frames)
    except GeometryError as error:
        raise RequestError(str(error)) from None
    _check_int("steps", steps, 1, "must be at least 1")
    _check_int("seed", seed, 0, "must be >= 0")
    _check_int("fps", fps, 1, "must be at least 1")
    if guidance is not None:
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)):
            raise RequestError(f"guidance must be a number, got {guidance!r}.")
        if not math.isfinite(guidance) or guidance < 0:
            raise RequestError(f"guidance={guidance} must be a finite number >= 0.")
        if preset.family == "hunyuanvideo15":
            raise RequestError(f"{preset.name} is a HunyuanVideo 1.5 pipeline: its CFG scale comes from the pipeline's "
                               "guider (guider/config.json), not from a guidance setting; leave guidance unset.")
        guidance = float(guidance)
    device = check_device(device)
    if dtype is None:
        dtype = "float32" if device == "cpu" else "bfloat16"
    elif dtype not in DTYPES:
        raise RequestError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
    if image_required:
        if image is not None and preset.kind == "t2v":
            raise RequestError(f"{preset.name} is a text-to-video model; an image is only for image-to-video models.")
        if image is None and preset.kind == "i2v":
            raise RequestError(f"{preset.name} is an image-to-video model; give a first frame with --image.")
        if image is not None:
            check_image(image)
    if out is not None:
        check_output(out)
    return Request(preset, prompt, negative_prompt, image if image_required else None, height, width, frames, steps,
                   guidance if guidance is not None else preset.guidance, seed, device, dtype, fps, out)


# ------------------------------------------------------------------------------------------------ acceleration options


def acceleration_specs() -> list:
    """The acceleration options, `turbo.config.option_specs()` (each with key, flag, section, name, type, default,
    choices, range, help, methods)."""
    from turbo.config import option_specs

    return list(option_specs())


def _dest(spec) -> str:
    return "accel_" + spec.key


def add_acceleration_arguments(parser: argparse.ArgumentParser, title: str = "acceleration (override the preset)",
                               skip: tuple[str, ...] = ()) -> None:
    """One flag per acceleration option (spec keys in `skip` left out); each defaults to None, so only options the
    user gave reach `acceleration_overrides`."""
    group = parser.add_argument_group(title)
    for spec in acceleration_specs():
        if spec.key in skip:
            continue
        details = []
        if spec.default is not None and spec.type is not bool:
            details.append(f"default {spec.default}")
        if spec.range:
            details.append(f"range {spec.range[0]}..{spec.range[1]}")
        if spec.methods:
            details.append(f"for {', '.join(spec.methods)}")
        help_text = spec.help + (f" ({'; '.join(details)})" if details else "")
        if spec.type is bool:
            group.add_argument(spec.flag, dest=_dest(spec), action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        else:
            kwargs = {"choices": spec.choices} if spec.choices else {}
            group.add_argument(spec.flag, dest=_dest(spec), type=spec.type, default=None, help=help_text,
                               metavar=spec.key.upper() if not spec.choices else None, **kwargs)


def acceleration_overrides(namespace: argparse.Namespace) -> dict[str, Any]:
    """{key: value} of the acceleration flags the user gave (for `turbo.accelerate(pipe, preset, **overrides)`)."""
    return {spec.key: getattr(namespace, _dest(spec)) for spec in acceleration_specs()
            if getattr(namespace, _dest(spec), None) is not None}


def validate_acceleration(preset: str | None, overrides: dict[str, Any] | None = None,
                          allow_untuned: bool = False, recipe=None):
    """Resolve a preset name (None: turbo's default config) plus option overrides into (TurboConfig, preset name),
    refusing, before any model loads, what `turbo.accelerate` would refuse: invalid values, modes not built yet
    (`NotImplementedMethodError`) and, unless `allow_untuned`, configs that need turbo-fine-tuned weights. Raises
    `turbo.TurboError` subclasses with one-sentence messages. `recipe` (the TurboConfig saved beside a converted or
    distilled transformer) replaces turbo's default config as the starting point, as `turbo.accelerate` does; its
    fine-tuned parts ship with it."""
    import turbo
    from turbo.config import needs_finetuned, resolve_config

    base = recipe or (turbo.default_config() if not overrides else turbo.TurboConfig())  # as turbo.accelerate does
    config, name = resolve_config(preset, base, **(overrides or {}))
    config.check_built()
    same_method = recipe is not None and config.attention.method == recipe.attention.method
    if not allow_untuned and needs_finetuned(config) and not same_method:
        label = f"preset '{name}'" if name else f"attention '{config.attention.method}'"
        raise turbo.TurboConfigError(
            f"{label} needs turbo-fine-tuned weights, which this model does not ship; pass --allow-untuned to run it "
            "anyway (expect lower quality) or choose a training-free preset (quality, balanced)."
        )
    return config, name


def fit_request(request: Request, config, *, steps_given: bool, guidance_given: bool) -> Request:
    """The request adjusted to what `config` (a TurboConfig, or None for no acceleration) needs, checked before
    loading: with the rCM few-step sampler the steps default to the sampler's and the guidance to 1 (rCM checkpoints
    are distilled without CFG); more steps than rCM can run, or a HunyuanVideo model, are refused."""
    sampler = getattr(config, "sampler", None)
    if sampler is None or sampler.mode != "rcm":
        return request
    if request.model.family in ("hunyuanvideo", "hunyuanvideo15"):
        raise RequestError(f"the rCM sampler runs on Wan pipelines only, not on {request.model.name}.")
    most = len(sampler.angles()) + 1
    steps = request.steps if steps_given else sampler.steps
    if steps > most:
        raise RequestError(f"steps={steps}: the rCM sampler runs 1 to {most} steps with its {most - 1} intermediate "
                           f"angles (sampler_mid_t); give --steps {most} or fewer, or more angles.")
    return replace(request, steps=steps, guidance=request.guidance if guidance_given else 1.0)


def request_summary(request: Request) -> str:
    """One line: the model and the call settings, e.g. for the CLI printout."""
    return (f"{request.model.name}: {request.frames} frames {request.width}x{request.height}, {request.steps} steps"
            + (f", guidance {request.guidance:g}" if request.guidance is not None else "")
            + f", seed {request.seed}, {request.device} {request.dtype}")
