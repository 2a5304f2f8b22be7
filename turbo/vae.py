"""The `vae` section: the pipeline's VAE decode, made faster where it costs nothing in quality.

mode "fast" puts a diffusers `ModelHook` on each RMS norm of a Wan VAE (diffusers' ``WanRMS_norm``,
Wan2.1 / Wan2.2 / the ToyWorld Wan pipelines) that computes the same normalisation as ``x · rsqrt(Σ_c x²)``: the stock
``F.normalize`` over the channel dimension of a [B, C, T, H, W] tensor is a strided vector norm that takes about a
third of a CPU decode (measured: a ToyWorld 17-frame 256² decode on 2 cores 5.7 → 3.6 s, outputs equal to 3e-6).
Other VAEs (HunyuanVideo's uses GroupNorm) are left as they are. `turbo.restore` removes the hooks. The default is
"off": the values are the same to float rounding, not bit for bit, and turbo's default config changes nothing; the
recipes `turbo distill` exports (and so the shipped ToyWorld students) set "fast"."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import option, validate_options
from .registry import Feature, register_feature

VAE_MODES = ("fast", "off")
HOOK_NAME = "turbo_fast_rms_norm"
_NORM_CLASSES = ("WanRMS_norm",)  # diffusers' Wan VAE norm (autoencoder_kl_wan.py)


@dataclass(frozen=True)
class VAEConfig:
    """The pipeline's VAE."""

    recommended = "fast"

    mode: str = option("off", "fast = the Wan VAE's RMS norms as x·rsqrt(Σx²) (same values, ~10× faster on CPUs); "
                       "off = the VAE as it is", choices=VAE_MODES)

    def __post_init__(self):
        validate_options(self, "vae")


def fast_rms_norm(x: torch.Tensor, dim: int, eps: float = 1e-12) -> torch.Tensor:
    """``F.normalize(x, dim=dim, eps=eps)`` (x / max(‖x‖₂, eps) along `dim`) as a sum of squares and an rsqrt, in
    x's dtype; any shape."""
    return x * torch.rsqrt(x.square().sum(dim, keepdim=True).clamp_min(eps * eps))


def _norm_hook_class():
    from diffusers.hooks.hooks import ModelHook

    class FastRMSNormHook(ModelHook):
        """Replaces a ``WanRMS_norm`` forward with the same computation through `fast_rms_norm`."""

        def new_forward(self, module, x):
            low = x.dtype in (torch.float16, torch.bfloat16)
            normalized = fast_rms_norm(x.float() if low else x, 1 if module.channel_first else -1).to(x.dtype)
            return normalized * module.scale * module.gamma + module.bias

    return FastRMSNormHook


def vae_norms(pipe) -> list[torch.nn.Module]:
    """The RMS-norm modules of `pipe`'s VAE that "fast" hooks (empty for other VAEs or no VAE)."""
    vae = getattr(pipe, "vae", None)
    if not isinstance(vae, torch.nn.Module):
        return []
    return [m for m in vae.modules() if type(m).__name__ in _NORM_CLASSES and hasattr(m, "channel_first")]


class VAEFeature(Feature):
    name = "vae"
    config_cls = VAEConfig
    order = 50

    def install(self, context, section: VAEConfig):
        from diffusers.hooks.hooks import HookRegistry

        hook_class, done = _norm_hook_class(), []
        try:
            for module in vae_norms(context.pipe):
                HookRegistry.check_if_exists_or_initialize(module).register_hook(hook_class(), HOOK_NAME)
                done.append(module)
        except BaseException:
            self.undo(context, done)
            raise
        return done

    def undo(self, context, modules) -> None:
        from diffusers.hooks.hooks import HookRegistry

        for module in modules:
            HookRegistry.check_if_exists_or_initialize(module).remove_hook(HOOK_NAME, recurse=False)

    def describe(self, section: VAEConfig) -> str:
        return "fast RMS norms for a Wan VAE (same values; other VAEs as they are)"


register_feature(VAEFeature())
