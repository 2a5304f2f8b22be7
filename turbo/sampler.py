"""The sampler section: the pipeline's own scheduler, or the rCM few-step sampler for rCM / TurboDiffusion checkpoints.

`turbo.accelerate(pipe, sampler="rcm", sampler_steps=4)` (or `steps=4`) replaces `pipe.scheduler` with an
`RCMScheduler` (turbo/schedulers/rcm.py) built from this section; `turbo.restore` puts the original scheduler object
back. Call the pipeline with `num_inference_steps=steps` and `guidance_scale=1` (rCM students have guidance
distilled in): the scheduler runs the call's count when it is 1 to len(mid_t)+1 (the grid truncated, as
TurboDiffusion's `--num_steps`) and refuses a larger one (e.g. a pipeline's default 50) before any transformer call.
Supported: Wan pipelines (WanPipeline, WanImageToVideoPipeline, Wan2.2 with two experts). This module does not import
diffusers; the scheduler module is imported when the feature installs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import option, validate_options
from .errors import TurboConfigError
from .registry import Feature, register_feature
from .schedulers.grid import rcm_angles

SAMPLER_MODES = ("default", "rcm")
RCM_FAMILIES = ("wan", "hunyuanvideo")  # adapter families whose pipelines the rCM sampler supports
RCM_SUPPORTED = ("Wan pipelines (WanPipeline, WanImageToVideoPipeline, Wan2.2 with transformer_2) and "
                 "HunyuanVideoPipeline")
MAX_SEED = 2**32 - 1


def parse_angles(text: str) -> tuple[float, ...]:
    """'1.5,1.4,1.0' → (1.5, 1.4, 1.0); one-sentence `TurboConfigError` if it is not a comma-separated number list."""
    try:
        angles = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        angles = ()
    if not angles and text.strip():
        raise TurboConfigError(f"sampler.mid_t={text!r} must be comma-separated angles in radians, e.g. '1.5,1.4,1.0'.")
    return angles


@dataclass(frozen=True)
class SamplerConfig:
    """Sampler / step distillation: the rCM few-step sampler for rCM / TurboDiffusion checkpoints."""

    mode: str = option("default", "default = the pipeline's own scheduler; rcm = the rCM few-step sampler for rCM / "
                       "TurboDiffusion checkpoints (call with num_inference_steps = sampler steps, guidance 1)",
                       choices=SAMPLER_MODES)
    steps: int = option(4, "rCM sampling steps, 1 to len(mid_t)+1: call the pipeline with this num_inference_steps "
                        "(another count up to len(mid_t)+1 runs; more is refused)", range=(1, 100))
    sigma_max: float = option(80.0, "rCM start noise level (EDM sigma): 80 T2V, 200 I2V, 120 14B 720p",
                              range=(0.0, 100000.0))
    mid_t: str = option("1.5,1.4,1.0", "rCM intermediate TrigFlow angles in radians, comma-separated, decreasing")
    stochastic: bool = option(True, "rCM re-noises with fresh noise each step; off = deterministic ODE (Euler) steps")
    noise_seed: int = option(-1, "seed of rCM's fresh noise; -1 = derived from the pipeline's initial latents "
                             "(its generator)", range=(-1, MAX_SEED))

    def __post_init__(self):
        if isinstance(self.sigma_max, (int, float)) and not (math.isfinite(self.sigma_max) and self.sigma_max > 0):
            raise TurboConfigError(f"sampler.sigma_max={self.sigma_max} must be > 0 (published: 80 for T2V, 200 for "
                                   "I2V, 120 for 14B 720p).")
        validate_options(self, "sampler")
        if isinstance(self.mid_t, str):
            angles = self.angles()
            if self.steps > len(angles) + 1:
                raise TurboConfigError(
                    f"sampler.steps={self.steps} needs {self.steps - 1} intermediate angles but mid_t has "
                    f"{len(angles)}; use steps <= {len(angles) + 1} or add angles to sampler_mid_t."
                )
            try:
                rcm_angles(self.steps, float(self.sigma_max), angles)
            except ValueError as error:
                raise TurboConfigError(f"sampler: {error}") from None

    def angles(self) -> tuple[float, ...]:
        return parse_angles(self.mid_t)

    def scheduler_kwargs(self) -> dict:
        """The `RCMScheduler` arguments of this section."""
        return {"num_steps": self.steps, "sigma_max": float(self.sigma_max), "mid_t": list(self.angles()),
                "stochastic": self.stochastic, "noise_seed": None if self.noise_seed < 0 else self.noise_seed}


class SamplerFeature(Feature):
    name = "sampler"
    config_cls = SamplerConfig
    order = 40

    def check(self, context, section: SamplerConfig) -> None:
        pipe = context.pipe
        if getattr(pipe, "scheduler", None) is None or not hasattr(pipe, "components"):
            raise TurboConfigError(
                f"sampler='rcm' replaces a pipeline's scheduler and {type(pipe).__name__} has none; accelerate the "
                "pipeline (e.g. WanPipeline) instead of its transformer."
            )
        families = {target.adapter.family for target in context.targets}
        if not families <= set(RCM_FAMILIES):
            raise TurboConfigError(
                f"sampler='rcm' supports {RCM_SUPPORTED}, not {type(pipe).__name__}; use sampler='default' there."
            )

    def install(self, context, section: SamplerConfig):
        from .schedulers.rcm import RCMScheduler

        scheduler = RCMScheduler(num_train_timesteps=_train_timesteps(context.pipe.scheduler),
                                 **section.scheduler_kwargs())
        original = context.pipe.scheduler
        context.pipe.scheduler = scheduler
        return original

    def undo(self, context, original) -> None:
        context.pipe.scheduler = original

    def describe(self, section: SamplerConfig) -> str:
        if section.mode != "rcm":
            return "the pipeline's own scheduler"
        noise = ("fresh noise, " + ("seed from the initial latents" if section.noise_seed < 0 else
                                    f"seed {section.noise_seed}")) if section.stochastic else "deterministic ODE"
        return (f"rCM {section.steps} steps (call with num_inference_steps={section.steps}, guidance_scale=1), "
                f"σ_max {section.sigma_max:g}, mid_t {section.mid_t}, {noise}")


def _train_timesteps(scheduler) -> int:
    config = getattr(scheduler, "config", None)
    value = getattr(config, "num_train_timesteps", None) if config is not None else None
    return int(value) if isinstance(value, int) and value > 0 else 1000


register_feature(SamplerFeature())
