"""The pruner contract: end hopeless trials early, judged in the driver where every curve is.

A pruner is asked about a trial each time one of its epochs ends, with every trial's learning
curve so far (``Curves``). It answers ``Prune(reason, rung=...)`` to end the trial,
``Note("rung", reason, {...})`` to record that it let the trial go on, or None. The answer
travels to the trial as an order, by the path a person's control-file ``stop`` takes (source
``pruner``), so it works the same inline, in worker processes and on Ray; the trial carries it
out at its next step boundary and ends ``pruned``.

A pruner keeps no state of its own: its answer is a function of the curves, which the driver
rebuilds from the event log when a run is resumed, so a resumed run judges as the
uninterrupted one did. A minimal pruner::

    class Threshold(Pruner):
        name = "threshold"

        def judge(self, curves, trial, epoch):
            if epoch == 2 and not curves.is_better(curves.best(trial), 0.5):
                return Prune("below 0.5 after 3 epochs")
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

from runner.backend import NoOptions
from runner.decisions import Note, Prune
from runner.trial import better

__all__ = ["Curves", "Pruner"]


class Curves:
    """Every trial's learning curve as the driver has seen it so far: the experiment's
    metric after each epoch (``search.metric``), and how the trials that ended ended.

    A curve is indexed by epoch (0 is the first). An epoch trained again after a rollback
    replaces its earlier value; a value that is not a finite number counts as no value."""

    def __init__(self, metric: str, mode: Literal["min", "max"]):
        self.metric, self.mode = metric, mode
        self._curves: dict[int, list[float | None]] = {}
        self._ended: dict[int, str] = {}

    def trials(self) -> list[int]:
        """The trials that have reported an epoch, in the order they first did."""
        return list(self._curves)

    def curve(self, trial: int) -> list[float | None]:
        """The trial's value after each epoch so far (a copy)."""
        return list(self._curves.get(trial, ()))

    def epochs(self, trial: int) -> int:
        """How many epochs the trial has reported."""
        return len(self._curves.get(trial, ()))

    def best(self, trial: int, epochs: int | None = None) -> float | None:
        """The trial's best value over its first ``epochs`` epochs (all so far by default);
        None if it has none there."""
        best = None
        for value in self._curves.get(trial, ())[:epochs]:
            if value is not None and better(value, best, self.mode):
                best = value
        return best

    def state(self, trial: int) -> str:
        """``running``, or how the trial ended (``completed``, ``pruned``, ...)."""
        return self._ended.get(trial, "running")

    def is_better(self, a: float | None, b: float | None) -> bool:
        """True when value ``a`` beats ``b`` under the experiment's mode (None beats nothing)."""
        return a is not None and better(a, b, self.mode)

    def record(self, trial: int, epoch: int, metrics: dict[str, Any]) -> None:
        """Called by the driver for each ``epoch_end`` event, before the pruner judges it."""
        curve = self._curves.setdefault(trial, [])
        value = metrics.get(self.metric)
        value = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
        if epoch < len(curve):
            curve[epoch] = value
            return
        curve.extend([None] * (epoch - len(curve)))
        curve.append(value)

    def end(self, trial: int, state: str) -> None:
        """Called by the driver for each ``trial_complete`` event."""
        self._ended[trial] = state


class Pruner(ABC):
    """Base of pruners. Subclass it and register it in ``runner_register`` with
    ``registry.add_pruner(cls)``; an experiment picks it in ``search.pruner``."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions

    def __init__(self, *, options: Any, metric: str, mode: Literal["min", "max"], epochs: int):
        self.options = options
        self.metric, self.mode = metric, mode
        self.epochs = epochs  # train.epochs of the experiment's base config: how long a trial trains

    @classmethod
    def check(cls, options: Any, epochs: int) -> None:
        """Called when the experiment file is read, before anything runs, with ``train.epochs``:
        raise ``SpecError(path, message)`` for options that cannot work with it (say, a
        first rung past the last epoch). Optional."""

    @abstractmethod
    def judge(self, curves: Curves, trial: int, epoch: int) -> Prune | Note | None:
        """Called in the driver each time an epoch of a running trial ends (``epoch`` counts
        from 0; ``curves`` already holds it). Return ``Prune`` to end the trial, a ``Note``
        to record a verdict that lets it go on, or None. Must not change ``curves``, and must
        depend on nothing but its arguments and options (a resumed run asks again)."""
