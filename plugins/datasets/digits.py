"""The "digits" dataset: scikit-learn's bundled 8x8 handwritten digits (1797 examples, 64 features).

The data ships inside scikit-learn, so nothing is downloaded. Its bundled file is read
directly (``digits.csv.gz``, found without importing scikit-learn, whose import takes most
of a second: a good part of ``runner start``'s time to its first step), exactly as
``sklearn.datasets.load_digits`` reads it; where that file is not found, ``load_digits`` is
used. ``shape`` picks the layout of each
example: 64 values in a row (``"flat"``, for an MLP) or one 8x8 image channel
(``"image"``: inputs of shape (1797, 1, 8, 8), for a CNN).
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from runner import DataOptions, DatasetPlugin, DataSize, RawData, bounds, hookimpl

EXAMPLES, FEATURES, CLASSES = 1797, 64, 10  # the shape of scikit-learn's digits
IMAGE = (1, 8, 8)  # one example with shape "image": (channels, height, width)


@dataclass(frozen=True)
class DigitsOptions(DataOptions):
    """How each example is laid out, besides the split and standardization every dataset has."""

    shape: Literal["flat", "image"] = field(
        default="flat",
        metadata=bounds(doc='"flat": 64 pixel values per example; "image": one 8x8 channel, shape (1, 8, 8)'),
    )


class DigitsDataset(DatasetPlugin):
    """Pixel intensities 0..16 of 8x8 images, labels 0..9; split and standardized by the core."""

    name: ClassVar[str] = "digits"
    Options: ClassVar[type] = DigitsOptions

    def load(self, options: DigitsOptions, *, seed: int, base_dir: Path) -> RawData:
        """Return the 1797 examples in scikit-learn's order: inputs of shape (1797, 64), or
        (1797, 1, 8, 8) with ``shape: "image"`` (the same pixels, row by row).

        Called once per experiment, in the driver, before the first trial. Reads only
        scikit-learn's bundled files and changes nothing; ``seed`` and ``base_dir`` are unused
        (the core's ``prepare`` makes the seeded split).
        """
        x, y = read_digits()
        if options.shape == "image":
            x = x.reshape(len(x), *IMAGE)
        return RawData(x=x, y=y)

    def estimate(self, options: DigitsOptions, *, base_dir: Path) -> DataSize:
        """Called when the experiment file is read, before ``load``: the bundled data's fixed
        shape (64 input values per example in either layout), and scikit-learn's copies of
        it (the rows, the 8x8 images, ours). Reads nothing."""
        return DataSize(3 * EXAMPLES * FEATURES * 8, EXAMPLES, FEATURES, CLASSES)


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """The (1797, 64) float64 pixels and the int64 labels, from scikit-learn's bundled file
    as ``load_digits`` parses it (comma-separated rows, the label last), or from
    ``load_digits`` itself where the file is not where scikit-learn keeps it."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    folders = spec.submodule_search_locations if spec is not None else None
    bundled = Path(next(iter(folders)), "datasets", "data", "digits.csv.gz") if folders else None
    if bundled is not None and bundled.is_file():
        with gzip.open(bundled) as rows:
            table = np.loadtxt(rows, delimiter=",")
        if table.shape == (EXAMPLES, FEATURES + 1):  # else the file changed: let scikit-learn read it
            return np.ascontiguousarray(table[:, :-1], dtype=np.float64), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)


@hookimpl
def runner_register(registry) -> None:
    """Add the "digits" dataset; called once per run when the plugin manager is built."""
    registry.add_dataset(DigitsDataset())
