"""Datasets as the backends see them, and the preparation every dataset plugin shares.

A dataset plugin returns ``RawData`` (inputs and targets as found, optionally with its own
validation split); the core's ``prepare`` turns it into a ``Dataset``, the same way for
every dataset:

- inputs keep their per-example shape: an (N, 2, 20) array reaches the backends as
  (N, 2, 20) (``Dataset.input_shape == (2, 20)``); only a 1-D (N,) array becomes (N, 1),
  one feature per example. A backend that wants flat rows (an MLP) reshapes them itself:
  ``x.reshape(len(x), -1)`` has ``Dataset.n_features`` columns.
- ``task: "classification"`` (the default): labels are encoded as class ids 0..C-1 and,
  when the data has no validation split of its own, split by a seeded, stratified split.
- ``task: "regression"``: targets are finite numbers of shape (N,) or (N, k), kept as
  float64 (no encoding), split by a seeded random split.
- inputs are standardized with statistics of the training split only (``standardize``):
  per feature, per channel, or not at all. Targets are never standardized.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from runner.errors import SpecError, join_path
from runner.experiment_file.limits import DataSize
from runner.experiment_file.typed import bounds

Task = Literal["classification", "regression"]
Standardization = Literal["feature", "channel", "none"]

#: How ``check_raw`` names the four arrays of a ``RawData`` in its messages, by default.
ARRAY_NAMES = {"x": "features", "y": "labels", "x_val": "validation features", "y_val": "validation labels"}


@dataclass(frozen=True)
class RawData:
    """What a dataset plugin's ``load`` returns: the arrays as found.

    ``x``: the inputs, one example per entry of the first axis: shape (N, ...) of any rank
    of at least 1, numbers (integers or floats). A 1-D (N,) array is one feature per example.

    ``y``: the targets, one per example. For ``task: "classification"``, labels of shape
    (N,) (or a single column (N, 1)), numbers or strings: any values, encoded by ``prepare``.
    For ``task: "regression"``, numbers of shape (N,) or (N, k).

    ``x_val``, ``y_val``: the data's own validation split, both or neither; inputs of the
    same per-example shape as ``x``, targets like ``y``. None (the default): ``prepare``
    holds out ``val_fraction`` of the examples instead.
    """

    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None


@dataclass(frozen=True)
class Dataset:
    """Prepared data shared by every trial of an experiment (read-only for backends).

    ``name``: the dataset plugin's name.

    ``x_train``, ``x_val``: float64 inputs of the training and validation splits, C-contiguous,
    of shape (m, *input_shape) with the per-example shape the dataset gave (at least one
    axis: a 1-D dataset becomes (m, 1)), standardized as ``standardize`` says.

    ``y_train``, ``y_val``: classification: int64 class ids 0..C-1, shape (m,) (class id
    ``i`` is the label ``classes[i]``); regression: float64 targets of shape (m,) or (m, k),
    as the dataset gave them.

    ``classes``: the labels as found, as strings, in the order of their ids (sorted as
    NumPy sorts them: numbers by value); () for regression.

    ``task``: ``"classification"`` or ``"regression"``, as the ``data`` section's ``task``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    classes: tuple[str, ...]
    task: Task = "classification"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example's inputs: ``x_train.shape[1:]``, such as (64,) or (1, 8, 8)."""
        return tuple(int(n) for n in self.x_train.shape[1:])

    @property
    def n_features(self) -> int:
        """Inputs per example, all axes flattened: ``prod(input_shape)`` (what an MLP sees)."""
        return int(np.prod(self.input_shape, dtype=np.int64))

    @property
    def n_classes(self) -> int:
        """Number of classes (``len(classes)``); 0 for regression."""
        return len(self.classes)

    @property
    def n_targets(self) -> int:
        """Outputs a model needs: the number of classes for classification; for regression
        1 for targets of shape (m,), k for (m, k)."""
        if self.task == "regression":
            return 1 if self.y_train.ndim == 1 else int(self.y_train.shape[1])
        return self.n_classes


@dataclass(frozen=True)
class DataOptions:
    """Options every dataset accepts (the ``data`` section besides ``name``); a dataset's own
    ``Options`` subclass this.

    ``val_fraction``: the share of examples held out for validation when the data has no
    validation split of its own (stratified by class for classification, at random for
    regression; seeded by the experiment's ``seed``).

    ``standardize``: how inputs are scaled to mean 0 and variance 1, with the training
    split's statistics only. ``true`` or ``"feature"``: one mean and standard deviation for
    each element of the per-example shape, over the examples. ``"channel"``: one per channel
    of inputs shaped (N, C, L, ...), over the examples and every axis after the channel axis
    (axis 1); inputs need at least three axes, (N, C, L), else a SpecError at
    ``data.standardize``. ``false`` or ``"none"``: inputs as found. A feature or channel
    constant in the training split becomes exactly 0 in both splits.

    ``task``: ``"classification"`` (labels encoded as class ids) or ``"regression"``
    (numeric targets kept as they are). The backend must list the task in its ``tasks``.
    """

    val_fraction: float = field(
        default=0.2,
        metadata=bounds(
            gt=0, lt=1, doc="share of examples held out for validation when the data has no validation split of its own"
        ),
    )
    standardize: bool | Standardization = field(
        default=True,
        metadata=bounds(
            doc='scale inputs to mean 0, variance 1 with training statistics: true or "feature" per input element, '
            '"channel" per channel (axis 1) of (N, C, L, ...) inputs, false or "none" not at all'
        ),
    )
    task: Task = field(
        default="classification",
        metadata=bounds(
            doc='"classification": labels encoded as class ids, stratified split; '
            '"regression": numeric targets of shape (N,) or (N, k) kept as floats, random split'
        ),
    )

    @property
    def standardization(self) -> Standardization:
        """``standardize`` with the booleans spelled out: ``"feature"``, ``"channel"`` or ``"none"``."""
        return standardize_mode(self.standardize)


class DatasetPlugin(ABC):
    """Base of dataset plugins: a ``name``, an ``Options`` dataclass and ``load``.

    ``load`` is called once per experiment, in the driver, before the first trial.
    ``base_dir`` is the folder of the experiment file, for resolving relative paths.
    """

    name: ClassVar[str]
    Options: ClassVar[type] = DataOptions

    @abstractmethod
    def load(self, options: Any, *, seed: int, base_dir: Path) -> RawData:
        """Read or generate the examples; raise SpecError (path ``data...``) on bad input."""

    def estimate(self, options: Any, *, base_dir: Path) -> DataSize | None:
        """Called when an experiment file is read, before ``load``: how big the data will be,
        from ``options`` alone (a file's size or headers at most: nothing is loaded or
        generated). The runner refuses the experiment when loading it, or a trial's model
        for it, is over the file's ``limits``; raise SpecError (path ``data...``) for bad
        input found on the way. None (the default): no estimate, nothing is checked."""
        return None


def prepare(name: str, raw: RawData, options: DataOptions, *, seed: int, path: str = "data") -> Dataset:
    """Check the arrays, encode labels (classification), split (seeded: stratified for
    classification, at random for regression) and standardize: the same for every dataset.

    Called by the runner once per experiment, in the driver, on what the dataset plugin's
    ``load`` returned. Changes nothing it is given. Raises SpecError at ``path`` (at
    ``<path>.standardize`` for a standardization the inputs cannot have).
    """
    task = getattr(options, "task", "classification")
    mode = standardize_mode(getattr(options, "standardize", True))
    raw = check_raw(raw, task, where=path)
    x, y = raw.x, raw.y
    if mode == "channel" and x.ndim < 3:
        raise SpecError(
            join_path(path, "standardize"),
            f'"channel" needs inputs of shape (N, C, L, ...), channels on axis 1 and at least one axis after '
            f'them; these have shape {_shape(x.shape)}; use "feature" (or true) to standardize each feature',
        )
    if task == "regression":
        classes: tuple[str, ...] = ()
        if raw.x_val is None:
            train_idx, val_idx = random_split(len(x), options.val_fraction, seed)
            x_train, y_train, x_val, y_val = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
        else:
            x_train, y_train, x_val, y_val = x, y, raw.x_val, raw.y_val
    else:
        if raw.x_val is not None:
            found, codes = np.unique(np.concatenate([y, raw.y_val]), return_inverse=True)
            codes = codes.reshape(-1)
            x_train, y_train, x_val, y_val = x, codes[: len(x)], raw.x_val, codes[len(x) :]
        else:
            found, codes = np.unique(y, return_inverse=True)
            codes = codes.reshape(-1)
            train_idx, val_idx = stratified_split(codes, options.val_fraction, seed)
            x_train, y_train, x_val, y_val = x[train_idx], codes[train_idx], x[val_idx], codes[val_idx]
        if len(found) < 2:
            raise SpecError(path, f"needs at least 2 classes, found {len(found)}")
        classes = tuple(str(c) for c in found)
        y_train, y_val = y_train.astype(np.int64), y_val.astype(np.int64)
    if len(x_train) == 0 or len(x_val) == 0:
        raise SpecError(path, "the training or validation split is empty")
    if mode != "none":
        x_train, x_val = standardize(x_train, x_val, per=mode)
    return Dataset(
        name=name,
        x_train=np.ascontiguousarray(x_train, dtype=np.float64),
        y_train=np.ascontiguousarray(y_train),
        x_val=np.ascontiguousarray(x_val, dtype=np.float64),
        y_val=np.ascontiguousarray(y_val),
        classes=classes,
        task=task,
    )


def standardize_mode(value: bool | str) -> Standardization:
    """The ``standardize`` option with the booleans spelled out: true is ``"feature"``,
    false is ``"none"``; the strings as they are."""
    if value is True:
        return "feature"
    if value is False:
        return "none"
    return value  # type: ignore[return-value]


def check_raw(
    raw: RawData, task: str = "classification", *, where: str = "data", names: Mapping[str, str] | None = None
) -> RawData:
    """``raw`` checked and put in the form ``prepare`` works on: inputs float64 of shape
    (N, ...) (a 1-D array becomes (N, 1)); labels 1-D (an (N, 1) column flattened) for
    classification; targets float64 of shape (N,) or (N, k) for regression.

    ``prepare`` calls it; a dataset plugin may call it too, to refuse bad arrays at its own
    option (``where``, such as ``data.path``) with its own names for them (``names``: how
    messages call ``x``, ``y``, ``x_val``, ``y_val``; default features, labels, ...). Raises
    SpecError at ``where`` naming the array and what is wrong: no examples, not numbers,
    NaN or infinite values, lengths or per-example shapes that differ, a validation split
    with only one of its two arrays. Copies; changes nothing it is given.
    """
    if task not in ("classification", "regression"):
        raise ValueError(f'task must be "classification" or "regression", got {task!r}')
    named = dict(ARRAY_NAMES)
    if task == "regression":
        named.update(y="targets", y_val="validation targets")
    named.update(names or {})
    targets = _targets if task == "regression" else _labels
    x = _features(raw.x, named["x"], where)
    y = targets(raw.y, named["y"], where)
    _same_length(x, y, named["x"], named["y"], where)
    if raw.x_val is None and raw.y_val is None:
        return RawData(x=x, y=y)
    if raw.x_val is None or raw.y_val is None:
        given, missing = ("x_val", "y_val") if raw.y_val is None else ("y_val", "x_val")
        raise SpecError(where, f"{named[given]} given without {named[missing]}: a validation split needs both")
    x_val = _features(raw.x_val, named["x_val"], where)
    y_val = targets(raw.y_val, named["y_val"], where)
    _same_length(x_val, y_val, named["x_val"], named["y_val"], where)
    if x_val.shape[1:] != x.shape[1:]:
        raise SpecError(
            where,
            f"{named['x_val']} have examples of shape {_shape(x_val.shape[1:])} but {named['x']} "
            f"{_shape(x.shape[1:])}; each example needs the same shape",
        )
    if task == "regression" and y_val.shape[1:] != y.shape[1:]:
        raise SpecError(
            where,
            f"{named['y_val']} have shape {_shape(y_val.shape)} but {named['y']} {_shape(y.shape)}; "
            "each example needs as many targets",
        )
    if task == "classification" and (y.dtype.kind == "U") != (y_val.dtype.kind == "U"):
        kind = {True: "strings", False: "numbers"}
        raise SpecError(
            where,
            f"{named['y_val']} are {kind[y_val.dtype.kind == 'U']} but {named['y']} are {kind[y.dtype.kind == 'U']}; "
            "both must be of one kind",
        )
    return RawData(x=x, y=y, x_val=x_val, y_val=y_val)


def stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): each class contributes ``val_fraction`` of its examples to val.

    Every class with at least two examples keeps one in each split. Seeded, so the same
    seed always gives the same split.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = round(len(idx) * val_fraction)
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return rng.permutation(np.concatenate(train)), np.sort(np.concatenate(val))


def random_split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of ``n`` examples: ``val_fraction`` of them, drawn at random, to
    val (rounded; at least one in each split when ``n`` >= 2). Train comes shuffled, val
    sorted. Seeded, so the same seed always gives the same split."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(n)
    n_val = round(n * val_fraction)
    if n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    return idx[n_val:], np.sort(idx[:n_val])


def standardize(
    x_train: np.ndarray, x_val: np.ndarray, per: Literal["feature", "channel"] = "feature"
) -> tuple[np.ndarray, np.ndarray]:
    """Scale to mean 0 and variance 1 with the training split's statistics; new arrays.

    ``per="feature"``: a mean and standard deviation for each element of the per-example
    shape (over axis 0). ``per="channel"``: one for each channel of (N, C, L, ...) inputs
    (over axis 0 and every axis after axis 1). Features or channels constant in the
    training split become exactly 0 in both splits (their computed standard deviation may
    be a rounding error rather than 0).
    """
    if per == "feature":
        axes: tuple[int, ...] = (0,)
    elif per == "channel" and x_train.ndim >= 3:
        axes = (0, *range(2, x_train.ndim))
    else:
        raise ValueError(f'per must be "feature" or "channel" (inputs of 3 or more axes), got {per!r}')
    mean = x_train.mean(axis=axes, keepdims=True)
    std = x_train.std(axis=axes, keepdims=True)
    constant = np.ptp(x_train, axis=axes, keepdims=True) == 0
    std[constant] = 1.0
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    if constant.any():
        x_train[np.broadcast_to(constant, x_train.shape)] = 0.0
        x_val[np.broadcast_to(constant, x_val.shape)] = 0.0
    return x_train, x_val


def _features(x: Any, name: str, where: str) -> np.ndarray:
    """Inputs as float64 of shape (N, ...), a 1-D array as (N, 1)."""
    x = np.asarray(x)
    if x.ndim == 0:
        raise SpecError(where, f"{name} must hold one example per entry of the first axis, got a single value")
    if len(x) == 0:
        raise SpecError(where, f"{name} are empty: no examples")
    if x.ndim == 1:
        x = x[:, None]
    if 0 in x.shape[1:]:
        raise SpecError(where, f"{name} have no values per example (shape {_shape(x.shape)}): each needs at least one")
    if x.dtype.kind not in "iuf":
        raise SpecError(where, f"{name} must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float64)
    _finite(x, name, where)
    return x


def _labels(y: Any, name: str, where: str) -> np.ndarray:
    """Class labels as a 1-D array of numbers or str: a single column (n, 1) is flattened."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise SpecError(where, f"{name} must be one label per example (shape (n,)), got shape {_shape(y.shape)}")
    if y.dtype.kind == "S":
        try:
            y = np.char.decode(y, "utf-8")
        except UnicodeDecodeError as err:
            raise SpecError(where, f"{name} hold bytes that are not UTF-8 text: {err}") from None
    if y.dtype.kind not in "biufU":
        raise SpecError(where, f"{name} must be numbers or strings, got dtype {y.dtype}")
    if y.dtype.kind == "f":
        _finite(y, name, where)
    return y


def _targets(y: Any, name: str, where: str) -> np.ndarray:
    """Regression targets as float64 of shape (n,) or (n, k)."""
    y = np.asarray(y)
    if y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] == 0):
        raise SpecError(where, f"{name} must have shape (n,) or (n, k), got shape {_shape(y.shape)}")
    if y.dtype.kind not in "iuf":
        raise SpecError(where, f'{name} must be numbers for task "regression", got dtype {y.dtype}')
    y = y.astype(np.float64)
    _finite(y, name, where)
    return y


def _finite(a: np.ndarray, name: str, where: str) -> None:
    bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
    if bad.any():
        raise SpecError(where, f"{name} contain NaN or infinite values (first in example {int(np.argmax(bad))})")


def _same_length(x: np.ndarray, y: np.ndarray, x_name: str, y_name: str, where: str) -> None:
    if len(x) != len(y):
        raise SpecError(where, f"{x_name} have {len(x)} examples but {y_name} {len(y)}; they must match one to one")


def _shape(shape: tuple[int, ...]) -> str:
    """A shape as Python writes it: ``(3,)``, ``(2, 20)``."""
    return str(tuple(int(n) for n in shape))
