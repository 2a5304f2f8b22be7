"""Step-to-step block caching: the Temporal Delta Cache (ALGORITHMS.md §7).

`turbo.accelerate(pipe, cache="tdc")` (the default of `turbo.accelerate(pipe)` for known pipelines) puts a diffusers
`ModelHook` on every denoising block of each transformer (the adapter's `denoising_blocks`: Wan's blocks,
HunyuanVideo's dual- and single-stream blocks). The blocks are grouped into spans (default: one span of all of
them); per span and CFG branch the hooks keep the span's residual (output − input) from its last computed step and
its change per step, and skip the span — output = input + extrapolated residual — while the measured miss of that
extrapolation, times the steps since the last computation, stays under `threshold`, the predicted error accumulated
over the skip run stays within `max_error`, at most `max_skips` skips in a row, never in the first `warmup_steps`
or the last `final_steps` steps; by default one decision per step serves both CFG branches. State is per CFG branch
and resets at every new pipeline call; `max_memory_gb` caps the residual memory; `turbo.restore` removes every hook.
The rule, the memory, where the decisions are taken and why every rank takes the same one: turbo/cache/tdc.py.
Skip counts per branch: `turbo.cache.cache_stats(pipe)`."""

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
    threshold: float = option(0.05, "tdc: skip a span only while its predicted relative error (L1) is under this: "
                              "the measured extrapolation miss per step × steps since its last computation (Γ, the "
                              "residual's change per step, without extrapolate); 0 never skips",
                              range=(0.0, 1000.0))
    max_error: float = option(0.1, "tdc: recompute a span once its accumulated predicted error (sum over the skip "
                              "run) would exceed this", range=(0.0, 1000.0))
    max_skips: int = option(4, "tdc: most consecutive steps a span may be skipped (the paper's per-block TDC: 2)",
                            range=(1, 1000))
    warmup_steps: int = option(5, "tdc: first steps always computed", range=(0, 100000))
    final_steps: int = option(2, "tdc: last steps always computed", range=(0, 100000))
    span: int = option(0, "tdc: consecutive blocks sharing one cached residual and one decision; 0 = all blocks "
                       "(whole-stack cache, least memory), 1 = per block", range=(0, 100000))
    aligned: bool = option(True, "tdc: one skip decision per step shared by the CFG branches (both stale at the "
                           "same steps)")
    extrapolate: bool = option(True, "tdc: first-order extrapolation of the residual from its last two computations "
                               "(one more hidden state per span and branch); off = reuse it as is")
    max_memory_gb: float = option(8.0, "tdc: most residual memory one transformer may hold (GiB, all branches); a "
                                  "span past it is not cached", range=(0.0, 1e6))

    def __post_init__(self):
        validate_options(self, "cache")

    def settings(self):
        from .tdc import TDCSettings

        return TDCSettings(float(self.threshold), float(self.max_error), int(self.max_skips),
                           int(self.warmup_steps), int(self.final_steps), int(self.span), bool(self.aligned),
                           bool(self.extrapolate), float(self.max_memory_gb))


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
        line = _activity_line({components.get(id(cache.model), "transformer"): {
            branch: dict(counts) for branch, counts in sorted(cache.counts.items())} for cache in token})
        if line is None:
            return None
        memory = ", ".join(f"{components.get(id(cache.model), 'transformer')} {cache.peak_bytes / 2**20:.1f} MiB"
                           for cache in token)
        refused = sum(cache.refused for cache in token)
        return (f"{line}; residual memory peak {memory} (cap {token[0].settings.max_memory_gb:g} GiB each"
                + (f", {refused} span residual(s) refused" if refused else "") + ")")

    def describe(self, section: CacheConfig) -> str:
        unit = "all blocks as one span" if section.span == 0 else (
            "per block" if section.span == 1 else f"spans of {section.span} blocks")
        return (f"tdc: Temporal Delta Cache, {unit}, "
                f"{'one decision per step for all CFG branches' if section.aligned else 'decisions per CFG branch'}, "
                f"{'extrapolated (or held) residuals' if section.extrapolate else 'held residuals'}, threshold "
                f"{section.threshold:g}, max error {section.max_error:g}, ≤ {section.max_skips} skips in a row, steps "
                f"[{section.warmup_steps}, last − {section.final_steps}) only, residuals ≤ {section.max_memory_gb:g} "
                "GiB per transformer; skip counts: turbo.cache.cache_stats(pipe)")


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
