"""`distill(pipe, config, data, output_dir)`: rCM step distillation and SLA fine-tuning of a diffusers Wan teacher,
run by `accelerate.Accelerator` (device placement, bf16/fp16 autocast, DDP when started with ``accelerate launch``).

Modes (`DistillConfig.mode`):

* "rcm" — student and fake score start as fp32 copies of the teacher transformer; the teacher is frozen. Iteration s:
  during the tangent warm-up (s < tangent_warmup) every iteration is a student sCM step; after it, iteration s is a
  student step when (s − tangent_warmup) % student_update_freq == 0 (sCM and DMD losses back-propagated separately,
  one optimizer step, then the power EMA), otherwise a fake-score step (its own AdamW). sCM: θ ~ p_G, teacher F with
  CFG, tangent by ``torch.func.jvp`` through the student (JVP attention), `scm_loss`. DMD: 1…4-step backward
  simulation from noise (only the last step with a gradient), re-noised at θ ~ p_D, fake score vs CFG teacher x0.
* "sla" — the student is a teacher copy with turbo's SLA installed (``turbo.accelerate(copy, allow_untuned=True)``);
  loss = mean((v_student − v_teacher)²) at x_t = (1 − t)·x0 + t·ε, t = σ/(1 + σ), σ = exp(N(1.5, 1.6²)) (§1.6),
  teacher without CFG; the whole student trains (or only its SLA parts: ``train_attention_only``).
* "rcm+sla" — "rcm" with the SLA student. The JVP tangent has no sparse path yet, so it is computed with the
  student's attention set dense (the SLA modules are set aside for that one no-grad pass); the with-gradient forward
  and the DMD simulation run SLA. This is logged once and written into the exported card.
* "sla2-stage1" — SLA2's router training (ALGORITHMS.md §2): the student is a teacher copy with turbo's ``sla2`` and
  SoftTop-k installed; only the SLA2 parameters (proj_q, proj_k, α logits of every layer) train, everything else is
  frozen. Each step draws x_t and t as "sla" does, runs the frozen student with every layer's attention dense (=
  the teacher, in fp32) while capturing each self-attention's post-RoPE (Q, K, V) (`turbo.eval.capture.QKVCapture`),
  and the loss is the mean over layers of mean((SLA2_l(Q, K, V) − softmax(QKᵀ/√d)V)²): each layer's SLA2 module is
  fitted to reproduce dense attention on its own captured inputs (not on its predecessors' SLA2 outputs).
* "sla2-stage2" — hard top-k + QAT (``quantized``) SLA2 student, the whole model trains with the "sla" velocity loss;
  it starts from the SLA2 parts of a stage-1 export (``init_from``), or from untrained parts (logged, noted).

Checkpoints (`turbo.training.checkpoint`, atomic, checksummed) every ``save_every`` steps, at the end and at the step
boundary after a SIGTERM (then `distill` returns with ``interrupted=True``); ``resume=True`` continues exactly: same
parameters as an uninterrupted run (data order is a function of the seed and the step; the noise generator, global
RNGs, optimizers, LR schedulers and EMA are restored). A NaN/inf loss stops before the update with a `TurboError`
naming the step; the last good checkpoint stays.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from turbo.errors import TurboConfigError, TurboError, UnsupportedModelError
from turbo.training import (
    PowerEMA,
    StepPlan,
    build_optimizer,
    capture_rng,
    join_tensors,
    latest_checkpoint,
    load_checkpoint,
    progress,
    restore_rng,
    save_checkpoint,
    split_tensors,
)
from turbo.training.sharding import (
    full_model_state,
    full_optimizer_state,
    full_tensor,
    load_model_state,
    load_optimizer_state,
    reshard,
    unsharded,
)

from . import losses as L
from .config import RUNTIME_KEYS, DistillConfig
from .jvp_attention import using_jvp_attention
from .trigflow import TrigFlowModel, backward_simulation, trig_noise

__all__ = ["DistillResult", "distill", "check_teacher", "SUPPORTED_TEACHERS"]

logger = logging.getLogger("turbo")

SUPPORTED_TEACHERS = ("Wan2.1-style text-to-video pipelines (WanPipeline with one WanTransformer3DModel) and, for "
                      "mode 'rcm', HunyuanVideo text-to-video pipelines without guidance embedding")
# cached text tensors -> the transformer's keyword arguments, per teacher family
TEXT_KWARGS = {"wan": {"prompt_embeds": "encoder_hidden_states"},
               "hunyuanvideo": {"prompt_embeds": "encoder_hidden_states",
                                "prompt_attention_mask": "encoder_attention_mask",
                                "pooled_prompt_embeds": "pooled_projections"}}
DENSE_JVP_NOTE = ("the sCM tangent (JVP) runs with the student's attention dense: turbo's sparse methods have no "
                  "forward-mode (JVP) path yet, so only the with-gradient forward and the DMD simulation use SLA")
CHECKPOINT_FORMAT = "full-by-name"  # full tensors, optimizer state keyed by parameter name (turbo.training.sharding)
_THETA_MIN = 1e-3  # smallest TrigFlow angle drawn (F = (cos θ·x − x0)/sin θ)


@dataclasses.dataclass
class DistillResult:
    """What a run produced. `history`: one dict per step run in this call (step, kind, loss, g_norm...)."""

    output_dir: Path
    steps_done: int
    interrupted: bool
    checkpoint: Path | None
    export_dir: Path | None
    history: list[dict]
    student: torch.nn.Module
    ema: PowerEMA | None
    notes: list[str]


def teacher_family(pipe) -> str:
    """'wan' or 'hunyuanvideo' for a supported teacher pipeline; anything else raises `UnsupportedModelError` (one
    sentence)."""
    from turbo.adapters import find_transformers
    from turbo.adapters.base import class_name
    from turbo.adapters.hunyuan import HunyuanVideoAdapter
    from turbo.adapters.wan import WanAdapter

    name = type(pipe).__name__
    try:
        found = find_transformers(pipe)
    except TurboError:
        found = []
    kind = class_name(found[0][1]) if len(found) == 1 else None
    config = getattr(found[0][1], "config", {}) if found else {}
    plain_t2v = getattr(pipe, "transformer_2", None) is None and "ImageToVideo" not in name
    if plain_t2v and kind in WanAdapter.class_names:
        return "wan"
    if plain_t2v and kind in HunyuanVideoAdapter.class_names and not config.get("guidance_embeds", False):
        return "hunyuanvideo"
    raise UnsupportedModelError(f"distillation supports {SUPPORTED_TEACHERS} for now, not {name} "
                                "(guidance-embedded HunyuanVideo, Wan2.2 two-expert and I2V teachers come later).")


def check_teacher(pipe) -> torch.nn.Module:
    """The teacher transformer of a supported pipeline; anything else raises `UnsupportedModelError` (one sentence)."""
    from turbo.adapters import find_transformers

    teacher_family(pipe)
    return find_transformers(pipe)[0][1]


# ------------------------------------------------------------------------------------------------------------- data


def _data_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def _batch(data, config: DistillConfig, step: int, micro: int, rank: int, world: int, device) -> dict:
    """Micro-batch `micro` of step `step` for process `rank`: a deterministic function of (seed, step), so a resumed
    run reads what the uninterrupted one would. Returns latents [B, C, F, H, W] and prompt_embeds [B, L, D] (fp32)."""
    per_step = config.batch_size * config.grad_accum * world
    start = step * per_step + (micro * world + rank) * config.batch_size
    n = len(data)
    items = []
    for position in range(start, start + config.batch_size):
        epoch, offset = divmod(position, n)
        items.append(data[int(_data_order(n, config.seed, epoch)[offset])])
    batch = {"latents": torch.stack([torch.as_tensor(i["latents"]) for i in items]).to(device, torch.float32)}
    for key in ("prompt_embeds", "pooled_prompt_embeds", "prompt_attention_mask"):
        if key in items[0]:
            stacked = torch.stack([torch.as_tensor(i[key]) for i in items]).to(device)
            batch[key] = stacked if key == "prompt_attention_mask" else stacked.float()
    return batch


def _text_kwargs(family: str, tensors: dict) -> dict:
    """The transformer's text keyword arguments from cached text tensors (`TEXT_KWARGS`)."""
    return {arg: tensors[key] for key, arg in TEXT_KWARGS[family].items()}


def _negative_text(data, batch: int, device) -> dict:
    """The cache's negative-prompt text tensors, expanded to `batch` rows (float32; masks stay integer)."""
    neg = dict(getattr(data, "negative", None) or {})
    if "prompt_embeds" not in neg and getattr(data, "negative_prompt_embeds", None) is not None:
        neg["prompt_embeds"] = data.negative_prompt_embeds
    if "prompt_embeds" not in neg:
        raise TurboConfigError("the latent cache has no negative_prompt_embeds, needed for the teacher's CFG; rebuild "
                               "it with turbo.distill.data (or set guidance: 1).")
    out = {}
    for key, value in neg.items():  # stored with a batch of 1: [1, L, D], [1, P], [1, L]
        value = torch.as_tensor(value).to(device)
        value = value[None] if key == "prompt_embeds" and value.ndim == 2 else value
        out[key] = (value if key == "prompt_attention_mask" else value.float()).expand(batch, *value.shape[1:])
    return out


def _negative(data, batch: int, device) -> torch.Tensor:
    return _negative_text(data, batch, device)["prompt_embeds"]


# ------------------------------------------------------------------------------------------------------ the models


STAGE1_NOTE = ("SLA2 stage 1: loss = mean over layers of the MSE between each layer's SLA2 output (SoftTop-k) and "
               "dense attention on the Q/K/V captured from the frozen teacher at x_t of the cached latents; only the "
               "SLA2 router (proj_q, proj_k) and alpha train, the rest of the transformer is the teacher's")
UNTRAINED_NOTE = "SLA2 stage 2 without init_from: starting from untrained SLA2 parts (identity router, initial alpha)"


def _install_student_attention(student: torch.nn.Module, config: DistillConfig) -> None:
    import turbo

    turbo.accelerate(student, {"attention": dict(config.attention)}, allow_untuned=True)


def _load_stage1_parts(student: torch.nn.Module, config: DistillConfig) -> Path:
    """Load the SLA2 parts of a stage-1 export (``config.init_from``) into the student's SLA2 modules."""
    import json

    from safetensors import safe_open

    from turbo.attention.parts import CONFIG_KEY, METHOD_KEY, PARTS_FILE, load_parts

    path = Path(config.init_from)
    if path.is_dir():
        path = path / PARTS_FILE
    if not path.is_file():
        raise TurboConfigError(f"init_from: {path} does not exist; give the directory a 'sla2-stage1' run exported "
                               "(its student/ folder).")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get(METHOD_KEY) != "sla2":
        raise TurboConfigError(f"init_from: {path} holds {metadata.get(METHOD_KEY)!r} attention parts, not 'sla2'; "
                               "give a 'sla2-stage1' export.")
    saved = json.loads(metadata.get(CONFIG_KEY, "{}"))
    ours = config.turbo_attention().to_dict()
    differ = [k for k in ("keep", "block_q", "block_k", "alpha_bins") if k in saved and saved[k] != ours.get(k)]
    if differ:
        theirs = ", ".join(f"{k}={saved[k]}" for k in differ)
        mine = ", ".join(f"{k}={ours.get(k)}" for k in differ)
        raise TurboConfigError(f"init_from: the stage-1 parts were trained with {theirs} but this config has {mine}; "
                               "use the stage-1 values.")
    load_parts(student, path)
    return path


def _load_student_weights(student: torch.nn.Module, directory: str) -> None:
    """Load the transformer weights of `directory` (a diffusers model directory of the teacher's class and config,
    e.g. a student export) into `student`; turbo's attention parts stored beside them are not loaded."""
    from turbo.distill.pack import student_dir

    path = student_dir(directory)
    if not (path / "config.json").is_file():
        raise TurboConfigError(f"student_from: {path} is not a diffusers model directory (no config.json); give a "
                               "transformer directory, e.g. a student export.")
    cls = type(student)
    other = cls.from_pretrained(path, dtype=torch.float32)
    ignored = {"_name_or_path", "_diffusers_version", "_class_name", "_use_default_values"}
    mine, theirs = ({k: v for k, v in json.loads(json.dumps(dict(m.config), default=str)).items() if k not in ignored}
                    for m in (student, other))  # through JSON: tuples and lists compare equal
    differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    if differ:
        raise TurboConfigError(f"student_from: {path} is not the teacher's architecture (config keys "
                               f"{', '.join(differ)} differ).")
    student.load_state_dict(other.state_dict(), strict=True)


def _load_student_parts(student: torch.nn.Module, config: DistillConfig) -> str | None:
    """Load the turbo attention parts (SLA proj, SLA2 router / α) stored in ``config.student_from`` into the student's
    attention when they were trained with the same method, keep and tiles (continuing a run from its export); returns
    a note saying what happened, None when the directory has no parts."""
    from safetensors import safe_open

    from turbo.attention.parts import CONFIG_KEY, METHOD_KEY, PARTS_FILE, load_parts

    path = Path(config.student_from) / PARTS_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    saved = {**json.loads(metadata.get(CONFIG_KEY, "{}")), "method": metadata.get(METHOD_KEY)}
    ours = config.turbo_attention().to_dict()
    keys = ("method", "keep", "block_q", "block_k", "linear", "alpha_bins")
    differ = [k for k in keys if k in ours and saved.get(k) != ours[k]]
    if differ:
        return (f"the attention parts of {config.student_from} were not loaded: they were trained with "
                + ", ".join(f"{k}={saved.get(k)}" for k in differ)
                + f" (this run: {', '.join(f'{k}={ours[k]}' for k in differ)}); the student's start untrained")
    load_parts(student, path)
    return f"the student's attention parts ({ours['method']}) started from {path}"


def _sla2_modules(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """layer index -> the SLA2 method module installed under that layer's self-attention."""
    from turbo.adapters import METHOD_ATTR

    return {module.processor.layer_index: getattr(module, METHOD_ATTR) for module in model.modules()
            if hasattr(module, METHOD_ATTR) and hasattr(getattr(module, "processor", None), "layer_index")}


def _dense_reference(q, k, v, attn_mask=None) -> torch.Tensor:
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                           attn_mask=attn_mask)
    return out.transpose(1, 2)


def _jvp_fn(model: torch.nn.Module, choice: str):
    """The attention JVP for `choice` ("auto": turbo's Triton kernel when `model` is on CUDA, else the chunked
    PyTorch reference; "kernel"; "reference"); None means the reference."""
    if choice == "reference" or (choice == "auto" and not next(model.parameters()).is_cuda):
        return None
    from .kernels.jvp_attention import kernel_jvp_fn

    return kernel_jvp_fn


@contextlib.contextmanager
def _dense_attention_for_jvp(model: torch.nn.Module, choice: str = "auto"):
    """JVP attention on `model` (its attention JVP per `_jvp_fn`), with turbo's sparse method modules set aside for
    the duration (they have no JVP)."""
    from turbo.adapters import METHOD_ATTR

    parked = [(module, getattr(module, METHOD_ATTR)) for module in model.modules() if hasattr(module, METHOD_ATTR)]
    for module, _ in parked:
        delattr(module, METHOD_ATTR)
    try:
        with using_jvp_attention(model, jvp_fn=_jvp_fn(model, choice)):
            yield model
    finally:
        for module, method in parked:
            setattr(module, METHOD_ATTR, method)


@contextlib.contextmanager
def _dense_capture(model: torch.nn.Module, device):
    """A `QKVCapture` of every self-attention call `model` (accelerated by turbo) makes inside the block, with every
    layer forced dense: the (Q, K, V) of the model's own dense activations. The runtime is reset afterwards."""
    from turbo.eval.capture import QKVCapture

    runtime = model.turbo.runtime
    capture = QKVCapture(device=device)
    dense_steps = runtime.dense_steps
    runtime.capture, runtime.dense_steps = capture, 1 << 62
    try:
        yield capture
    finally:
        runtime.capture, runtime.dense_steps = None, dense_steps
        runtime.reset()


class _Sigterm:
    """A SIGTERM handler that only raises a flag; the loop saves at the next step boundary (main thread only)."""

    def __init__(self):
        self.flag = False
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.flag = True
        logger.warning("SIGTERM received: saving a checkpoint at the end of this step, then stopping")

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _finite(loss: torch.Tensor, what: str, step: int, out: Path) -> float:
    value = float(loss.detach())
    if not math.isfinite(value):
        last = latest_checkpoint(out / "checkpoints")
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written before it"
        raise TurboError(f"distillation stopped: the {what} loss became {value} at step {step}, before any update "
                         f"from it; {kept} (lower the learning rate or check the data).")
    return value


# ------------------------------------------------------------------------------------------------------- the trainer


def _check_video_export() -> None:
    """Sample videos are mp4s (diffusers' `export_to_video`: imageio + imageio-ffmpeg); without them a run would
    stop at its first sample, so it is refused before training."""
    import importlib.util

    missing = [m for m in ("imageio", "imageio_ffmpeg") if importlib.util.find_spec(m) is None]
    if missing:
        raise TurboConfigError(f"sample_every needs {' and '.join(missing)} to write the sample mp4s: `pip install "
                               f"imageio imageio-ffmpeg`, or set sample_every: 0.")


def _fsdp_launch(accelerator, config: DistillConfig) -> bool:
    """True under accelerate's FSDP2; one sentence for the launches the trainer does not run."""
    kind = str(accelerator.distributed_type).rsplit(".", 1)[-1]
    if kind in ("DEEPSPEED", "MEGATRON_LM"):
        raise TurboConfigError(f"turbo distill runs on one process, with DDP (`accelerate launch --multi_gpu`, "
                               f"`torchrun`) or with FSDP2 (`accelerate launch --use_fsdp --fsdp_version 2`); "
                               f"{kind} is not supported.")
    if kind != "FSDP":
        return False
    if not accelerator.is_fsdp2:
        raise TurboConfigError("turbo distill shards with FSDP2 only: launch with `--fsdp_version 2` (FSDP1's flat "
                               "parameters are not supported).")
    if config.mode == "sla2-stage1":
        raise TurboConfigError("mode 'sla2-stage1' trains only the SLA2 router parameters and calls the attention "
                               "modules outside the model's forward, which FSDP cannot shard; launch it with DDP "
                               "(`accelerate launch --multi_gpu`).")
    return True


def _fsdp_settings(accelerator, model: torch.nn.Module) -> None:
    """accelerate's FSDP2 settings for the student and fake score. Each transformer block is its own FSDP unit (the
    model's ``_repeated_blocks`` present in it) unless the launch chose a wrap policy: without one the whole model
    would be a single unit, all-gathered at once.

    Also turns accelerate's ``cpu_ram_efficient_loading`` off (on by default in ``accelerate launch --use_fsdp``):
    every process already holds the student, a copy of its teacher, and that path (meta model + broadcast from
    process 0) fails on parameters at the model's root such as Wan's ``scale_shift_table`` (accelerate 1.15)."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    from turbo.adapters.base import class_name

    plugin = accelerator.state.fsdp_plugin
    plugin.cpu_ram_efficient_loading = False
    if plugin.mixed_precision_policy is not None and getattr(plugin.mixed_precision_policy, "cast_forward_inputs",
                                                             False):
        # autocast already runs the blocks in bf16/fp16; FSDP's cast of each unit's inputs is skipped when diffusers'
        # gradient checkpointing recomputes a block in backward, so the recomputed tensors (RoPE) would differ
        plugin.mixed_precision_policy = dataclasses.replace(plugin.mixed_precision_policy,
                                                            cast_forward_inputs=False)
    if plugin.auto_wrap_policy is not None:
        return
    present = {class_name(m) for m in model.modules()}
    plugin.auto_wrap_policy = transformer_auto_wrap_policy
    plugin.transformer_cls_names_to_wrap = [n for n in getattr(model, "_repeated_blocks", ()) or () if n in present]


class _Run:
    def __init__(self, pipe, config: DistillConfig, data, out: Path, accelerator):
        self.pipe, self.config, self.data, self.out, self.acc = pipe, config, data, out, accelerator
        self.device = accelerator.device
        self.fsdp = _fsdp_launch(accelerator, config)
        self.notes: list[str] = []
        teacher = check_teacher(pipe)
        self.family = teacher_family(pipe)
        if self.family != "wan" and config.mode != "rcm":
            raise UnsupportedModelError(f"mode {config.mode!r} fine-tunes Wan teachers for now; a HunyuanVideo teacher "
                                        "distils with mode 'rcm'.")
        if len(data) == 0:
            raise TurboConfigError("the latent cache is empty; build it first (turbo.distill.data).")
        self.teacher_net = teacher.requires_grad_(False).eval().to(self.device)
        self.teacher = TrigFlowModel(self.teacher_net)

        student = copy.deepcopy(teacher).float().train()
        if config.student_from:
            _load_student_weights(student, config.student_from)
            self.notes.append(f"the student started from the weights of {config.student_from}")
            logger.info("distill: %s", self.notes[-1])
        if config.mode != "rcm":
            _install_student_attention(student, config)
            if config.student_from and (note := _load_student_parts(student, config)):
                self.notes.append(note)
                logger.info("distill: %s", note)
        if config.sla_proj_init == "lstsq":
            self.notes.append(self._fit_sla_proj(student))
            logger.info("%s", self.notes[-1])
        if config.mode == "sla2-stage2":
            if config.init_from:
                logger.info("sla2-stage2: SLA2 parts loaded from %s", _load_stage1_parts(student, config))
                self.notes.append(f"SLA2 stage 2 started from the stage-1 parts of {config.init_from}")
            else:
                self.notes.append(UNTRAINED_NOTE)
                logger.warning("sla2-stage2: %s", UNTRAINED_NOTE)
        if config.mode == "sla2-stage1":
            self.notes.append(STAGE1_NOTE)
        student.requires_grad_(True)
        if config.mode == "sla2-stage1" or (config.mode != "rcm" and config.train_attention_only):
            from turbo.adapters import METHOD_ATTR

            for name, p in student.named_parameters():
                p.requires_grad_(f".{METHOD_ATTR}." in name)
        if config.gradient_checkpointing:
            student.enable_gradient_checkpointing()
        if self.fsdp:
            _fsdp_settings(accelerator, student)
        self.plan = StepPlan(config.steps)
        opt, self.sched = build_optimizer(student.parameters(), config.train_config(), self.plan)
        self.fake_net = None
        if config.rcm:
            fake = copy.deepcopy(teacher).float().train().requires_grad_(True)
            if config.gradient_checkpointing:
                fake.enable_gradient_checkpointing()
            fake_opt, self.fake_sched = build_optimizer(fake.parameters(), config.train_config(fake=True), self.plan)
            if self.fsdp:  # accelerate's FSDP2 prepares one model (and its optimizer) per call
                self.student_p, self.opt = accelerator.prepare(student, opt)
                self.fake_p, self.fake_opt = accelerator.prepare(fake, fake_opt)
            else:
                self.student_p, self.opt, self.fake_p, self.fake_opt = accelerator.prepare(student, opt, fake,
                                                                                           fake_opt)
            self.fake_net = accelerator.unwrap_model(self.fake_p)
            self.fake = TrigFlowModel(self.fake_p)
        else:
            self.student_p, self.opt = accelerator.prepare(student, opt)
        self.student_net = accelerator.unwrap_model(self.student_p)
        self.student = TrigFlowModel(self.student_p)
        self.sla2 = _sla2_modules(self.student_net) if config.mode == "sla2-stage1" else {}
        self.ema = PowerEMA(self.student_net, sigma_rel=config.ema_sigma_rel)
        self.gen = torch.Generator(device=self.device).manual_seed(config.seed * 7919 + accelerator.process_index)
        self.student_iter = 0  # student updates so far
        self.fake_iter = 0  # fake-score updates so far
        self.step = 0  # iterations done
        logger.info("distill: each step runs eagerly (the sCM tangent through torch.func.jvp, the DMD simulation "
                    "and the alternating optimizers are neither CUDA-graph captured nor compiled)")
        if config.mode == "rcm+sla":
            self.notes.append(DENSE_JVP_NOTE)
            logger.warning("rcm+sla: %s", DENSE_JVP_NOTE)

    @torch.no_grad()
    def _fit_sla_proj(self, student: torch.nn.Module, batches: int = 2,
                      times: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)) -> str:
        """Fit each SLA layer's proj to the dense attention of `student` (still the teacher's weights) on the first
        `batches` cached batches at RF times `times` (noise from a generator of its own: every process fits the
        same); returns the note for the export card."""
        from turbo.attention.sla_fit import fit_sla_projections, load_sla_projections, sla_fidelity

        gen = torch.Generator(device=self.device).manual_seed(self.config.seed * 104729 + 17)
        with _dense_capture(student, self.device) as capture:
            for b in range(batches):
                batch = _batch(self.data, self.config, b, 0, 0, 1, self.device)
                x0 = batch["latents"]
                for t in times:
                    x_t = (1 - t) * x0 + t * torch.randn(x0.shape, generator=gen, device=self.device)
                    timestep = torch.full((x0.shape[0],), t * 1000.0, device=self.device)
                    student(hidden_states=x_t, timestep=timestep, return_dict=False,
                            encoder_hidden_states=batch["prompt_embeds"])
        attention = self.config.turbo_attention()
        fit = fit_sla_projections(capture, attention)
        layers = load_sla_projections(student, fit)
        before, after = (sum(d.values()) / max(1, len(d)) for d in (sla_fidelity(capture, attention),
                                                                    sla_fidelity(capture, attention, fit)))
        return (f"SLA proj of {layers} layers initialised by least squares on {len(capture)} captured teacher "
                f"attention calls ({batches} batches × {len(times)} times): attention rel-L1 {before:.3f} → "
                f"{after:.3f}")

    # ---- state

    def _rng_states(self) -> list[dict]:
        """Every process's RNG states (its noise generator is its own), gathered: a collective."""
        rng = capture_rng({"noise": self.gen})
        if self.acc.num_processes == 1:
            return [rng]
        from accelerate.utils import gather_object

        return gather_object([rng])

    def tensors_and_state(self, rngs: list[dict]) -> tuple[dict, dict]:
        """The checkpoint: full tensors keyed by parameter name (`turbo.training.sharding`), so any launch (one
        process, DDP, FSDP) resumes any other, and `rngs` (`_rng_states`). Under FSDP a collective: every process
        calls it; the main process gets the tensors."""
        tensors = {f"student/{k}": v for k, v in full_model_state(self.student_net).items()}
        tensors.update({f"ema/{k}": full_tensor(v).cpu() for k, v in self.ema.state_dict().items()})
        opt_skeleton, opt_tensors = split_tensors(full_optimizer_state(self.student_net, self.opt), "opt")
        tensors.update(opt_tensors)
        state = {"student_iter": self.student_iter, "fake_iter": self.fake_iter, "opt": opt_skeleton,
                 "sched": self.sched.state_dict(), "config": self.config.to_dict(),
                 "data_position": self.step * self.config.batch_size * self.config.grad_accum * self.acc.num_processes,
                 "rng": rngs, "notes": self.notes, "format": CHECKPOINT_FORMAT}
        if self.fake_net is not None:
            tensors.update({f"fake/{k}": v for k, v in full_model_state(self.fake_net).items()})
            fake_skeleton, fake_tensors = split_tensors(full_optimizer_state(self.fake_net, self.fake_opt),
                                                        "fake_opt")
            tensors.update(fake_tensors)
            state.update(fake_opt=fake_skeleton, fake_sched=self.fake_sched.state_dict())
        return tensors, state

    def save(self) -> Path | None:
        self.acc.wait_for_everyone()
        path = None
        rngs = self._rng_states()  # every process takes part in the gathers
        gathered = self.tensors_and_state(rngs) if self.fsdp else None
        if self.acc.is_main_process:
            tensors, state = gathered or self.tensors_and_state(rngs)
            path = save_checkpoint(self.out / "checkpoints", self.step, tensors, state,
                                   keep=self.config.keep_checkpoints)
            logger.info("distill: checkpoint of step %d written to %s", self.step, path)
        self.acc.wait_for_everyone()
        return path

    def load(self) -> None:
        ckpt = load_checkpoint(self.out / "checkpoints")  # CPU tensors, copied into (the shards of) each model
        saved = DistillConfig.from_dict(ckpt.state["config"])
        differ = saved.diff(self.config, ignore=RUNTIME_KEYS)
        if differ:
            listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in differ.items())
            raise TurboConfigError(f"--resume refused: the config differs from the checkpoint's in {listed}; resume "
                                   "with the original config or start a new output directory.")
        by_name = ckpt.state.get("format") == CHECKPOINT_FORMAT  # else: an id-keyed optimizer state (older runs)
        if not by_name and self.fsdp:
            raise TurboConfigError(f"--resume under FSDP needs a checkpoint written by this version of turbo; "
                                   f"{ckpt.path} predates it: resume it without FSDP.")

        def load_optimizer(model, optimizer, key):
            state = join_tensors(ckpt.state[key], ckpt.tensors)
            if by_name:
                load_optimizer_state(model, optimizer, state)
            else:
                optimizer.load_state_dict(state)

        load_model_state(self.student_net, ckpt.group("student"))
        self.ema.load_state_dict(ckpt.group("ema"))
        load_optimizer(self.student_net, self.opt, "opt")
        self.sched.load_state_dict(ckpt.state["sched"])
        if self.fake_net is not None:
            load_model_state(self.fake_net, ckpt.group("fake"))
            load_optimizer(self.fake_net, self.fake_opt, "fake_opt")
            self.fake_sched.load_state_dict(ckpt.state["fake_sched"])
        self.student_iter, self.fake_iter, self.step = ckpt.state["student_iter"], ckpt.state["fake_iter"], ckpt.step
        self._restore_rng(ckpt.state["rng"])
        logger.info("distill: resumed from %s (step %d)", ckpt.path, ckpt.step)

    def _restore_rng(self, saved) -> None:
        """This process's RNG states from the checkpoint's list (one per process; older checkpoints hold one)."""
        states = saved if isinstance(saved, list) else [saved]
        if len(states) == self.acc.num_processes:
            restore_rng(states[self.acc.process_index], {"noise": self.gen})
            return
        restore_rng(states[0], {})
        self.gen.manual_seed(self.config.seed * 7919 + self.acc.process_index + 104729 * self.step)
        note = (f"resumed at step {self.step} with {self.acc.num_processes} processes from a run of {len(states)}: "
                "each process's noise was re-seeded, so the continuation is not the uninterrupted run's")
        self.notes.append(note)
        logger.warning("distill: %s", note)

    # ---- pieces

    def _cond(self, batch) -> tuple[dict, dict]:
        cond = _text_kwargs(self.family, batch)
        if self.config.guidance == 1.0:
            return cond, cond
        negative = _negative_text(self.data, batch["prompt_embeds"].shape[0], self.device)
        return cond, _text_kwargs(self.family, negative)

    @torch.no_grad()
    def _teacher_cfg(self, x, theta, cond, uncond):
        """Teacher x0̂ and F with CFG (float64)."""
        c = self.teacher.denoise(x, theta, **cond)
        if self.config.guidance == 1.0:
            return c.x0, c.F
        u = self.teacher.denoise(x, theta, **uncond)
        g = self.config.guidance
        return L.cfg_combine(c.x0, u.x0, g), L.cfg_combine(c.F, u.F, g)

    def _randn(self, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen, device=self.device)

    def _scm(self, batch, r: float) -> tuple[torch.Tensor, float]:
        cfg = self.config
        x0 = batch["latents"]
        B = x0.shape[0]
        cond, uncond = self._cond(batch)
        theta = L.sample_lognormal_theta((B,), cfg.p_mean, cfg.p_std, generator=self.gen,
                                         device=self.device).clamp(_THETA_MIN, math.pi / 2)
        x_t = trig_noise(x0, self._randn(x0.shape), theta).float()
        _, F_T = self._teacher_cfg(x_t, theta, cond, uncond)
        t_x, t_theta = L.scm_tangents(F_T, theta)
        jvp_model = TrigFlowModel(self.student_net)
        with _dense_attention_for_jvp(self.student_net, self.config.jvp_attention), unsharded(self.student_net):
            _, t_F = jvp_model.F_and_tangent(x_t, theta, t_x, t_theta, **cond)
        F = self.student(x_t, theta, **cond)
        loss = L.scm_loss(F, F_T, t_F, x_t, theta, r, loss_scale=cfg.scm_loss_scale).sum()
        with torch.no_grad():
            g = L.scm_target(F.detach(), F_T, t_F, x_t, theta, r)
            g_norm = float(g.flatten(1).norm(dim=1).mean())
        return loss, g_norm

    def _simulate(self, noise, n: int, cond, with_grad: bool) -> torch.Tensor:
        B = noise.shape[0]
        thetas = [torch.full((B,), math.pi / 2, dtype=torch.float64, device=self.device)]
        for _ in range(n - 1):
            nxt = L.sample_uniform_shift_theta((B,), self.config.dmd_shift, generator=self.gen, device=self.device)
            thetas.append(torch.minimum(nxt.clamp(min=_THETA_MIN), thetas[-1]))

        def student_x0(x, th):
            return self.student.denoise(x, th, **cond).x0

        return backward_simulation(student_x0, noise, thetas, with_grad=with_grad, generator=self.gen)

    def _renoise(self, G):
        B = G.shape[0]
        theta = L.sample_uniform_shift_theta((B,), self.config.dmd_shift, generator=self.gen,
                                             device=self.device).clamp(_THETA_MIN, math.pi / 2)
        return trig_noise(G.detach(), self._randn(G.shape), theta).float(), theta

    def _dmd(self, batch) -> torch.Tensor:
        cfg = self.config
        cond, uncond = self._cond(batch)
        n = L.dmd_simulation_steps(self.student_iter, cfg.max_simulation_steps)
        G = self._simulate(self._randn(batch["latents"].shape), n, cond, with_grad=True)
        x_D, theta = self._renoise(G)
        with torch.no_grad():
            x0_fake = self.fake.denoise(x_D, theta, **cond).x0
        x0_T, _ = self._teacher_cfg(x_D, theta, cond, uncond)
        return L.dmd_generator_loss(G, x0_fake, x0_T, loss_scale=cfg.dmd_loss_scale).sum()

    def _fake_loss(self, batch) -> torch.Tensor:
        cond, _ = self._cond(batch)
        n = L.dmd_simulation_steps(self.fake_iter, self.config.max_simulation_steps)
        with torch.no_grad():
            G = self._simulate(self._randn(batch["latents"].shape), n, cond, with_grad=False)
        x_D, theta = self._renoise(G)
        return L.fake_score_loss(G, self.fake.denoise(x_D, theta, **cond).x0, theta).sum()

    def _rf_input(self, batch):
        """x_t = (1 − t)·x0 + t·ε with t = σ/(1 + σ), σ = exp(N(sla_p_mean, sla_p_std²)); the timestep t·1000."""
        cfg = self.config
        x0 = batch["latents"]
        B = x0.shape[0]
        log_sigma = torch.randn((B,), generator=self.gen, device=self.device) * cfg.sla_p_std + cfg.sla_p_mean
        t = (torch.exp(log_sigma) / (1 + torch.exp(log_sigma))).clamp(0.0, 1.0)
        tt = t.reshape(B, *([1] * (x0.ndim - 1)))
        x_t = (1 - tt) * x0 + tt * self._randn(x0.shape)
        return x_t, t * 1000.0, {"encoder_hidden_states": batch["prompt_embeds"]}

    def _attention_loss(self, batch) -> torch.Tensor:
        """SLA2 stage 1: mean over layers of MSE(SLA2_l(Q, K, V), dense(Q, K, V)) on the (Q, K, V) of a dense
        forward of the frozen student (= the teacher) at x_t."""
        from turbo.runtime import AttentionCall, StepInfo

        x_t, timestep, cond = self._rf_input(batch)
        with _dense_capture(self.student_net, self.device) as capture, torch.no_grad():
            self.student_net(hidden_states=x_t, timestep=timestep, return_dict=False, **cond)
        losses = []
        for item in capture:
            q, k, v, mask = item.q, item.k, item.v, item.attn_mask
            dense = functools.partial(_dense_reference, attn_mask=mask)
            text_mask = None
            if mask is not None and item.num_video < q.shape[1]:
                text_mask = mask.reshape(mask.shape[0], -1)[:, item.num_video:].bool()
            method = self.sla2[item.layer]
            method.prepare(StepInfo(item.step, item.branch, item.layer, item.geometry, q.device))
            out = method(q, k, v, AttentionCall(item.geometry, item.num_video, dense, attn_mask=mask,
                                                text_mask=text_mask))
            with torch.no_grad():
                exact = dense(q, k, v)
            losses.append(((out.float() - exact.float()) ** 2).mean())
        return torch.stack(losses).mean()

    def _sla_loss(self, batch) -> torch.Tensor:
        x_t, timestep, cond = self._rf_input(batch)
        with torch.no_grad():
            v_T = self.teacher_net(hidden_states=x_t.to(self.teacher.dtype), timestep=timestep, return_dict=False,
                                   **cond)[0].float()
        v = self.student_p(hidden_states=x_t, timestep=timestep, return_dict=False, **cond)[0].float()
        return ((v - v_T) ** 2).mean()

    def _backward(self, losses: list[tuple[str, Callable[[dict], Any]]], step: int) -> dict:
        """Run each closure over the micro-batches and back-propagate its loss / grad_accum (gradients synchronised
        on the last backward only). Returns {name: mean loss value}."""
        cfg, acc = self.config, self.acc
        values: dict[str, float] = {}
        total = len(losses) * cfg.grad_accum
        k = 0
        for name, closure in losses:
            acc_value = 0.0
            for micro in range(cfg.grad_accum):
                k += 1
                batch = _batch(self.data, cfg, step, micro, acc.process_index, acc.num_processes, self.device)
                model = self.student_p if name != "fake" else self.fake_p
                sync = contextlib.nullcontext() if k == total else acc.no_sync(model)
                with sync, acc.autocast():
                    out = closure(batch)
                    loss, extra = out if isinstance(out, tuple) else (out, None)
                    value = _finite(loss, {"scm": "sCM", "dmd": "DMD", "fake": "fake-score",
                                           "sla": "SLA velocity", "attention": "SLA2 attention-output"}[name],
                                    step, self.out)
                    acc.backward(loss / cfg.grad_accum)
                acc_value += value / cfg.grad_accum
                if extra is not None:
                    values["g_norm"] = values.get("g_norm", 0.0) + extra / cfg.grad_accum
            values[name] = acc_value
        return values

    def _update(self, optimizer, sched, model) -> None:
        if self.config.grad_clip:
            self.acc.clip_grad_norm_(model.parameters(), self.config.grad_clip)
        optimizer.step()
        sched.step()
        optimizer.zero_grad(set_to_none=True)

    def train_step(self, step: int) -> dict:
        cfg = self.config
        if cfg.mode == "sla2-stage1":
            values = self._backward([("attention", self._attention_loss)], step)
            if self.acc.num_processes > 1:  # the SLA2 modules ran outside the DDP wrapper: average by hand
                for p in self.student_net.parameters():
                    if p.grad is not None:
                        p.grad.copy_(self.acc.reduce(p.grad, reduction="mean"))
            self._update(self.opt, self.sched, self.student_p)
            self.ema.update(self.student_net)
            self.student_iter += 1
            return {"kind": "student", "loss": values["attention"], **values}
        if cfg.mode in ("sla", "sla2-stage2"):
            values = self._backward([("sla", self._sla_loss)], step)
            self._update(self.opt, self.sched, self.student_p)
            self.ema.update(self.student_net)
            self.student_iter += 1
            return {"kind": "student", "loss": values["sla"], **values}
        warm = step < cfg.tangent_warmup
        if warm or (step - cfg.tangent_warmup) % cfg.student_update_freq == 0:
            r = L.tangent_warmup_ratio(step, cfg.tangent_warmup)
            closures = [("scm", lambda b: self._scm(b, r))]
            if not warm and cfg.dmd_loss_scale > 0:
                closures.append(("dmd", self._dmd))
            values = self._backward(closures, step)
            self._update(self.opt, self.sched, self.student_p)
            self.ema.update(self.student_net)
            self.student_iter += 1
            return {"kind": "student", "loss": values["scm"] + values.get("dmd", 0.0), **values}
        values = self._backward([("fake", self._fake_loss)], step)
        self._update(self.fake_opt, self.fake_sched, self.fake_p)
        self.fake_iter += 1
        return {"kind": "fake", "loss": values["fake"], **values}

    # ---- samples

    @contextlib.contextmanager
    def ema_weights(self):
        """The EMA weights in the student for the duration (the live weights are put back)."""
        live = {n: p.detach().clone() for n, p in self.student_net.named_parameters() if n in self.ema.shadow}
        self.ema.copy_to(self.student_net)
        try:
            yield self.student_net
        finally:
            if self.fsdp:  # a forward that raised may have left units all-gathered (plain tensors, not shards)
                reshard(self.student_net)
            with torch.no_grad():
                for n, p in self.student_net.named_parameters():
                    if n in live:
                        p.copy_(live[n])

    @torch.no_grad()
    def sample(self, path: Path) -> Path:
        """A short video of the EMA student on the first cached prompt: rCM sampler (rCM modes) or the pipeline's own
        scheduler with CFG (SLA), ``sample_steps`` steps, saved as mp4."""
        from diffusers.utils import export_to_video

        from turbo.schedulers.rcm import RCMScheduler

        cfg, pipe = self.config, self.pipe
        item = self.data[0]
        C, Fr, H, W = tuple(torch.as_tensor(item["latents"]).shape)
        text = {k: torch.as_tensor(item[k])[None].to(self.device) for k in TEXT_KWARGS[self.family] if k in item}
        text = {k: v if k == "prompt_attention_mask" else v.to(self.teacher.dtype) for k, v in text.items()}
        kwargs = dict(**text, num_inference_steps=cfg.sample_steps, output_type="np",
                      height=H * pipe.vae_scale_factor_spatial, width=W * pipe.vae_scale_factor_spatial,
                      num_frames=(Fr - 1) * pipe.vae_scale_factor_temporal + 1,
                      generator=torch.Generator().manual_seed(cfg.seed))
        original_transformer, original_scheduler = pipe.transformer, pipe.scheduler
        if cfg.rcm:
            pipe.scheduler = RCMScheduler(num_steps=cfg.sample_steps, sigma_max=cfg.sigma_max,
                                          mid_t=cfg.mid_angles())
            if self.family == "wan":  # (HunyuanVideo's true CFG is off unless true_cfg_scale > 1)
                kwargs["guidance_scale"] = 1.0
        else:
            kwargs.update(guidance_scale=cfg.guidance,
                          negative_prompt_embeds=_negative(self.data, 1, self.device).to(self.teacher.dtype))
        was_training = self.student_net.training
        try:
            with self.ema_weights() as student:
                student.eval()
                pipe.transformer = student
                # under FSDP the blocks run on bf16/fp16 parameters: autocast gives them inputs of that dtype
                with self.acc.autocast() if self.fsdp else contextlib.nullcontext():
                    frames = pipe(**kwargs).frames[0]
        finally:
            pipe.transformer, pipe.scheduler = original_transformer, original_scheduler
            self.student_net.train(was_training)
        if self.acc.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            export_to_video(list(frames), str(path), fps=8)
        return path


def _device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os

    return f"{device.type} ({os.cpu_count()} cores)"


def distill(pipe, config: DistillConfig, data, output_dir, *, resume: bool = False, accelerator=None,
            callback: Callable[[int, dict], None] | None = None, export: bool = True) -> DistillResult:
    """Distil or fine-tune `pipe`'s transformer as `config` says (module docstring) and export the EMA student.

    pipe: a loaded diffusers `WanPipeline` (the teacher; its transformer is frozen and moved to the accelerator's
        device). data: a latent cache (``turbo.distill.data.LatentCache`` or its directory): items
        ``{"latents": [C, F, H, W], "prompt_embeds": [L, D]}``, ``.negative_prompt_embeds`` [1, L, D].
    output_dir: ``checkpoints/`` (training state), ``samples/`` (mp4s), ``student/`` (the export).
    resume: continue from the newest checkpoint in ``output_dir/checkpoints`` (refused if the config differs).
    accelerator: an `accelerate.Accelerator` (default: one built from ``config.mixed_precision``).
    callback(step, record): called after each step (tests use it to send SIGTERM).
    Returns a `DistillResult`; raises `TurboError` on a NaN loss (naming the step) and `UnsupportedModelError` for a
    teacher other than a Wan T2V pipeline.
    """
    from accelerate import Accelerator

    if not isinstance(config, DistillConfig):
        raise TurboConfigError(f"distill needs a DistillConfig, got {type(config).__name__}.")
    check_teacher(pipe)
    if isinstance(data, (str, Path)):
        from .data import LatentCache

        data = LatentCache(data)
    out = Path(output_dir)
    if accelerator is None:
        # cpu=True on a machine without CUDA: accelerate then joins a `torchrun` / `accelerate launch` group on gloo
        accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
    _fsdp_launch(accelerator, config)  # refuses what the trainer does not run before anything is built
    if config.sample_every:
        _check_video_export()
    started = time.perf_counter()
    if not resume and latest_checkpoint(out / "checkpoints") is not None:
        raise TurboConfigError(f"{out} already holds checkpoints; pass resume=True (--resume) to continue that run or "
                               "choose another output directory.")
    run = _Run(pipe, config, data, out, accelerator)
    if resume:
        if latest_checkpoint(out / "checkpoints") is None:
            raise TurboConfigError(f"--resume: {out / 'checkpoints'} holds no checkpoint to resume from.")
        run.load()
    history: list[dict] = []
    interrupted, checkpoint = False, None
    with _Sigterm() as sigterm:
        def status() -> dict:
            last = history[-1] if history else {}
            return {"loss": f"{last['loss']:.4g}"} if "loss" in last else {}

        for step in progress(run.plan, f"distill {config.mode}", config.show_progress, start=run.step, status=status):
            record = {"step": step, **run.train_step(step)}
            run.step = step + 1
            history.append(record)
            if config.log_every and run.step % config.log_every == 0:
                logger.info("distill %s step %d/%d %s loss %.5g%s", config.mode, run.step, config.steps,
                            record["kind"], record["loss"],
                            f" |g| {record['g_norm']:.4g}" if "g_norm" in record else "")
            if callback is not None:
                callback(step, record)
            stop = sigterm.flag
            timeup = bool(config.minutes) and time.perf_counter() - started >= config.minutes * 60.0
            if accelerator.num_processes > 1:  # every process leaves at the same step
                flags = accelerator.reduce(torch.tensor([float(stop), float(timeup)], device=accelerator.device),
                                           reduction="sum")
                stop, timeup = bool(flags[0].item() > 0), bool(flags[1].item() > 0)
            if config.sample_every and run.step % config.sample_every == 0 and (accelerator.is_main_process
                                                                                 or run.fsdp):
                run.sample(out / "samples" / f"step-{run.step:08d}.mp4")  # (FSDP: every process runs the model)
            if (stop or timeup or (config.save_every and run.step % config.save_every == 0)
                    or run.step >= config.steps):
                checkpoint = run.save()
            if timeup and not stop:
                logger.info("distill: the %g-minute budget is spent after step %d", config.minutes, run.step)
                break
            if stop:
                interrupted = True
                logger.warning("distill: stopped by SIGTERM after step %d; checkpoint %s; continue with --resume",
                               run.step, checkpoint)
                break
    export_dir = None
    exported = None
    if export and not interrupted and run.fsdp:  # gathered by every process
        with run.ema_weights() as student:
            exported = full_model_state(student)
    if export and not interrupted and accelerator.is_main_process:
        from .export import export_student

        info = {"teacher": config.teacher or type(pipe).__name__,
                "data": config.data or str(getattr(data, "directory", "")),
                "samples": len(data), "steps": run.step, "student_updates": run.student_iter,
                "fake_updates": run.fake_iter, "processes": accelerator.num_processes,
                "launch": "FSDP2" if run.fsdp else "DDP" if accelerator.num_processes > 1 else "",
                "seconds": time.perf_counter() - started, "device": _device_name(accelerator.device)}
        export_dir = export_student(run.student_net, out / "student", config, ema=None if exported else run.ema,
                                    state=exported, notes=run.notes, info=info)
    accelerator.wait_for_everyone()
    return DistillResult(out, run.step, interrupted, checkpoint, export_dir, history, run.student_net, run.ema,
                         run.notes)
