"""The strategy contract: ask for the next trial's parameters, told how trials ended.

A strategy's progress is derived from the ``History`` it is given, never kept only in
memory, so a resumed run rebuilds it from the event log (Optuna's samplers work the same
way). A strategy that tunes trials while they train also hands each one a ``Babysitter``
(see ``runner.babysitter``). A minimal strategy::

    class Fixed(Strategy):
        name = "fixed"

        def ask(self, history):
            return {} if len(history) < 3 else None   # three trials of the base config
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from runner.babysitter import Babysitter
from runner.backend import NoOptions
from runner.decisions import Decision, Note
from runner.experiment_file.space import Space
from runner.history import History
from runner.trial import Trial, TrialResult, better

TRIAL_STREAM = 0  # spawn key of the streams that seed trials (weights, data order)
STRATEGY_STREAM = 1  # spawn key of strategies' random streams


@dataclass(frozen=True)
class Continue:
    """What ``Strategy.ask`` returns to continue a suspended trial (``history.waiting``) from
    the snapshot it was suspended with: ``decisions`` are carried out first, in order, as
    orders with source ``strategy`` (population-based training: ``Rollback(epoch, trial=donor)``
    then ``Nudge(...)``); ``reason`` goes into the ``trial_continue`` event."""

    trial: int
    decisions: tuple[Decision, ...] = ()
    reason: str = ""


class Strategy(ABC):
    """Base of search strategies. Subclass it and register it in ``runner_register``."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions

    def __init__(self, *, space: Space, options: Any, seed: int, metric: str, mode: Literal["min", "max"]):
        self.space = space
        self.options = options
        self.seed = seed
        self.metric = metric
        self.mode = mode
        self.notes: list[dict[str, Any]] = []  # what note() recorded, in order
        self.write_note: Callable[[dict[str, Any]], None] | None = None  # set by the driver: into the event log

    @classmethod
    def check(cls, space: Space, options: Any, metrics: tuple[str, ...]) -> None:
        """Called when the experiment file is read, before anything runs, with the metrics
        the backend reports (``train_loss``, ``val_loss``, ...): raise ``SpecError(path,
        message)`` for a search this strategy cannot run (say, a space where it needs
        none). Optional."""

    @abstractmethod
    def ask(self, history: History) -> dict[str, Any] | Continue | None:
        """Parameters of the next trial (dotted path -> value), a ``Continue`` for a
        suspended trial, or None.

        None means "nothing to ask now": the run ends once no trial is running either, so
        a strategy that waits for running trials (a round-based one) returns None until
        they finish; a trial still suspended then ends ``stopped``. Called in the driver
        whenever an executor has room for a trial.
        """

    def tell(self, history: History, result: TrialResult) -> None:
        """Called in the driver after each trial ends (``history`` already holds it), and
        replayed in order for finished trials when a run is resumed. Optional."""

    def babysitter(self, trial: Trial) -> Babysitter | None:
        """A babysitter for ``trial``, to act inside it while it trains, or None (the default).
        Called where the trial runs, once per start of the trial (a resumed trial included),
        with ``trial.config`` and ``trial.hyperparameters`` set."""
        return None

    def note(self, kind: str, reason: str = "", **fields: Any) -> None:
        """Record why the search does what it does, as a ``note`` event (``source``
        "strategy") in the run's log: ``self.note("round", "zoomed in", round=2, region=...)``.
        Call it from ``ask`` or ``tell``. A note that a resumed run writes again exactly
        as before (it is a function of the history) is not written twice."""
        Note(kind, reason, fields)  # refuses fields that shadow the event's own keys
        note = {"kind": kind, "reason": reason, **fields}
        self.notes.append(note)
        if self.write_note is not None:
            self.write_note(note)

    def rng(self, index: int) -> np.random.Generator:
        """A generator for the ``index``-th draw: the same seed and index give the same stream,
        independent of the streams that seed trials, so ``ask`` stays a function of history."""
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(STRATEGY_STREAM, index)))

    def planned_trials(self) -> int | None:
        """How many trials the strategy means to run, if it knows (for progress display)."""
        return None

    def is_better(self, a: float, b: float | None) -> bool:
        """True when score ``a`` beats ``b`` under the experiment's mode."""
        return better(a, b, self.mode)
