"""Packed students: a bf16 student transformer stored as its difference from the teacher's weights, quantised per group
of 64 values to 4 or 8 bits with an fp16 scale, so that several students fit where one bf16 copy would (the ToyWorld
students in the repository). A tensor gets 4 bits when the unpacked tensor's relative error ‖Ŵ − W‖ / ‖W‖ stays
within bf16's own rounding error of weights (`BF16_ERROR`), else 8 bits under the same bound, else it is stored as it
is: packing adds no more error than storing the student in bf16 did. Unpacking adds the delta back onto the teacher's
weights: an ordinary diffusers model directory.

    python -m turbo.distill.pack STUDENT_DIR --base TEACHER_TRANSFORMER_DIR --out PACKED_DIR
    unpack_student(PACKED_DIR) -> a directory `from_pretrained` loads (written once under `cache`)

A packed directory holds ``turbo_delta.safetensors`` (per tensor ``NAME.codes`` + ``NAME.scale``, or ``NAME.raw``;
metadata: the base directory relative to the pack, the base weights' SHA-256, per tensor its bits, shape and dtype)
instead of ``diffusion_pytorch_model.safetensors``, and the student's other files (config.json, turbo_config.json,
turbo_attention.safetensors, README.md) unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from turbo.errors import TurboError

__all__ = ["PACK_FILE", "PackError", "is_packed", "pack_student", "student_dir", "unpack_student"]

PACK_FILE = "turbo_delta.safetensors"
GROUP = 64
# ‖bf16(W) − W‖ / ‖W‖ for fp32 weights W (measured on Gaussian weights: 1.66e-3; a bf16 ulp is 2^-7 of the leading
# power of two): what storing a student in bf16 already costs
BF16_ERROR = 1.6e-3
WEIGHTS = "diffusion_pytorch_model.safetensors"


class PackError(TurboError, ValueError):
    """A packed student cannot be written or unpacked (missing base, base changed, wrong files)."""


def is_packed(directory) -> bool:
    """Whether `directory` is a packed student (holds ``turbo_delta.safetensors``)."""
    return (Path(directory) / PACK_FILE).is_file()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _quantise(delta: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """delta (any shape, fp32) -> (codes, fp16 scales [groups of GROUP]); 8 bits: int8 codes, 4 bits: two per uint8."""
    flat = delta.flatten()
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % GROUP)]).view(-1, GROUP)
    top = 2 ** (bits - 1) - 1
    scale = (flat.abs().amax(1) / top).to(torch.float16).float().clamp_min(torch.finfo(torch.float16).tiny)
    codes = (flat / scale[:, None]).round().clamp(-top, top).to(torch.int8).flatten()
    if bits == 4:
        nibbles = (codes + 8).to(torch.uint8).view(-1, 2)
        codes = nibbles[:, 0] | (nibbles[:, 1] << 4)
    return codes, scale.to(torch.float16)


def _dequantise(codes: torch.Tensor, scale: torch.Tensor, bits: int, shape) -> torch.Tensor:
    if bits == 4:
        codes = torch.stack([codes & 0xF, codes >> 4], 1).flatten().to(torch.int8) - 8
    values = codes.float().view(-1, GROUP) * scale.float()[:, None]
    return values.flatten()[:int(torch.Size(shape).numel())].view(shape)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


@contextlib.contextmanager
def _staging(source: Path, skip: str, parent: Path):
    """A fresh directory under `parent` holding `source`'s files except `skip` (written, then renamed into place by
    the caller); removed on the way out if it is still there."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".turbo-", dir=parent))
    try:
        for item in source.iterdir():
            if item.is_file() and item.name != skip:
                shutil.copy2(item, tmp / item.name)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pack_student(student_dir, base_dir, out_dir, max_error: float = BF16_ERROR) -> dict:
    """Write the packed form of `student_dir` (a transformer directory, one ``diffusion_pytorch_model.safetensors``)
    against `base_dir` (the teacher's transformer directory) into `out_dir`. A bf16 tensor's delta is coded in 4 bits
    (else 8) when the unpacked tensor's error ‖Ŵ − W‖ / ‖W‖ stays at most `max_error` (default: bf16's own rounding
    error of weights, so packing adds no more error than storing the student in bf16 did); anything else is stored as
    it is. Returns {"bytes": size of the delta file, "bits": {bits: tensor count} (0 = stored as is), "error": the
    whole model's ‖Ŵ − W‖ / ‖W‖}."""
    from safetensors.torch import load_file, save_file

    student_dir, base_dir, out_dir = Path(student_dir), Path(base_dir), Path(out_dir)
    for d in (student_dir, base_dir):
        if not (d / WEIGHTS).is_file():
            raise PackError(f"{d} has no {WEIGHTS} (a single-file diffusers transformer directory is needed).")
    student, base = load_file(str(student_dir / WEIGHTS)), load_file(str(base_dir / WEIGHTS))
    tensors, info, err2, norm2 = {}, {}, 0.0, 0.0
    for name, value in student.items():
        entry = {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch."), "bits": 0}
        ref = base.get(name)
        norm2 += float(value.float().norm()) ** 2
        if ref is not None and ref.shape == value.shape and value.dtype == torch.bfloat16:
            delta = value.float() - ref.float()
            for bits in (4, 8):
                codes, scale = _quantise(delta, bits)
                back = (ref.float() + _dequantise(codes, scale, bits, value.shape)).to(value.dtype)
                if _relative_error(back, value) <= max_error:
                    tensors[f"{name}.codes"], tensors[f"{name}.scale"] = codes, scale
                    entry["bits"] = bits
                    err2 += float((back.float() - value.float()).norm()) ** 2
                    break
        if entry["bits"] == 0:
            tensors[f"{name}.raw"] = value.contiguous()
        info[name] = entry
    with _staging(student_dir, WEIGHTS, out_dir.parent) as tmp:
        metadata = {"turbo.delta.format": "1", "base": os.path.relpath(base_dir, out_dir),
                    "base_sha256": _sha256(base_dir / WEIGHTS), "tensors": json.dumps(info)}
        save_file(tensors, str(tmp / PACK_FILE), metadata=metadata)
        counts: dict[int, int] = {}
        for entry in info.values():
            counts[entry["bits"]] = counts.get(entry["bits"], 0) + 1
        error = (err2 / max(norm2, 1e-30)) ** 0.5
        if (tmp / "README.md").is_file():
            with (tmp / "README.md").open("a") as card:
                card.write(f"\n## Packed\n\nStored by `turbo.distill.pack` as the difference from {metadata['base']} "
                           f"(tensors by bits {dict(sorted(counts.items()))}, 0 = as is; relative error "
                           f"{error:.2e}; bf16's own rounding: {BF16_ERROR:.1e}). `from_pretrained` cannot read this "
                           "directory itself: load `turbo.distill.pack.student_dir(this directory)` (unpacked once), "
                           "or give it to turbo's registry, `--transformer` or `student_from`.\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    return {"bytes": (out_dir / PACK_FILE).stat().st_size, "bits": counts, "error": error}


def _default_cache() -> Path:
    return Path(os.environ.get("TURBO_HOME") or Path.home() / ".cache" / "turbo") / "unpacked"


def unpack_student(packed_dir, cache=None) -> Path:
    """The diffusers directory of packed student `packed_dir`: written once under `cache` (default
    ``$TURBO_HOME/unpacked`` or ``~/.cache/turbo/unpacked``), named by a hash of the pack's files; later calls return
    it. `PackError` when the base weights are missing or differ from those the pack was made against."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    packed_dir = Path(packed_dir)
    pack = packed_dir / PACK_FILE
    if not pack.is_file():
        raise PackError(f"{packed_dir} is not a packed student (no {PACK_FILE}).")
    digest = hashlib.sha256()
    for item in sorted(packed_dir.iterdir()):  # every file: a changed recipe or card is a new unpacked directory
        if item.is_file():
            digest.update(item.name.encode() + b"\0" + _sha256(item).encode())
    key = digest.hexdigest()[:16]
    target = Path(cache or _default_cache()) / f"{packed_dir.name}-{key}"
    if (target / WEIGHTS).is_file():
        return target
    with safe_open(str(pack), framework="pt") as handle:
        metadata = handle.metadata() or {}
    base_dir = (packed_dir / metadata.get("base", "")).resolve()
    base_file = base_dir / WEIGHTS
    if not base_file.is_file():
        raise PackError(f"{packed_dir}: its base weights {base_file} are missing; the pack stores only the "
                        "difference from them.")
    if _sha256(base_file) != metadata.get("base_sha256"):
        raise PackError(f"{packed_dir}: {base_file} is not the file this student was packed against (SHA-256 "
                        "differs); re-pack it from the full student.")
    stored, base = load_file(str(pack)), load_file(str(base_file))
    weights = {}
    for name, entry in json.loads(metadata["tensors"]).items():
        if entry["bits"] == 0:
            weights[name] = stored[f"{name}.raw"]
            continue
        delta = _dequantise(stored[f"{name}.codes"], stored[f"{name}.scale"], entry["bits"], entry["shape"])
        weights[name] = (base[name].float() + delta).to(getattr(torch, entry["dtype"]))
    with _staging(packed_dir, PACK_FILE, target.parent) as tmp:
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
        try:
            tmp.rename(target)
        except OSError:  # another process unpacked it first
            if not (target / WEIGHTS).is_file():
                raise
    return target


def student_dir(directory) -> Path:
    """`directory` itself, or for a packed student its unpacked directory (`unpack_student`)."""
    return unpack_student(directory) if is_packed(directory) else Path(directory)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m turbo.distill.pack", description=__doc__.splitlines()[0])
    parser.add_argument("student", help="the student's transformer directory (a `turbo distill` export)")
    parser.add_argument("--base", required=True, help="the teacher's transformer directory")
    parser.add_argument("--out", required=True, help="the packed directory to write")
    parser.add_argument("--max-error", type=float, default=BF16_ERROR,
                        help="largest relative error ‖Ŵ − W‖ / ‖W‖ a 4- / 8-bit tensor may unpack with")
    args = parser.parse_args(argv)
    try:
        report = pack_student(args.student, args.base, args.out, max_error=args.max_error)
    except PackError as error:
        parser.exit(2, f"turbo: {error}\n")
    print(f"packed {args.student} -> {args.out}: {report['bytes'] / 1e6:.2f} MB, tensors by bits "
          f"{dict(sorted(report['bits'].items()))} (0 = stored as is), relative error {report['error']:.2e} "
          f"(bf16's own rounding of weights: {BF16_ERROR:.1e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
