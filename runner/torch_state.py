"""Pickle-free state of a PyTorch model, its optimizer and its random streams.

A backend that trains with PyTorch calls ``capture`` in its ``state()`` and ``restore`` in
its ``load_state()`` (the loop calls those between two steps, to snapshot, roll back and
resume). ``capture`` turns a module, an optimizer and the random generators into a
``BackendState`` of NumPy arrays and JSON-safe metadata; ``restore`` puts one back in place.
A third-party backend::

    from runner.torch_state import capture, restore

    def state(self) -> BackendState:
        saved = capture(self.net, self.optimizer, generators={"loader": self.loader_generator})
        saved.arrays["perm"], saved.meta["step"] = self.perm.copy(), self.step  # names of its own
        return saved

    def load_state(self, state: BackendState) -> None:
        if state.arrays["perm"].shape != self.perm.shape:  # its own parts first: all or nothing
            raise ValueError("perm: wrong length")
        restore(state, self.net, self.optimizer, generators={"loader": self.loader_generator})
        self.perm, self.step = state.arrays["perm"].copy(), state.meta["step"]

What it saves, under names a backend leaves to it (arrays under ``module/``, ``optimizer/``
and ``rng/``; the meta keys ``torch`` and ``optimizer``):

- ``module/<key>`` for every entry of ``module.state_dict()``: parameters and buffers
  (batch norm's running statistics and ``num_batches_tracked`` included);
- ``optimizer/<parameter name>/<slot>`` for every tensor of the optimizer's per-parameter
  state (``exp_avg``, ``momentum_buffer``, ``step``...), parameters named as the module's
  ``named_parameters`` names them; ``meta["optimizer"]`` holds the optimizer's class, its
  ``param_groups`` (the names of their parameters, and lr, momentum, betas... with tuples
  as lists) and the state that is not a tensor. A hyperparameter that is a tensor goes to
  ``optimizer/param_groups/<group>/<name>``. An integer beyond 64 bits is written
  ``{"int": "<digits>"}``, an infinite or NaN float ``{"float": "inf"}``;
- with ``rng=True``, torch's global CPU generator as ``rng/torch_cpu`` and, when CUDA is
  initialised, each CUDA device's as ``rng/torch_cuda/<index>`` (dropout and other layers
  draw from these); each of ``generators`` as ``rng/<name>``.

A dtype NumPy lacks (bfloat16, the float8 types) is stored as its bits (uint16, uint8).

Guarantees:

- ``capture`` returns host copies: training on does not change a captured state.
- ``restore`` checks everything before it changes anything (array names, shapes and
  dtypes, the optimizer's class, parameters and slots (slot shapes against the
  optimizer's own state where it has any yet), generator states) and raises
  ValueError naming what does not fit, restoring nothing. It then copies in place: the
  parameters stay the same ``Parameter`` objects, so an optimizer built on them works on.
- Arrays carry no device: a module on CUDA restores a state captured on the CPU and the
  other way round. CUDA generators are restored when CUDA is initialised here too (a
  module on a CUDA device means it is), for the device indices both the state and this
  machine have; the others are left as they are.
- Bit-for-bit continuation on the same machine and library versions (on a GPU, with
  deterministic kernels).
- Never ``torch.load``, never pickle: tensors become NumPy arrays, everything else JSON.
  What cannot be written so (a module's extra state, a dict or a NumPy scalar among the
  hyperparameters, a list of tensors such as L-BFGS keeps) is refused by ``capture`` with
  a ValueError that names it.

torch is imported when these functions first run, not with this module: the built-in
Torch backend imports this module when plugins load, and torch must wait until a trial
uses it.

This module is public (``runner.PUBLIC_MODULES``); its ``__all__`` is the state helper
for Torch backends: ``capture`` and ``restore``, and for a dict of named tensors of a
backend's own, ``tensors_to_arrays``, ``check_arrays`` and ``copy_arrays_into``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from runner.backend import BackendState

if TYPE_CHECKING:
    import torch

__all__ = ["capture", "check_arrays", "copy_arrays_into", "restore", "tensors_to_arrays"]

MODULE = "module/"
OPTIMIZER = "optimizer/"
GROUPS = "optimizer/param_groups/"
RNG = "rng/"
CPU_RNG = "rng/torch_cpu"
CUDA_RNG = "rng/torch_cuda/"
_NUMPY_TYPES = {
    "bool",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
}


# -- named tensors <-> prefixed arrays ------------------------------------------------------


def tensors_to_arrays(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, np.ndarray]:
    """Host copies of ``tensors`` as ``{prefix + name: array}``; ``prefix`` is used as given
    (``"param/"`` names ``W1`` ``param/W1``). A dtype NumPy lacks (bfloat16, float8) is stored
    as its bits (uint16, uint8). Raises ValueError for a value that is not a dense tensor."""
    return {prefix + name: _host(tensor, prefix + name) for name, tensor in tensors.items()}


def check_arrays(tensors: Mapping[str, torch.Tensor], arrays: Mapping[str, np.ndarray], prefix: str) -> None:
    """Raise ValueError unless the arrays whose names start with ``prefix`` are exactly
    ``tensors`` (by name, after ``prefix``), each of its tensor's shape and dtype. Arrays
    under other prefixes are not looked at."""
    expected = {prefix + name for name in tensors}
    present = {key for key in arrays if key.startswith(prefix)}
    if present != expected:
        raise ValueError(
            f"arrays under {prefix!r} do not fit: missing {sorted(expected - present)}, "
            f"unexpected {sorted(present - expected)}"
        )
    for name, tensor in tensors.items():
        _check(prefix + name, tensor, arrays[prefix + name])


def copy_arrays_into(tensors: Mapping[str, torch.Tensor], arrays: Mapping[str, np.ndarray], prefix: str) -> None:
    """Copy ``arrays[prefix + name]`` into each of ``tensors`` in place (on its device, under
    ``no_grad``), after ``check_arrays``: on a misfit it raises ValueError and copies nothing."""
    import torch

    check_arrays(tensors, arrays, prefix)
    with torch.no_grad():
        for name, tensor in tensors.items():
            tensor.copy_(_from_host(arrays[prefix + name], tensor.dtype))


# -- a module, its optimizer and the generators ---------------------------------------------


def capture(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    generators: Mapping[str, torch.Generator] = {},  # read only, never changed
    rng: bool = True,
) -> BackendState:
    """Host copies of ``module``'s state, ``optimizer``'s (if given), torch's global
    generators (if ``rng``) and ``generators``; see the module's docstring for the names.
    Raises ValueError for anything that cannot be saved without pickle."""
    import torch

    arrays = tensors_to_arrays(_module_tensors(module), MODULE)
    meta: dict[str, Any] = {"torch": torch.__version__, "optimizer": None}
    if optimizer is not None:
        meta["optimizer"] = _capture_optimizer(module, optimizer, arrays)
    for name, generator in _checked_generators(generators).items():
        arrays[RNG + name] = _host(generator.get_state(), RNG + name)
    if rng:
        arrays[CPU_RNG] = _host(torch.get_rng_state(), CPU_RNG)
        if torch.cuda.is_initialized():
            for index, value in enumerate(torch.cuda.get_rng_state_all()):
                arrays[f"{CUDA_RNG}{index}"] = _host(value, f"{CUDA_RNG}{index}")
    return BackendState(arrays=arrays, meta=meta)


def restore(
    state: BackendState,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    generators: Mapping[str, torch.Generator] = {},  # read only, never changed
    rng: bool = True,
) -> None:
    """Put a ``capture`` back: ``module`` and ``optimizer`` built as the captured ones (the
    optimizer on the module's parameters; pass one exactly when the state holds one), the
    same ``generators`` by name; ``rng`` restores torch's global generators (the state must
    hold them). Checks everything first and raises ValueError, restoring nothing, when the
    state does not fit. Any device to any: tensors are copied onto the module's devices;
    a CUDA generator is restored only when the state has it and CUDA is initialised here,
    device index to device index. To load a module's weights alone:
    ``copy_arrays_into(module.state_dict(), state.arrays, "module/")``."""
    tensors = _module_tensors(module)
    check_arrays(tensors, state.arrays, MODULE)
    loadable = _prepare_optimizer(state, module, optimizer)
    settings = _prepare_rng(state, generators, rng)
    if optimizer is not None:
        optimizer.load_state_dict(loadable)
    copy_arrays_into(tensors, state.arrays, MODULE)
    for set_state, value in settings:
        set_state(value)


# -- the optimizer --------------------------------------------------------------------------


def _capture_optimizer(module, optimizer, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Add the optimizer's tensors to ``arrays``; return its meta."""
    import torch

    names = _parameter_names(module)
    packed = optimizer.state_dict()
    by_index: dict[int, str] = {}
    groups = []
    for g, (live, group) in enumerate(zip(optimizer.param_groups, packed["param_groups"], strict=True)):
        saved: dict[str, Any] = {"params": []}
        for parameter, index in zip(live["params"], group["params"], strict=True):
            name = names.get(id(parameter))
            if name is None:
                raise ValueError(
                    f"optimizer param group {g} holds a parameter of shape {tuple(parameter.shape)} "
                    "that is not one of the module's parameters"
                )
            by_index[index] = name
            saved["params"].append(name)
        for key, value in group.items():
            if key == "params":
                continue
            where = f"{GROUPS}{g}/{_key(key, f'optimizer param group {g}')}"
            saved[key] = (
                _tensor_tag(value, where, arrays) if isinstance(value, torch.Tensor) else _to_json(value, where)
            )
        groups.append(saved)
    slots: dict[str, dict[str, Any]] = {}
    for index, values in packed["state"].items():
        name = by_index.get(index)
        if name is None:
            raise ValueError(f"optimizer has state for parameter #{index}, which is in none of its param groups")
        slots[name] = {}
        for slot, value in values.items():
            where = f"{OPTIMIZER}{name}/{_key(slot, f'optimizer state of {name}')}"
            slots[name][slot] = (
                _tensor_tag(value, where, arrays) if isinstance(value, torch.Tensor) else _to_json(value, where)
            )
    return {"class": _class_name(optimizer), "param_groups": groups, "state": slots}


def _prepare_optimizer(state: BackendState, module, optimizer) -> dict[str, Any] | None:
    """Check the optimizer's part of ``state``; return what ``optimizer.load_state_dict`` takes."""
    saved = state.meta.get("optimizer")
    owned = {key for key in state.arrays if key.startswith(OPTIMIZER)}
    if optimizer is None:
        if saved is not None or owned:
            raise ValueError("the state holds an optimizer's state: pass the optimizer to restore it into")
        return None
    if not isinstance(saved, dict):
        raise ValueError("the state holds no optimizer state (it was captured without an optimizer)")
    if saved.get("class") != _class_name(optimizer):
        raise ValueError(f"the state is of a {saved.get('class')} optimizer, not of a {_class_name(optimizer)}")
    try:
        return _optimizer_state_dict(state, saved, owned, module, optimizer)
    except (KeyError, TypeError, AttributeError, IndexError) as err:
        raise ValueError(f"the state's meta['optimizer'] is damaged ({type(err).__name__}: {err})") from None


def _optimizer_state_dict(state, saved, owned, module, optimizer) -> dict[str, Any]:
    import torch

    names = _parameter_names(module)
    live_groups, packed = optimizer.param_groups, optimizer.state_dict()["param_groups"]
    if len(saved["param_groups"]) != len(live_groups):
        raise ValueError(
            f"optimizer: the state has {len(saved['param_groups'])} param groups, this optimizer {len(live_groups)}"
        )
    referenced = {tag["tensor"] for tag in _tags(saved)}
    if referenced != owned:
        raise ValueError(
            f"optimizer arrays do not fit the state's meta: missing {sorted(referenced - owned)}, "
            f"unexpected {sorted(owned - referenced)}"
        )
    parameters, index = {}, {}
    for g, (live, group) in enumerate(zip(live_groups, packed, strict=True)):
        held = [names.get(id(p), f"<a parameter of shape {tuple(p.shape)} not in the module>") for p in live["params"]]
        wanted = saved["param_groups"][g]["params"]
        if held != wanted:
            raise ValueError(
                f"optimizer param group {g} does not fit: the state's has {wanted}, this optimizer's {held}"
            )
        parameters.update(zip(held, live["params"], strict=True))
        index.update(zip(held, group["params"], strict=True))
    groups = []
    for live, group, saved_group in zip(live_groups, packed, saved["param_groups"], strict=True):
        restored = {
            key: _from_json(value, live.get(key), state.arrays, _device_of(live.get(key)))
            for key, value in saved_group.items()
            if key != "params"
        }
        groups.append({**restored, "params": group["params"]})
    slots = {}
    for name, values in saved["state"].items():
        parameter = parameters.get(name)
        if parameter is None:
            raise ValueError(f"optimizer: the state has state for {name!r}, which this optimizer does not hold")
        live = optimizer.state.get(parameter, {})
        if live and set(live) != set(values):
            raise ValueError(f"{OPTIMIZER}{name}: the state has slots {sorted(values)}, this optimizer {sorted(live)}")
        slots[index[name]] = {}
        for slot, value in values.items():
            if isinstance(value, dict) and "tensor" in value:
                _check_slot(value, live.get(slot), parameter, slot, state.arrays)
            device = torch.device("cpu") if slot == "step" else parameter.device  # torch moves a step itself
            slots[index[name]][slot] = _from_json(value, live.get(slot), state.arrays, device)
    return {"state": slots, "param_groups": groups}


def _check_slot(tag: dict, live, parameter, slot: str, arrays: Mapping[str, np.ndarray]) -> None:
    """A slot's array fits the live optimizer's tensor, or (no state yet) is of the
    parameter's floating dtype, which ``load_state_dict`` would otherwise cast it to."""
    import torch

    key = tag["tensor"]
    array = np.asarray(arrays[key])
    dtype = _tag_dtype(tag, array)
    if isinstance(live, torch.Tensor):
        if live.dtype != dtype:
            raise ValueError(f"{key}: expected {_name(live.dtype)}, got {_name(dtype)}")
        _check(key, live, array)
    elif slot != "step" and parameter.is_floating_point() and dtype.is_floating_point and dtype != parameter.dtype:
        raise ValueError(f"{key}: expected {_name(parameter.dtype)} like its parameter, got {_name(dtype)}")


def _tag_dtype(tag: dict, array: np.ndarray):
    """The torch dtype of the tensor a tag refers to: its ``dtype``, else the array's."""
    import torch

    name = tag.get("dtype", array.dtype.name)
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype) or _stored(dtype, tag["tensor"]) != array.dtype:
        raise ValueError(f"{tag['tensor']}: a {array.dtype} array cannot hold a tensor of dtype {name!r}")
    return dtype


def _tags(saved: dict) -> list[dict]:
    """Every ``{"tensor": name}`` in the optimizer's meta: values of param groups and slots
    (``_to_json`` writes no other dict with a ``tensor`` key, and none inside a list)."""
    values = [v for group in saved["param_groups"] for k, v in group.items() if k != "params"]
    values += [v for slots in saved["state"].values() for v in slots.values()]
    return [v for v in values if isinstance(v, dict) and "tensor" in v]


def _tensor_tag(tensor, where: str, arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """Store ``tensor`` as ``arrays[where]``; the meta's reference to it (with the dtype
    when NumPy lacks it)."""
    if where in arrays:
        raise ValueError(f"{where}: two of the optimizer's values would be saved under this name")
    arrays[where] = _host(tensor, where)
    tag = {"tensor": where}
    if _name(tensor.dtype) not in _NUMPY_TYPES:
        tag["dtype"] = _name(tensor.dtype)
    return tag


def _to_json(value, where: str):
    """``value`` as JSON that orjson writes and ``_from_json`` reads back exactly."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value) if -(2**63) <= value < 2**63 else {"int": str(value)}
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else {"float": repr(float(value))}
    if isinstance(value, (list, tuple)):
        return [_to_json(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise ValueError(
        f"{where}: a {type(value).__module__}.{type(value).__qualname__} cannot be saved without pickle "
        "(saved are tensors, and None, bool, int, float, str and lists or tuples of these)"
    )


def _from_json(value, like, arrays: Mapping[str, np.ndarray], device):
    """Undo ``_to_json`` (and ``_tensor_tag``, a copy on ``device``); a list becomes a tuple
    where the live value ``like`` is one."""
    if isinstance(value, dict):
        if "tensor" in value:
            array = np.asarray(arrays[value["tensor"]])
            return _from_host(array, _tag_dtype(value, array)).to(device=device, copy=True)
        if "int" in value:
            return int(value["int"])
        return float(value["float"])
    if isinstance(value, list):
        items = [_from_json(item, None, arrays, device) for item in value]
        return tuple(items) if isinstance(like, tuple) else items
    return value


# -- generators -----------------------------------------------------------------------------


def _checked_generators(generators: Mapping[str, torch.Generator]) -> Mapping[str, torch.Generator]:
    import torch

    for name, generator in generators.items():
        if not isinstance(name, str) or not name or name == "torch_cpu" or name.startswith("torch_cuda"):
            raise ValueError(f"generator name {name!r}: must be a non-empty string other than torch_cpu, torch_cuda*")
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generators[{name!r}]: a {type(generator).__qualname__}, not a torch.Generator")
    return generators


def _prepare_rng(state: BackendState, generators, rng: bool) -> list[tuple[Any, torch.Tensor]]:
    """Check the generators' part of ``state``; return (setter, state) pairs to apply."""
    import torch

    owned = {key for key in state.arrays if key.startswith(RNG)}
    torch_owned = {key for key in owned if key == CPU_RNG or key.startswith(CUDA_RNG)}
    passed = {RNG + name for name in _checked_generators(generators)}
    if owned - torch_owned != passed:
        raise ValueError(
            f"generators do not fit the state: passed but not in it {sorted(passed - owned)}, "
            f"in it but not passed {sorted(owned - torch_owned - passed)}"
        )
    settings = [(g.set_state, _generator_state(state, RNG + name, g.get_state())) for name, g in generators.items()]
    if not rng:
        return settings
    if CPU_RNG not in owned:
        raise ValueError(f"the state has no {CPU_RNG} (it was captured with rng=False): restore with rng=False")
    settings.append((torch.set_rng_state, _generator_state(state, CPU_RNG, torch.get_rng_state())))
    if torch.cuda.is_initialized():
        for index in range(torch.cuda.device_count()):
            key = f"{CUDA_RNG}{index}"
            if key in owned:
                value = _generator_state(state, key, torch.cuda.get_rng_state(index))
                settings.append((lambda v, i=index: torch.cuda.set_rng_state(v, i), value))
    return settings


def _generator_state(state: BackendState, key: str, current: torch.Tensor) -> torch.Tensor:
    _check(key, current, state.arrays[key])
    return _from_host(state.arrays[key], current.dtype).clone()


# -- small pieces ---------------------------------------------------------------------------


def _module_tensors(module) -> dict[str, torch.Tensor]:
    """The module's ``state_dict``: its own parameters and buffers, detached."""
    import torch

    tensors = module.state_dict()
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{MODULE}{key}: a {type(value).__qualname__} (a module's extra state) cannot be saved without pickle"
            )
    return dict(tensors)


def _parameter_names(module) -> dict[int, str]:
    return {id(parameter): name for name, parameter in module.named_parameters()}


def _class_name(optimizer) -> str:
    return f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"


def _key(key, where: str) -> str:
    if not isinstance(key, str):
        raise ValueError(f"{where}: the key {key!r} is not a string")
    return key


def _device_of(value):
    import torch

    return value.device if isinstance(value, torch.Tensor) else torch.device("cpu")


def _name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


@cache
def _storage(dtype) -> tuple[np.dtype, Any] | None:
    """The NumPy dtype a tensor of ``dtype`` is stored as, and the torch dtype of the same
    width to view it as first where NumPy lacks ``dtype`` (None where it has it); None for
    a dtype that cannot be stored."""
    import torch

    name = _name(dtype)
    if name in _NUMPY_TYPES:
        return np.dtype(name), None
    if dtype.is_floating_point and dtype.itemsize in (1, 2):
        return (np.dtype(np.uint8), torch.uint8) if dtype.itemsize == 1 else (np.dtype(np.uint16), torch.int16)
    return None


def _stored(dtype, where: str) -> np.dtype:
    """The NumPy dtype a tensor of ``dtype`` is stored as; ValueError if there is none."""
    storage = _storage(dtype)
    if storage is None:
        raise ValueError(f"{where}: a {_name(dtype)} tensor cannot be stored as a NumPy array")
    return storage[0]


def _describe(dtype) -> str:
    stored, bits = _storage(dtype)
    return stored.name if bits is None else f"{_name(dtype)} (as {stored.name} bits)"


def _check(key: str, tensor, array) -> None:
    array = np.asarray(array)
    if array.dtype != _stored(tensor.dtype, key) or array.shape != tuple(tensor.shape):
        raise ValueError(
            f"{key}: expected {_describe(tensor.dtype)} {tuple(tensor.shape)}, got {array.dtype} {array.shape}"
        )


def _host(tensor, where: str) -> np.ndarray:
    """A host copy of ``tensor`` (on the CPU ``numpy()`` shares memory, so it is copied)."""
    import torch

    if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.strided:
        raise ValueError(f"{where}: not a dense tensor ({type(tensor).__qualname__})")
    _stored(tensor.dtype, where)  # refuses a dtype NumPy cannot hold
    stored, bits = _storage(tensor.dtype)
    tensor = tensor.detach()
    if bits is not None:
        tensor = tensor.view(bits)
    array = tensor.numpy(force=True)
    if tensor.device.type == "cpu":
        array = array.copy()
    return array.view(stored) if bits is not None else array


def _from_host(array, dtype) -> torch.Tensor:
    """A CPU tensor of ``dtype`` (``None``: the array's own) over ``array``'s memory, or a
    copy of it where ``torch.from_numpy`` cannot share it (read-only, not C-ordered)."""
    import torch

    array = np.require(np.asarray(array), requirements=("C", "W"))
    if dtype is None:
        return torch.from_numpy(array)
    _, bits = _storage(dtype)
    if bits is None:
        return torch.from_numpy(array)
    return torch.from_numpy(array.view(np.int16) if array.dtype == np.uint16 else array).view(dtype)
