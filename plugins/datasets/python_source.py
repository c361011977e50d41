"""The "python" dataset: arrays made by a person's own function, named by import path.

::

    "data": {"name": "python", "path": "my_data:load", "args": {"n": 500}}

``path`` is ``module:function``. The module is looked for first in the experiment file's
folder (``my_data.py`` beside ``exp.json``), then on ``sys.path`` (``runner.import_object``).
The function is called once per experiment, in the driver, before the first trial, with
``args`` as keyword arguments, and returns ``(x, y)`` or ``(x, y, x_val, y_val)``: NumPy
arrays or torch tensors (tensors are copied to NumPy with ``.detach().cpu().numpy()``;
torch itself is never imported here). Inputs keep their shape; the core's ``prepare``
encodes labels or keeps regression targets, splits and standardizes as the common options
(``val_fraction``, ``standardize``, ``task``) say.

Anything else is a SpecError at ``data.path`` that says what came back: another kind of
value, another number of items, an item that is no array (a list of lists: wrap it in
``np.asarray``), object arrays, strings as inputs or as regression targets, NaN or
infinite values, lengths that differ. An exception inside the function is reported as
``data.path: my_data:load raised ValueError: ...`` (exit 2, no traceback).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from runner import DataOptions, DatasetPlugin, RawData, SpecError, bounds, check_raw, hookimpl, import_object

WHERE = "data.path"  # every problem with the function or what it returns is reported here
ITEMS = ("x", "y", "x_val", "y_val")


@dataclass(frozen=True, kw_only=True)
class PythonOptions(DataOptions):
    """Which function makes the data and what it is called with."""

    path: str = field(
        metadata=bounds(
            doc='the function that returns (x, y) or (x, y, x_val, y_val), as "module:function"; the module is '
            "looked for in the experiment file's folder first, then on sys.path"
        )
    )
    args: dict[str, Any] = field(
        default_factory=dict, metadata=bounds(doc="keyword arguments the function is called with (JSON values)")
    )


class PythonDataset(DatasetPlugin):
    """Arrays returned by a function of the person's own, named by its import path."""

    name: ClassVar[str] = "python"
    Options: ClassVar[type] = PythonOptions

    def estimate(self, options: PythonOptions, *, base_dir: Path) -> None:
        """Called when the experiment file is read, before ``load``: imports the module and
        finds the function, so that ``runner validate`` reports a bad ``data.path`` (SpecError
        with a "did you mean"). Calls nothing; the data's size is unknown until it is, so
        None: nothing is checked against ``limits`` here (the model is, once loaded)."""
        _function(options, base_dir)
        return None

    def load(self, options: PythonOptions, *, seed: int, base_dir: Path) -> RawData:
        """Import the module, call the function with ``args`` and check what it returns.

        Called once per experiment, in the driver, before the first trial. Runs the person's
        code (which may do anything it likes); copies what it returns. ``seed`` is unused:
        the core's ``prepare`` makes the seeded split.
        """
        function = _function(options, base_dir)
        ref = options.path
        try:
            returned = function(**options.args)
        except Exception as err:  # the person's code: reported as bad input, not a runner bug
            raise SpecError(WHERE, f"{ref} raised {type(err).__name__}: {err}") from None
        if not isinstance(returned, (tuple, list)):
            raise SpecError(WHERE, f"{ref} returned {_what(returned)}; expected a tuple (x, y) or (x, y, x_val, y_val)")
        if len(returned) not in (2, 4):
            raise SpecError(WHERE, f"{ref} returned {len(returned)} items; expected (x, y) or (x, y, x_val, y_val)")
        arrays = [_array(value, item, ref) for value, item in zip(returned, ITEMS)]
        target = "targets" if options.task == "regression" else "labels"
        names = {
            "x": "inputs x",
            "y": f"{target} y",
            "x_val": "validation inputs x_val",
            "y_val": f"validation {target} y_val",
        }
        try:
            return check_raw(RawData(*arrays), options.task, where=WHERE, names=names)
        except SpecError as err:
            raise SpecError(WHERE, f"{ref} returned unusable data: {err.message}") from None


def _function(options: PythonOptions, base_dir: Path) -> Any:
    """The callable ``options.path`` names; a SpecError at ``data.path`` if there is none."""
    function = import_object(options.path, where=WHERE, base_dir=Path(base_dir))
    if not callable(function):
        raise SpecError(WHERE, f"{options.path} is {_what(function)}, not a function that returns the data")
    return function


def _array(value: Any, item: str, ref: str) -> np.ndarray:
    """One returned item as a NumPy array: an ndarray as it is, a torch tensor (anything with
    ``detach``) copied to the CPU; anything else, or an object array, refused."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        try:
            value = value.detach().cpu().numpy()
        except Exception as err:  # a dtype NumPy lacks (bfloat16), a tensor that is no array
            raise SpecError(
                WHERE, f"{ref} returned {item} as a tensor NumPy cannot hold: {type(err).__name__}: {err}"
            ) from None
    if not isinstance(value, np.ndarray):
        raise SpecError(
            WHERE, f"{ref} returned {item} as {_what(value)}; expected a NumPy array or a torch tensor (np.asarray it)"
        )
    if value.dtype.kind == "O":
        raise SpecError(
            WHERE,
            f"{ref} returned {item} as an object array (dtype object, shape {value.shape}); "
            "expected numbers (or strings as class labels), e.g. np.asarray(a, dtype=float)",
        )
    return value


def _what(value: Any) -> str:
    """A value as a message names it: ``a dict``, ``a list of 3 items``, ``None``."""
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


@hookimpl
def runner_register(registry) -> None:
    """Add the "python" dataset; called once per run when the plugin manager is built."""
    registry.add_dataset(PythonDataset())
