"""Reading native checkpoints: `.pth`/`.pt`/`.bin` (weights only, memory-mapped), `.safetensors`, and sharded
directories (`*.safetensors.index.json`), unwrapped from training containers and stripped of wrapper prefixes."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import torch

from ..errors import TurboError

logger = logging.getLogger("turbo")

#: prefixes that training wrappers put before the native Wan names (repeatedly stripped, in any order)
WRAPPER_PREFIXES = ("model.diffusion_model.", "_orig_mod.", "module.", "net.")
#: container keys under which training scripts nest the state dict
CONTAINER_KEYS = ("state_dict", "model", "module", "net")

_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def _torch_load(path: Path) -> object:
    """`torch.load` with weights only, mmap when the file is in the zip format (old pickles cannot be mapped)."""
    kwargs = {"map_location": "cpu", "weights_only": True}
    try:
        return torch.load(str(path), mmap=True, **kwargs)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
    return torch.load(str(path), **kwargs)


def _read_pickle(path: Path) -> object:
    try:
        return _torch_load(path)
    except pickle.UnpicklingError as error:
        text = str(error)
        if "Unsupported global" in text or "GLOBAL" in text:
            raise TurboError(f"{path} needs Python code to unpickle (not only tensors); turbo loads weights only, so "
                             "re-save it as a plain state_dict or safetensors.") from None
        raise TurboError(f"{path} is not a PyTorch checkpoint (it cannot be read as saved tensors).") from None
    except Exception as error:  # noqa: BLE001 - any failure of the weights-only unpickler means "not a checkpoint"
        detail = " ".join(str(error).split())[:120] if isinstance(error, (RuntimeError, OSError)) else ""
        raise TurboError(f"{path} is not a readable PyTorch checkpoint ({detail or 'no saved tensors found'}).") \
            from None


def _read_safetensors(paths: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    state: dict[str, torch.Tensor] = {}
    for path in paths:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for key in handle.keys():
                    state[key] = handle.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as error:
            raise TurboError(f"{path} is not a readable safetensors file ({' '.join(str(error).split())[:120]}).") \
                from None
    return state


def _shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError):
        raise TurboError(f"{index} is not a safetensors index (no weight_map).") from None
    shards = [index.parent / name for name in dict.fromkeys(weight_map.values())]
    missing = [shard for shard in shards if not shard.is_file()]
    if missing:
        raise TurboError(f"{index} lists {len(missing)} shard files that are missing (first: {missing[0].name}).")
    return shards


def unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded checkpoint: `{"state_dict": ...}`/`{"model": ...}` containers are opened,
    wrapper prefixes (`net.`, `module.`, `model.diffusion_model.`, `_orig_mod.`) stripped."""
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[key] for key in CONTAINER_KEYS if isinstance(obj.get(key), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise TurboError(f"{path} holds no state dict (found {type(obj).__name__}{' (empty)' if obj == {} else ''}).")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue  # training bookkeeping (step counters, config strings) beside the weights
        name = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix):], True
        state[name] = value
    if not state:
        raise TurboError(f"{path} holds no tensors.")
    return state


def load_native(source) -> dict[str, torch.Tensor]:
    """Read a native checkpoint into a flat `{native key: tensor}` dict on the CPU (tensors of `.pth` files are
    memory-mapped, so nothing is copied until used)."""
    path = Path(source)
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if indexes:
            return unwrap(_read_safetensors(_shards(indexes[0])), path)
        files = sorted(path.glob("*.safetensors")) or sorted(p for s in _PICKLE_SUFFIXES for p in path.glob(f"*{s}"))
        if len(files) != 1:
            raise TurboError(f"{path} is a directory without a *.safetensors.index.json and with {len(files)} "
                             "checkpoint files; pass one file or a sharded directory.")
        path = files[0]
    if not path.is_file():
        raise TurboError(f"{path} does not exist.")
    if path.stat().st_size == 0:
        raise TurboError(f"{path} is empty.")
    logger.info("reading %s", path)
    if path.name.endswith(".safetensors.index.json"):
        return unwrap(_read_safetensors(_shards(path)), path)
    if path.suffix == ".safetensors":
        return unwrap(_read_safetensors([path]), path)
    return unwrap(_read_pickle(path), path)
