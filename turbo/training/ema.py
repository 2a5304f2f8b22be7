"""Exponential moving averages of a module's trainable parameters: constant decay (`EMA`) and EDM2's power EMA
(`PowerEMA`, what rCM exports). Both update with one foreach kernel and no CPU sync, so they run inside a captured
CUDA graph; the shadows are fp32 copies on the parameters' device."""

from __future__ import annotations

import math

import torch

__all__ = ["EMA", "PowerEMA", "make_ema", "power_ema_gamma", "power_ema_sigma_rel"]


def power_ema_gamma(sigma_rel: float) -> float:
    """EDM2's exponent γ of the power EMA whose averaging profile has relative standard deviation `sigma_rel`.

    Solves ``σ_rel² = (γ+1) / ((γ+2)² (γ+3))`` for γ (the largest real root of ``γ³ + 7γ² + (16 - t)γ + 12 - t``,
    ``t = σ_rel⁻²``; EDM2's ``std_to_exp``). E.g. σ_rel 0.05 -> γ ≈ 16.97, 0.10 -> γ ≈ 6.94, 0.20 -> γ ≈ 1.83.
    """
    import numpy as np

    if not 0.0 < sigma_rel < 0.28:
        raise ValueError(f"sigma_rel must be in (0, 0.28) (γ > 0), got {sigma_rel}")
    t = sigma_rel ** -2
    return float(np.roots([1.0, 7.0, 16.0 - t, 12.0 - t]).real.max())


def power_ema_sigma_rel(gamma: float) -> float:
    """Inverse of `power_ema_gamma`: ``sqrt((γ+1) / ((γ+2)² (γ+3)))``."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


class EMA:
    """``shadow = decay * shadow + (1 - decay) * param`` after every `update` (shadows start as the parameters)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}

    def _pairs(self, module: torch.nn.Module):
        pairs = [(self.shadow[n], p.detach()) for n, p in module.named_parameters() if n in self.shadow]
        return (list(x) for x in zip(*pairs, strict=True)) if pairs else ([], [])

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        shadow, live = self._pairs(module)
        if shadow:
            torch._foreach_lerp_(shadow, live, 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        """Write the averages into `module`'s parameters."""
        for n, p in module.named_parameters():
            if n in self.shadow:
                p.copy_(self.shadow[n])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{parameter name: average} (tensors for a safetensors checkpoint)."""
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} tensors, e.g. {missing[0]}")
        from .sharding import shard_like

        for n, tensor in self.shadow.items():
            tensor.copy_(shard_like(state[n], tensor))  # a full tensor into an FSDP shard too


class PowerEMA(EMA):
    """EDM2 power EMA: after update t (1-based) ``shadow = β_t shadow + (1 - β_t) param`` with
    ``β_t = (1 - 1/t)^(γ+1)``, γ from `sigma_rel` (`power_ema_gamma`) or given directly.

    Closed form: after T updates the shadow is ``Σ_t w_t θ_t`` with ``w_t = (t^(γ+1) - (t-1)^(γ+1)) / T^(γ+1)``
    (weights summing to 1, growing like t^γ: early weights are forgotten, however long the run). The update count
    lives in a device tensor (``num_updates``), so β_t is computed on the device inside a CUDA graph.
    """

    def __init__(self, module: torch.nn.Module, sigma_rel: float | None = None, gamma: float | None = None):
        if (sigma_rel is None) == (gamma is None):
            raise ValueError("PowerEMA takes sigma_rel or gamma")
        super().__init__(module, decay=float("nan"))
        self.gamma = power_ema_gamma(sigma_rel) if gamma is None else float(gamma)
        self.sigma_rel = power_ema_sigma_rel(self.gamma)
        device = next(iter(self.shadow.values())).device if self.shadow else torch.device("cpu")
        self.num_updates = torch.zeros((), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        shadow, live = self._pairs(module)
        self.num_updates.add_(1)
        weight = 1.0 - (1.0 - 1.0 / self.num_updates).pow(self.gamma + 1)  # 1 - β_t (1 at t = 1)
        if shadow:
            torch._foreach_lerp_(shadow, live, weight.to(shadow[0].dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.shadow, "_num_updates": self.num_updates}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        self.num_updates.copy_(state["_num_updates"])


def make_ema(module: torch.nn.Module, config) -> EMA | None:
    """The EMA a `TrainConfig` asks for: `PowerEMA` (``ema_sigma_rel``), `EMA` (``ema_decay``) or None."""
    if config.ema_sigma_rel is not None:
        return PowerEMA(module, sigma_rel=config.ema_sigma_rel)
    if config.ema_decay:
        return EMA(module, config.ema_decay)
    return None
