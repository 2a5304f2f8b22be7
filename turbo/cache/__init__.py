"""Step-to-step block caching: the Temporal Delta Cache (ALGORITHMS.md §7).

`turbo.accelerate(pipe, cache="tdc")` puts a diffusers `ModelHook` on every denoising block of each transformer
(the adapter's `denoising_blocks`: Wan's blocks, HunyuanVideo's dual- and single-stream blocks). Per block and CFG
branch the hook keeps the block's residual (output − input) from its last computed step and skips the block — output
= input + cached residual — while the residual is predicted stable: its relative change between the last two
computed steps (per step) is under `threshold`, the predicted error accumulated over the skip run stays within
`max_error`, at most `max_skips` skips in a row, never in the first `warmup_steps` or the last `final_steps` steps.
State is per CFG branch and resets at every new pipeline call; `turbo.restore` removes every hook. The rule, where
the decisions are taken and why every rank takes the same one: turbo/cache/tdc.py. Skip counts per branch:
`turbo.cache.cache_stats(pipe)`."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..config import option, validate_options
from ..errors import TurboConfigError
from ..registry import Feature, register_feature

CACHE_MODES = ("off", "tdc")
logger = logging.getLogger("turbo")


@dataclass(frozen=True)
class CacheConfig:
    """Step-to-step block caching (Temporal Delta Cache)."""

    mode: str = option("off", "block residual cache: tdc = Temporal Delta Cache (skip temporally stable blocks)",
                       choices=CACHE_MODES)
    threshold: float = option(0.05, "tdc: a block counts as stable when its residual changed by less than this "
                              "(relative L1 per step) between its last two computed steps; 0 never skips",
                              range=(0.0, 1000.0))
    max_error: float = option(0.1, "tdc: recompute a block once its accumulated predicted error (sum of its "
                              "per-step change over the skip run) would exceed this", range=(0.0, 1000.0))
    max_skips: int = option(2, "tdc: most consecutive steps a block may be skipped (paper: 2)", range=(1, 1000))
    warmup_steps: int = option(5, "tdc: first steps always computed", range=(0, 100000))
    final_steps: int = option(2, "tdc: last steps always computed", range=(0, 100000))

    def __post_init__(self):
        validate_options(self, "cache")

    def settings(self):
        from .tdc import TDCSettings

        return TDCSettings(float(self.threshold), float(self.max_error), int(self.max_skips),
                           int(self.warmup_steps), int(self.final_steps))


def _scheduler_steps(pipe):
    """() -> the pipeline scheduler's current step count (None without one): the last steps' fallback when the
    pipeline's cache_context does not pass `num_inference_steps`."""

    def total():
        timesteps = getattr(getattr(pipe, "scheduler", None), "timesteps", None)
        return len(timesteps) if timesteps is not None else None

    return total


class CacheFeature(Feature):
    name = "cache"
    config_cls = CacheConfig
    order = 30  # after quantisation (the hooks wrap whatever modules the blocks hold), before compile

    def check(self, context, section: CacheConfig) -> None:
        from diffusers.hooks._helpers import TransformerBlockRegistry

        for target in context.targets:
            blocks = target.adapter.denoising_blocks(target.model)
            if not blocks:
                raise TurboConfigError(f"cache='tdc' found no transformer blocks in {type(target.model).__name__}; "
                                       "use cache='off'.")
            for block in blocks:
                try:
                    TransformerBlockRegistry.get(type(block))
                except ValueError:
                    raise TurboConfigError(
                        f"cache='tdc' does not know the inputs/outputs of {type(block).__name__} (not in diffusers' "
                        "TransformerBlockRegistry); use cache='off'."
                    ) from None

    def install(self, context, section: CacheConfig) -> list:
        from .tdc import TransformerCache

        caches = []
        try:
            for target in context.targets:
                cache = TransformerCache(target.model, target.adapter.denoising_blocks(target.model),
                                         section.settings(), context.runtime, _scheduler_steps(context.pipe))
                caches.append(cache)
                cache.install()
        except BaseException:
            self.undo(context, caches)
            raise
        logger.info("turbo: Temporal Delta Cache on %d blocks", sum(len(c.blocks) for c in caches))
        return caches

    def undo(self, context, caches: list) -> None:
        for cache in reversed(caches):
            cache.remove()

    def activity(self, context, token) -> str | None:
        components = {id(t.model): t.component for t in context.targets}
        return _activity_line({components.get(id(cache.model), "transformer"): {
            branch: dict(counts) for branch, counts in sorted(cache.counts.items())} for cache in token})

    def describe(self, section: CacheConfig) -> str:
        return (f"tdc: Temporal Delta Cache per block and CFG branch, threshold {section.threshold:g}, "
                f"max error {section.max_error:g}, ≤ {section.max_skips} skips in a row, steps "
                f"[{section.warmup_steps}, last − {section.final_steps}) only; skip counts: "
                "turbo.cache.cache_stats(pipe)")


def _activity_line(counts: dict) -> str | None:
    parts = [f"{component} {branch} {c['skipped']}/{c['computed'] + c['skipped']}"
             for component, branches in counts.items() for branch, c in branches.items()
             if c["computed"] + c["skipped"]]
    return ("cache: block evaluations skipped " + ", ".join(parts)) if parts else None


def cache_stats(pipe) -> dict:
    """Block evaluations of the accelerated pipe's Temporal Delta Cache since `accelerate`, per transformer
    component and CFG branch: {"transformer": {"cond": {"computed": int, "skipped": int}, ...}, ...}; {} without
    a cache."""
    report = getattr(pipe, "turbo", None)
    out = {}
    for feature, token in getattr(report, "installed", []):
        if isinstance(feature, CacheFeature):
            components = {id(t.model): t.component for t in report.context.targets}
            for cache in token:
                out[components.get(id(cache.model), "transformer")] = {
                    branch: dict(counts) for branch, counts in sorted(cache.counts.items())}
    return out


register_feature(CacheFeature())
