"""One training core for every turbo trainer (ToyWorld's VAEs and transformers now, the rCM/SLA distillation next).

* `config` — `TrainConfig`: budget, AdamW, LR schedule, EMA, step execution; JSON round trip and `diff`.
* `plan` — `StepPlan` (a step count or a wall-time budget) and `progress` (the step loop's tqdm bar).
* `optim` — `build_optimizer` (AdamW + warm-up/constant or cosine, capturable for CUDA graphs), `TensorLambdaLR`.
* `ema` — `EMA` (constant decay), `PowerEMA` (EDM2 σ_rel power EMA), `make_ema`.
* `steps` — `GraphedStep` (CUDA-graph replay of a whole step), `CompiledForward`, `backward_and_step`, `autocast`,
  `use_cuda_graphs`; each says when it runs eagerly.
* `losses` — windowed finiteness check and logging of per-step loss tensors without a per-step sync.
* `checkpoint` — atomic checksummed safetensors checkpoints with a JSON sidecar; sealed (``checksums.json``) model
  directories. `rng` — RNG state as JSON.
"""

from turbo.training.checkpoint import (
    CHECKSUMS_FILE,
    Checkpoint,
    ChecksumError,
    join_tensors,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    seal_directory,
    sha256_file,
    split_tensors,
    verify_checksums,
)
from turbo.training.config import TrainConfig
from turbo.training.ema import EMA, PowerEMA, make_ema, power_ema_gamma, power_ema_sigma_rel
from turbo.training.losses import check_and_log, finite_values
from turbo.training.optim import TensorLambdaLR, build_optimizer, lr_factor
from turbo.training.plan import StepPlan, progress
from turbo.training.rng import capture_rng, restore_rng
from turbo.training.steps import CompiledForward, GraphedStep, autocast, backward_and_step, use_cuda_graphs

__all__ = [
    "CHECKSUMS_FILE",
    "EMA",
    "Checkpoint",
    "ChecksumError",
    "CompiledForward",
    "GraphedStep",
    "PowerEMA",
    "StepPlan",
    "TensorLambdaLR",
    "TrainConfig",
    "autocast",
    "backward_and_step",
    "build_optimizer",
    "capture_rng",
    "check_and_log",
    "finite_values",
    "join_tensors",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_factor",
    "make_ema",
    "power_ema_gamma",
    "power_ema_sigma_rel",
    "progress",
    "restore_rng",
    "save_checkpoint",
    "seal_directory",
    "sha256_file",
    "split_tensors",
    "use_cuda_graphs",
    "verify_checksums",
]
