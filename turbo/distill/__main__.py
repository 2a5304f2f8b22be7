"""``python -m turbo.distill --config cfg.yaml [--resume] [--out DIR]`` (or ``accelerate launch -m turbo.distill``).

The teacher is ``DiffusionPipeline.from_pretrained(config.teacher)``: a diffusers pipeline directory (``turbo
distill`` in the CLI also resolves registry model names before it gets here); the data is the latent cache directory
``config.data``. Bad input (missing config file, unknown keys, unsupported teacher, ``--resume`` with a changed
config, a NaN loss) prints one line ``turbo: <sentence>`` on stderr and exits with code 2. A SIGTERM saves a
checkpoint at the next step boundary and exits 0; run the same command with ``--resume`` to continue.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

__all__ = ["main", "run"]


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        print(f"turbo: {' '.join(message.split())}", file=sys.stderr)
        raise SystemExit(2)


def build_parser(prog: str = "python -m turbo.distill") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="rCM step distillation / SLA fine-tuning of a diffusers Wan pipeline.")
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="YAML or JSON DistillConfig (see examples/distill_toyworld.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    parser.add_argument("--out", default=None, help="run directory (default: the config's output)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one config key (YAML value, e.g. --set lr=1e-4 --set minutes=8); repeatable")


def parse_overrides(items: list[str]) -> dict:
    """``["lr=1e-4", "attention={method: sla, keep: 0.05}"]`` → ``{"lr": 1e-4, "attention": {...}}`` (YAML values)."""
    import yaml

    from turbo.errors import TurboConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TurboConfigError(f"--set takes KEY=VALUE, got {item!r}.")
        if value.strip().lower() in ("no", "yes", "on", "off", "y", "n"):  # YAML 1.1 booleans; mixed_precision=no
            out[key.strip()] = value.strip()
            continue
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise TurboConfigError(f"--set {key.strip()}: {value!r} is not a YAML value.") from None
    return out


def run(config_path, *, out=None, resume: bool = False, teacher_dir=None, overrides: dict | None = None) -> int:
    """Load the config (with `overrides` on top of its keys), the teacher and the data, train, export; returns the
    exit code. `teacher_dir` overrides the config's teacher (the CLI passes a resolved registry model here)."""
    import torch
    from diffusers import DiffusionPipeline

    from turbo.errors import TurboConfigError

    from .config import DistillConfig
    from .trainer import distill

    config = DistillConfig.load(config_path, overrides)
    out = out or config.output
    if not out:
        raise TurboConfigError("no output directory: pass --out DIR or set output in the config.")
    teacher = os.fspath(teacher_dir or config.teacher)
    if not teacher:
        raise TurboConfigError("the config names no teacher: set teacher to a diffusers pipeline directory.")
    if not Path(teacher, "model_index.json").is_file():
        raise TurboConfigError(f"teacher {teacher!r} is not a diffusers pipeline directory (no model_index.json); "
                               "`python -m turbo.distill` takes directories, `turbo distill` also registry names.")
    if not config.data:
        raise TurboConfigError("the config names no data: set data to a latent cache directory (turbo.distill.data).")
    from .data import LatentCache

    data = LatentCache(config.data)  # a missing or corrupt cache is refused before the teacher loads
    bf16 = config.mixed_precision == "bf16" and torch.cuda.is_available()  # a bf16 teacher; the student trains fp32
    pipe = DiffusionPipeline.from_pretrained(teacher, dtype=torch.bfloat16 if bf16 else torch.float32)
    pipe.set_progress_bar_config(disable=True)
    result = distill(pipe, config, data, out, resume=resume)
    if result.interrupted:
        print(f"stopped after step {result.steps_done} (SIGTERM); checkpoint {result.checkpoint}; continue with "
              "--resume")
    elif result.export_dir is not None:  # the main process exports; the others have nothing more to say
        print(f"trained {result.steps_done} steps; student exported to {result.export_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from turbo.errors import TurboError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return run(args.config, out=args.out, resume=args.resume, overrides=parse_overrides(args.overrides))
    except (TurboError, OSError) as error:
        print(f"turbo: {' '.join(str(error).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
