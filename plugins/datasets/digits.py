"""The "digits" dataset: scikit-learn's bundled 8x8 handwritten digits (1797 examples, 64 features).

The data ships inside scikit-learn, so nothing is downloaded. scikit-learn is imported only
when the data is loaded, so listing plugins stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from runner import DataSize, hookimpl
from runner.data import DataOptions, DatasetPlugin, RawData

EXAMPLES, FEATURES, CLASSES = 1797, 64, 10  # the shape of scikit-learn's digits


class DigitsDataset(DatasetPlugin):
    """Pixel intensities 0..16 of 8x8 images, labels 0..9; split and standardized by the core."""

    name: ClassVar[str] = "digits"
    Options: ClassVar[type] = DataOptions

    def load(self, options: DataOptions, *, seed: int, base_dir: Path) -> RawData:
        """Return the 1797 examples in scikit-learn's order.

        Called once per experiment, in the driver, before the first trial. Reads only
        scikit-learn's bundled files and changes nothing; ``seed`` and ``base_dir`` are unused
        (the core's ``prepare`` makes the seeded split).
        """
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return RawData(x=np.asarray(bunch.data, dtype=np.float64), y=np.asarray(bunch.target, dtype=np.int64))

    def estimate(self, options: DataOptions, *, base_dir: Path) -> DataSize:
        """Called when the experiment file is read, before ``load``: the bundled data's fixed
        shape, and scikit-learn's copies of it (the rows, the 8x8 images, ours). Reads nothing."""
        return DataSize(3 * EXAMPLES * FEATURES * 8, EXAMPLES, FEATURES, CLASSES)


@hookimpl
def runner_register(registry) -> None:
    """Add the "digits" dataset; called once per run when the plugin manager is built."""
    registry.add_dataset(DigitsDataset())
