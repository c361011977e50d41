"""The trial loop: one trial trained like a textbook loop (epochs of steps), plus snapshots
and divergence checks; what the decisions it meets do is in ``trial_decisions``.

``TrialRunner`` is what an executor calls with a ``TrialJob``, in the driver (inline) or in
a worker process; ``TrialLoop`` is one trial's run. Every trial hook is called here or in
``trial_decisions``, next to the event it writes.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runner.control.inbox import ControlInbox
from runner.data import Dataset
from runner.decisions import flatten
from runner.engine.checkpoints import CheckpointStore, SnapshotWriter
from runner.engine.collapse import CollapseDetector
from runner.engine.divergence import DivergenceEvent, SpikeDetector, val_divergence
from runner.engine.experiment import EndTrial, Experiment, TrialJob, misfit
from runner.engine.interrupt import FLAG, Interrupted
from runner.engine.plugin_manager import Plugins
from runner.engine.snapshot_files import trial_folder
from runner.engine.snapshot_storage import LocalSnapshots, SnapshotStorage
from runner.engine.trial_decisions import RolledBack, TrialDecisions
from runner.engine.trial_state import LoopState, load_state, save_state
from runner.errors import RunnerError
from runner.experiment_file.spec import trial_sections
from runner.imports import experiment_folder
from runner.records.events import EventLog
from runner.strategy import Strategy
from runner.trial import Trial, TrialResult, better

if TYPE_CHECKING:  # the worker's end of a trial's log and inbox; it imports this module
    from runner.execution.worker import WorkerLink


class TrialRunner:
    """Trains trials to their end. Executors call it with a ``TrialJob``.

    ``log`` and ``inbox`` are the driver's event log and control inbox, or, in a worker
    process, a ``runner.execution.worker.WorkerLink`` standing in for both. ``storage`` keeps
    the snapshot files: by default on this machine, in the run directory (syncing ``log``
    before each); a worker that cannot see the run directory has the driver keep them."""

    def __init__(
        self,
        experiment: Experiment,
        plugins: Plugins,
        dataset: Dataset,
        log: EventLog | WorkerLink,
        writer: SnapshotWriter,
        inbox: ControlInbox | WorkerLink,
        strategy: Strategy | None = None,
        storage: SnapshotStorage | None = None,
    ):
        self.experiment, self.plugins, self.dataset, self.log, self.writer = experiment, plugins, dataset, log, writer
        self.inbox, self.strategy = inbox, strategy
        self.storage = storage or LocalSnapshots(experiment.run_dir, before_write=log.sync)

    def __call__(self, job: TrialJob) -> TrialResult:
        return TrialLoop(self, job).run()


class TrialLoop(TrialDecisions):
    """One trial: the textbook loop, plus snapshots, divergence checks and decisions.

    Every change to the running trial (a nudge, a rollback, an end) happens in this class,
    at a step boundary or at the end of an epoch.
    """

    def __init__(self, runner: TrialRunner, job: TrialJob):
        spec = runner.experiment.spec
        self.runner, self.job, self.spec = runner, job, spec
        self.log, self.hook = runner.log, runner.plugins.hook
        self.backend_cls = spec.backend_class
        self.metric, self.mode = spec.search.metric, spec.search.mode
        run_dir = runner.experiment.run_dir
        self.trial = Trial(
            id=job.trial,
            params=job.params,
            config={},
            seed=job.seed,
            folder=trial_folder(run_dir, job.trial),
            run_folder=run_dir,
            plugin_options=spec.plugins,
        )
        self.store = CheckpointStore(
            self.trial.folder, job.trial, spec.checkpoint, runner.writer, storage=runner.storage
        )
        self.state = LoopState(  # what its snapshots carry (and the Trial)
            detector=SpikeDetector(spec.divergence),
            collapse=CollapseDetector(spec.divergence, runner.dataset.n_classes, len(runner.dataset.y_val)),
        )
        self.snapshot_step = -1  # step of the newest snapshot, so a restored one is not taken twice
        self.restored_step = -1  # step the last rollback restored (until training moves on, the ring holds it)
        self.backend = None
        self.mailbox = runner.inbox.open(job.trial)  # orders from the control file
        self.paused = False
        self.order: str | None = None  # the control-file order being carried out: events name it

    # -- the trial, start to end ----------------------------------------------------------

    def run(self) -> TrialResult:
        """Train the trial; whatever ends it (a decision, a divergence, an error in the backend
        or a plugin) becomes its result. Every ``trial_complete`` follows a ``trial_start``."""
        started = time.perf_counter()
        trial = self.trial
        end, error, announced = EndTrial("completed"), None, False
        try:
            model, train, options = trial_sections(self.spec, trial.params)
            trial.config = {
                "model": asdict(model),
                "train": asdict(train),
                "backend": {"name": self.spec.backend.name, **asdict(options)},
            }
            with experiment_folder(self.spec.base_dir):  # a backend may import what the model section names
                self.backend = self.backend_cls(
                    model=model, train=train, options=options, data=self.runner.dataset, seed=trial.seed
                )
            trial.hyperparameters = self.backend.hyperparameters()
            if self.runner.strategy is not None:
                self.state.babysitter = self.runner.strategy.babysitter(trial) or self.state.babysitter
            announced = True
            if self.job.resume:
                self.resume(Path(self.job.resume))
                ending = self.state.ending
                if ending is not None and ending.state == "suspended" and trial.epoch == self.job.continues_at:
                    self.state.ending = None  # the epoch's own snapshot (the suspend one was lost): it goes on
                elif ending is not None:  # the snapshot closed an epoch that ended the trial
                    raise ending
            else:
                if self.job.weights:
                    self.take_weights(Path(self.job.weights), train)
                self.announce()
                self.snapshot("start", improved=False, durable=False)  # what a first rollback returns to
            self.train(train.epochs)
        except EndTrial as ended:
            end = ended
        except Interrupted:
            raise
        except Exception as err:  # a bug in a backend or a plugin fails this trial, not the search
            end = EndTrial("failed", f"{type(err).__name__}: {err}")
            error = traceback.format_exc()
        if end.state == "suspended" and announced:
            return self.suspend(end, started)
        if not announced:
            self.announce()
        self.runner.inbox.close_mailbox(trial.id)  # orders that come too late are reported dropped
        self.store.finish()
        self.report_snapshots()
        result = self.result(end, started)
        self.emit("trial_complete", **result.to_json(), **({"traceback": error} if error else {}))
        self.hook.runner_trial_complete(trial=trial, result=result)
        return result

    def result(self, end: EndTrial, started: float) -> TrialResult:
        """The trial as it stands, ended (or suspended) as ``end`` says."""
        trial, best = self.trial, self.trial.best
        return TrialResult(
            trial=trial.id,
            state=end.state,
            params=trial.params,
            best=best,
            final=trial.metrics or None,
            epochs=trial.epoch,
            seconds=time.perf_counter() - started,
            score=best[self.metric] if best else None,
            reason=end.reason,
            ends_experiment=end.experiment,
        )

    def suspend(self, end: EndTrial, started: float) -> TrialResult:
        """A ``Suspend`` ended this run of the trial: log its standing (before the snapshot, so
        a resume keeps it), take a durable snapshot it continues from, and free its place.
        No ``trial_complete``: the trial has not ended. Orders that came too late for this run
        wait for its next one."""
        self.state.ending = None  # the snapshot it continues from goes on training
        result = self.result(end, started)
        self.emit("trial_suspend", step=self.trial.step, **result.to_json())
        self.snapshot("suspend", improved=False, durable=True)
        self.runner.inbox.close_mailbox(self.trial.id, suspended=True)
        self.store.finish()
        self.report_snapshots()
        return result

    def resume(self, path: Path) -> None:
        """Continue from a snapshot file: backend and loop state as they were when it was taken."""
        saved, meta = self.runner.storage.read(path)
        self.backend.load_state(saved)
        self.restore(meta, resume=True)
        if self.job.logged is not None:  # a retry: the lost work's events and the retry stay in the log
            self.state.events = self.job.logged
        trial = self.trial
        trial.hyperparameters = self.backend.hyperparameters()
        self.store.adopt(
            path.parent, upto=meta["loop"]["events"], before_nudge_events=meta["loop"].get("before_nudge_events")
        )
        self.store.save(
            saved,
            epoch=trial.epoch,
            step=trial.step,
            reason="resume",
            best=False,
            hyperparameters=trial.hyperparameters,
            metrics=trial.metrics,
            loop=save_state(trial, self.state),
            durable=False,
        )
        self.emit(
            "trial_resume",
            epoch=trial.epoch,
            step=trial.step,
            hyperparameters=trial.hyperparameters,
            snapshot=str(path.relative_to(self.runner.experiment.run_dir)),
        )
        self.hook.runner_trial_start(trial=trial)

    def take_weights(self, path: Path, train: Any) -> None:
        """A new trial that starts from another run's snapshot (``runner start --from RUN
        --weights``): its weights and optimizer state, with the live settings of this trial's
        own config. A snapshot that does not fit the model fails the trial, naming why."""
        saved, _ = self.runner.storage.read(path)
        if (why := misfit(self.backend.state(), saved)) is not None:
            raise RunnerError(f"the weights in {path} do not fit this trial's model: {why}")
        self.backend.load_state(saved)
        live = {name: getattr(train, name) for name in self.backend_cls.live if getattr(train, name, None) is not None}
        self.backend.set_hyperparameters(**live)
        self.trial.hyperparameters = self.backend.hyperparameters()

    def announce(self) -> None:
        trial = self.trial
        if self.job.announced:  # a resumed run restarts this trial: its trial_start is in the log
            self.state.events = 1 if self.job.logged is None else self.job.logged
            self.emit("trial_resume", epoch=0, step=0, hyperparameters=trial.hyperparameters, snapshot=None)
            self.hook.runner_trial_start(trial=trial)
            return
        self.emit(
            "trial_start",
            params=trial.params,
            seed=trial.seed,
            config=trial.config,
            hyperparameters=trial.hyperparameters,
        )
        self.hook.runner_trial_start(trial=trial)

    def emit(self, event: str, **fields: Any) -> None:
        """Log an event of this trial; while an order from the control file is carried out,
        the event names it (``order``), which acknowledges it in ``status.json``."""
        if self.order is not None:
            fields["order"] = self.order
        self.log.emit(event, **{"trial": self.trial.id, **fields})
        self.state.events += 1

    # -- training -------------------------------------------------------------------------

    def train(self, epochs: int) -> None:
        """Epochs until the last; a rollback restarts from the epoch of its snapshot."""
        while self.trial.epoch < epochs:
            try:
                self.run_epoch()
            except RolledBack:
                continue

    def run_epoch(self) -> None:
        """The textbook epoch: mini-batch steps, an evaluation, then what the hooks decide."""
        trial, backend = self.trial, self.backend
        epoch = trial.epoch
        started = time.perf_counter()
        state = self.state
        if state.partial is None:
            backend.begin_epoch(epoch)
            done, total = 0, 0.0
        else:
            (done, total), state.partial = state.partial, None  # set again wherever the loop stops mid-epoch
        steps = backend.steps_per_epoch
        every_steps = self.spec.checkpoint.every_steps
        mail = self.mailbox.items
        # At a step boundary where the loop stops to act, state.partial says where the epoch
        # stands, for a snapshot taken there. A snapshot records the loss sum: first settle
        # what a GPU backend still owes.
        for _ in range(steps - done):
            if state.nudge_on_trial is not None and state.nudge_on_trial.served(trial.step):
                total += self.settle(epoch)  # a divergence in its last step still refuses it
                self.keep_nudge()
            if FLAG.requested:
                total += self.settle(epoch)
                state.partial = (done, total)
                self.interrupt()
            if mail or self.paused:
                total += self.settle(epoch)
                state.partial = (done, total)
                self.take_mail()
            if every_steps and done and trial.step % every_steps == 0 and trial.step != self.snapshot_step:
                total += self.settle(epoch)
                state.partial = (done, total)
                self.snapshot("steps", improved=False)
            loss = backend.train_step()
            trial.step += 1
            if loss is not None:
                total += self.checked(loss, epoch)
            done += 1
        total += self.settle(epoch)
        state.partial = None

        val = {f"val_{name}": value for name, value in backend.evaluate("val").items()}
        if (blown := val_divergence(val["val_loss"], state.lowest_val_loss, self.spec.divergence)) is not None:
            self.diverged(DivergenceEvent(blown[0], epoch, trial.step, val["val_loss"], blown[1]))
        if self.spec.divergence.collapse:
            dead = backend.dead_units()
            if (collapse := state.collapse.epoch_end(epoch, trial.step, total / steps, val, dead)) is not None:
                self.diverged(collapse)
            trial.collapse_signs = tuple(state.collapse.signs)
        state.lowest_val_loss = min(val["val_loss"], state.lowest_val_loss or math.inf)
        trial.hyperparameters = backend.hyperparameters()
        trial.recent_rollbacks = 0  # this epoch trained through
        if epoch + 1 > state.furthest:
            state.furthest, state.stuck_rollbacks = epoch + 1, 0
        metrics = {
            "train_loss": total / steps,
            **val,
            **trial.hyperparameters,
            "seconds": time.perf_counter() - started,
        }
        trial.epoch, trial.metrics = epoch + 1, metrics
        improved = self.track_best(metrics)
        self.emit("epoch_end", epoch=epoch, step=trial.step, **metrics)
        decisions = flatten(self.hook.runner_epoch_end(trial=trial, epoch=epoch, metrics=metrics))
        state.ending = self.apply(decisions, source="plugin")
        if state.ending is None:
            decisions = flatten([state.babysitter.epoch_end(trial, epoch, metrics)])
            state.ending = self.apply(decisions, source="strategy")
        options = self.spec.checkpoint
        if (options.every_epochs and trial.epoch % options.every_epochs == 0) or (improved and options.best):
            best = improved and options.best
            self.snapshot("best" if best else "epoch", improved=best)
        if state.ending is not None:
            raise state.ending

    def checked(self, loss: float, epoch: int) -> float:
        """A step's loss, once it is known to be finite and no spike (else a divergence)."""
        if not math.isfinite(loss):
            self.diverged(DivergenceEvent("non_finite_loss", epoch, self.trial.step, loss))
        if (detector := self.state.detector).spiked(loss):
            self.diverged(DivergenceEvent("loss_spike", epoch, self.trial.step, loss, detector.threshold()))
        if (collapse := self.state.collapse.stepped(loss, epoch, self.trial.step)) is not None:
            self.diverged(collapse)
        return loss

    def settle(self, epoch: int) -> float:
        """The sum of the losses the backend still owes (a GPU backend's last step), checked."""
        return sum(self.checked(loss, epoch) for loss in self.backend.pending_losses())

    def track_best(self, metrics: dict[str, float]) -> bool:
        """Keep ``trial.best``, the metrics of its best epoch so far; True if this epoch is the new best."""
        if self.metric not in metrics:
            raise RunnerError(
                f"the experiment's metric {self.metric!r} was not reported; reported: {', '.join(sorted(metrics))}"
            )
        score = metrics[self.metric]
        if not math.isfinite(score):
            return False
        if better(score, self.trial.best[self.metric] if self.trial.best else None, self.mode):
            self.trial.best = dict(metrics)
            return True
        return False

    def interrupt(self) -> None:
        """Ctrl-C or SIGTERM: save a durable snapshot of this very step, then stop the run."""
        trial = self.trial
        self.emit("interrupted", epoch=trial.epoch, step=trial.step)  # before the snapshot: a resume keeps it
        self.snapshot("interrupt", improved=False, durable=True)
        self.report_snapshots()
        raise Interrupted(
            f"interrupted at trial {trial.id}, epoch {trial.epoch}, step {trial.step}; "
            f"continue with: runner resume {self.runner.experiment.run_dir}"
        )

    # -- snapshots --------------------------------------------------------------------------

    def restore(self, meta: dict[str, Any], *, resume: bool) -> None:
        """Put the loop back where a snapshot was taken (``runner.engine.trial_state``): a rollback
        puts back where training stood and keeps counting; a resume puts back everything."""
        self.trial.epoch, self.trial.step = meta["epoch"], meta["step"]
        load_state(meta, self.trial, self.state, resume=resume)
        self.trial.collapse_signs = tuple(self.state.collapse.signs)
        self.snapshot_step = self.trial.step

    def snapshot(
        self,
        reason: str,
        *,
        improved: bool,
        durable: bool | None = None,
        in_ring: bool = True,
    ) -> None:
        """Take a snapshot; files written earlier are reported first (they had at least an
        epoch to be written, so this rarely waits), which keeps event order deterministic."""
        self.report_snapshots()
        trial, backend_state = self.trial, self.backend.state()
        if not all(np.isfinite(a).all() for a in backend_state.arrays.values() if a.dtype.kind == "f"):
            self.diverged(DivergenceEvent("non_finite_parameters", trial.epoch, trial.step, math.nan))
        self.snapshot_step = trial.step
        self.store.save(
            backend_state,
            epoch=trial.epoch,
            step=trial.step,
            reason=reason,
            best=improved,
            hyperparameters=trial.hyperparameters,
            metrics=trial.metrics,
            loop=save_state(trial, self.state),
            durable=durable,
            in_ring=in_ring,
        )

    def report_snapshots(self) -> None:
        """Wait for the trial's queued snapshot writes; log and announce each durable one."""
        for item in self.store.collect(wait=True):
            if isinstance(item, Exception):
                self.emit("checkpoint_error", message=f"{type(item).__name__}: {item}")
                continue
            checkpoint = item.to_json(relative_to=self.runner.experiment.run_dir)
            order = self.order
            if item.reason != "requested":  # a file written earlier: not what an order in progress asked for
                self.order = None
            try:
                self.emit("checkpoint", **checkpoint)
            finally:
                self.order = order
            self.hook.runner_checkpoint_saved(trial=self.trial, checkpoint=checkpoint)
