"""Export a distilled / fine-tuned student as a diffusers model directory that runs as trained.

`export_student(student, directory, config, ema=...)` writes:

* ``config.json`` + ``diffusion_pytorch_model.safetensors`` — the EMA weights (`save_pretrained`), bf16 by default
  (the transformer's ``_keep_in_fp32_modules`` stay fp32, as ``from_pretrained(torch_dtype=bf16)`` keeps them);
* ``turbo_attention.safetensors`` — the student's turbo attention parts (SLA proj / SLA2 router, α), EMA values, when
  the student runs a turbo method (`turbo.attention.parts` format);
* ``turbo_config.json`` — the recipe (`turbo.recipe`): the rCM sampler (steps, σ_max, mid_t) for rCM modes and the
  student's attention section;
* ``README.md`` — a card of the recipe: mode, config, data, steps, seed, time, device, notes.

So ``WanTransformer3DModel.from_pretrained(dir)`` into a Wan pipeline + ``turbo.accelerate(pipe)`` runs it with its
sampler and attention, with nothing to remember.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import platform
from pathlib import Path

import torch

from .config import DistillConfig

__all__ = ["export_student", "recipe_of"]


def recipe_of(config: DistillConfig) -> dict:
    """The `TurboConfig` dict a student of `config` runs with: its attention section, its sampler section and the
    fast VAE norms (`turbo.vae`: same values as the stock VAE, faster on CPUs)."""
    return {"attention": config.turbo_attention().to_dict(), "sampler": config.sampler_section(),
            "vae": {"mode": "fast"}}


def _keep_fp32(model: torch.nn.Module, name: str) -> bool:
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    return bool(keep.intersection(name.split(".")))


@contextlib.contextmanager
def _with_ema(student: torch.nn.Module, ema):
    if ema is None:
        yield student
        return
    live = {n: p.detach().clone() for n, p in student.named_parameters() if n in ema.shadow}
    ema.copy_to(student)
    try:
        yield student
    finally:
        with torch.no_grad():
            for n, p in student.named_parameters():
                if n in live:
                    p.copy_(live[n])


def _card(config: DistillConfig, info: dict, notes: list[str], files: list[str]) -> str:
    recipe = recipe_of(config)
    sampler = recipe["sampler"]
    attention = config.turbo_attention()
    launch = f" ({info['launch']})" if info.get("launch") else ""
    how = (f"rCM {sampler['steps']} steps (sigma_max {sampler['sigma_max']:g}, mid_t {sampler['mid_t']}), "
           "guidance 1" if sampler["mode"] == "rcm" else "the pipeline's own scheduler and CFG")
    lines = [
        f"# turbo {config.mode} student",
        "",
        f"Made by `turbo distill` (mode `{config.mode}`) from the teacher `{info.get('teacher') or config.teacher}`.",
        f"Sample with {how}; self-attention: `{attention.method}`"
        + (f" ({', '.join(f'{k}={v}' for k, v in attention.to_dict().items() if k != 'method')})"
           if attention.method != "dense" else "") + ".",
        "",
        "```python",
        "from diffusers import WanPipeline, WanTransformer3DModel",
        "import turbo",
        "transformer = WanTransformer3DModel.from_pretrained(STUDENT_DIR, torch_dtype=torch.bfloat16)",
        "pipe = WanPipeline.from_pretrained(TEACHER_DIR, transformer=transformer, torch_dtype=torch.bfloat16)",
        "turbo.accelerate(pipe)  # reads turbo_config.json (+ turbo_attention.safetensors) beside the weights",
        (f"video = pipe(prompt, num_inference_steps={sampler['steps']}, guidance_scale=1.0).frames[0]"
         if sampler["mode"] == "rcm" else "video = pipe(prompt).frames[0]"),
        "```",
        "",
        "## Run",
        "",
        f"- data: `{info.get('data') or config.data}` ({info.get('samples', '?')} cached latents)",
        f"- steps: {info.get('steps', config.steps)} (student updates {info.get('student_updates', '?')}, "
        f"fake-score updates {info.get('fake_updates', '?')}), batch {config.batch_size} x {config.grad_accum} "
        f"accumulation x {info.get('processes', 1)} processes{launch}, seed {config.seed}",
        f"- time: {info.get('seconds', 0.0):.1f} s on {info.get('device', '?')}; torch {torch.__version__}, "
        f"{platform.python_implementation()} {platform.python_version()}; exported "
        f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- weights: EMA (EDM2 power EMA, sigma_rel {config.ema_sigma_rel}) stored as {info.get('dtype', 'bf16')}",
        f"- files: {', '.join(files)}",
    ]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    lines += ["", "## Config", "", "```json", json.dumps(config.to_dict(), indent=1, sort_keys=True), "```", ""]
    return "\n".join(lines)


def export_student(student: torch.nn.Module, directory, config: DistillConfig, *, ema=None,
                   state: dict[str, torch.Tensor] | None = None, dtype: torch.dtype = torch.bfloat16,
                   notes: list[str] | tuple = (), info: dict | None = None) -> Path:
    """Write the export directory (module docstring) of `student` (an unwrapped diffusers transformer, accelerated by
    turbo when its attention is a turbo method) with the `ema` weights (a `PowerEMA`/`EMA`, or None: the live
    weights), or with `state` when given (the full state dict to write, e.g. gathered from an FSDP-sharded student
    by `turbo.training.sharding.full_model_state`). `info`: card facts (teacher, data, samples, steps, seconds,
    device...). Returns the directory."""
    from safetensors.torch import save_file

    from turbo.adapters import METHOD_ATTR
    from turbo.adapters.base import model_class
    from turbo.attention.parts import CONFIG_KEY, METHOD_KEY, PARTS_FILE
    from turbo.recipe import save_recipe

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    info = dict(info or {})
    info.setdefault("dtype", str(dtype).replace("torch.", ""))
    attention = config.turbo_attention()
    if state is None:
        with _with_ema(student, ema):
            state = {k: v.detach().cpu() for k, v in student.state_dict().items()}
    parts = {k: v.float().contiguous() for k, v in state.items() if f".{METHOD_ATTR}." in k}
    weights = {k: v for k, v in state.items() if f".{METHOD_ATTR}." not in k}
    plain = model_class(student).from_config(student.config)
    plain.load_state_dict(weights)
    for name, param in plain.named_parameters():
        if param.is_floating_point() and not _keep_fp32(plain, name):
            param.data = param.data.to(dtype)
    plain.save_pretrained(directory, safe_serialization=True)
    files = ["config.json", "diffusion_pytorch_model.safetensors"]
    if parts:
        metadata = {METHOD_KEY: attention.method, CONFIG_KEY: json.dumps(attention.to_dict(), sort_keys=True)}
        save_file(parts, str(directory / PARTS_FILE), metadata=metadata)
        files.append(PARTS_FILE)
    save_recipe(directory, recipe_of(config))
    files += ["turbo_config.json", "README.md"]
    (directory / "README.md").write_text(_card(config, info, list(notes), files))
    return directory
