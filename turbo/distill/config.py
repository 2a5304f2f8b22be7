"""`DistillConfig`: one frozen dataclass for a distillation run (rCM step distillation, SLA fine-tuning, or both).

Defaults are the published recipes (shared/research/turbodiffusion_rcm.md §1.6, §2.2–2.6, Wan2.1-1.3B):

* rCM: student AdamW lr 2e-6, fake score lr 4e-7, betas (0, 0.999), weight decay 0.01, linear LR warm-up over 100
  steps, student_update_freq 5, tangent_warmup 1000, loss scales 100 (sCM) / 1 (DMD), teacher CFG 5,
  p_G LogNormal(0.7, 1.6), p_D UniformShift(5), sampling σ_max 80 with mid_t 1.5,1.4,1.0, EDM2 power EMA σ_rel 0.1.
* SLA white-box: lr 1e-5, betas (0.9, 0.999), t from σ = exp(N(1.5, 1.6²)), SLA keep 0.1 in TurboDiffusion's form.

`lr`, `beta1` and `attention` left as None take the mode's published value (resolved at construction, so the stored
config and `diff` see the real numbers). `DistillConfig.load(path)` reads YAML or JSON; unknown keys are refused by
name; `diff` lists the keys two configs disagree on (``--resume`` with a changed config is refused with them).
`tiny_toyworld()` is the preset for CPU tests and the ToyWorld example: short warm-ups, a high learning rate.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from turbo.errors import TurboConfigError
from turbo.training.config import ConfigDict, TrainConfig

__all__ = ["MODES", "MIXED_PRECISION", "RUNTIME_KEYS", "DistillConfig", "tiny_toyworld"]

MODES = ("rcm", "sla", "rcm+sla", "sla2-stage1", "sla2-stage2")
MIXED_PRECISION = ("no", "bf16", "fp16")
JVP_ATTENTION = ("auto", "kernel", "reference")  # auto: the Triton kernel on CUDA, the PyTorch reference elsewhere
# keys that may change on --resume: they do not change the trained parameters (`steps` extends or shortens a run; the
# LR schedule is warm-up then constant, so the trajectory of the shared steps is the same)
RUNTIME_KEYS = ("steps", "minutes", "save_every", "sample_every", "log_every", "show_progress", "keep_checkpoints",
                "output", "teacher", "data", "jvp_attention")

_MODE_DEFAULTS = {
    "rcm": {"lr": 2e-6, "beta1": 0.0, "attention": {"method": "dense"}},
    "sla": {"lr": 1e-5, "beta1": 0.9, "attention": {"method": "sla", "keep": 0.1, "linear": "all",
                                                    "topk_rule": "floor"}},
    "rcm+sla": {"lr": 2e-6, "beta1": 0.0, "attention": {"method": "sla", "keep": 0.1, "linear": "all",
                                                        "topk_rule": "floor"}},
    # SLA2 (ALGORITHMS.md §2; the paper publishes no learning rates): stage 1 fits only the router and α, stage 2
    # fine-tunes the whole model at the SLA fine-tune's rate
    "sla2-stage1": {"lr": 1e-3, "beta1": 0.9, "attention": {"method": "sla2", "keep": 0.03, "soft_topk": True}},
    "sla2-stage2": {"lr": 1e-5, "beta1": 0.9, "attention": {"method": "sla2", "keep": 0.03, "quantized": True}},
}


@dataclasses.dataclass(frozen=True)
class DistillConfig(ConfigDict):
    """Everything one distillation run depends on.

    mode: "rcm" (few-step student: sCM + DMD with a fake score), "sla" (SLA student matches the dense teacher's
        velocity), "rcm+sla" (rCM whose student attention is SLA; its JVP tangent runs with dense attention),
        "sla2-stage1" (only SLA2's router and α train, SoftTop-k, to reproduce dense attention on the teacher's
        captured Q/K/V), "sla2-stage2" (hard top-k + QAT, the whole model, velocity distillation as "sla").
    init_from: "sla2-stage2" only: a directory exported by "sla2-stage1" (or its turbo_attention.safetensors) whose
        SLA2 parts the student starts from; empty = untrained SLA2 parts (logged).
    student_from: "" (the student starts as a copy of the teacher) or a transformer directory of the teacher's
        architecture whose weights it starts from instead, e.g. an rCM student export to fine-tune with SLA attention
        (mode "rcm+sla") in fewer steps than from the teacher; the fake score still starts from the teacher.
    teacher: a diffusers pipeline directory (or, through `turbo distill`, a registry model name). data: a latent cache
        directory (`turbo.distill.data.LatentCache`). output: the run directory (``--out`` overrides it).
    steps: training iterations (student or fake-score updates each count one). minutes: 0, or a wall-time budget:
        the run stops (checkpoint + export, as at `steps`) at the first step boundary past it. batch_size: samples
        per process per micro-batch; grad_accum: micro-batches per update (accumulated under ``accelerator.no_sync``).
    lr / fake_lr / beta1 / beta2 / weight_decay / lr_warmup: AdamW and a linear warm-up, then constant.
    student_update_freq, tangent_warmup, scm_loss_scale, dmd_loss_scale, guidance, p_mean, p_std, dmd_shift,
        max_simulation_steps: rCM (§2.2–2.4). sigma_max, sample_steps, mid_t: the exported rCM sampler.
    sla_p_mean, sla_p_std: the SLA mode's RF time distribution (σ = exp(N(mean, std²)), t = σ/(1+σ)).
    train_attention_only: SLA modes train only turbo's attention parts (proj / router / α) instead of the whole model.
    sla_proj_init: "zero" (SLA's own start: block-sparse attention alone) or "lstsq" (each layer's proj fitted in
        closed form to the teacher's dense attention on a few cached batches, `turbo.attention.sla_fit`); SLA only.
    attention: the student's turbo attention section (a dict like ``{"method": "sla", "keep": 0.1}``).
    ema_sigma_rel: EDM2 power EMA of the student (what is exported). grad_clip: 0 = off (as published).
    mixed_precision: accelerate's "no" | "bf16" | "fp16" (fp32 master weights either way).
    gradient_checkpointing: diffusers' per-block activation checkpointing on the student (and fake score).
    jvp_attention: the attention JVP of the sCM tangent: "auto" (turbo's Triton kernel, O and its tangent in one pass,
        on CUDA; the chunked PyTorch reference elsewhere), "kernel" or "reference".
    save_every / sample_every / log_every: checkpoint, sample-video (0 = never) and log periods in steps.
    """

    _label = "distillation config"

    mode: str = "rcm"
    teacher: str = ""
    data: str = ""
    output: str = ""
    steps: int = 10000
    minutes: float = 0.0
    batch_size: int = 1
    grad_accum: int = 1
    seed: int = 0
    lr: float | None = None
    fake_lr: float = 4e-7
    beta1: float | None = None
    beta2: float = 0.999
    weight_decay: float = 0.01
    lr_warmup: int = 100
    grad_clip: float = 0.0
    student_update_freq: int = 5
    tangent_warmup: int = 1000
    scm_loss_scale: float = 100.0
    dmd_loss_scale: float = 1.0
    guidance: float = 5.0
    p_mean: float = 0.7
    p_std: float = 1.6
    dmd_shift: float = 5.0
    max_simulation_steps: int = 4
    sigma_max: float = 80.0
    sample_steps: int = 4
    mid_t: str = "1.5,1.4,1.0"
    sla_p_mean: float = 1.5
    sla_p_std: float = 1.6
    train_attention_only: bool = False
    sla_proj_init: str = "zero"
    attention: dict | None = None
    init_from: str = ""
    student_from: str = ""
    ema_sigma_rel: float = 0.1
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = False
    jvp_attention: str = "auto"
    save_every: int = 500
    sample_every: int = 0
    log_every: int = 50
    keep_checkpoints: int = 2
    show_progress: bool | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise TurboConfigError(f"DistillConfig.mode must be one of {', '.join(MODES)}, got {self.mode!r}.")
        defaults = _MODE_DEFAULTS[self.mode]
        for key in ("lr", "beta1", "attention"):
            if getattr(self, key) is None:
                object.__setattr__(self, key, dict(defaults[key]) if key == "attention" else defaults[key])
        if self.jvp_attention not in JVP_ATTENTION:
            raise TurboConfigError(f"DistillConfig.jvp_attention must be one of {', '.join(JVP_ATTENTION)}, got "
                                   f"{self.jvp_attention!r}.")
        if self.mixed_precision not in MIXED_PRECISION:
            raise TurboConfigError(f"DistillConfig.mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got "
                                   f"{self.mixed_precision!r}.")
        positive = ("steps", "batch_size", "grad_accum", "student_update_freq", "max_simulation_steps", "sample_steps",
                    "keep_checkpoints")
        bad = [k for k in positive if not isinstance(getattr(self, k), int) or getattr(self, k) < 1]
        bad += [k for k in ("lr", "fake_lr", "sigma_max", "p_std", "sla_p_std") if not getattr(self, k) > 0]
        bad += [k for k in ("lr_warmup", "tangent_warmup", "save_every", "sample_every", "log_every", "grad_clip",
                            "weight_decay", "scm_loss_scale", "dmd_loss_scale", "minutes") if getattr(self, k) < 0]
        if bad:
            raise TurboConfigError(f"DistillConfig: {', '.join(bad)} out of range (counts >= 1, rates > 0, periods "
                                   "and scales >= 0).")
        if not isinstance(self.attention, dict) or "method" not in self.attention:
            raise TurboConfigError(f"DistillConfig.attention must be a dict with a 'method', got {self.attention!r}.")
        if self.mode == "rcm" and self.attention["method"] != "dense":
            raise TurboConfigError(f"mode 'rcm' trains a dense-attention student; for attention "
                                   f"{self.attention['method']!r} use mode 'rcm+sla'.")
        if self.mode != "rcm" and self.attention["method"] not in ("sla", "sla2"):
            raise TurboConfigError(f"mode {self.mode!r} fine-tunes a sparse student: attention.method must be 'sla' or "
                                   f"'sla2', got {self.attention['method']!r}.")
        if self.mode.startswith("sla2-"):
            stage1 = self.mode == "sla2-stage1"
            if self.attention["method"] != "sla2" or bool(self.attention.get("soft_topk", False)) != stage1:
                raise TurboConfigError(f"mode {self.mode!r} trains SLA2 with {'SoftTop-k' if stage1 else 'hard top-k'}:"
                                       f" attention must be {{'method': 'sla2', 'soft_topk': {stage1}, ...}}, got "
                                       f"{self.attention!r}.")
        if self.sla_proj_init not in ("zero", "lstsq"):
            raise TurboConfigError(f"DistillConfig.sla_proj_init must be 'zero' or 'lstsq', got "
                                   f"{self.sla_proj_init!r}.")
        if self.sla_proj_init == "lstsq" and self.attention["method"] != "sla":
            raise TurboConfigError(f"sla_proj_init 'lstsq' fits SLA's proj; the student's attention is "
                                   f"{self.attention['method']!r}.")
        if self.init_from and self.mode != "sla2-stage2":
            raise TurboConfigError(f"DistillConfig.init_from is for mode 'sla2-stage2' (a stage-1 export), not "
                                   f"{self.mode!r}; remove it.")
        self.turbo_attention()  # validates the method's options
        self.sampler_section()

    # ---------------------------------------------------------------------------------------------- derived views

    @property
    def rcm(self) -> bool:
        return self.mode in ("rcm", "rcm+sla")

    def mid_angles(self) -> tuple[float, ...]:
        return tuple(float(a) for a in self.mid_t.split(",") if a.strip())

    def turbo_attention(self):
        """The student's `turbo.config.AttentionConfig`."""
        from turbo.config import AttentionConfig

        try:
            return AttentionConfig(**self.attention)
        except (TypeError, TurboConfigError) as error:
            raise TurboConfigError(f"DistillConfig.attention: {error}") from None

    def sampler_section(self) -> dict[str, Any]:
        """The recipe's sampler section: rCM with this run's steps / σ_max / mid_t for rCM modes, else default."""
        if not self.rcm:
            return {"mode": "default"}
        from turbo.sampler import SamplerConfig

        section = {"mode": "rcm", "steps": self.sample_steps, "sigma_max": float(self.sigma_max), "mid_t": self.mid_t}
        try:
            SamplerConfig(**section)
        except TurboConfigError as error:
            raise TurboConfigError(f"DistillConfig sampling: {error}") from None
        return section

    def train_config(self, fake: bool = False) -> TrainConfig:
        """The `TrainConfig` of the student's (or the fake score's) optimizer: AdamW + warm-up then constant."""
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, seed=self.seed,
                           lr=self.fake_lr if fake else self.lr, weight_decay=self.weight_decay, beta1=self.beta1,
                           beta2=self.beta2, grad_clip=self.grad_clip, warmup=self.lr_warmup, warmup_start=1e-6,
                           schedule="constant",
                           ema_sigma_rel=None if fake else self.ema_sigma_rel, cuda_graphs=False,
                           log_every=self.log_every, show_progress=self.show_progress)

    # --------------------------------------------------------------------------------------------- serialisation


    @classmethod
    def load(cls, path, overrides: dict | None = None) -> DistillConfig:
        """Read a YAML (.yaml/.yml) or JSON file; a top-level ``preset: tiny-toyworld`` starts from that preset.
        `overrides` (``--set key=value``) replace the file's keys before the config is built."""
        path = Path(path)
        if not path.is_file():
            raise TurboConfigError(f"{path}: no such distillation config file.")
        text = path.read_text()
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except Exception as error:  # noqa: BLE001 - any parse error becomes one sentence
            raise TurboConfigError(f"{path}: not valid {'YAML' if path.suffix != '.json' else 'JSON'} "
                                   f"({str(error).splitlines()[0]}).") from None
        if overrides:
            if not isinstance(data, dict):
                raise TurboConfigError(f"{path}: a distillation config must be a mapping of keys to values.")
            data = {**data, **overrides}
        if isinstance(data, dict):
            data = _numbers(data)
        if isinstance(data, dict) and "preset" in data:
            data = dict(data)
            name = data.pop("preset")
            if name not in PRESETS:
                raise TurboConfigError(f"{path}: unknown preset {name!r}; presets: {', '.join(PRESETS)}.")
            return PRESETS[name](**data)
        try:
            return cls.from_dict(data)
        except TurboConfigError as error:
            raise TurboConfigError(f"{path}: {error}") from None



def _numbers(data: dict) -> dict:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string: number fields given as numeric strings become numbers."""
    kinds = {f.name: str(f.type) for f in dataclasses.fields(DistillConfig)}
    out = dict(data)
    for key, value in data.items():
        kind = kinds.get(key, "")
        if isinstance(value, str) and kind.split(" ")[0] in ("float", "int"):
            try:
                number = float(value)
            except ValueError:
                continue
            out[key] = int(number) if kind == "int" and number.is_integer() else number
    return out


def tiny_toyworld(**overrides) -> DistillConfig:
    """Preset for CPU tests and the ToyWorld example: fp32, a high learning rate, warm-ups of a few steps, a student
    step every 2 iterations, SLA (SLA2 for the SLA2 stages) with 16-token blocks (tiny token counts) when the mode
    has sparse attention."""
    mode = overrides.get("mode", "rcm")
    base = dict(steps=20, batch_size=1, lr=1e-4, fake_lr=1e-4, lr_warmup=2,
                tangent_warmup=5, student_update_freq=2, mixed_precision="no", save_every=10, log_every=5,
                show_progress=False, p_mean=0.0, p_std=1.0)
    if mode.startswith("sla2-"):
        base["attention"] = {"method": "sla2", "keep": 0.25, "block_q": 16, "block_k": 16,
                             "soft_topk": mode == "sla2-stage1", "quantized": mode == "sla2-stage2"}
    elif mode != "rcm":
        base["attention"] = {"method": "sla", "keep": 0.25, "linear": "all", "topk_rule": "floor", "block_q": 16,
                             "block_k": 16}
    return DistillConfig(**{**base, **overrides})


PRESETS = {"tiny-toyworld": tiny_toyworld}
