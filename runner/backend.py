"""The backend contract: one trial's model, its optimizer and its data order.

The loop drives a backend like a textbook training loop::

    backend = Backend(model=..., train=..., options=..., data=dataset, seed=trial_seed)
    for epoch in range(train.epochs):
        backend.begin_epoch(epoch)
        for _ in range(backend.steps_per_epoch):
            loss = backend.train_step()
        metrics = backend.evaluate("val")

A backend declares its config sections as frozen dataclasses (see ``runner.experiment_file.typed``): the
``model`` section, the ``train`` section (a subclass of ``TrainConfig``) and the options of
the ``backend`` section. The runner validates an experiment file against them before
anything runs, with errors that name the JSON path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from runner.data import Dataset
from runner.experiment_file.limits import ModelSize
from runner.experiment_file.typed import bounds


@dataclass(frozen=True)
class TrainConfig:
    """The part of the ``train`` section the loop itself reads. Backends subclass it."""

    epochs: int = field(metadata=bounds(ge=1, doc="passes over the training split"))


@dataclass(frozen=True)
class NoOptions:
    """For a backend (or any plugin) that takes no options."""


@dataclass
class BackendState:
    """Everything needed to continue a trial bit for bit.

    ``arrays`` holds numeric arrays (parameters, optimizer moments, running statistics,
    the data permutation) of dtypes a snapshot file stores: booleans, integers and 16-, 32-
    and 64-bit floats (complex numbers or text make every snapshot fail); ``meta`` holds
    JSON-safe values (counters, RNG state with big integers as strings, hyperparameters in
    force). Nothing in it needs pickle to store.
    ``state()`` must return copies, so that training on does not change a saved state.
    """

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]


def dead_fraction(outputs: Any) -> float:
    """The fraction of units whose output is the same (to within 1e-6) for every example of
    ``outputs``: a NumPy array or a torch tensor of a layer's outputs, examples along the
    first axis and units (features, or channels for an image) along the second; the other
    axes (positions in an image) count as more examples. 0.0 with fewer than two examples."""
    if outputs.ndim < 2 or outputs.shape[0] < 2:
        return 0.0
    if outputs.ndim > 2:  # (examples, units, positions...) -> (examples and positions, units)
        outputs = outputs.swapaxes(1, -1).reshape(-1, outputs.shape[1])
    if isinstance(outputs, np.ndarray):
        spread = outputs.max(axis=0) - outputs.min(axis=0)
        return float((spread <= 1e-6).mean())
    spread = outputs.amax(dim=0) - outputs.amin(dim=0)  # a torch tensor: counted where it lives
    return float((spread <= 1e-6).float().mean().item())


class Backend(ABC):
    """One trial's trainable model. Subclass it and register it in ``runner_register``."""

    name: ClassVar[str]
    Model: ClassVar[type]
    Train: ClassVar[type] = TrainConfig
    Options: ClassVar[type] = NoOptions
    #: Hyperparameters that ``set_hyperparameters`` accepts between any two steps.
    live: ClassVar[tuple[str, ...]] = ("lr", "momentum")
    #: What ``evaluate`` reports; the loop logs them as ``val_<name>``.
    metrics: ClassVar[tuple[str, ...]] = ("loss", "acc")
    #: The data tasks this backend trains (the ``data`` section's ``task``: "classification",
    #: "regression"); an experiment whose data has another task is refused at ``data.task``.
    tasks: ClassVar[tuple[str, ...]] = ("classification",)

    @abstractmethod
    def __init__(self, *, model: Any, train: Any, options: Any, data: Dataset, seed: int) -> None:
        """Build the model with seeded initial weights; move ``data`` where it trains."""

    @classmethod
    def for_model(cls, model: Mapping[str, Any]) -> type[Backend]:
        """Called when an experiment file is read, with its ``model`` section as written: the
        backend class that trains it. A backend that trains more than one kind of model
        returns the class for each (the built-in ``torch`` backend: its own MLP, or a
        person's ``torch.nn.Module`` when the section has a ``class_path``); that class
        declares the ``Model``/``Train`` sections, ``live`` and ``metrics`` the run uses.
        Default: this class."""
        return cls

    @classmethod
    def metrics_for(cls, task: str) -> tuple[str, ...]:
        """What ``evaluate`` reports when the data's task is ``task`` (``"classification"`` or
        ``"regression"``, from the ``data`` section). Default: ``metrics``."""
        return cls.metrics

    @classmethod
    def estimate(
        cls, *, model: Any, train: Any, options: Any, examples: int, features: int, classes: int
    ) -> ModelSize | None:
        """Called when an experiment file is read, for the largest trials its search space
        can make, and again once the data are loaded, before any model is built: the size
        of one trial with these ``model``/``train``/``options`` sections, on data of
        ``examples`` rows of ``features`` inputs in ``classes`` classes (lower bounds while
        the data's shape is not known). Must be quick and allocate nothing: the runner
        refuses the experiment when it is over the file's ``limits``. None (the default):
        no estimate, nothing is checked."""
        return None

    @property
    @abstractmethod
    def steps_per_epoch(self) -> int:
        """Number of ``train_step`` calls that make one pass over the training split."""

    @abstractmethod
    def begin_epoch(self, epoch: int) -> None:
        """Called before an epoch's first step: reshuffle, apply the learning-rate schedule."""

    @abstractmethod
    def train_step(self) -> float | None:
        """Train on the next mini-batch; return its loss (before the update). A backend on a
        GPU may return an earlier step's loss, or None, so as not to wait for the device
        every step; it then hands the rest over in ``pending_losses``. Raise RuntimeError
        when no epoch is begun or the epoch's ``steps_per_epoch`` steps are used up: the
        loop calls ``begin_epoch`` first, and a silent extra step would break resume."""

    def pending_losses(self) -> list[float]:
        """Called at the end of an epoch and before a mid-epoch snapshot: the losses of steps
        ``train_step`` has not returned yet, oldest first. Empty for a backend that returns
        each step's loss at once (the default)."""
        return []

    @abstractmethod
    def evaluate(self, split: Literal["train", "val"]) -> dict[str, float]:
        """Metrics over a whole split in evaluation mode: every name of
        ``metrics_for(data.task)`` (``loss`` and ``acc`` for classification), ``loss`` first."""

    def dead_units(self) -> dict[str, float] | None:
        """Called after each epoch's evaluation while ``divergence.collapse`` is on: for each
        hidden layer (named as the backend likes), the fraction of its units that are dead,
        giving the same output for every example of the validation split (a ReLU that never
        fires, a saturated tanh); ``dead_fraction`` below is a ready way to count them. A
        layer that is nearly all dead is a collapse (``runner.engine.collapse``). Changes
        nothing; should cost no more than an evaluation. None (the default): the backend
        cannot tell."""
        return None

    @abstractmethod
    def hyperparameters(self) -> dict[str, float]:
        """The values in force of every name in ``live`` (``lr`` after any schedule's decay)."""

    @abstractmethod
    def set_hyperparameters(self, **values: float) -> None:
        """Change live hyperparameters from the next ``train_step`` on: ``lr`` is the rate in
        force from now (a schedule decays on from it). Raise ValueError, and apply nothing,
        for a name not in ``live``, a value that is not a finite number, and anything else
        the backend refuses. The loop checks names and the ``Train`` bounds before it calls,
        but scripts and tests call a backend directly, so the backend checks too (the
        conformance suite holds it to this)."""

    @abstractmethod
    def reshuffle(self, salt: int) -> None:
        """Called after a rollback: draw the data order from now on (including what is
        left of the current epoch) from a stream mixed with ``salt``, so the batches that
        blew up are not replayed in the same order. Deterministic: the same state and salt
        give the same order, and the new stream is part of ``state()``."""

    @abstractmethod
    def state(self) -> BackendState:
        """A copy of everything needed to continue bit for bit."""

    @abstractmethod
    def load_state(self, state: BackendState) -> None:
        """Restore a ``state()`` of a backend built with the same config and data; the next
        step is the one that followed it. Raise ValueError for a state that does not fit.
        Bit-for-bit continuation holds on the same machine and library versions."""
