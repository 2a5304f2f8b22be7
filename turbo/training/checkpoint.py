"""Checksummed, atomic saving: training checkpoints (safetensors + a JSON sidecar) and sealed model directories.

Training checkpoint (`save_checkpoint`): in a directory, ``step-00000100-<id>.safetensors`` holds the tensors (model,
EMA, optimizer state... flat names like ``"model/blocks.0.attn.to_q.weight"``) and ``step-00000100.json`` the scalars:
step, the tensors file's sha256, and the trainer's JSON state (RNG from `capture_rng`, data position, config). Each file
is written to a temporary name, flushed to disk and renamed over its final name (``os.replace``); the JSON sidecar is
renamed last and is the commit: a crash at any point leaves every earlier checkpoint (and a same-step earlier one)
whole. `load_checkpoint` verifies the sha256 before reading a tensor and names the bad file in one sentence.

Model directory (`seal_directory` / `verify_checksums`): ``checksums.json`` lists the sha256 of every file of a
``save_pretrained`` directory; loading checks every file first (ToyWorld's shipped weights use this).

Nested state dicts with tensors (``optimizer.state_dict()``) go through `split_tensors` / `join_tensors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import torch

from turbo.errors import TurboError

__all__ = [
    "CHECKSUMS_FILE",
    "Checkpoint",
    "ChecksumError",
    "atomic_path",
    "atomic_write_text",
    "join_tensors",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "seal_directory",
    "sha256_file",
    "split_tensors",
    "verify_checksums",
]

CHECKSUMS_FILE = "checksums.json"
_FORMAT = "turbo-training-checkpoint-1"
_SIDECAR = re.compile(r"^step-(\d{8,})\.json$")


class ChecksumError(TurboError, OSError):
    """A checkpoint or weight directory is incomplete, or a file does not match its recorded sha256."""


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; when the block ends normally, flush it to disk and rename it over `path`
    (atomic on POSIX); on an exception remove it and leave `path` as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


# ----------------------------------------------------------------------------------------------- training checkpoints


@dataclasses.dataclass
class Checkpoint:
    """A loaded training checkpoint: `tensors` {flat name: tensor}, `state` (the JSON state given to save)."""

    step: int
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]
    path: Path

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors saved under ``prefix + "/"``, with that prefix removed (e.g. ``group("model")``)."""
        head = prefix + "/"
        return {k[len(head):]: v for k, v in self.tensors.items() if k.startswith(head)}


def _committed(directory: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in directory.glob("step-*.json") if (m := _SIDECAR.match(p.name))]
    return sorted(found)


def latest_checkpoint(directory) -> Path | None:
    """The sidecar (``step-N.json``) of the newest committed checkpoint in `directory`, or None."""
    directory = Path(directory)
    found = _committed(directory) if directory.is_dir() else []
    return found[-1][1] if found else None


def save_checkpoint(directory, step: int, tensors: dict[str, torch.Tensor], state: dict | None = None,
                    keep: int | None = 2) -> Path:
    """Write a checkpoint of `step` into `directory` atomically; returns its sidecar path.

    `tensors`: {flat name: tensor} (any device/dtype; copied to the CPU). `state`: JSON values (scalars, RNG, data
    position, config). After the commit only the newest `keep` checkpoints stay (None: all); stray temporary and
    unreferenced tensor files of interrupted saves are removed.
    """
    from safetensors.torch import save_file

    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1 or None, got {keep}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"step-{step:08d}"
    tensors_path = directory / f"{stem}-{uuid.uuid4().hex[:8]}.safetensors"
    cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    with atomic_path(tensors_path) as tmp:
        save_file(cpu, os.fspath(tmp), metadata={"format": _FORMAT, "step": str(step)})
    sidecar = {"format": _FORMAT, "step": step, "tensors_file": tensors_path.name,
               "sha256": sha256_file(tensors_path), "state": state or {}}
    atomic_write_text(directory / f"{stem}.json", json.dumps(sidecar, indent=1, sort_keys=True) + "\n")
    committed = _committed(directory)
    if keep is not None:
        for _, old in committed[:-keep]:
            old.unlink()
    referenced = {json.loads(p.read_text()).get("tensors_file") for _, p in _committed(directory)}
    for stale in list(directory.glob("step-*.safetensors")) + list(directory.glob(".step-*.tmp")):
        if stale.name not in referenced:
            stale.unlink()
    return directory / f"{stem}.json"


def load_checkpoint(path, device="cpu") -> Checkpoint:
    """Load a checkpoint: `path` is a sidecar ``step-N.json`` or a directory (its newest committed checkpoint).

    The tensors file's sha256 is checked against the sidecar first; any problem raises `ChecksumError` naming the
    file in one sentence.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise ChecksumError(f"{path}: no committed checkpoint (step-N.json) in this directory")
        path = found
    if not path.is_file():
        raise ChecksumError(f"{path}: no such checkpoint sidecar")
    try:
        sidecar = json.loads(path.read_text())
        tensors_path = path.parent / sidecar["tensors_file"]
        expected, step = sidecar["sha256"], int(sidecar["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ChecksumError(f"{path}: not a turbo checkpoint sidecar ({type(e).__name__}: {e})") from e
    if not tensors_path.is_file():
        raise ChecksumError(f"{tensors_path}: missing (the checkpoint {path.name} refers to it)")
    actual = sha256_file(tensors_path)
    if actual != expected:
        raise ChecksumError(f"{tensors_path}: sha256 {actual} does not match the {expected} recorded in {path.name}, "
                            "so the checkpoint is corrupt; resume from an earlier one")
    return Checkpoint(step, load_file(os.fspath(tensors_path), device=str(device)), sidecar.get("state", {}), path)


def split_tensors(obj, prefix: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON skeleton, {name: tensor}) of a nested dict/list state (e.g. ``optimizer.state_dict()``): each tensor is
    stored as ``prefix/<path>`` and replaced by ``{"__tensor__": name}``; dicts with non-string keys (the optimizer's
    integer parameter ids) become ``{"__items__": [[key, value], ...]}``."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(x, path):
        if isinstance(x, torch.Tensor):
            name = f"{prefix}/{path}" if path else prefix
            tensors[name] = x
            return {"__tensor__": name}
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x):
                return {k: walk(v, f"{path}.{k}" if path else k) for k, v in x.items()}
            return {"__items__": [[k, walk(v, f"{path}.{k}" if path else str(k))] for k, v in x.items()]}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(x)]
        return x

    return walk(obj, ""), tensors


def join_tensors(skeleton, tensors: dict[str, torch.Tensor]):
    """Inverse of `split_tensors` (tuples come back as lists, which ``load_state_dict`` accepts)."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__items__" in skeleton:
            return {k: join_tensors(v, tensors) for k, v in skeleton["__items__"]}
        return {k: join_tensors(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [join_tensors(v, tensors) for v in skeleton]
    return skeleton


# ----------------------------------------------------------------------------------------- sealed model directories


def seal_directory(directory, files: dict[str, str] | None = None) -> dict[str, str]:
    """Write `files` ({relative name: text}, e.g. a recipe) into `directory`, then ``checksums.json`` with the sha256
    of every other file (atomically); returns {relative path: sha256}."""
    directory = Path(directory)
    for name, text in (files or {}).items():
        atomic_write_text(directory / name, text)
    sums = {
        p.relative_to(directory).as_posix(): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != CHECKSUMS_FILE
    }
    atomic_write_text(directory / CHECKSUMS_FILE, json.dumps(sums, indent=2, sort_keys=True) + "\n")
    return sums


def verify_checksums(directory, error: type[Exception] = ChecksumError, what: str = "model") -> dict[str, str]:
    """Check every file listed in ``checksums.json`` of `directory` and that every ``*.safetensors`` is listed; raise
    `error` naming the file and the expected checksum. `what` names the directory kind in the message."""
    directory = Path(directory)
    listing = directory / CHECKSUMS_FILE
    if not listing.is_file():
        raise error(f"{listing}: missing; a {what} directory needs its {CHECKSUMS_FILE}")
    try:
        sums = json.loads(listing.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{listing}: not valid JSON ({e})") from e
    for rel, expected in sorted(sums.items()):
        path = directory / rel
        if not path.is_file():
            raise error(f"{path}: missing (expected sha256 {expected}); re-download or retrain it")
        actual = sha256_file(path)
        if actual != expected:
            raise error(f"{path}: sha256 {actual} does not match the recorded {expected}; the file is corrupt or was "
                        "changed")
    unlisted = [p for p in directory.rglob("*.safetensors") if p.relative_to(directory).as_posix() not in sums]
    if unlisted:
        raise error(f"{unlisted[0]}: weight file not listed in {listing}; refusing to load it")
    return sums
