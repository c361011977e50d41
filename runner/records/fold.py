"""One reading of the event log: events in, each trial's standing out.

``RunFold`` takes a run's events one at a time, in log order, and keeps what every
reader of a run needs to know about each trial: where it stands (state, epoch, step),
the settings in force, its epochs, its best epoch so far, its rollbacks, and its result
once it has ended. ``status.json``, the live view, the report, the ``History`` strategies
see and the resume plan all read a run through it; each keeps only its own job on top
(status its orders and its file, live its drawing, the report its lineage and marks).

It reads only the fields ``runner.records.event_kinds`` lists, and needs few of them: an event of
a trial it has not seen begin (a cut log) is passed over, and a missing epoch or step
count leaves it where it was.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from runner.trial import TrialResult, better


@dataclass
class TrialStanding:
    """One trial as its events tell it so far."""

    id: int
    begun: dict[str, Any]  # its trial_start event
    state: str = "running"  # running, paused, suspended, retrying, interrupted; once ended, its result's state
    epoch: int = 0  # epochs completed by the model as it stands (a rollback goes back)
    step: int = 0  # training steps taken by the model as it stands
    hyperparameters: dict[str, float] = field(default_factory=dict)  # the live settings in force
    metrics: dict[str, Any] | None = None  # its latest epoch_end event
    best: dict[str, Any] | None = None  # its epoch_end event with the best metric so far, undone ones included
    rollbacks: int = 0
    epochs: list[dict[str, Any]] = field(default_factory=list)  # its epoch_end events, in log order
    result: TrialResult | None = None  # once its trial_complete is in the log
    suspensions: list[TrialResult] = field(default_factory=list)  # its standing at each trial_suspend

    @property
    def params(self) -> dict[str, Any]:
        return self.begun["params"]

    @property
    def settings(self) -> tuple[str, ...]:
        """Its live settings (lr, momentum, ...), as its trial_start names them."""
        return tuple(self.begun.get("hyperparameters") or {})

    @property
    def planned_epochs(self) -> int | None:
        """``train.epochs`` of its config, if the backend has one."""
        return ((self.begun.get("config") or {}).get("train") or {}).get("epochs")

    @property
    def ended(self) -> bool:
        return self.result is not None


class RunFold:
    """A run's trials, folded from its events (``observe`` each, in log order).

    ``asked`` holds every trial the driver asked for (``trial_queued``, or in a log written
    before runner 0.2 ``trial_start``), in order, with its params; ``trials`` those that
    began (``trial_start``), by id; ``results`` every trial that ended, by id (one that ended
    before it began too: a worker that died before its trial started, and was given up on).
    ``keep_epochs`` False keeps no list of each trial's epochs (a view that lives as long as
    the run needs only the latest and the best)."""

    def __init__(self, *, keep_epochs: bool = True) -> None:
        self.start: dict[str, Any] | None = None  # the experiment_start event
        self.metric, self.mode = "val_loss", "min"
        self.asked: dict[int, dict[str, Any]] = {}
        self.trials: dict[int, TrialStanding] = {}
        self.results: dict[int, TrialResult] = {}
        self.finished = False  # experiment_complete is in the log
        self.keep_epochs = keep_epochs

    @classmethod
    def of(cls, events: Iterable[dict[str, Any]], *, keep_epochs: bool = True) -> RunFold:
        fold = cls(keep_epochs=keep_epochs)
        for event in events:
            fold.observe(event)
        return fold

    def observe(self, event: dict[str, Any]) -> TrialStanding | None:
        """Fold one event in; returns the trial it is about, if the fold knows it."""
        kind = event["event"]
        if kind == "experiment_start":
            self.start, self.metric, self.mode = event, event["metric"], event["mode"]
            return None
        if kind == "experiment_complete":
            self.finished = True
            return None
        if kind == "trial_queued":
            self.asked.setdefault(event["queued"], event["params"])
            return None
        trial_id = event.get("trial")
        if kind == "trial_start":
            self.asked.setdefault(trial_id, event["params"])
            trial = self.trials[trial_id] = TrialStanding(
                trial_id, event, hyperparameters=dict(event.get("hyperparameters") or {})
            )
            return trial
        trial = self.trials.get(trial_id)
        if trial is not None:
            self._follow(trial, kind, event)
        elif kind == "trial_complete" and trial_id in self.asked:
            self.results[trial_id] = TrialResult.from_json({**self._no_result(self.asked[trial_id], 0), **event})
        return trial

    def _follow(self, trial: TrialStanding, kind: str, e: dict[str, Any]) -> None:
        """One event of a trial the fold knows."""
        if kind == "epoch_end":
            if "epoch" not in e:
                return
            trial.epoch, trial.step, trial.metrics = e["epoch"] + 1, e.get("step", trial.step), e
            trial.hyperparameters = {k: e[k] for k in trial.hyperparameters if k in e}
            if self.keep_epochs:
                trial.epochs.append(e)
            score = e.get(self.metric)
            if score is not None and better(score, self.score_of(trial.best), self.mode):
                trial.best = e
        elif kind == "nudge":
            trial.step = e.get("step", trial.step)
            trial.hyperparameters.update({k: v["new"] for k, v in (e.get("changes") or {}).items()})
        elif kind == "nudge_refused":
            trial.hyperparameters.update(e.get("restored") or {})
        elif kind == "rollback":
            trial.epoch, trial.step = e.get("to_epoch", trial.epoch), e.get("to_step", trial.step)
            trial.rollbacks = e.get("rollbacks", trial.rollbacks + 1)
            if e.get("lr_after") is not None:
                trial.hyperparameters["lr"] = e["lr_after"]
            trial.hyperparameters.update({k: v["new"] for k, v in (e.get("changes") or {}).items()})
        elif kind in ("pause", "unpause"):
            trial.state, trial.step = ("paused" if kind == "pause" else "running"), e.get("step", trial.step)
        elif kind == "trial_resume":  # after a resume or a retry: from a snapshot, or from scratch
            trial.state, trial.epoch, trial.step = "running", e.get("epoch", trial.epoch), e.get("step", trial.step)
            trial.hyperparameters = dict(e.get("hyperparameters") or {})
        elif kind == "trial_retry":  # its worker died; it starts again in a new one
            trial.state, trial.epoch, trial.step = "retrying", e.get("epoch", trial.epoch), e.get("step", trial.step)
        elif kind == "interrupted":
            trial.state = "interrupted"
        elif kind == "trial_suspend":  # a Suspend ended this run of it: it waits for its strategy
            trial.state, trial.step = "suspended", e.get("step", trial.step)
            trial.suspensions.append(TrialResult.from_json({**self._no_result(trial.params, trial.epoch), **e}))
        elif kind == "trial_continue":  # its strategy continues it
            trial.state = "running"
        elif kind == "trial_complete":
            trial.result = self.results[trial.id] = TrialResult.from_json(
                {**self._no_result(trial.params, trial.epoch), **e}
            )
            trial.state, trial.epoch = trial.result.state, trial.result.epochs

    @staticmethod
    def _no_result(params: dict[str, Any], epochs: int) -> dict[str, Any]:
        """What a ``trial_complete`` missing a field (a hand-made log) is taken to say."""
        return {"params": params, "best": None, "final": None, "epochs": epochs, "seconds": 0.0, "score": None}

    def score_of(self, epoch: dict[str, Any] | None) -> float | None:
        """The experiment's metric in an epoch_end event (None: no event)."""
        return None if epoch is None else epoch[self.metric]

    def score(self, trial: TrialStanding) -> float | None:
        """Its score: its result's once it has ended, else its best epoch's so far."""
        return trial.result.score if trial.result is not None else self.score_of(trial.best)

    def unannounced(self) -> list[int]:
        """Trials the driver asked for whose ``trial_start`` never reached the log (queued),
        and that did not end either."""
        return [trial_id for trial_id in self.asked if trial_id not in self.trials and trial_id not in self.results]
