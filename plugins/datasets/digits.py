"""The "digits" dataset: scikit-learn's bundled 8x8 handwritten digits (1797 examples, 64 features).

The data ships inside scikit-learn, so nothing is downloaded. scikit-learn is imported only
when the data is loaded, so listing plugins stays fast. ``shape`` picks the layout of each
example: 64 values in a row (``"flat"``, for an MLP) or one 8x8 image channel
(``"image"``: inputs of shape (1797, 1, 8, 8), for a CNN).
"""

from __future__ import annotations

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
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = np.asarray(bunch.data, dtype=np.float64)
        if options.shape == "image":
            x = x.reshape(len(x), *IMAGE)
        return RawData(x=x, y=np.asarray(bunch.target, dtype=np.int64))

    def estimate(self, options: DigitsOptions, *, base_dir: Path) -> DataSize:
        """Called when the experiment file is read, before ``load``: the bundled data's fixed
        shape (64 input values per example in either layout), and scikit-learn's copies of
        it (the rows, the 8x8 images, ours). Reads nothing."""
        return DataSize(3 * EXAMPLES * FEATURES * 8, EXAMPLES, FEATURES, CLASSES)


@hookimpl
def runner_register(registry) -> None:
    """Add the "digits" dataset; called once per run when the plugin manager is built."""
    registry.add_dataset(DigitsDataset())
