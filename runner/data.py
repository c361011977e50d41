"""Datasets as the backends see them, and the preparation every dataset plugin shares.

A dataset plugin returns ``RawData`` (features and labels as found, optionally with its own
validation split); the core turns it into a ``Dataset``: labels encoded as class ids 0..C-1,
a seeded, stratified train/validation split when none was given, and inputs standardized
with statistics of the training split only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from runner.errors import SpecError
from runner.limits import DataSize
from runner.typed import bounds


@dataclass(frozen=True)
class RawData:
    """What a dataset plugin's ``load`` returns: arrays as found, labels of any kind."""

    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None


@dataclass(frozen=True)
class Dataset:
    """Prepared data shared by every trial of an experiment (read-only for backends)."""

    name: str
    x_train: np.ndarray  # float64, shape (m_train, n_features), standardized
    y_train: np.ndarray  # int64 class ids, shape (m_train,)
    x_val: np.ndarray
    y_val: np.ndarray
    classes: tuple[str, ...]

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class DataOptions:
    """Options every dataset accepts; a dataset's own ``Options`` subclass this."""

    val_fraction: float = field(
        default=0.2,
        metadata=bounds(
            gt=0, lt=1, doc="share of examples held out for validation when the data has no validation split of its own"
        ),
    )
    standardize: bool = field(
        default=True, metadata=bounds(doc="scale inputs to mean 0, variance 1 using training statistics only")
    )


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
    """Encode labels, split (seeded, stratified) and standardize: the same for every dataset."""
    x = _features(raw.x, f"{path}: features")
    y = _labels(raw.y, f"{path}: labels")
    if len(x) != len(y):
        raise SpecError(path, f"features have {len(x)} rows but labels have {len(y)}")
    if raw.x_val is not None:
        x_val = _features(raw.x_val, f"{path}: validation features")
        y_val = None if raw.y_val is None else _labels(raw.y_val, f"{path}: validation labels")
        if y_val is None or len(x_val) != len(y_val):
            raise SpecError(path, "validation features and labels differ in length")
        if x_val.shape[1] != x.shape[1]:
            raise SpecError(path, f"validation data has {x_val.shape[1]} features, training data {x.shape[1]}")
        classes, codes = np.unique(np.concatenate([y, y_val]), return_inverse=True)
        y, y_val = codes[: len(x)], codes[len(x) :]
        x_train, y_train = x, y
    else:
        classes, y = np.unique(y, return_inverse=True)
        train_idx, val_idx = stratified_split(y, options.val_fraction, seed)
        x_train, y_train, x_val, y_val = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
    if len(classes) < 2:
        raise SpecError(path, f"needs at least 2 classes, found {len(classes)}")
    if len(x_train) == 0 or len(x_val) == 0:
        raise SpecError(path, "the training or validation split is empty")
    if options.standardize:
        x_train, x_val = standardize(x_train, x_val)
    return Dataset(
        name=name,
        x_train=np.ascontiguousarray(x_train, dtype=np.float64),
        y_train=y_train.astype(np.int64),
        x_val=np.ascontiguousarray(x_val, dtype=np.float64),
        y_val=y_val.astype(np.int64),
        classes=tuple(str(c) for c in classes),
    )


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


def standardize(x_train: np.ndarray, x_val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale to mean 0 and variance 1 with the training split's statistics.

    Columns constant in the training split become exactly 0 in both splits (their computed
    standard deviation may be a rounding error rather than 0).
    """
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    constant = np.ptp(x_train, axis=0) == 0
    std[constant] = 1.0
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    x_train[:, constant] = 0.0
    x_val[:, constant] = 0.0
    return x_train, x_val


def _features(x: np.ndarray, where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 0 or len(x) == 0:
        raise SpecError(where, "are empty: no examples")
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        x = x.reshape(len(x), -1)
    if x.shape[1] == 0:
        raise SpecError(where, "have no columns: each example needs at least one feature")
    if not np.issubdtype(x.dtype, np.number):
        raise SpecError(where, f"must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise SpecError(where, "contain NaN or infinite values")
    return x


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    """Labels as a 1-D array: a single column (n, 1) is flattened, other shapes refused."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise SpecError(where, f"must be one label per example (shape (n,)), got shape {y.shape}")
    return y
