"""The `vae` section (`turbo.vae`): "fast" RMS norms on a Wan VAE decode the same video to float rounding, appear in
the report, come off with `turbo.restore`; the default config leaves the VAE alone; a HunyuanVideo VAE has nothing to
hook."""

from __future__ import annotations

import pytest
import torch

import turbo
from turbo.vae import CONV_HOOK_NAME, HOOK_NAME, causal_conv3d, fast_rms_norm, vae_causal_convs, vae_norms


def test_fast_rms_norm_equals_f_normalize():
    x = torch.randn(2, 12, 3, 8, 8)
    x[0, :, 0, 0, 0] = 0.0  # an all-zero channel vector: eps keeps it 0, as F.normalize
    for dim in (1, -1):
        torch.testing.assert_close(fast_rms_norm(x, dim), torch.nn.functional.normalize(x, dim=dim),
                                   atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def wan():
    from pipelines import tiny

    return tiny.build_default()


def _decode(pipe):
    z = torch.randn(1, pipe.vae.config.z_dim, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return pipe.vae.decode(z).sample


def test_fast_vae_decodes_the_same_video_and_restores(wan):
    from diffusers.hooks.hooks import HookRegistry

    stock = _decode(wan)
    norms = vae_norms(wan)
    convs = vae_causal_convs(wan)
    assert norms and convs
    turbo.accelerate(wan)  # default config: VAE untouched
    assert all(HookRegistry.check_if_exists_or_initialize(m).get_hook(HOOK_NAME) is None for m in norms)
    assert torch.equal(_decode(wan), stock)
    turbo.restore(wan)
    turbo.accelerate(wan, vae="fast")
    assert "vae        fast RMS norms and causal convolutions" in str(wan.turbo)
    assert all(HookRegistry.check_if_exists_or_initialize(m).get_hook(HOOK_NAME) is not None for m in norms)
    assert all(HookRegistry.check_if_exists_or_initialize(m).get_hook(CONV_HOOK_NAME) is not None for m in convs)
    torch.testing.assert_close(_decode(wan), stock, atol=1e-5, rtol=1e-4)
    turbo.restore(wan)
    assert all(HookRegistry.check_if_exists_or_initialize(m).get_hook(HOOK_NAME) is None for m in norms)
    assert all(HookRegistry.check_if_exists_or_initialize(m).get_hook(CONV_HOOK_NAME) is None for m in convs)
    assert torch.equal(_decode(wan), stock)


@pytest.mark.parametrize("time_pad, stride", [(2, (1, 1, 1)), (0, (1, 1, 1)), (1, (1, 2, 2))])
def test_causal_conv3d_equals_pad_then_conv(time_pad, stride):
    """The time-only padding + the convolution's own spatial padding (oneDNN on CPU) against diffusers' way: F.pad of
    every axis, then an unpadded conv3d; few time steps, the shapes PyTorch sends to its slow generic conv3d."""
    g = torch.Generator().manual_seed(time_pad)
    x = torch.randn(1, 8, 3, 9, 10, generator=g)
    weight, bias = torch.randn(6, 8, 3, 3, 3, generator=g), torch.randn(6, generator=g)
    want = torch.nn.functional.conv3d(torch.nn.functional.pad(x, (1, 1, 1, 1, time_pad, 0)), weight, bias, stride)
    got = causal_conv3d(x, weight, bias, stride, time_pad, (1, 1))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_hunyuan_vae_has_nothing_to_hook():
    from pipelines import tiny

    hunyuan = tiny.build_hunyuan_t2v()
    assert vae_norms(hunyuan) == [] and vae_causal_convs(hunyuan) == []
    turbo.accelerate(hunyuan, vae="fast")
    turbo.restore(hunyuan)
