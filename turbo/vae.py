"""The `vae` section: the pipeline's VAE decode, made faster where it costs nothing in quality.

mode "fast" puts diffusers `ModelHook`s on two kinds of Wan VAE modules (Wan2.1 / Wan2.2 / the ToyWorld Wan
pipelines), each computing the same function another way:
- each RMS norm (diffusers' ``WanRMS_norm``) as ``x · rsqrt(Σ_c x²)``: the stock ``F.normalize`` over the channel
  dimension of a [B, C, T, H, W] tensor is a strided vector norm that took about a third of a CPU decode (a ToyWorld
  17-frame 256² decode on 2 cores 5.7 → 3.6 s, outputs equal to 3e-6);
- each causal 3-D convolution (``WanCausalConv3d``) pads only the time axis (cached frames or zeros) and lets the
  convolution pad height and width itself, instead of ``F.pad``-copying the whole activation first; on CPUs it calls
  oneDNN's convolution directly, because PyTorch's size heuristic sends the decoder's one-latent-frame chunks (few
  time steps) to its slow generic conv3d.
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
CONV_HOOK_NAME = "turbo_fast_causal_conv"
_NORM_CLASSES = ("WanRMS_norm",)  # diffusers' Wan VAE norm (autoencoder_kl_wan.py)
_CONV_CLASSES = ("WanCausalConv3d",)  # its causal conv: _padding = (w, w, h, h, 2·t, 0), padding (0, 0, 0)


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


def causal_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, time_pad: int,
                  spatial_pad: tuple[int, int]) -> torch.Tensor:
    """``conv3d(F.pad(x, (w, w, h, h, time_pad, 0)), weight, bias, stride)`` for x [B, C, T, H, W]: zeros are put in
    front of the time axis only, the convolution pads (h, w) itself; oneDNN's convolution on CPU float32."""
    if time_pad > 0:
        x = torch.cat([x.new_zeros(*x.shape[:2], time_pad, *x.shape[3:]), x], 2)
    padding = (0, *spatial_pad)
    if x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available():
        return torch.ops.aten.mkldnn_convolution(x.contiguous(), weight, bias, padding, tuple(stride), (1, 1, 1), 1)
    return torch.nn.functional.conv3d(x, weight, bias, stride, padding)


def _conv_hook_class():
    from diffusers.hooks.hooks import ModelHook

    class FastCausalConvHook(ModelHook):
        """Replaces a ``WanCausalConv3d`` forward with the same convolution through `causal_conv3d`."""

        def new_forward(self, module, x, cache_x=None):
            time_pad = module._padding[4]
            if cache_x is not None and time_pad > 0:
                x = torch.cat([cache_x.to(x.device), x], 2)
                time_pad -= cache_x.shape[2]
            return causal_conv3d(x, module.weight, module.bias, module.stride, time_pad,
                                 (module._padding[2], module._padding[0]))

    return FastCausalConvHook


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


def vae_causal_convs(pipe) -> list[torch.nn.Module]:
    """The causal 3-D convolutions of `pipe`'s VAE that "fast" hooks (empty for other VAEs or no VAE)."""
    vae = getattr(pipe, "vae", None)
    if not isinstance(vae, torch.nn.Module):
        return []
    return [m for m in vae.modules() if type(m).__name__ in _CONV_CLASSES and len(getattr(m, "_padding", ())) == 6
            and tuple(m.padding) == (0, 0, 0) and tuple(m.dilation) == (1, 1, 1) and m.groups == 1]


class VAEFeature(Feature):
    name = "vae"
    config_cls = VAEConfig
    order = 50

    def install(self, context, section: VAEConfig):
        from diffusers.hooks.hooks import HookRegistry

        done = []  # (module, hook name)
        try:
            for modules, hook_class, name in ((vae_norms(context.pipe), _norm_hook_class(), HOOK_NAME),
                                              (vae_causal_convs(context.pipe), _conv_hook_class(), CONV_HOOK_NAME)):
                for module in modules:
                    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook_class(), name)
                    done.append((module, name))
        except BaseException:
            self.undo(context, done)
            raise
        return done

    def undo(self, context, hooked) -> None:
        from diffusers.hooks.hooks import HookRegistry

        for module, name in hooked:
            HookRegistry.check_if_exists_or_initialize(module).remove_hook(name, recurse=False)

    def describe(self, section: VAEConfig) -> str:
        return "fast RMS norms and causal convolutions for a Wan VAE (same values; other VAEs as they are)"


register_feature(VAEFeature())
