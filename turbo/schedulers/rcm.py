"""`RCMScheduler`: the rCM few-step sampler (NVlabs/rcm, TurboDiffusion) as a diffusers scheduler, rectified-flow form.

The distilled student is an ordinary rectified-flow (RF) velocity model: at RF time t it sees x_t = (1 − t)·x0 + t·ε
and predicts v = ε − x0, with timestep 1000·t (as Wan's flow-matching pipelines pass it). The sampler:

1. TrigFlow angle grid θ = [atan(σ_max), *mid_t[:steps − 1], 0] (radians), converted to RF times
   t = sin θ / (sin θ + cos θ); σ_max 80, mid_t (1.5, 1.4, 1.0) give 0.9877, 0.9338, 0.8529, 0.6090, then 0.
2. Each step at time t_i: x0̂ = x − t_i·v; then
   * stochastic (default, "SDE" consistency sampling): x ← (1 − t_{i+1})·x0̂ + t_{i+1}·ε_fresh,
   * ODE (`stochastic=False`, TurboDiffusion's `--ode`): the Euler flow step x ← x − (t_i − t_{i+1})·v.
   The last step (t_{i+1} = 0) returns x0̂ either way. The state x is kept in float64 between steps, as the reference
   keeps it; the pipeline gets it back in the dtype it passed (float32 in Wan's pipelines).

Inside the stock diffusers pipelines (WanPipeline, WanImageToVideoPipeline, Wan2.2 with `boundary_ratio`):
`set_timesteps(n)` runs the call's n steps when rCM can (1 … len(mid_t) + 1, the grid truncated as TurboDiffusion's
`--num_steps 1-4` does; n = None means the configured `num_steps`) and refuses any larger count (a pipeline default
such as 50) with one sentence, so the number of transformer calls is always the call's `num_inference_steps`;
`timesteps` = 1000·t_i rounded to bfloat16 (float32 tensor; `bf16_timesteps=True`, the default), so Wan2.2's expert
switch `t >= boundary_ratio · num_train_timesteps` compares RF times; `sigmas` = the RF times with the final 0.

Timestep rounding: TurboDiffusion and rCM cast the model's timestep 1000·t to the network dtype (bf16) before its
float64 sinusoidal embedding, in inference and in training (TurboDiffusion `inference/wan2.1_t2v_infer.py`,
`rcm/models/t2v_model_distill_rcm.py`), so the released students saw 988, 932, 852, 608 rather than 987.65, 933.78,
852.90, 608.98. The scheduler hands the model those rounded values (measured on a random tiny Wan: 9.7 % relative
L2 difference in the final latents without it, 3e-6 with it, `benchmarks/td_equivalence.py`); the update
x0 = x − t·v uses the exact t, as theirs does. `bf16_timesteps=False` passes the exact 1000·t.

Start point: the reference starts from x = t_0·ε. `init_noise_sigma` is t_0 for pipelines that scale their initial
noise by it; Wan's pipelines do not, so there the first model input is ε itself (a start 1/t_0 larger: 1.25 % at
σ_max 80). The step treats the sample it is given as the state, so the sampler stays self-consistent; passing
`latents=scheduler.init_noise_sigma * ε` to the pipeline gives the reference's exact start.

Fresh noise: Wan's pipelines do not pass their generator to `step`. The scheduler therefore owns a `torch.Generator`
(on the sample's device), re-seeded at the first step of every generation: from `noise_seed` when set, otherwise from
a hash of the first 64 values of the initial latents, which the pipeline's generator drew, so the same pipeline
seed gives the same video and different seeds differ in every draw. A `generator=` passed to `step` takes precedence.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .grid import PUBLISHED_MID_T, rcm_angles, rcm_rf_times

SEED_VALUES = 64  # initial-latent values hashed into the noise seed


@dataclass
class RCMSchedulerOutput(BaseOutput):
    """`prev_sample`: the state at the next time, [B, C, F, H, W] in the sample's dtype; `pred_original_sample`:
    x0̂ of this step, same shape and dtype."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class RCMScheduler(SchedulerMixin, ConfigMixin):
    """The rCM few-step sampler for rectified-flow velocity models (see the module docstring).

    Args:
        num_train_timesteps: the model's timestep scale (model timestep = num_train_timesteps · t); 1000 for Wan.
        num_steps: the default step count (1 … len(mid_t) + 1), used when `set_timesteps` gets None.
        sigma_max: the start noise level in EDM σ (first angle atan(σ_max)); 80 T2V, 200 I2V, 120 14B 720p.
        mid_t: intermediate TrigFlow angles in radians, decreasing (published default (1.5, 1.4, 1.0)).
        stochastic: re-noise with fresh noise each step (True, the rCM default) or take Euler ODE steps (False).
        noise_seed: seed of the fresh noise; None derives it from the initial latents each generation.
        bf16_timesteps: round the model's timesteps 1000·t to bfloat16 as rCM / TurboDiffusion do (see above).
    """

    order = 1
    _compatibles: list = []

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, num_steps: int = 4, sigma_max: float = 80.0,
                 mid_t: Sequence[float] = PUBLISHED_MID_T, stochastic: bool = True, noise_seed: int | None = None,
                 bf16_timesteps: bool = True):
        rcm_angles(num_steps, sigma_max, mid_t)  # validates
        if noise_seed is not None and (not isinstance(noise_seed, int) or isinstance(noise_seed, bool)
                                       or noise_seed < 0):
            raise ValueError(f"RCMScheduler noise_seed={noise_seed!r} must be None or an int >= 0.")
        self.num_inference_steps: int | None = None
        self.rf_times = torch.empty(0, dtype=torch.float64)  # [steps + 1] float64, ends with 0
        self.sigmas = torch.empty(0, dtype=torch.float32)  # the same in float32 (pipelines read sigmas[i])
        self.timesteps = torch.empty(0, dtype=torch.float32)  # [steps] float32 = num_train_timesteps · t_i
        self.init_noise_sigma = 1.0
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._state: torch.Tensor | None = None  # float64 state after the last step
        self._returned: torch.Tensor | None = None  # the tensor handed back for it (identity check)
        self._generator: torch.Generator | None = None
        self._generator_device: torch.device | None = None
        self.set_timesteps(num_steps)

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas=None, **_unused) -> None:
        """Prepare one generation of `num_inference_steps` steps (None: the configured `num_steps`, or as many steps
        as `sigmas` has — HunyuanVideoPipeline passes its own sigma grid, of which rCM keeps only the count). rCM runs
        1 to len(mid_t) + 1 steps; another count raises `ValueError` (one sentence) before any model call."""
        most = len(self.config.mid_t) + 1
        if num_inference_steps is None and sigmas is not None:
            num_inference_steps = len(sigmas)
        steps = self.config.num_steps if num_inference_steps is None else num_inference_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= most:
            raise ValueError(
                f"RCMScheduler samples in 1 to {most} steps but the pipeline asked for num_inference_steps={steps}; "
                f"call it with num_inference_steps={self.config.num_steps} (the configured sampler steps)."
            )
        times = rcm_rf_times(steps, self.config.sigma_max, self.config.mid_t)
        self.num_inference_steps = steps
        self.rf_times = torch.tensor(times, dtype=torch.float64)
        self.sigmas = self.rf_times.to(device=device, dtype=torch.float32)
        timesteps = self.rf_times[:-1] * self.config.num_train_timesteps
        if self.config.bf16_timesteps:
            timesteps = timesteps.to(torch.bfloat16)
        self.timesteps = timesteps.to(device=device, dtype=torch.float32)
        self.init_noise_sigma = times[0]
        self._step_index = None
        self._begin_index = None
        self._state = self._returned = None

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """Identity (the RF model takes x_t as is)."""
        return sample

    def _init_step_index(self, timestep) -> None:
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        value = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        matches = (self.timesteps.cpu().double() - value).abs().argmin()
        self._step_index = int(matches)

    def _noise_generator(self, sample: torch.Tensor) -> torch.Generator:
        """The scheduler's own generator on the sample's device, re-seeded at the first step of a generation."""
        if self._generator is None or self._generator_device != sample.device or self._step_index == 0:
            seed = self.config.noise_seed
            if seed is None:
                values = sample.detach().flatten()[:SEED_VALUES].to("cpu", torch.float64).numpy().tobytes()
                seed = int.from_bytes(hashlib.sha256(values).digest()[:8], "little") & ((1 << 63) - 1)
            self._generator = torch.Generator(device=sample.device).manual_seed(seed)
            self._generator_device = sample.device
        return self._generator

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """One rCM step from time t_i to t_{i+1}.

        Args:
            model_output: the velocity v = ε − x0 predicted at t_i, [B, C, F, H, W], any float dtype.
            timestep: the pipeline's current timestep (used only when `set_begin_index` was not called).
            sample: the state x at t_i, [B, C, F, H, W] (float32 in Wan's pipelines).
            generator: the source of fresh noise; default the scheduler's own (see the module docstring).
        Returns `RCMSchedulerOutput` or `(prev_sample,)`; both tensors have the sample's shape and dtype.
        """
        if self.num_inference_steps is None:
            raise ValueError("RCMScheduler.step called before set_timesteps.")
        if self._step_index is None:
            self._init_step_index(timestep)
        index = self._step_index
        if index >= self.num_inference_steps:
            raise ValueError(f"RCMScheduler.step called {index + 1} times for a {self.num_inference_steps}-step "
                             "generation; call set_timesteps again.")
        state = self._state if (self._returned is sample and self._state is not None) else sample.to(torch.float64)
        velocity = model_output.to(torch.float64)
        t, t_next = float(self.rf_times[index]), float(self.rf_times[index + 1])
        x0 = state - t * velocity
        if t_next == 0.0:
            new_state = x0
        elif self.config.stochastic:
            noise_gen = generator if generator is not None else self._noise_generator(sample)
            noise = randn_tensor(sample.shape, generator=noise_gen, device=sample.device, dtype=torch.float32)
            new_state = (1.0 - t_next) * x0 + t_next * noise.to(torch.float64)
        else:
            new_state = state - (t - t_next) * velocity
        prev_sample = new_state.to(sample.dtype)
        self._state, self._returned = new_state, prev_sample
        self._step_index = index + 1
        x0_out = x0.to(sample.dtype)
        if not return_dict:
            return (prev_sample, x0_out)
        return RCMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0_out)

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor) -> torch.Tensor:
        """x_t = (1 − t)·sample + t·noise at the RF time of `timestep` (video-to-video starts)."""
        t = (timestep.to(torch.float64) if isinstance(timestep, torch.Tensor) else torch.tensor(float(timestep),
             dtype=torch.float64)) / self.config.num_train_timesteps
        t = t.to(sample.device).flatten()[0]
        return ((1.0 - t) * sample.to(torch.float64) + t * noise.to(torch.float64)).to(sample.dtype)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
