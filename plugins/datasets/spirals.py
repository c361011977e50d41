"""The "spirals" dataset: K interleaved spiral arms in the plane, for fast tests.

The classic CS231n construction: arm ``j`` holds ``points_per_class`` points whose radius
grows evenly from 0 to 1 while the angle sweeps 4 radians, with Gaussian noise of standard
deviation ``noise`` added to the angle. The arms start at angles evenly offset by 2*pi/K so
that any number of classes is spread around the circle. Not linearly separable, so a
network with a hidden layer does visibly better than a linear model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from runner import DataOptions, DatasetPlugin, DataSize, RawData, bounds, hookimpl

SWEEP = 4.0  # radians each arm turns from centre to rim, as in CS231n


@dataclass(frozen=True)
class SpiralsOptions(DataOptions):
    """The shape of the generated spirals, besides the split and standardization every dataset has."""

    classes: int = field(default=3, metadata=bounds(ge=2, doc="number of spiral arms, one class each"))
    points_per_class: int = field(default=100, metadata=bounds(ge=2, doc="points generated along each arm"))
    noise: float = field(
        default=0.2,
        metadata=bounds(ge=0, doc="standard deviation of the Gaussian noise added to each point's angle, in radians"),
    )


def make_spirals(classes: int, points_per_class: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (classes * points_per_class, 2) and int64 labels; the same seed gives the same points."""
    rng = np.random.default_rng(seed)
    n = points_per_class
    radius = np.linspace(0.0, 1.0, n)
    xs, ys = [], []
    for j in range(classes):
        start = 2.0 * math.pi * j / classes
        theta = np.linspace(start, start + SWEEP, n) + rng.normal(0.0, 1.0, n) * noise
        xs.append(np.column_stack([radius * np.sin(theta), radius * np.cos(theta)]))
        ys.append(np.full(n, j, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


class SpiralsDataset(DatasetPlugin):
    """Synthetic 2-D spirals; labels 0..classes-1."""

    name: ClassVar[str] = "spirals"
    Options: ClassVar[type] = SpiralsOptions

    def load(self, options: SpiralsOptions, *, seed: int, base_dir: Path) -> RawData:
        """Generate the points from ``seed`` (the same seed, the same data).

        Called once per experiment, in the driver, before the first trial. Reads and writes
        nothing; ``base_dir`` is unused.
        """
        x, y = make_spirals(options.classes, options.points_per_class, options.noise, seed)
        return RawData(x=x, y=y)

    def estimate(self, options: SpiralsOptions, *, base_dir: Path) -> DataSize:
        """Called when the experiment file is read, before ``load``: the shape the options
        ask for and the bytes ``make_spirals`` allocates for it (each arm's points and
        labels, then their concatenation). Generates nothing."""
        examples = options.classes * options.points_per_class
        per_example = 2 * (2 * 8 + 8)  # two float64 coordinates and an int64 label, per arm and concatenated
        per_arm = 4 * options.points_per_class * 8  # radius, angles, noise, one arm's coordinates
        detail = f"{options.classes:,} arms of {options.points_per_class:,} points"
        return DataSize(examples * per_example + per_arm, examples, 2, options.classes, detail)


@hookimpl
def runner_register(registry) -> None:
    """Add the "spirals" dataset; called once per run when the plugin manager is built."""
    registry.add_dataset(SpiralsDataset())
