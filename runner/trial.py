"""Trials as hooks and strategies see them: the live trial, and how it ended."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.registry import PluginOptions

# Field markers: a trial's snapshots carry the field; a rollback puts back a REWOUND one
# and leaves a KEPT one alone (it keeps counting), a resume puts back both (runner.engine.trial_state).
REWOUND = {"saved": "rewound"}
KEPT = {"saved": "kept"}

TrialState = Literal["completed", "diverged", "pruned", "stopped", "failed", "suspended"]


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
    metrics: dict[str, float] = field(default_factory=dict, metadata=REWOUND)  # the last epoch's
    best: dict[str, float] | None = field(default=None, metadata=REWOUND)  # the best epoch's, by the metric
    rollbacks: int = field(default=0, metadata=KEPT)  # rollbacks so far, whoever asked
    divergence_rollbacks: int = field(default=0, metadata=KEPT)  # rollbacks answering a divergence so far
    # rollbacks answering a divergence since an epoch last ended without diverging
    recent_rollbacks: int = field(default=0, metadata=KEPT)
    # signs of a collapse seen at the last epoch end ("dead_units", "chance", "loss_jump";
    # runner.engine.collapse): empty while training looks healthy
    collapse_signs: tuple[str, ...] = ()
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
    """One entry of the history: a trial asked for, and its result once it has ended.
    ``suspensions`` holds its standing each time a ``Suspend`` stopped it (state
    ``suspended``: its best and last epoch so far), oldest first; ``waiting`` is True while
    it is suspended, until its strategy continues it."""

    id: int
    params: dict[str, Any]
    result: TrialResult | None = None
    suspensions: tuple[TrialResult, ...] = ()
    waiting: bool = False
