"""What the driver, the trial loop and the workers share about one run: the run as hooks
see it (``Experiment``), a trial as an executor receives it (``TrialJob``), each trial's seed,
the strategy and the data, built the same way wherever a trial runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner.backend import BackendState
from runner.data import Dataset, prepare
from runner.engine.plugin_manager import Plugins
from runner.engine.snapshot_files import trial_folder
from runner.experiment_file.limits import check_loaded
from runner.experiment_file.spec import ExperimentSpec
from runner.pruner import Pruner
from runner.strategy import TRIAL_STREAM, Strategy
from runner.trial import Trial, TrialResult


@dataclass(frozen=True)
class Experiment:
    """The run as hooks see it."""

    spec: ExperimentSpec
    run_dir: Path
    planned_trials: int | None  # what the strategy expects to run, if it knows

    def options(self, name: str) -> Any:
        """The options a plugin declared as ``name`` (``registry.add_options``), built from the
        experiment file's ``plugins.<name>`` (their defaults where the file does not name it).
        A KeyError if no plugin loaded declared ``name``."""
        return self.spec.options(name)

    def logger(self, name: str) -> Any:
        """The options of the logger ``name`` (``registry.add_logger``) if the experiment names
        it under ``loggers``, else None: a logger's hooks do nothing then."""
        return self.spec.logger(name)


@dataclass(frozen=True)
class TrialJob:
    """What an executor needs to run one trial."""

    trial: int
    params: dict[str, Any]
    seed: int
    resume: str | None = None  # a snapshot file to continue from
    announced: bool = False  # its trial_start is already in the event log (a resumed run)
    logged: int | None = None  # a retry after its worker died: the trial's events in the log so far
    weights: str | None = None  # a snapshot file a new trial starts from (runner start --from RUN --weights)
    continues_at: int | None = None  # its strategy continues it from its suspension at this epoch


class EndTrial(Exception):
    """Raised inside the trial loop to end a trial early in a given state."""

    def __init__(self, state: str, reason: str = "", *, experiment: bool = False):
        super().__init__(reason)
        self.state, self.reason, self.experiment = state, reason, experiment

    def to_json(self) -> list[Any]:
        """As a snapshot records the end its epoch decided: ``[state, reason, experiment]``."""
        return [self.state, self.reason, self.experiment]

    @classmethod
    def from_json(cls, record: list[Any]) -> EndTrial:
        state, reason, experiment = record
        return cls(state, reason, experiment=experiment)


def load_dataset(spec: ExperimentSpec, plugins: Plugins) -> Dataset:
    """Load and prepare the experiment's data once, before the run directory exists; then
    check every trial's model for data of this shape against the file's ``limits`` (a
    SpecError before any model is built)."""
    plugin = plugins.registry.get("dataset", spec.data.name, "data.name")
    raw = plugin.load(spec.data.options, seed=spec.seed, base_dir=spec.base_dir)
    dataset = prepare(spec.data.name, raw, spec.data.options, seed=spec.seed)
    check_loaded(spec, dataset)
    return dataset


def trial_seed(experiment_seed: int, trial_id: int) -> int:
    """Each trial's seed: independent streams derived from the experiment's seed."""
    sequence = np.random.SeedSequence(experiment_seed, spawn_key=(TRIAL_STREAM, trial_id))
    return int(sequence.generate_state(1)[0])


def build_strategy(spec: ExperimentSpec, registry) -> Strategy:
    """The experiment's strategy, fresh (the driver's asks and tells; a worker's babysits)."""
    search = spec.search
    return registry.get("strategy", search.strategy.name)(
        space=search.space,
        options=search.strategy.options,
        seed=spec.seed,
        metric=search.metric,
        mode=search.mode,
    )


def build_pruner(spec: ExperimentSpec, registry) -> Pruner | None:
    """The experiment's pruner (``search.pruner``), fresh; None when the file names none."""
    search = spec.search
    if search.pruner is None:
        return None
    return registry.get("pruner", search.pruner.name)(
        options=search.pruner.options, metric=search.metric, mode=search.mode, epochs=spec.train.epochs
    )


def end_elsewhere(result: TrialResult, seed: int, run_dir: Path, log: Any, hook: Any, plugin_options: Any) -> None:
    """End, from the driver, a trial that is not training (its worker died too often, or
    the run ends while it is suspended): its ``trial_complete``, then the hook, with the
    trial as the result says it stood."""
    log.emit("trial_complete", **result.to_json())
    trial = Trial(
        id=result.trial,
        params=result.params,
        config={},
        seed=seed,
        folder=trial_folder(run_dir, result.trial),
        run_folder=run_dir,
        epoch=result.epochs,
        plugin_options=plugin_options,
    )
    hook.runner_trial_complete(trial=trial, result=result)


def misfit(fresh: BackendState, saved: BackendState) -> str | None:
    """Why ``saved`` (another run's snapshot) does not fit a backend whose state is ``fresh``:
    the first array of numbers it learns (weights, optimizer state, running statistics: the
    floating-point ones) missing, extra or of another shape, in the backend's order; None if
    they fit. (The data order, in integer arrays, follows the data, not the model.)"""
    learned = {name: a for name, a in fresh.arrays.items() if a.dtype.kind == "f"}
    theirs = {name: a for name, a in saved.arrays.items() if a.dtype.kind == "f"}
    for name, array in learned.items():
        if name not in theirs:
            return f"{name}: the snapshot has no such array"
        if theirs[name].shape != array.shape:
            return f"{name}: {list(theirs[name].shape)} in the snapshot, {list(array.shape)} here"
    extra = sorted(set(theirs) - set(learned))
    return f"{extra[0]}: in the snapshot, not in this model" if extra else None
