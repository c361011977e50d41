"""What decisions do to a running trial: nudges, rollbacks, ends, pauses, notes and
checkpoints, whoever asks (a hook, the strategy's babysitter, the divergence policy, a
person through the control file), and the person's orders as they arrive.

``TrialDecisions`` is the half of ``TrialLoop`` (``runner.engine.trial_loop``) that carries
them out, at a step boundary or at the end of an epoch. It works on the loop's trial, its
backend, its resumable state (``runner.engine.trial_state``) and its snapshot store, and
writes events with the loop's ``emit``; it takes snapshots with the loop's ``snapshot``.
"""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from runner.backend import BackendState
from runner.control.inbox import Delivery
from runner.control.refusal import NudgeOnTrial, settings
from runner.decisions import Checkpoint, Finish, Note, Nudge, Pause, Prune, Rollback, Stop, Suspend, Unpause, flatten
from runner.engine.checkpoints import NoSnapshot
from runner.engine.divergence import DivergenceEvent
from runner.engine.experiment import EndTrial
from runner.engine.interrupt import FLAG
from runner.errors import SpecError
from runner.experiment_file.typed import check_field

# Rollbacks without reaching a new epoch, whoever asks: a plugin that always rolls back must not loop forever.
MAX_ROLLBACKS = 100


class RolledBack(Exception):
    """Raised inside an epoch after a rollback: the epoch loop starts again from the snapshot.
    ``after`` holds what the babysitter decided on hearing of it, to apply to the restored state."""

    def __init__(self, after: list | None = None):
        super().__init__()
        self.after = after or []


class TrialDecisions:
    """Carries out decisions on the running trial; ``TrialLoop`` inherits it (see the module)."""

    def apply(self, decisions: list, source: str) -> EndTrial | None:
        """Apply decisions in order. An end (Stop, Prune, Finish, Suspend) is returned, so the
        epoch's snapshot is still taken before it. A rollback happens at once: what the babysitter
        answers to it, then the decisions after it, apply to the restored state, then
        RolledBack is raised (the epoch loop starts again from the snapshot)."""
        trial = self.trial
        for index, decision in enumerate(decisions):
            if isinstance(decision, Nudge):
                self.nudge(decision, source)
            elif isinstance(decision, Rollback):
                try:
                    self.rollback(decision, source)
                except NoSnapshot as missing:
                    if self.order is not None:  # an order (a person's, a strategy's): reported, and training goes on
                        raise
                    raise EndTrial("diverged" if source == "divergence" else "failed", str(missing)) from None
                except RolledBack as rolled:
                    order, self.order = self.order, None  # what the babysitter answers is not the order's doing
                    try:
                        ending = self.apply(rolled.after, "strategy")
                    finally:
                        self.order = order
                    ending = ending or self.apply(decisions[index + 1 :], source)
                    if ending is not None:
                        raise ending from None
                    raise
            elif isinstance(decision, Note):
                self.emit(
                    "note",
                    epoch=trial.epoch,
                    step=trial.step,
                    kind=decision.kind,
                    reason=decision.reason,
                    source=source,
                    **decision.fields,
                )
            elif isinstance(decision, Suspend):
                return EndTrial("suspended", decision.reason)
            elif isinstance(decision, Finish):
                self.emit("finish", epoch=trial.epoch, step=trial.step, reason=decision.reason, source=source)
                return EndTrial("completed", decision.reason)
            elif isinstance(decision, Prune):
                rung = {} if decision.rung is None else {"rung": decision.rung}
                self.emit("prune", epoch=trial.epoch, step=trial.step, reason=decision.reason, source=source, **rung)
                return EndTrial("pruned", decision.reason)
            elif isinstance(decision, Stop):
                self.emit(
                    "stop",
                    epoch=trial.epoch,
                    step=trial.step,
                    reason=decision.reason,
                    source=source,
                    experiment=decision.experiment,
                )
                return EndTrial("stopped", decision.reason, experiment=decision.experiment)
            elif isinstance(decision, Pause):
                self.paused = True
                self.emit("pause", epoch=trial.epoch, step=trial.step, reason=decision.reason, source=source)
            elif isinstance(decision, Unpause):
                self.paused = False
                self.emit("unpause", epoch=trial.epoch, step=trial.step, reason=decision.reason, source=source)
            elif isinstance(decision, Checkpoint):
                self.snapshot("requested", improved=False, durable=True)
                self.report_snapshots()
        return None

    def take_mail(self) -> None:
        """At a step boundary: carry out the control file's orders, oldest first; while
        paused, wait here for more (a resume, a stop, anything), still answering Ctrl-C.
        After a rollback the orders behind it wait for the next step."""
        mail = self.mailbox.items
        while True:
            while mail:
                self.carry_out(mail.popleft())
            if not self.paused:
                return
            if FLAG.requested:
                self.interrupt()
            self.mailbox.wait(0.2)

    def carry_out(self, delivery: Delivery) -> None:
        """Called by ``take_mail`` on the training thread: one order, from the control file
        or from the driver (a pruner's verdict: ``delivery.source``). One that cannot be
        carried out (no snapshot to roll back to, a value the backend refuses) is reported
        and training goes on."""
        notify, label = (
            self.runner.inbox.notify,
            escape(f"t{self.trial.id:03d} step {self.trial.step}: {delivery.what}"),
        )
        by = "control.json" if delivery.source == "control" else delivery.source
        if delivery.source in ("pruner", "strategy"):  # the run's own orders: the trial's end line says it
            notify = lambda line: None  # noqa: E731
        self.order = delivery.order
        try:
            ending = self.apply([delivery.decision], source=delivery.source)
        except (NoSnapshot, SpecError, ValueError) as err:
            self.emit("control_error", epoch=self.trial.epoch, step=self.trial.step, message=f"{delivery.what}: {err}")
            notify(f"[red]{label}: {escape(str(err))}[/]")
            return
        except RolledBack:
            notify(f"{label} ({by})")
            raise
        finally:
            self.order = None
        notify(f"{label} ({by})")
        if ending is not None:
            raise ending

    def nudge(self, nudge: Nudge, source: str) -> None:
        """Set live hyperparameters from the next step on, after a snapshot of this very
        point, so that a rollback to ``before_nudge`` undoes it."""
        live, backend, state = self.backend_cls.live, self.backend, self.state
        for name, value in nudge.changes.items():
            if name not in live:
                raise SpecError(
                    f"nudge.{name}",
                    f"not a live hyperparameter of backend {self.spec.backend.name!r}; live: {', '.join(live)}",
                )
            if name in self.backend_cls.Train.__dataclass_fields__:
                check_field(self.backend_cls.Train, name, value, f"nudge.{name}")
        grace = self.spec.divergence.nudge_grace_steps if source == "control" else 0
        # A strategy's try, and a person's nudge on trial, are written to disk, so that a
        # resumed run can still revert or refuse them.
        self.snapshot(
            "before_nudge",
            improved=False,
            durable=source == "strategy" or grace > 0,
            in_ring=self.trial.step != self.restored_step,
        )
        state.before_nudge_events = state.events  # as the snapshot recorded it
        before = backend.hyperparameters()
        backend.set_hyperparameters(**nudge.changes)
        self.trial.hyperparameters = backend.hyperparameters()
        change = {k: {"old": before[k], "new": self.trial.hyperparameters[k]} for k in nudge.changes}
        state.nudge_on_trial = None  # only the latest nudge can be undone by going back to the snapshot before it
        if grace > 0:
            state.nudge_on_trial = NudgeOnTrial.of(
                self.order, self.trial.step, grace, change, state.before_nudge_events
            )
        on_trial = {"refusable_until": state.nudge_on_trial.until} if state.nudge_on_trial else {}
        self.emit(
            "nudge",
            epoch=self.trial.epoch,
            step=self.trial.step,
            changes=change,
            source=source,
            reason=nudge.reason,
            **on_trial,
        )
        self.hook.runner_nudge_applied(trial=self.trial, change=change, source=source)
        state.babysitter.nudge_applied(self.trial, change, source)

    def diverged(self, event: DivergenceEvent) -> None:
        """Report a divergence and undo the person's nudge that caused it (see ``refuse``),
        or else carry out the policy's answer; never returns normally."""
        trial = self.trial
        if self.order is not None:  # found while carrying out an order, which never took effect
            message = f"not applied: the trial diverged first ({event.kind})"
            self.emit("control_error", epoch=event.epoch, step=event.step, message=message)
            self.order = None
        self.emit(
            "divergence", **event.to_json(), lr=self.backend.hyperparameters().get("lr"), rollbacks=trial.rollbacks
        )
        if self.refusable(event):
            try:
                raise self.apply([self.refuse(event)], source="control")
            finally:
                self.order = None
        decision = self.hook.runner_divergence(trial=trial, event=event, experiment=self.runner.experiment)
        if decision is None:
            n = trial.divergence_rollbacks
            tried = f" after {n} rollback{'s' * (n != 1)}" if n else ""
            raise EndTrial("diverged", f"{event.kind} at step {event.step}{tried}")
        if not isinstance(decision, (Rollback, Stop, Prune)):
            raise TypeError(f"runner_divergence answered {decision!r}; it may answer Rollback, Stop, Prune or None")
        raise self.apply([decision], source="divergence")

    def refusable(self, event: DivergenceEvent) -> bool:
        """True if ``event`` came within the grace steps of a person's nudge whose snapshot
        from just before it is still at hand (after a resume, only if a file held it)."""
        nudge = self.state.nudge_on_trial
        if nudge is None or not nudge.covers(event):
            return False
        found = self.store.find("before_nudge")
        return found is not None and found[1]["loop"]["events"] == nudge.snapshot_events

    def refuse(self, event: DivergenceEvent) -> Rollback:
        """Called by ``diverged`` for a divergence ``refusable`` says a person's nudge caused:
        write its ``nudge_refused`` event and return the rollback that undoes it, to be carried
        out for its order (source ``control``: no lr cut, not counted against
        ``divergence.max_rollbacks``). Leaves ``self.order`` set to the nudge's order."""
        nudge, self.state.nudge_on_trial = self.state.nudge_on_trial, None
        refused = nudge.refused(event)
        self.order = nudge.order
        self.emit("nudge_refused", **refused)
        label = escape(f"t{self.trial.id:03d} step {event.step}: {settings(nudge.asked)} refused: {refused['reason']}")
        self.runner.inbox.notify(f"[red]{label}[/] (control.json)")
        return Rollback("before_nudge", reason=f"nudge refused: {event.kind} at step {event.step}")

    def keep_nudge(self) -> None:
        """Called at the step boundary where a person's nudge has trained through its grace
        steps without diverging: it is kept, and can no longer be refused."""
        nudge, self.state.nudge_on_trial = self.state.nudge_on_trial, None
        self.order = nudge.order
        try:
            self.emit("nudge_kept", **nudge.kept(self.trial.epoch, self.trial.step))
        finally:
            self.order = None

    def rollback(self, rollback: Rollback, source: str) -> None:
        """Restore a snapshot (from memory when it can), or take another trial's, then cut
        lr and reshuffle as asked."""
        trial, backend, state = self.trial, self.backend, self.state
        if state.stuck_rollbacks >= MAX_ROLLBACKS:
            raise EndTrial(
                "failed",
                f"{state.stuck_rollbacks} rollbacks without reaching a new epoch: "
                "something keeps rolling this trial back",
            )
        saved, meta, donor = self.find_snapshot(rollback)
        before, step_before, epoch_before = backend.hyperparameters(), trial.step, trial.epoch
        lr_before = before.get("lr")
        backend.load_state(saved)
        if donor is None:
            self.restore(meta, resume=False)
            self.store.abandon(after=meta["loop"]["events"], until=state.events)
        else:
            self.take_over(meta)
        self.restored_step = trial.step
        state.nudge_on_trial = None  # a rollback undid the person's nudge on trial, or moved on from it: it is over
        if rollback.reshuffle:
            backend.reshuffle(trial.rollbacks + 1)  # salted with the rollback's own count
        if rollback.lr_factor is not None:
            lower = min(backend.hyperparameters()["lr"], lr_before)
            backend.set_hyperparameters(lr=lower * rollback.lr_factor)
        # Counted once it is done (a value the backend refuses above leaves the count alone:
        # runner replay keys orders by it).
        trial.rollbacks += 1
        state.stuck_rollbacks += 1
        if source == "divergence":
            trial.divergence_rollbacks += 1
            trial.recent_rollbacks += 1
        trial.hyperparameters = backend.hyperparameters()
        done = dict(
            to_epoch=trial.epoch,
            to_step=trial.step,
            from_epoch=epoch_before,
            from_step=step_before,
            snapshot=meta["reason"],
            reason=rollback.reason,
            source=source,
            lr_before=lr_before,
            lr_after=trial.hyperparameters.get("lr"),
            reshuffled=rollback.reshuffle,
            rollbacks=trial.rollbacks,
        )
        if donor is not None:
            done.update(
                donor=rollback.trial,
                donor_snapshot=str(donor.relative_to(self.runner.experiment.run_dir)),
                changes={k: {"old": before[k], "new": v} for k, v in trial.hyperparameters.items()},
            )
        self.emit("rollback", **done)
        if donor is not None:  # the first snapshot of the path it took: what a rollback now returns to
            self.snapshot("exploit", improved=False, durable=True)
        raise RolledBack(flatten([state.babysitter.rolled_back(trial, done)]))

    def find_snapshot(self, rollback: Rollback) -> tuple[BackendState, dict, Path | None]:
        """The snapshot a rollback asks for: this trial's, or the file of the trial it names
        (then with that file's path); NoSnapshot if there is none."""
        to, donor = rollback.to, rollback.trial
        which = {"last": "snapshot", "best": "best snapshot", "before_nudge": "snapshot from before a nudge"}
        described = which.get(to, f"snapshot of epoch {to}")
        if rollback.upto_step is not None:
            described += f" from step {rollback.upto_step} or earlier"
        if donor is None or donor == self.trial.id:
            found = self.store.find(to, rollback.older, rollback.upto_step)
            if found is None:
                raise NoSnapshot(f"no {described} to roll back to (in memory or on disk)")
            return (*found, None)
        taken = self.runner.storage.trial_snapshot(donor, to, rollback.older)
        if taken is None:
            raise NoSnapshot(f"trial {donor} has no {described} file to take")
        path, saved, meta = taken
        return saved, meta, path

    def take_over(self, meta: dict) -> None:
        """After loading another trial's snapshot: go on from its epoch and step, with the
        divergence checks that follow its weights; this trial keeps its own record (best
        epoch, metrics, counts), and its own snapshots, of the path it left, are no longer
        rolled back to."""
        trial, state, loop = self.trial, self.state, meta["loop"]
        trial.epoch, trial.step = meta["epoch"], meta["step"]
        state.detector.load_state(loop.get("detector") or {})
        state.collapse.load_state(loop.get("collapse") or {})
        trial.collapse_signs = tuple(state.collapse.signs)
        state.lowest_val_loss = loop.get("lowest_val_loss")
        state.partial = None
        self.store.abandon(after=0, until=state.events)
