"""Trials as hooks and strategies see them: the live trial, its result, the history."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.registry import PluginOptions

TrialState = Literal["completed", "diverged", "pruned", "stopped", "failed"]


def better(score: float, than: float | None, mode: str) -> bool:
    """True when ``score`` beats ``than`` (None: nothing to beat) under mode "min" or "max"."""
    return than is None or (score < than if mode == "min" else score > than)


def default_mode(metric: str) -> Literal["min", "max"]:
    """Whether a metric is better high or low when the file does not say: accuracies are maximised."""
    return "max" if "acc" in metric else "min"


@dataclass
class Trial:
    """One running trial. Owned and updated by the loop; plugins read it, never change it.

    ``params`` are the values the strategy chose (keys are dotted paths such as
    ``train.lr``); ``config`` is the experiment's base config with those applied.
    ``folder`` is the trial's own folder (``RUN_DIR/trials/t003``: its snapshots);
    ``run_folder`` is the run directory it belongs to. ``options(name)`` gives the options a
    plugin declared as ``name`` (``registry.add_options``), as the experiment file set them.
    """

    id: int
    params: dict[str, Any]
    config: dict[str, Any]
    seed: int
    folder: Path
    run_folder: Path
    epoch: int = 0  # epochs completed
    step: int = 0  # training steps taken, over all epochs
    hyperparameters: dict[str, float] = field(default_factory=dict)  # live values in force
    metrics: dict[str, float] = field(default_factory=dict)  # the last epoch's
    best: dict[str, float] | None = None  # metrics of the best epoch so far, by the experiment's metric
    rollbacks: int = 0  # rollbacks so far, whoever asked
    divergence_rollbacks: int = 0  # rollbacks answering a divergence so far
    recent_rollbacks: int = 0  # rollbacks answering a divergence since an epoch last ended without diverging
    plugin_options: Mapping[str, Any] = field(default_factory=PluginOptions, repr=False)  # name -> built options

    def options(self, name: str) -> Any:
        """The options a plugin declared as ``name`` (``registry.add_options``), built from the
        experiment file's ``plugins.<name>`` (their defaults where the file does not name it).
        A KeyError if no plugin loaded declared ``name``."""
        return self.plugin_options[name]

    @property
    def label(self) -> str:
        return f"t{self.id:03d}"

    @property
    def run_dir(self) -> Path:
        """Deprecated since 0.2: the trial's own folder, whatever the name says. Use
        ``folder`` for it, or ``run_folder`` for the run directory."""
        warnings.warn(
            "Trial.run_dir is the trial's own folder; use trial.folder (or trial.run_folder for the run directory)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.folder


@dataclass(frozen=True)
class TrialResult:
    """How a trial ended. ``best`` holds the metrics of its best epoch by the experiment's
    metric, ``final`` those of its last epoch; both are None if no epoch finished."""

    trial: int
    state: TrialState
    params: dict[str, Any]
    best: dict[str, float] | None
    final: dict[str, float] | None
    epochs: int
    seconds: float
    score: float | None  # the best value of the experiment's metric
    reason: str = ""
    ends_experiment: bool = False  # a Stop(experiment=True) ended it: run no more trials

    def to_json(self) -> dict[str, Any]:
        """The result as written in ``trial_complete`` events and ``results.json``."""
        return {
            "trial": self.trial,
            "state": self.state,
            "params": self.params,
            "score": self.score,
            "best": self.best,
            "final": self.final,
            "epochs": self.epochs,
            "seconds": round(self.seconds, 4),
            "reason": self.reason,
            "ends_experiment": self.ends_experiment,
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> TrialResult:
        """The result a ``trial_complete`` event (or a ``results.json`` entry) holds."""
        return cls(**{k: record[k] for k in cls.__dataclass_fields__ if k in record})


@dataclass(frozen=True)
class TrialRecord:
    """One entry of the history: a trial asked for, and its result once it has ended."""

    id: int
    params: dict[str, Any]
    result: TrialResult | None = None


class History:
    """Every trial of the experiment so far, in the order they were asked for.

    Strategies derive their progress from it, so a resumed run (whose history is rebuilt
    from the event log) needs no saved strategy state.
    """

    def __init__(self, records: list[TrialRecord] | None = None):
        self._records: list[TrialRecord] = list(records or [])

    @classmethod
    def from_events(cls, events: Iterable[dict[str, Any]]) -> History:
        """Rebuild the history from an event log: ``trial_queued`` (or, in a log written
        before runner 0.2, ``trial_start``) asks, ``trial_complete`` ends."""
        history, known = cls(), set()
        for event in events:
            kind = event["event"]
            trial = event.get("queued" if kind == "trial_queued" else "trial")
            if kind in ("trial_queued", "trial_start") and trial not in known:
                known.add(trial)
                history.add(trial, event["params"])
            elif kind == "trial_complete":
                history.finish(TrialResult.from_json(event))
        return history

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self):
        return iter(self._records)

    def __getitem__(self, index: int) -> TrialRecord:
        return self._records[index]

    @property
    def finished(self) -> list[TrialRecord]:
        return [r for r in self._records if r.result is not None]

    @property
    def running(self) -> list[TrialRecord]:
        return [r for r in self._records if r.result is None]

    def add(self, trial_id: int, params: dict[str, Any]) -> None:
        self._records.append(TrialRecord(trial_id, params))

    def finish(self, result: TrialResult) -> None:
        for i, record in enumerate(self._records):
            if record.id == result.trial:
                self._records[i] = TrialRecord(record.id, record.params, result)
                return
        raise KeyError(f"no trial {result.trial} in the history")
