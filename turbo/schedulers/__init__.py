"""Diffusers schedulers shipped by turbo.

`RCMScheduler` (`turbo.schedulers.rcm`, imports diffusers): the rCM / TurboDiffusion few-step sampler in
rectified-flow form. `turbo.schedulers.grid` holds its time grid without importing diffusers (config checks use it)."""

from .grid import PUBLISHED_MID_T, rcm_angles, rcm_rf_times

__all__ = ["PUBLISHED_MID_T", "RCMScheduler", "rcm_angles", "rcm_rf_times"]


def __getattr__(name: str):
    if name == "RCMScheduler":
        from .rcm import RCMScheduler

        return RCMScheduler
    raise AttributeError(f"module 'turbo.schedulers' has no attribute {name!r}")
