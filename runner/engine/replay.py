"""Replay one trial of a run, bit for bit: ``runner replay RUN_DIR --trial N``.

A babysat trial is its seed, its config, and what came from outside it: a person's orders
through the control file, the pruner's verdicts, ``runner resume --set``, and the points
where the run was interrupted and resumed. Everything else (the strategy's babysitter, the
divergence and collapse policy, the plugins' hooks) decides the same way again from the
same numbers. ``ReplayScript`` reads the outside part from the run's event log: each order
and the step boundary where the trial carried it out, as ``(rollbacks so far, step)``, a
key that no training step repeats (a rollback changes the count); each place the trial
went on in a new process (after Ctrl-C, a kill or a crash), where the replay takes the
snapshots the original took there and forgets, as a new process does, what only memory
held; and which snapshots became files (the original chose by the clock), so that a
rollback that reaches past memory finds what the original found.

The replay trains the trial again in a new run directory, delivering each order at its
key (``ScheduledMail``), then ``compare`` puts its events beside the original's: the same
events with the same values (times, snapshot file names and their ``checkpoint`` events
aside, which depend on the clock), and the same arrays in every snapshot file both kept.
The first difference is reported with the epoch and step where the two part.

Not covered, and refused by name: a trial whose worker died and was retried (its log
keeps the lost work), and one that was suspended and continued or took another trial's
snapshot (population-based training: its path depends on the other trials).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runner.control.inbox import OWN_ORDERS, Delivery, Mailbox, logged_delivery
from runner.decisions import NOTE_RESERVED, Decision, Note, Prune
from runner.engine.checkpoints import SnapshotWriter
from runner.engine.experiment import EndTrial, Experiment, TrialJob, build_strategy
from runner.engine.snapshot_files import CorruptSnapshot, read_snapshot, scan_snapshots, trial_folder
from runner.engine.trial_loop import TrialLoop, TrialRunner
from runner.errors import RunnerError
from runner.records.events import EventLog, read_events
from runner.records.files import create_run_dir, write_json
from runner.records.results import results_document
from runner.records.status import FILE_NAME as STATUS_FILE
from runner.records.status import StatusBoard

# Events whose presence or fields depend on the clock (when snapshot files were written) or
# on the run being stopped and started again, not on training: left out of the comparison.
UNCOMPARED_EVENTS = frozenset({"checkpoint", "checkpoint_error", "interrupted", "trial_resume"})
UNCOMPARED_FIELDS = frozenset({"t", "seconds", "path"})
REFUSED = {
    "trial_retry": "its worker died and it was retried (the log keeps the lost work)",
    "trial_suspend": "it was suspended and continued by its strategy (its path depends on the other trials)",
}


@dataclass(frozen=True)
class ResumePoint:
    """Where the original trial went on in a new process (``runner resume``): the replay
    takes the snapshots the original took there, and forgets what only memory held."""

    epoch: int
    step: int
    interrupted: bool  # Ctrl-C or SIGTERM: the original took an interrupt snapshot here first
    at_epoch_end: bool  # it went on from a snapshot taken at an epoch's end, before the next one began
    reason: str = "steps"  # why the file it went on from was taken (at a step boundary, after a kill)


@dataclass
class ReplayScript:
    """What came from outside trial ``trial``, in the order it was carried out."""

    trial: int
    params: dict[str, Any]
    seed: int
    start: dict[str, Any]  # the run's experiment_start event
    events: list[dict[str, Any]]  # the trial's own events, in order
    schedule: deque = field(default_factory=deque)  # ((rollbacks, step), Delivery | ResumePoint) at step boundaries
    epoch_end_resumes: deque = field(default_factory=deque)  # ((rollbacks, step), ResumePoint) at epoch ends
    # (epoch, step, reason, rollbacks) of the snapshot files it wrote (rollbacks None in older logs)
    written: Counter = field(default_factory=Counter)

    @classmethod
    def from_events(
        cls, events: list[dict[str, Any]], trial: int, where: str, run_dir: Path | None = None
    ) -> ReplayScript:
        """Read the script from a run's events (``where`` names the log, for errors; the
        snapshot files in ``run_dir`` say where a resumed trial went on); a RunnerError
        (exit 2) names what cannot be replayed, or what is damaged."""
        try:
            return cls._read(events, trial, where, run_dir)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise RunnerError(
                f"{where} is damaged: trial {trial}'s events cannot be read ({type(err).__name__}: {err})",
                exit_code=2,
            ) from None

    @classmethod
    def _read(cls, events: list[dict[str, Any]], trial: int, where: str, run_dir: Path | None) -> ReplayScript:
        start = next((e for e in events if e["event"] == "experiment_start"), None)
        if start is None:
            raise RunnerError(f"{where} has no experiment_start event: not a run's log", exit_code=2)
        mine = [e for e in events if e.get("trial") == trial]
        begun = next((e for e in mine if e["event"] == "trial_start"), None)
        if begun is None:
            found = sorted({e["trial"] for e in events if e["event"] == "trial_start"})
            raise RunnerError(
                f"trial {trial} never started in {where}; its trials: {', '.join(map(str, found)) or 'none'}",
                exit_code=2,
            )
        if not any(e["event"] == "trial_complete" for e in mine):
            raise RunnerError(
                f"trial {trial} has not ended in {where} (it is still running, or was interrupted and not "
                "resumed): only a trial that ended can be checked against its replay",
                exit_code=2,
            )
        for event in mine:
            if event["event"] in REFUSED:
                raise RunnerError(f"trial {trial} cannot be replayed: {REFUSED[event['event']]}", exit_code=2)
            if event["event"] == "rollback" and event.get("donor") is not None:
                raise RunnerError(
                    f"trial {trial} cannot be replayed: at step {event['from_step']} it took trial "
                    f"{event['donor']}'s snapshot (its path depends on the other trials)",
                    exit_code=2,
                )
        script = cls(trial, begun["params"], begun["seed"], start, mine)
        orders = given_orders(events)
        scheduled, rollbacks, position, interrupted = set(), 0, 0, False  # position: the step it stands at
        epoch_ends = {e["step"] for e in mine if e["event"] == "epoch_end"}
        # The trial's last events: the files reported as it ended, among them the best one
        # that only memory held until then (written at the end, not when it was taken).
        last = len(mine) - next(
            (i for i, e in enumerate(reversed(mine)) if e["event"] not in ("checkpoint", "trial_complete")), 0
        )
        for index, event in enumerate(mine):
            kind = event["event"]
            at = event.get("step", event.get("from_step", position))
            if kind == "interrupted":
                interrupted = True
            elif kind == "trial_resume" and event.get("snapshot"):
                folder = None if run_dir is None else trial_folder(run_dir, trial)
                at_epoch_end, reason = went_on_from(event, folder, interrupted, epoch_ends)
                point = ResumePoint(event["epoch"], at, interrupted, at_epoch_end, reason)
                (script.epoch_end_resumes if at_epoch_end else script.schedule).append(((rollbacks, at), point))
                interrupted = False
            elif kind == "checkpoint" and not (index >= last and event["reason"] == "best"):
                script.written[(event["epoch"], event["step"], event["reason"], event.get("rollbacks"))] += 1
            order = event.get("order")
            if order is not None and order not in scheduled:
                scheduled.add(order)
                delivery = orders.get(order) or pruner_order(event)
                if delivery is None:
                    raise RunnerError(
                        f"{where}: trial {trial}'s {kind} event at step {at} names order {order!r}, "
                        "which no event gives",
                        exit_code=2,
                    )
                script.schedule.append(((rollbacks, at), delivery))
            if kind in ("rollback", "divergence") and isinstance(event.get("rollbacks"), int):
                rollbacks = event["rollbacks"]
            if kind not in ("checkpoint", "checkpoint_error"):  # their step is the snapshot's, not the trial's
                position = event["to_step"] if kind == "rollback" else at
        return script


def went_on_from(resumed: dict[str, Any], folder: Path | None, interrupted: bool, epoch_ends: set) -> tuple[bool, str]:
    """Where a ``trial_resume`` went on from: whether its snapshot was taken at an epoch's
    end (before the next epoch drew its data order) rather than at a step boundary, and why
    it was taken. Its file in the trial's ``folder`` says so if it is still there (the log
    names it; only its name is used, so a log cannot point the replay outside the folder);
    else an interruption's snapshot is at a boundary, and one at the step where an epoch
    ended is that epoch's."""
    if interrupted:
        return False, "interrupt"
    if folder is not None:
        try:
            meta = read_snapshot(folder / Path(resumed["snapshot"]).name)[1]
            return meta["loop"].get("partial") is None, meta["reason"]
        except (OSError, CorruptSnapshot, RunnerError, KeyError):
            pass
    at_epoch_end = resumed["step"] in epoch_ends
    return at_epoch_end, "epoch" if at_epoch_end else "steps"


def given_orders(events: list[dict[str, Any]]) -> dict[str, Delivery]:
    """Every order the log records (the control file's, ``runner resume --set``'s, a
    strategy's continuation), by its name."""
    return {
        entry["order"]: logged_delivery(event, entry)
        for event in events
        if event["event"] == "control" or event["event"] in OWN_ORDERS
        for entry in event.get("orders") or ()  # all of them: one for "the next trial" names none
        if entry.get("decision") is not None
    }


def pruner_order(event: dict[str, Any]) -> Delivery | None:
    """A pruner's verdict, from the event that carried it out (the verdicts themselves are
    not logged before delivery: they depend on the other trials' curves)."""
    if event.get("source") != "pruner":
        return None
    decision: Decision
    if event["event"] == "prune":
        decision = Prune(event.get("reason", ""), event.get("rung"))
    elif event["event"] == "note":
        fields = {k: v for k, v in event.items() if k not in NOTE_RESERVED}
        decision = Note(event["kind"], event.get("reason", ""), fields)
    else:
        return None
    return Delivery(event["order"], decision, event["event"], source="pruner")


class ScheduledMail(deque):
    """A trial's mail in a replay: the loop looks at it at every step boundary (and again
    after each order it carries out), and each look first lets in the orders due at the
    trial's ``(rollbacks, step)``. Keys only grow, in the log and in training (a rollback
    adds one to the count): once the trial is past an order's key, the replay has parted
    from the original, and the trial ends there (``EndTrial``, failed) rather than train on
    without what came from outside it (a person's stop, say)."""

    def __init__(self, script: ReplayScript, trial) -> None:
        super().__init__()
        self.script, self.trial = script, trial

    def __len__(self) -> int:
        key = (self.trial.rollbacks, self.trial.step)
        schedule = self.script.schedule
        while schedule and schedule[0][0] == key:
            self.append(schedule.popleft()[1])
        for queue in (schedule, self.script.epoch_end_resumes):
            if queue and queue[0][0] < key:
                (rollbacks, step), missed = queue[0]
                what = f"order {missed.order}" if isinstance(missed, Delivery) else "a resume"
                raise EndTrial(
                    "failed",
                    f"the replay parted from the original: {what}, due at step {step} after {rollbacks} "
                    f"rollbacks, was never reached (the replay is at step {key[1]} after {key[0]})",
                )
        return super().__len__()


class ReplayMailbox(Mailbox):
    """The mailbox of a replayed trial: its orders come from the script, never from a file."""

    def __init__(self, script: ReplayScript, trial) -> None:
        super().__init__()
        self.items = ScheduledMail(script, trial)

    def wait(self, timeout: float) -> None:
        """A paused trial waits for nothing: its next order is due at this very step, or never."""
        if not self.items:
            raise EndTrial(
                "failed", "the replay is paused with no order left to resume it: it parted from the original"
            )


class ReplayLoop(TrialLoop):
    """The trial loop, with its mail from the script and the original's interruptions replayed."""

    def __init__(self, runner: TrialRunner, job, script: ReplayScript):
        super().__init__(runner, job)
        self.script = script
        self.mailbox = ReplayMailbox(script, self.trial)

    def carry_out(self, delivery) -> None:
        if isinstance(delivery, ResumePoint):
            self.went_on(delivery)
        else:
            super().carry_out(delivery)

    def snapshot(self, reason: str, *, improved: bool, durable: bool | None = None, in_ring: bool = True) -> None:
        """A snapshot becomes a file where the original's did (the original chose by the
        clock); one at an epoch's end where the original went on in a new process is
        followed by what that process did."""
        resumes = self.script.epoch_end_resumes
        went_on = reason in ("epoch", "best") and resumes and resumes[0][0] == (self.trial.rollbacks, self.trial.step)
        if went_on:
            durable = True  # the original went on from its file (whose checkpoint event the resume cut)
        if durable is None:
            written, trial = self.script.written, self.trial
            key = next(
                (
                    k
                    for k in (
                        (trial.epoch, trial.step, reason, trial.rollbacks),
                        (trial.epoch, trial.step, reason, None),
                    )
                    if written[k] > 0
                ),
                None,
            )
            durable = key is not None
            if durable:
                written[key] -= 1
        super().snapshot(reason, improved=improved, durable=durable, in_ring=in_ring)
        if went_on:
            self.went_on(resumes.popleft()[1])

    def went_on(self, point: ResumePoint) -> None:
        """What the original did where it went on in a new process: an interrupt snapshot
        (after Ctrl-C), then a resume snapshot of the same point, with only the snapshot
        files to go back to, unpaused."""
        if point.interrupted or not point.at_epoch_end:
            # Ctrl-C's snapshot; or, after a kill, the file at this boundary the new process
            # went on from (in the replay, the mail comes before a boundary's snapshot)
            self.snapshot(point.reason, improved=False, durable=True)
            self.report_snapshots()
        self.store.forget_memory()
        self.paused, self.restored_step = False, -1
        self.snapshot("resume", improved=False, durable=False)


class ReplayRunner(TrialRunner):
    """Runs the one replayed trial."""

    def __init__(self, *args, script: ReplayScript, **kwargs):
        super().__init__(*args, **kwargs)
        self.script = script

    def __call__(self, job):
        return ReplayLoop(self, job, self.script).run()


class ReplayInbox:
    """Stands in for the control inbox: nothing is read from a file; orders the script does
    not deliver are reported by ``compare``."""

    def __init__(self, script: ReplayScript) -> None:
        self.script = script

    def open(self, trial: int, mailbox=None):
        return Mailbox()  # replaced by ReplayLoop with the scheduled one

    def close_mailbox(self, trial: int, *, suspended: bool = False, carried=()) -> None:
        return None

    def notify(self, line: str) -> None:
        return None


@dataclass(frozen=True)
class Comparison:
    """How the replay compares with the original: ``parted`` is None when they agree."""

    events: int  # events compared
    snapshots: int  # snapshot files both kept, compared array by array
    parted: dict[str, Any] | None = None  # {epoch, step, event, what, matched_step}
    undelivered: list[str] = field(default_factory=list)  # orders the replay never reached

    def to_json(self) -> dict[str, Any]:
        return {
            "identical": self.parted is None and not self.undelivered,
            "events": self.events,
            "snapshots": self.snapshots,
            "parted": self.parted,
            "undelivered": self.undelivered,
        }


def comparable(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events as compared: those that do not depend on the clock, without the fields that do."""

    def timeless(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: timeless(v) for k, v in value.items() if k not in UNCOMPARED_FIELDS}
        return value

    return [timeless(e) for e in events if e["event"] not in UNCOMPARED_EVENTS]


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where two JSON values first differ (``changes.lr.new: 0.03 != 0.031``), or None.
    Floats are compared bit for bit (NaN equals NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in a or key not in b:
                mine, theirs = (repr(d[key]) if key in d else "missing" for d in (a, b))
                return f"{path}{key}: {mine} != {theirs}"
            found = first_difference(a[key], b[key], f"{path}{key}.")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{path}{i}.")
            if found:
                return found
        return None
    same = a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    return None if same and type(a) is type(b) else f"{path.rstrip('.') or 'value'}: {a!r} != {b!r}"


def compare(script: ReplayScript, replayed: list[dict[str, Any]], original_dir: Path, replay_dir: Path) -> Comparison:
    """The original trial's events and snapshot files against the replay's (see the module)."""
    ours, theirs = comparable(script.events), comparable([e for e in replayed if e.get("trial") == script.trial])
    matched_step = 0
    parted = None
    for i in range(max(len(ours), len(theirs))):
        a = ours[i] if i < len(ours) else None
        b = theirs[i] if i < len(theirs) else None
        what = (
            first_difference(a, b)
            if a is not None and b is not None
            else f"the {'replay' if b is None else 'original'} has no more events"
        )
        if what is not None:
            at = a or b
            parted = {
                "epoch": at.get("epoch", at.get("to_epoch")),
                "step": at.get("step", at.get("from_step")),
                "event": at["event"],
                "what": what,
                "matched_step": matched_step,
            }
            break
        matched_step = a.get("step", a.get("to_step", matched_step))
    snapshots = 0
    if parted is None:
        snapshots, parted = compare_snapshots(script.trial, original_dir, replay_dir)
    undelivered = [d.order if isinstance(d, Delivery) else f"resume at step {d.step}" for _, d in script.schedule]
    undelivered += [f"resume at step {d.step}" for _, d in script.epoch_end_resumes]
    return Comparison(len(ours), snapshots, parted, undelivered)


def compare_snapshots(trial: int, original_dir: Path, replay_dir: Path) -> tuple[int, dict[str, Any] | None]:
    """Every snapshot file of the trial that both runs kept, array by array, bit for bit;
    files are matched by what they hold (epoch, step, why, rollbacks so far), not by name."""

    def keyed(run_dir: Path) -> dict[tuple, Path]:
        folder = trial_folder(run_dir, trial)
        if not folder.is_dir():
            return {}
        return {
            (m["epoch"], m["step"], m["reason"], m["loop"].get("rollbacks")): path for path, m in scan_snapshots(folder)
        }

    theirs = keyed(replay_dir)
    compared = 0
    for key, path in sorted(keyed(original_dir).items(), key=lambda item: item[0][:2]):
        if key not in theirs:
            continue
        try:
            a, _ = read_snapshot(path)
            b, _ = read_snapshot(theirs[key])
        except CorruptSnapshot:
            continue
        compared += 1
        for name in sorted(set(a.arrays) | set(b.arrays)):
            x, y = a.arrays.get(name), b.arrays.get(name)
            if x is None or y is None or x.shape != y.shape or x.tobytes() != y.tobytes():
                differs = "missing" if x is None or y is None else f"{int(np.sum(x != y))} values differ"
                return compared, {
                    "epoch": key[0],
                    "step": key[1],
                    "event": "snapshot",
                    "what": f"{name} in the {key[2]} snapshot: {differs}",
                    "matched_step": None,
                }
    return compared, None


@dataclass(frozen=True)
class Replayed:
    """A finished replay: its run directory, the trial's result and the comparison."""

    run_dir: Path
    result: Any  # TrialResult
    comparison: Comparison


def replay_trial(original: Path, script: ReplayScript, out: Path, plugins, spec, dataset) -> Replayed:
    """Train the script's trial of the run in ``original`` again in a new run directory
    under ``out``, with the script's orders, and compare (``runner replay``). ``spec`` is the
    original's experiment as it ran, with ``plugins`` loaded as the original's were, and
    ``dataset`` its data."""
    trial, start = script.trial, script.start
    weights = ((start.get("started_from") or {}).get("weights") or {}).get("path")
    if weights is not None and not Path(weights).is_file():
        raise RunnerError(
            f"trial {trial} started from the weights in {weights} (runner start --from --weights), "
            "which are gone: they cannot be replayed",
            exit_code=2,
        )
    run_dir = create_run_dir(out, f"{spec.name}-replay-t{trial:03d}")
    write_json(run_dir / "experiment.json", {**spec.raw, "seed": spec.seed})
    strategy = build_strategy(spec, plugins.registry)
    experiment = Experiment(spec, run_dir, 1)
    with EventLog(run_dir / "events.jsonl") as log:
        status = StatusBoard(run_dir / STATUS_FILE, control={"path": None, "settings": list(spec.backend_class.live)})
        log.observers.append(status.observe)
        strategy.write_note = lambda note: None
        log.emit(
            "experiment_start",
            **{k: v for k, v in start.items() if k not in ("t", "event", "run_dir", "planned_trials")},
            run_dir=str(run_dir.resolve()),
            planned_trials=1,
        )
        orders = sum(isinstance(d, Delivery) for _, d in script.schedule)
        resumes = len(script.schedule) - orders + len(script.epoch_end_resumes)
        log.emit("replay", of=str(original.resolve()), replayed_trial=trial, orders=orders, resumes=resumes)
        plugins.hook.runner_experiment_start(experiment=experiment)
        writer = SnapshotWriter()
        try:
            runner = ReplayRunner(
                experiment, plugins, dataset, log, writer, ReplayInbox(script), strategy, script=script
            )
            result = runner(TrialJob(trial, script.params, script.seed, weights=weights))
        finally:
            writer.close()
        write_json(
            run_dir / "results.json", results_document(spec.name, spec.search.metric, spec.search.mode, [result])
        )
        comparison = compare(script, list(read_events(run_dir / "events.jsonl")), original, run_dir)
        log.emit("replay_check", **comparison.to_json())
        log.emit("experiment_complete", trials=1, best_trial=trial, stopped_early=False)
        plugins.hook.runner_experiment_complete(experiment=experiment, results=[result])
    return Replayed(run_dir, result, comparison)
