"""The experiment loop (ask, run, tell) and the trial loop (epochs of steps).

Read it top to bottom: ``run_experiment`` asks the strategy for trials and hands them to
the executor; ``TrialRunner`` trains one trial like a textbook loop and applies the
decisions that hooks return. Every lifecycle hook is called here, next to the event it
writes, and nowhere else.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner import __version__
from runner.checkpoints import CheckpointStore, SnapshotWriter
from runner.data import Dataset, prepare
from runner.decisions import Nudge, Prune, Stop, flatten
from runner.divergence import DivergenceEvent
from runner.errors import RunnerError, SpecError
from runner.events import EventLog
from runner.files import write_json
from runner.plugins import Plugins
from runner.results import leaderboard, results_document
from runner.strategy import TRIAL_STREAM
from runner.spec import ExperimentSpec, trial_sections
from runner.trial import History, Trial, TrialResult
from runner.typed import check_field


@dataclass(frozen=True)
class Experiment:
    """The run as hooks see it."""

    spec: ExperimentSpec
    run_dir: Path
    planned_trials: int | None  # what the strategy expects to run, if it knows


@dataclass(frozen=True)
class TrialJob:
    """What an executor needs to run one trial."""

    trial: int
    params: dict[str, Any]
    seed: int


class EndTrial(Exception):
    """Raised inside the trial loop to end a trial early in a given state."""

    def __init__(self, state: str, reason: str = "", *, experiment: bool = False):
        super().__init__(reason)
        self.state, self.reason, self.experiment = state, reason, experiment


def load_dataset(spec: ExperimentSpec, plugins: Plugins) -> Dataset:
    """Load and prepare the experiment's data once, before the run directory exists."""
    plugin = plugins.registry.get("dataset", spec.data.name, "data.name")
    raw = plugin.load(spec.data.options, seed=spec.seed, base_dir=spec.base_dir)
    return prepare(spec.data.name, raw, spec.data.options, seed=spec.seed)


def trial_seed(experiment_seed: int, trial_id: int) -> int:
    """Each trial's seed: independent streams derived from the experiment's seed."""
    sequence = np.random.SeedSequence(experiment_seed, spawn_key=(TRIAL_STREAM, trial_id))
    return int(sequence.generate_state(1)[0])


def run_experiment(spec: ExperimentSpec, plugins: Plugins, dataset: Dataset, run_dir: Path) -> list[TrialResult]:
    """Run every trial the strategy asks for; write the event log and ``results.json``.

    Returns the leaderboard, best first.
    """
    registry, hook = plugins.registry, plugins.hook
    search = spec.search
    strategy = registry.get("strategy", search.strategy.name)(
        space=search.space, options=search.strategy.options, seed=spec.seed,
        metric=search.metric, mode=search.mode,
    )
    experiment = Experiment(spec, run_dir, strategy.planned_trials())
    write_json(run_dir / "experiment.json", {**spec.raw, "seed": spec.seed})  # the seed in force
    history = History()

    with EventLog(run_dir / "events.jsonl") as log:
        log.emit("experiment_start", name=spec.name, seed=spec.seed, run_dir=str(run_dir.resolve()),
                 base_dir=str(spec.base_dir), plugins=plugins.origins, runner_version=__version__,
                 metric=search.metric, mode=search.mode, planned_trials=experiment.planned_trials)
        hook.runner_experiment_start(experiment=experiment)

        writer = SnapshotWriter()
        run_trial = TrialRunner(spec, plugins, dataset, log, writer, run_dir)
        executor = registry.get("executor", spec.executor.name)(spec.executor.options, run_trial=run_trial)
        stopping = False
        try:
            while True:
                while not stopping and executor.has_room():
                    params = strategy.ask(history)
                    if params is None:
                        break
                    trial_id = len(history)
                    history.add(trial_id, params)
                    executor.submit(TrialJob(trial_id, params, trial_seed(spec.seed, trial_id)))
                if executor.pending() == 0:
                    break
                result = executor.next_result()
                history.finish(result)
                strategy.tell(history, result)
                stopping = stopping or result.ends_experiment
        finally:
            executor.close()
            writer.close()

        board = leaderboard([r.result for r in history.finished], search.mode)
        document = results_document(spec.name, search.metric, search.mode, board)
        write_json(run_dir / "results.json", document)
        best = document["best"]
        log.emit("experiment_complete", trials=len(board), best_trial=best["trial"] if best else None,
                 stopped_early=stopping)
        hook.runner_experiment_complete(experiment=experiment, results=board)
    return board


class TrialRunner:
    """Trains one trial to its end. Executors call it with a ``TrialJob``."""

    def __init__(self, spec: ExperimentSpec, plugins: Plugins, dataset: Dataset, log: EventLog,
                 writer: SnapshotWriter, run_dir: Path):
        self.spec, self.plugins, self.dataset, self.log = spec, plugins, dataset, log
        self.writer, self.run_dir = writer, run_dir
        self.hook = plugins.hook
        self.backend_cls = plugins.registry.get("backend", spec.backend.name)
        self.metric, self.mode = spec.search.metric, spec.search.mode

    def __call__(self, job: TrialJob) -> TrialResult:
        """Train the trial; whatever ends it (a decision, a divergence, an error in the backend
        or a plugin) becomes its result. Every ``trial_complete`` follows a ``trial_start``."""
        started = time.perf_counter()
        trial = Trial(id=job.trial, params=job.params, config={}, seed=job.seed,
                      run_dir=self.run_dir / "trials" / f"t{job.trial:03d}")
        store = CheckpointStore(trial.run_dir, trial.id, self.spec.checkpoint, self.writer)
        end, error, announced = EndTrial("completed"), None, False
        try:
            model, train, options = trial_sections(self.spec, self.plugins.registry, job.params)
            trial.config = {"model": asdict(model), "train": asdict(train),
                            "backend": {"name": self.spec.backend.name, **asdict(options)}}
            backend = self.backend_cls(model=model, train=train, options=options, data=self.dataset, seed=job.seed)
            trial.hyperparameters = backend.hyperparameters()
            announced = True
            self._announce(trial)
            self._train(trial, backend, train.epochs, store)
        except EndTrial as ended:
            end = ended
        except Exception as err:  # a bug in a backend or a plugin fails this trial, not the search
            end = EndTrial("failed", f"{type(err).__name__}: {err}")
            error = traceback.format_exc()
        if not announced:
            self._announce(trial)
        store.finish()
        self._report_snapshots(trial, store)

        best = trial.best
        result = TrialResult(
            trial=trial.id, state=end.state, params=trial.params, best=best,
            final=trial.metrics or None, epochs=trial.epoch, seconds=time.perf_counter() - started,
            score=best[self.metric] if best else None, reason=end.reason, ends_experiment=end.experiment,
        )
        fields = {"traceback": error} if error else {}
        self.log.emit("trial_complete", **result.to_json(), **fields)
        self.hook.runner_trial_complete(trial=trial, result=result)
        return result

    def _announce(self, trial: Trial) -> None:
        self.log.emit("trial_start", trial=trial.id, params=trial.params, seed=trial.seed,
                      config=trial.config, hyperparameters=trial.hyperparameters)
        self.hook.runner_trial_start(trial=trial)

    def _train(self, trial: Trial, backend, epochs: int, store: CheckpointStore) -> None:
        """The textbook loop: epochs of mini-batch steps, an evaluation after each epoch."""
        step = 0
        for epoch in range(epochs):
            epoch_started = time.perf_counter()
            backend.begin_epoch(epoch)
            total = 0.0
            steps = backend.steps_per_epoch
            for _ in range(steps):
                loss = backend.train_step()
                step += 1
                if not math.isfinite(loss):
                    trial.step = step
                    self._diverged(trial, backend, DivergenceEvent("non_finite_loss", epoch, step, loss))
                total += loss
            trial.step = step
            val = backend.evaluate("val")
            trial.hyperparameters = backend.hyperparameters()
            metrics = {
                "train_loss": total / steps,
                **{f"val_{name}": value for name, value in val.items()},
                **trial.hyperparameters,
                "seconds": time.perf_counter() - epoch_started,
            }
            trial.epoch, trial.metrics = epoch + 1, metrics
            improved = self._track_best(trial, metrics)
            self.log.emit("epoch_end", trial=trial.id, epoch=epoch, step=step, **metrics)
            decisions = flatten(self.hook.runner_epoch_end(trial=trial, epoch=epoch, metrics=metrics))
            self._snapshot(trial, backend, store, improved)  # before decisions: a stopped trial keeps its state
            self._apply(trial, backend, decisions, source="plugin")

    def _snapshot(self, trial: Trial, backend, store: CheckpointStore, improved: bool) -> None:
        """Take the end-of-epoch snapshot if one is due. Files written earlier are reported
        first (they had at least an epoch to be written, so this rarely waits), which keeps
        the order of ``checkpoint`` events and hooks the same from run to run."""
        options = self.spec.checkpoint
        periodic = options.every_epochs > 0 and trial.epoch % options.every_epochs == 0
        best = improved and options.best
        if not (periodic or best):
            return
        self._report_snapshots(trial, store)
        store.save(backend.state(), epoch=trial.epoch, step=trial.step, reason="epoch" if periodic else "best",
                   best=best, hyperparameters=trial.hyperparameters, metrics=trial.metrics)

    def _report_snapshots(self, trial: Trial, store: CheckpointStore) -> None:
        """Wait for the trial's queued snapshot writes; log and announce each durable one."""
        for item in store.collect(wait=True):
            if isinstance(item, Exception):
                self.log.emit("checkpoint_error", trial=trial.id, message=f"{type(item).__name__}: {item}")
                continue
            checkpoint = item.to_json(relative_to=self.run_dir)
            self.log.emit("checkpoint", trial=trial.id, **checkpoint)
            self.hook.runner_checkpoint_saved(trial=trial, checkpoint=checkpoint)

    def _track_best(self, trial: Trial, metrics: dict[str, float]) -> bool:
        """Keep ``trial.best``, the metrics of its best epoch so far; True if this epoch is the new best."""
        if self.metric not in metrics:
            raise RunnerError(
                f"the experiment's metric {self.metric!r} was not reported; reported: {', '.join(sorted(metrics))}"
            )
        score = metrics[self.metric]
        if not math.isfinite(score):
            return False
        best = trial.best[self.metric] if trial.best else None
        if best is None or (score < best if self.mode == "min" else score > best):
            trial.best = dict(metrics)
            return True
        return False

    def _diverged(self, trial: Trial, backend, event: DivergenceEvent) -> None:
        self.log.emit("divergence", trial=trial.id, **asdict(event), lr=backend.hyperparameters().get("lr"))
        decision = self.hook.runner_divergence(trial=trial, event=event)
        if decision is None:
            raise EndTrial("diverged", f"non-finite training loss at step {event.step}")
        if not isinstance(decision, (Stop, Prune)):
            raise TypeError(f"runner_divergence answered {decision!r}; it may answer Stop, Prune or None")
        self._apply(trial, backend, [decision], source="divergence")

    def _apply(self, trial: Trial, backend, decisions: list, source: str) -> None:
        """Apply decisions in order; the only place that changes a running trial."""
        for decision in decisions:
            if isinstance(decision, Nudge):
                self._nudge(trial, backend, decision, source)
            elif isinstance(decision, Prune):
                self.log.emit("prune", trial=trial.id, epoch=trial.epoch, reason=decision.reason, source=source)
                raise EndTrial("pruned", decision.reason)
            elif isinstance(decision, Stop):
                self.log.emit("stop", trial=trial.id, epoch=trial.epoch, reason=decision.reason,
                              source=source, experiment=decision.experiment)
                raise EndTrial("stopped", decision.reason, experiment=decision.experiment)

    def _nudge(self, trial: Trial, backend, nudge: Nudge, source: str) -> None:
        live = self.backend_cls.live
        for name, value in nudge.changes.items():
            if name not in live:
                raise SpecError(f"nudge.{name}", f"not a live hyperparameter of backend {self.spec.backend.name!r}; "
                                                 f"live: {', '.join(live)}")
            if name in self.backend_cls.Train.__dataclass_fields__:
                check_field(self.backend_cls.Train, name, value, f"nudge.{name}")
        before = backend.hyperparameters()
        backend.set_hyperparameters(**nudge.changes)
        trial.hyperparameters = backend.hyperparameters()
        change = {k: {"old": before[k], "new": trial.hyperparameters[k]} for k in nudge.changes}
        self.log.emit("nudge", trial=trial.id, epoch=trial.epoch, step=trial.step, changes=change,
                      source=source, reason=nudge.reason)
        self.hook.runner_nudge_applied(trial=trial, change=change, source=source)
