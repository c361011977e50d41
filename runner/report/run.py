"""A run as its event log tells it, for reports: finished, interrupted or still running.

``read_run_view(run_dir)`` reads ``events.jsonl`` as it stands (a line being written is
skipped) and ``experiment.json``, and needs none of the run's plugins: a Torch run can be
reported on a machine without Torch. Trials that have not ended get a result built from
their epochs so far, with the state ``running``, ``paused`` or ``interrupted``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import RunnerError, SpecError
from runner.experiment_file.space import Space
from runner.experiment_file.spec import DEFAULT_PLUGINS, read_json
from runner.records.events import read_run
from runner.records.files import run_is_held
from runner.records.fold import RunFold, TrialStanding
from runner.records.results import leaderboard
from runner.trial import TrialResult, better

# What an epoch_end carries besides its metrics and live settings.
EPOCH_FIELDS = ("t", "event", "trial", "epoch", "step")
# A trial's events that plots mark on its curves (nudges, rollbacks, ...), besides epochs.
UNMARKED = ("trial_start", "epoch_end", "trial_complete", "checkpoint", "control", "note")


@dataclass(frozen=True)
class Mark:
    """Something that happened to a trial between its epochs (a ``nudge``, ``rollback``,
    ``divergence``, ``trial_retry``, ``pause``...): the event, and how many epochs the trial
    had trained by then (in log order, undone ones included)."""

    event: dict[str, Any]
    trained: int

    @property
    def kind(self) -> str:
        return self.event["event"]


@dataclass
class TrialView:
    """One trial: its result (or its standing so far), its epochs and what happened to it."""

    id: int
    params: dict[str, Any]
    settings: tuple[str, ...]  # its live settings (lr, momentum, ...), as trial_start names them
    result: TrialResult
    epochs: list[dict[str, Any]]  # epoch_end events in log order
    marks: list[Mark]
    planned_epochs: int | None = None  # train.epochs of its config, if the backend has one

    @property
    def state(self) -> str:
        return self.result.state

    @property
    def label(self) -> str:
        return f"t{self.id:03d}"

    def was_moved(self) -> bool:
        """Whether a nudge, or a rollback that cut the learning rate, changed its live settings
        (a schedule's decay alone does not count)."""
        return any(
            m.kind == "nudge" or (m.kind == "rollback" and m.event.get("lr_after") != m.event.get("lr_before"))
            for m in self.marks
        )

    def changed_settings(self) -> list[str]:
        """The live settings that took more than one value over the trial's epochs."""
        return [
            name for name in self.settings if len({e.get(name) for e in self.epochs if e.get(name) is not None}) > 1
        ]


@dataclass
class RunView:
    """A run directory, read for a report. ``trials`` are ranked best first, as on the
    leaderboard; ``notes`` are the ``note`` events, why a strategy or plugin did what it
    did (a strategy's between trials, such as coarse-to-fine's rounds, have no ``trial``);
    ``events`` the whole log."""

    run_dir: Path
    name: str
    metric: str
    mode: str
    state: str  # finished, running, interrupted, or unfinished (its process died)
    strategy: str  # the search strategy's name
    space: Space
    planned_trials: int | None
    trials: list[TrialView]
    notes: list[dict[str, Any]]
    events: list[dict[str, Any]]

    @property
    def started(self) -> float:
        return self.events[0]["t"]

    @property
    def updated(self) -> float:
        return self.events[-1]["t"]

    def counts(self) -> dict[str, int]:
        return dict(Counter(trial.state for trial in self.trials))


def read_run_view(run_dir: Path) -> RunView:
    """Read ``run_dir``; a RunnerError (exit 2) if it is not a run directory."""
    run_dir = Path(run_dir)
    held = run_is_held(run_dir)  # before reading: a run that finishes meanwhile then reads as finished, not dead
    events = read_run(run_dir)
    start = events[0]
    raw = _experiment(run_dir)
    search = raw.get("search") if isinstance(raw.get("search"), dict) else {}
    strategy = search.get("strategy", DEFAULT_PLUGINS["search.strategy"])
    try:
        space = Space.parse(search.get("space", {}), "search.space")
    except SpecError as err:
        raise RunnerError(f"{run_dir / 'experiment.json'}: {err}", exit_code=2) from None
    state = _run_state(events, held)
    trials = _trials(events, state)
    ranked = {r.trial: i for i, r in enumerate(leaderboard([t.result for t in trials], start["mode"]))}
    return RunView(
        run_dir=run_dir,
        name=start["name"],
        metric=start["metric"],
        mode=start["mode"],
        state=state,
        strategy=strategy.get("name", "?") if isinstance(strategy, dict) else str(strategy),
        space=space,
        planned_trials=start.get("planned_trials"),
        trials=sorted(trials, key=lambda t: ranked[t.id]),
        notes=[e for e in events if e["event"] == "note"],
        events=events,
    )


def _experiment(run_dir: Path) -> dict[str, Any]:
    try:
        raw = read_json(run_dir / "experiment.json")
    except SpecError as err:
        raise RunnerError(str(err), exit_code=2) from None
    if not isinstance(raw, dict):
        raise RunnerError(f"{run_dir / 'experiment.json'} does not hold an experiment", exit_code=2)
    return raw


def _run_state(events: list[dict[str, Any]], held: bool) -> str:
    if any(e["event"] == "experiment_complete" for e in events):
        return "finished"
    if held:
        return "running"
    last = next((e["event"] for e in reversed(events) if e["event"] in ("interrupted", "resume")), None)
    return "interrupted" if last == "interrupted" else "unfinished"


def _trials(events: list[dict[str, Any]], run_state: str) -> list[TrialView]:
    """Each trial as the log tells it (``runner.records.fold``), with what only a report follows:
    its lineage (the epochs the model as it stands went through) and its marks."""
    fold = RunFold()
    lineage: dict[int, list[dict[str, Any]]] = {}
    marks: dict[int, list[Mark]] = {}
    for event in events:
        trial = fold.observe(event)
        kind = event["event"]
        if trial is None:
            continue
        if kind == "trial_start":
            lineage[trial.id], marks[trial.id] = [], []
        elif kind == "epoch_end":
            lineage[trial.id] = lineage[trial.id][: event["epoch"]] + [event]
        elif kind not in UNMARKED:
            marks[trial.id].append(Mark(event, len(trial.epochs)))
            if kind in ("rollback", "trial_retry", "trial_resume"):  # back to a snapshot of that many epochs
                lineage[trial.id] = lineage[trial.id][: event.get("to_epoch", event.get("epoch", 0))]
    return [
        TrialView(
            trial.id,
            trial.params,
            trial.settings,
            trial.result or _standing(trial, lineage[trial.id], fold, run_state),
            trial.epochs,
            marks[trial.id],
            trial.planned_epochs,
        )
        for trial in fold.trials.values()
    ]


def _standing(trial: TrialStanding, epochs: list[dict[str, Any]], fold: RunFold, run_state: str) -> TrialResult:
    """A trial that has not ended, as far as it got: its best epoch by the metric among
    ``epochs``, those of the model as it stands (a rollback's undone epochs are not its)."""
    best, score = None, None
    for epoch in epochs:
        value = epoch.get(fold.metric)
        if value is not None and math.isfinite(value) and better(value, score, fold.mode):
            best, score = epoch, value
    last, begun = epochs[-1] if epochs else None, trial.begun
    if run_state != "running":
        state = "interrupted"
    else:
        state = "paused" if trial.state == "paused" else "running"
    return TrialResult(
        trial=trial.id,
        state=state,
        params=begun["params"],  # type: ignore[arg-type]  # running, paused, interrupted
        best=metrics_of(best) if best else None,
        final=metrics_of(last) if last else None,
        epochs=last["epoch"] + 1 if last else 0,
        seconds=(last or begun)["t"] - begun["t"],
        score=score,
    )


def metrics_of(epoch: dict[str, Any]) -> dict[str, Any]:
    """An epoch_end event's metrics and live settings, as a trial result holds them."""
    return {k: v for k, v in epoch.items() if k not in EPOCH_FIELDS}
