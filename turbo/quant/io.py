"""Save a quantised transformer (FP8, INT8 or NVFP4) once and load it without ever holding its high-precision weights.

`save_quantized(pipe_or_transformer, directory)` (after `turbo.accelerate(..., quant="fp8" | "int8" | "nvfp4")`)
writes, per accelerated transformer (a pipeline: `<directory>/<component>/`, a transformer passed alone:
`<directory>/`), a diffusers-style folder:

- `config.json`: the model's own config (diffusers `save_config`), so the class and its shapes are known;
- `turbo_quantized.safetensors`: every quantised linear as its buffers (`STORED`), plus `<name>.bias` as it was:
  fp8 `FP8Linear` `weight_q` (F8_E4M3) + `weight_scale` (F32); int8 `INT8Linear` `weight_q` (I8) + `weight_scale`
  (F32); nvfp4 `NVFP4Linear` `packed` (U8, two e2m1 codes per byte) + `block_scale` (F8_E4M3) + `tensor_scale`
  (F32, 0-dim), 0.28× the bytes of the bf16 weight. Every other tensor of the model exactly as it is (state dict
  entries plus non-persistent buffers such as Wan's RoPE tables, listed in the metadata); turbo's attention parts are
  not in it (they go to `turbo_attention.safetensors`, written alongside when the attention method has any).
  Metadata (strings): `turbo.format` (FORMAT_VERSION), `turbo.version`, `turbo.quant.mode` ("fp8", "int8" or
  "nvfp4"), `turbo.model.class`, `turbo.quant.modules` (JSON list of the quantised module names), `turbo.buffers`
  (JSON list of non-persistent buffer names);
- `turbo_config.json`: the recipe (turbo/recipe.py), i.e. the config it was accelerated with, its quant mode included.

`quant="nvfp4-mixed"` is refused: its router's calibration is checked against the model's unquantised block linears
(turbo/quant/router.py `model_fingerprint`), which a loaded model no longer has.

`load_quantized(directory, device)` checks the header (format version, a mode it knows, and that every listed module
has exactly that mode's buffers with their dtypes, so a file whose mode metadata was changed fails before anything is
read), builds the model from `config.json` on the meta device, replaces the listed linears by empty shells of the
mode's class (`FP8Linear.empty`, `INT8Linear.empty`, `NVFP4Linear.empty`; backends as the quant feature picks them
for `device`), reads the file straight onto `device` and assigns the tensors (`load_state_dict(assign=True)`), so the
original weights of the quantised linears are never materialised anywhere. It records `directory` as the model's
`_name_or_path`, so `turbo.accelerate(pipe)` on a pipeline holding it finds the recipe (its quant mode: the quant
feature finds no `nn.Linear` left to swap among the quantised ones; `restore` leaves them quantised)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import TurboError
from .fp8 import FP8Linear
from .int8 import INT8Linear
from .nvfp4 import NVFP4Linear, nvfp4_ready

QUANT_FILE = "turbo_quantized.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
FORMAT_KEY = "turbo.format"
VERSION_KEY = "turbo.version"
MODE_KEY = "turbo.quant.mode"
CLASS_KEY = "turbo.model.class"
MODULES_KEY = "turbo.quant.modules"
BUFFERS_KEY = "turbo.buffers"
MODES = {"fp8": FP8Linear, "int8": INT8Linear, "nvfp4": NVFP4Linear}  # what save_quantized stores, by quant mode
STORED = {  # per mode: the buffers of each quantised linear besides its bias, with their safetensors dtypes
    "fp8": {"weight_q": "F8_E4M3", "weight_scale": "F32"},
    "int8": {"weight_q": "I8", "weight_scale": "F32"},
    "nvfp4": {"packed": "U8", "block_scale": "F8_E4M3", "tensor_scale": "F32"},
}
_MODE_NAMES = "quant='fp8', 'int8' or 'nvfp4'"


def _cpu_state(model: nn.Module, method_attr: str) -> tuple[dict, list[str]]:
    """Every tensor of `model` but turbo's attention parts, on the CPU and not sharing memory (safetensors refuses
    shared tensors); plus the names of the non-persistent buffers among them."""
    skip = f".{method_attr}."
    state = {k: v for k, v in model.state_dict().items() if skip not in f".{k}"}
    buffers = [n for n, b in model.named_buffers() if n not in state and b is not None and skip not in f".{n}"]
    state.update({n: model.get_buffer(n) for n in buffers})
    out, seen = {}, set()
    for key, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        if tensor.numel() and tensor.data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        out[key] = tensor
    return out, buffers


def _quantised_modules(model: nn.Module, mode: str) -> list[str]:
    """The names of `model`'s linears quantised to `mode`; one sentence if it also holds another mode's linears (a
    model loaded quantised and then accelerated with another mode)."""
    from .mixed import MixedLinear

    cls = MODES[mode]
    names = []
    for name, module in model.named_modules():
        if isinstance(module, cls):
            names.append(name)
        elif isinstance(module, (*MODES.values(), MixedLinear)):
            raise TurboError(f"this transformer holds {type(module).__name__} ({name}) next to its quant='{mode}' "
                             "linears; save_quantized stores one quant mode per model.")
    return names


def save_quantized(pipe, directory) -> list[Path]:
    """Save each quantised transformer of `pipe` (a pipeline or a transformer accelerated with `quant="fp8"`,
    `"int8"` or `"nvfp4"`) as a folder `load_quantized` reads: `<directory>/<component>/` for a pipeline,
    `<directory>/` for a transformer. Returns the folders written."""
    from safetensors.torch import save_file

    from .. import __version__
    from ..adapters import METHOD_ATTR
    from ..attention.parts import save_attention_parts
    from ..recipe import save_recipe

    report = getattr(pipe, "turbo", None)
    if report is None or not hasattr(report, "models"):
        raise TurboError("this object is not accelerated by turbo; call turbo.accelerate(pipe, quant='fp8') first.")
    mode = report.config.quant.mode
    if mode == "nvfp4-mixed":
        raise TurboError("save_quantized cannot store quant='nvfp4-mixed' (its router's calibration is checked "
                         "against the model's unquantised block linears, which a loaded model no longer has); save "
                         "with quant='nvfp4', or accelerate the original weights with nvfp4-mixed.")
    if mode not in MODES:
        raise TurboError(f"save_quantized needs a model accelerated with {_MODE_NAMES} (this one has quant='{mode}'); "
                         "call turbo.restore and turbo.accelerate(pipe, quant='fp8').")
    single = isinstance(pipe, nn.Module)
    written, parts = [], False
    models = [(component, model, _quantised_modules(model, mode)) for component, model in report.models()]
    for component, model, quantised in models:  # every model checked before anything is written
        folder = Path(directory) if single else Path(directory) / component
        folder.mkdir(parents=True, exist_ok=True)
        state, buffers = _cpu_state(model, METHOD_ATTR)
        parts = parts or any(f".{METHOD_ATTR}." in f".{k}" for k in model.state_dict())
        metadata = {FORMAT_KEY: str(FORMAT_VERSION), VERSION_KEY: __version__, MODE_KEY: mode,
                    CLASS_KEY: type(model).__name__, MODULES_KEY: json.dumps(quantised),
                    BUFFERS_KEY: json.dumps(buffers)}
        model.save_config(str(folder))
        save_file(state, str(folder / QUANT_FILE), metadata=metadata)
        save_recipe(folder, report.config)
        written.append(folder)
    if parts:  # the attention method has turbo parts (SLA proj, SLA2 router): beside the weights, as accelerate expects
        save_attention_parts(pipe, directory)
    return written


def _folder(directory) -> Path:
    root = Path(directory)
    for folder in (root, root / "transformer"):
        if (folder / QUANT_FILE).is_file():
            return folder
    raise TurboError(f"{root} holds no {QUANT_FILE} (nor does {root / 'transformer'}); write one with "
                     "turbo.save_quantized after turbo.accelerate(pipe, quant='fp8').")


def _read_header(path: Path) -> tuple[dict, dict[str, str]]:
    """The file's checked metadata and {tensor name: safetensors dtype}, read without loading any tensor."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            dtypes = {key: handle.get_slice(key).get_dtype() for key in handle.keys()}
    except Exception as error:  # noqa: BLE001 - any unreadable file is one sentence
        raise TurboError(f"{path} is not a readable safetensors file ({error}).") from None
    if FORMAT_KEY not in metadata or MODULES_KEY not in metadata:
        raise TurboError(f"{path} has no turbo quantisation metadata; it was not written by turbo.save_quantized.")
    try:
        version = int(metadata[FORMAT_KEY])
    except ValueError:
        raise TurboError(f"{path} has an unreadable format version '{metadata[FORMAT_KEY]}'.") from None
    if version > FORMAT_VERSION:
        raise TurboError(f"{path} uses quantised-model format {version} (written by turbo "
                         f"{metadata.get(VERSION_KEY, '?')}), newer than this turbo reads ({FORMAT_VERSION}); "
                         "upgrade turbo.")
    if metadata.get(MODE_KEY) not in MODES:
        raise TurboError(f"{path} holds quant mode '{metadata.get(MODE_KEY)}'; this turbo loads {_MODE_NAMES}.")
    return metadata, dtypes


def _check_layout(path: Path, mode: str, modules: list, dtypes: dict[str, str]) -> None:
    """Every listed module must hold exactly `mode`'s buffers with their dtypes (a mode in the metadata that does not
    match the tensors, e.g. an edited file, fails here in one sentence)."""
    if not isinstance(modules, list) or not all(isinstance(name, str) for name in modules):
        raise TurboError(f"{path} has an unreadable list of quantised modules in its metadata.")
    for name in modules:
        for buffer, dtype in STORED[mode].items():
            key = f"{name}.{buffer}"
            if dtypes.get(key) != dtype:
                found = f"is {dtypes[key]}" if key in dtypes else "is missing"
                raise TurboError(f"{path} says its linears are quantised to '{mode}', but {key} {found} (a '{mode}' "
                                 f"file stores it as {dtype}); its quant mode metadata does not match its tensors.")


def _model_class(folder: Path, metadata: dict):
    import diffusers

    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as error:
        raise TurboError(f"{folder / CONFIG_FILE} is not a readable model config ({error}).") from None
    name = config.get("_class_name")
    if name != metadata.get(CLASS_KEY):
        raise TurboError(f"{folder / QUANT_FILE} was saved from a {metadata.get(CLASS_KEY)} but {CONFIG_FILE} "
                         f"describes a {name}; the files belong to different models.")
    cls = getattr(diffusers, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and hasattr(cls, "from_config")):
        raise TurboError(f"{folder / CONFIG_FILE} names the model class {name}, which diffusers "
                         f"{diffusers.__version__} does not have.")
    return cls, config


def _check_fit(path: Path, own: dict, state: dict) -> None:
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and tuple(own[k].shape) != tuple(state[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unknown tensors (first: {unexpected[0]})")
    if mismatched:
        key = mismatched[0]
        problems.append(f"{len(mismatched)} shape mismatches (first: {key} is {tuple(state[key].shape)} in the file, "
                        f"{tuple(own[key].shape)} in the model)")
    if problems:
        raise TurboError(f"{path} does not fit the model its config.json describes: {'; '.join(problems)}.")


def load_quantized(directory, device="cuda"):
    """Load a transformer saved by `save_quantized` from `directory` (the folder holding `turbo_quantized.safetensors`,
    or a pipeline folder with it under `transformer/`) onto `device`, with its quantised linears as `FP8Linear`,
    `INT8Linear` or `NVFP4Linear` (the saved mode) and no high-precision copy of their weights ever allocated.
    Returns the transformer (in eval mode); put it into a pipeline (`WanPipeline.from_pretrained(...,
    transformer=model)`) and call `turbo.accelerate(pipe)` to run it with its saved recipe."""
    from safetensors.torch import load_file

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TurboError(f"load_quantized(device='{device}') needs a CUDA GPU and torch sees none; pass device='cpu'.")
    folder = _folder(directory)
    path = folder / QUANT_FILE
    metadata, dtypes = _read_header(path)
    mode = metadata[MODE_KEY]
    try:
        modules, buffers = json.loads(metadata[MODULES_KEY]), json.loads(metadata.get(BUFFERS_KEY, "[]"))
    except ValueError:
        raise TurboError(f"{path} has unreadable module lists in its metadata.") from None
    _check_layout(path, mode, modules, dtypes)
    cls, config = _model_class(folder, metadata)
    with torch.device("meta"):
        model = cls.from_config(config)
    cuda = device.type == "cuda"
    use_gemm = cuda and torch.cuda.get_device_capability(device) >= (8, 9)
    for name in modules:
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            linear = None
        if not isinstance(linear, nn.Linear):
            raise TurboError(f"{path} quantises module '{name}', which is not a linear layer of the {cls.__name__} "
                             f"in {CONFIG_FILE}; the files belong to different models.")
        parent_name, _, attr = name.rpartition(".")
        spec = (linear.in_features, linear.out_features, linear.bias is not None, linear.weight.dtype)
        if mode == "fp8":
            shell = FP8Linear.empty(*spec, device="meta", use_gemm=use_gemm)
        elif mode == "int8":
            shell = INT8Linear.empty(*spec, device="meta", cuda=cuda)
        elif nvfp4_ready(linear.in_features):
            shell = NVFP4Linear.empty(*spec, device="meta", cuda=cuda)
        else:
            raise TurboError(f"{path} stores module '{name}' in NVFP4, but the {cls.__name__} in {CONFIG_FILE} gives "
                             f"it {linear.in_features} inputs (not a multiple of 16); the files belong to different "
                             "models.")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, shell)
    state = load_file(str(path), device=str(device))
    extra = {name: state.pop(name) for name in buffers if name in state}
    own = model.state_dict()
    _check_fit(path, own, state)
    model.load_state_dict(state, strict=True, assign=True)  # the file's dtypes and device, no copies
    for name, tensor in extra.items():
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        if attr not in owner._buffers:
            raise TurboError(f"{path} has a buffer '{name}' the {cls.__name__} in {CONFIG_FILE} lacks; the files "
                             "belong to different models.")
        owner._buffers[attr] = tensor
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t is not None and t.is_meta]
    if left:
        raise TurboError(f"{path} leaves {len(left)} tensors of the model unset (first: {left[0]}); it was saved "
                         "from another version of the model.")
    model.register_to_config(_name_or_path=str(folder))
    return model.eval()
