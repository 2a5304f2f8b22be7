"""`pipe.turbo`: what `turbo.accelerate` changed, and what the accelerated runs did since."""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import TurboConfig
from .runtime import TurboRuntime


@dataclass
class TransformerReport:
    component: str  # "transformer" or "transformer_2"
    class_name: str
    family: str
    self_attention_layers: int  # one per transformer block
    method: str
    path: str  # "stock", "kernel" or "reference"
    learnable_parameters: int


@dataclass
class TurboReport:
    config: TurboConfig
    preset: str | None
    machine: str
    transformers: list[TransformerReport]
    runtime: TurboRuntime
    warnings: list[str] = field(default_factory=list)
    # what `turbo.restore` needs to undo each transformer (accelerate's private records)
    installed: list = field(default_factory=list, repr=False)

    @property
    def processors_installed(self) -> int:
        return sum(t.self_attention_layers for t in self.transformers)

    def __str__(self) -> str:
        a = self.config.attention
        name = f"preset '{self.preset}'" if self.preset else "custom config"
        lines = [f"turbo: {name} on {self.machine}"]
        details = {
            "sla": f"keep {a.keep:.0%}, blocks {a.block_q}×{a.block_k}",
            "sla2": f"keep {a.keep:.0%}, blocks {a.block_q}×{a.block_k}, soft top-k {a.soft_topk}, "
                    f"low-bit {a.quantized}",
            "svg": f"density {a.density:.0%}, {a.profile_rows} profiling rows",
            "svg2": f"k-means {a.q_clusters} Q / {a.k_clusters} K clusters, top-p {a.top_p}, {a.kmeans_iters} iters",
            "lowbit": "INT8 QK, FP8 PV",
        }.get(a.method, "")
        warm = []
        if a.dense_steps:
            warm.append(f"first {a.dense_steps} steps dense")
        if a.dense_layers:
            warm.append(f"first {a.dense_layers} blocks dense")
        lines.append(
            f"  attention  {a.method}" + (f" ({details})" if details else "") + (f"; {', '.join(warm)}" if warm else "")
        )
        for t in self.transformers:
            lines.append(
                f"  {t.component:<13} {t.class_name}: {t.self_attention_layers} self-attention layers "
                f"→ {t.method} [{t.path}]" + (f", +{t.learnable_parameters:,} learnable params"
                                                     if t.learnable_parameters else "")
            )
        lines.append(
            f"  quant {self.config.quant.mode}, cache {self.config.cache.mode}, sampler {self.config.sampler.mode}"
        )
        stats = self.runtime.stats
        if stats.calls:
            calls = ", ".join(f"{k} {v}" for k, v in sorted(stats.calls.items()))
            lines.append(f"  since then: {stats.requests} request(s); attention calls: {calls}")
            if self.runtime.geometry is not None:
                lines.append(f"  last video grid {self.runtime.geometry}")
            if stats.mean_density is not None:
                lines.append(f"  measured block density {stats.mean_density:.1%} (after block rounding)")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)
