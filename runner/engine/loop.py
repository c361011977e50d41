"""The experiment loop: ask the strategy, hand trials to the executor, tell the strategy.

Read it top to bottom: ``run_experiment`` opens the run (the log, ``status.json``, the
control file), drives the executor until the strategy has no more trials, and closes the
run (``results.json``). Each trial is trained by ``runner.engine.trial_loop``; what both share is
in ``runner.engine.experiment``. Every experiment hook is called here, next to the event it writes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from runner import __version__
from runner.control.file import FILE_NAME as CONTROL_FILE
from runner.control.file import ControlSchema, initial_document
from runner.control.inbox import ControlInbox, Delivery, describe
from runner.data import Dataset
from runner.decisions import Nudge, decision_to_json
from runner.engine.checkpoints import SnapshotWriter
from runner.engine.event_feed import EventFeed
from runner.engine.experiment import Experiment, TrialJob, build_pruner, build_strategy, end_elsewhere, trial_seed
from runner.engine.interrupt import FLAG, Interrupted
from runner.engine.plugin_manager import Plugins
from runner.engine.pruning import PruneJudge
from runner.engine.resume import ResumePlan, newest_intact_snapshot, rewrite_events
from runner.engine.trial_loop import TrialRunner
from runner.errors import RunnerError
from runner.execution.worker import WorkerSetup
from runner.executor import Session
from runner.experiment_file.spec import ExperimentSpec, trial_sections
from runner.history import History
from runner.records.events import EventLog
from runner.records.files import write_json
from runner.records.results import leaderboard, results_document
from runner.records.status import FILE_NAME as STATUS_FILE
from runner.records.status import StatusBoard
from runner.strategy import Continue
from runner.trial import TrialResult


def run_experiment(
    spec: ExperimentSpec,
    plugins: Plugins,
    dataset: Dataset,
    run_dir: Path,
    resume: ResumePlan | None = None,
    *,
    poll: bool = False,
    notify: Callable[[str], None] = lambda message: None,
    origin: dict[str, Any] | None = None,
    watchers: list[Callable[[dict[str, Any]], None]] = (),
) -> list[TrialResult]:
    """Run every trial the strategy asks for; write the event log, ``status.json`` and
    ``results.json``, and take orders from the control file while trials train.

    With ``resume`` (see ``runner.engine.resume``), the run directory's log is first cut to what
    ``resume`` keeps; its interrupted trials continue before any new one is asked for.
    ``poll`` watches the control file by polling (for file systems without inotify);
    ``notify`` shows a person what the control file did (a line of rich markup); ``origin``
    names the earlier run's trial whose config this run starts from (``runner start --from``);
    ``watchers`` are called with every event as it is written (the terminal's live view).
    Returns the leaderboard, best first.
    """
    run = ExperimentRun(spec, plugins, dataset, run_dir, resume, origin)
    run.prepare()
    past = resume.events if resume is not None else ()
    with EventLog(run_dir / "events.jsonl") as log, EventFeed(plugins, run.experiment, notify, past) as feed:
        log.observers.append(feed.observe)  # plugins' runner_event: the whole log, on a thread of its own
        run.open(log, poll=poll, notify=notify, watchers=watchers)
        run.announce(origin)
        stopping = run.drive()
        return run.close(stopping)


class ExperimentRun:
    """One run of an experiment, from its first event to ``results.json``: each step is a
    method, in the order ``run_experiment`` calls them."""

    def __init__(
        self,
        spec: ExperimentSpec,
        plugins: Plugins,
        dataset: Dataset,
        run_dir: Path,
        resume: ResumePlan | None,
        origin: dict[str, Any] | None = None,
    ):
        self.spec, self.plugins, self.dataset, self.run_dir, self.resume = spec, plugins, dataset, run_dir, resume
        started_from = origin if resume is None else resume.start.get("started_from")
        # runner start --from RUN --weights: the snapshot every new trial starts from
        self.weights = ((started_from or {}).get("weights") or {}).get("path")
        self.strategy = build_strategy(spec, plugins.registry)
        self.experiment = Experiment(spec, run_dir, self.strategy.planned_trials())
        self.as_run = {**spec.raw, "seed": spec.seed}  # the seed in force
        self.history, self.waiting = History(), []  # the trials asked for; those a resume continues first
        self.overrides: list[tuple[int, Delivery]] = []  # runner resume --set's orders, by trial

    def prepare(self) -> None:
        """Before the log opens: a new run writes ``experiment.json``; a resumed one cuts its
        log to what the plan keeps and rebuilds the history (telling the strategy the
        finished trials) and the jobs of its interrupted trials."""
        spec, resume = self.spec, self.resume
        if resume is None:
            write_json(self.run_dir / "experiment.json", self.as_run)
            return
        rewrite_events(self.run_dir, resume.events)
        self.history = History.from_events(resume.events)
        for record in self.history.finished:
            self.strategy.tell(self.history, record.result)
        self.waiting = [
            TrialJob(
                r.id,
                r.params,
                trial_seed(spec.seed, r.id),
                resume=_str(resume.continue_from[r.id]),
                announced=r.id not in resume.unannounced,
                weights=self.weights,
            )
            for r in self.history.running
        ]

    def open(
        self,
        log: EventLog,
        *,
        poll: bool,
        notify: Callable[[str], None],
        watchers: list[Callable[[dict[str, Any]], None]],
    ) -> None:
        """The log's readers: ``status.json``, the control file's inbox, the watchers, a
        count of each trial's events (a retried trial goes on from it), and the pruner's
        judge (``runner.engine.pruning``), if the file names a pruner."""
        past = [] if self.resume is None else self.resume.events
        backend_cls = self.spec.backend_class
        control_path = self.run_dir / CONTROL_FILE
        self.log = log
        self.strategy.write_note = note_writer(log, past)
        schema = ControlSchema.for_backend(backend_cls)
        self.status = StatusBoard(
            self.run_dir / STATUS_FILE,
            control={
                "path": str(control_path.resolve()),
                "settings": list(backend_cls.live),
                "bounds": schema.recorded_bounds(),
            },
        )
        self.inbox = ControlInbox(
            control_path,
            schema,
            log,
            poll=poll,
            notify=notify,
            on_idle=self.status.flush,
        )
        pruner = build_pruner(self.spec, self.plugins.registry)
        self.pruning = None if pruner is None else PruneJudge(pruner, self.inbox)
        if self.resume is not None:
            self.status.replay(self.resume.events)  # what the run had done before
            suspended = {r.id for r in self.history.waiting}
            self.inbox.resume(self.resume.events, continuing=set(self.resume.continue_from), suspended=suspended)
            self.overrides = self.hold_overrides()
            if self.pruning is not None:
                self.pruning.replay(self.resume.events, continuing=set(self.resume.continue_from))
        log.observers.append(self.status.observe)
        log.observers.extend(watchers)
        self.logged = logged = Counter(e["trial"] for e in past if "trial" in e)  # each trial's events in the log

        def count(event: dict[str, Any]) -> None:
            if "trial" in event:
                logged[event["trial"]] += 1

        log.observers.append(count)
        if self.pruning is not None:
            log.observers.append(self.pruning.observe)

    def hold_overrides(self) -> list[tuple[int, Delivery]]:
        """``runner resume --set``: a nudge with source ``resume`` for each trial that goes on,
        waiting in its mailbox, so it is in force from its first step."""
        settings = self.resume.settings
        if not settings:
            return []
        number = sum(1 for e in self.resume.events if e["event"] == "resume") + 1
        nudge = Nudge(settings, reason="runner resume --set")
        held = [
            (trial, Delivery(f"resume.{number}.{trial}", nudge, describe(nudge), source="resume"))
            for trial in sorted(self.resume.continue_from)
        ]
        for trial, delivery in held:
            self.inbox.owe(trial, delivery)
        return held

    def announce(self, origin: dict[str, Any] | None) -> None:
        """The run's first event: ``experiment_start``, or ``resume`` naming what goes on."""
        spec, search = self.spec, self.spec.search
        if self.resume is None:
            self.log.emit(
                "experiment_start",
                name=spec.name,
                seed=spec.seed,
                run_dir=str(self.run_dir.resolve()),
                base_dir=str(spec.base_dir),
                plugins=self.plugins.origins,
                plugin_files=self.plugins.extra,
                runner_version=__version__,
                metric=search.metric,
                mode=search.mode,
                planned_trials=self.experiment.planned_trials,
                started_from=origin,
            )
        else:
            self.log.emit(
                "resume",
                trials={str(j.trial): j.resume for j in self.waiting},
                notes=self.resume.notes,
                runner_version=__version__,
                settings=self.resume.settings,
                orders=[
                    {"order": d.order, "trial": trial, "what": d.what, "decision": decision_to_json(d.decision)}
                    for trial, d in self.overrides
                ],
            )

    def drive(self) -> bool:
        """Ask, run, tell until the strategy has no more trials, a person stops the run or a
        trial's result ends it; start the control file and the executor first, close them
        last (stopping the trials still running when an error ends the run). Returns whether
        the run stopped early."""
        spec, plugins, log, inbox, hook = self.spec, self.plugins, self.log, self.inbox, self.plugins.hook
        history, strategy, waiting = self.history, self.strategy, self.waiting
        writer, executor, aborting = SnapshotWriter(), None, True
        stopping = any(r.result.ends_experiment for r in history.finished)  # a resumed run that was stopping
        try:
            inbox.start(initial_control(spec, spec.backend_class.live), fresh=self.resume is None)
            self.status.set_control(watching=inbox.mode)  # polling if inotify could not be had
            hook.runner_experiment_start(experiment=self.experiment)
            run_trial = TrialRunner(self.experiment, plugins, self.dataset, log, writer, inbox, strategy)
            setup = WorkerSetup(
                self.as_run,
                str(spec.base_dir),
                tuple(plugins.extra),
                str(self.run_dir),
                self.experiment.planned_trials,
                self.dataset,
                ("runner.execution.worker", spec.backend_class.__module__),
            )
            session = Session(setup, log, inbox, hook, self.run_dir, spec.search.metric, self.logged, spec.plugins)
            executor = plugins.registry.get("executor", spec.executor.name)(
                spec.executor.options, run_trial=run_trial, session=session
            )
            while True:
                while not stopping and executor.has_room():
                    if FLAG.requested:
                        if executor.pending():  # trials running elsewhere save a snapshot; next_result waits
                            break
                        log.emit("interrupted", between_trials=True)
                        raise Interrupted(f"interrupted between trials; continue with: runner resume {self.run_dir}")
                    if (stop := inbox.take_run_stop()) is not None:
                        log.emit(
                            "stop", reason=stop.decision.reason, source="control", experiment=True, order=stop.order
                        )
                        stopping = True
                        break
                    if waiting:
                        executor.submit(waiting.pop(0))
                        continue
                    params = strategy.ask(history)
                    if params is None:
                        break
                    if isinstance(params, Continue):
                        executor.submit(self.continuation(params))
                        continue
                    trial_id = len(history)
                    history.add(trial_id, params)
                    log.emit("trial_queued", queued=trial_id, params=params)  # a resume knows it, started or not
                    executor.submit(TrialJob(trial_id, params, trial_seed(spec.seed, trial_id), weights=self.weights))
                if executor.pending() == 0:
                    break
                result = executor.next_result()
                if self.pruning is not None:
                    self.pruning.check()
                if result.state == "suspended":
                    history.suspend(result)
                    continue
                history.finish(result)
                strategy.tell(history, result)
                stopping = stopping or result.ends_experiment
            self.end_waiting("the run stopped while it was suspended" if stopping else "its strategy left it suspended")
            aborting = False
        except Interrupted:
            aborting = False
            raise
        finally:
            if executor is not None:
                executor.close(aborting=aborting)
            writer.close()
            inbox.close()
        return stopping

    def continuation(self, order: Continue) -> TrialJob:
        """A suspended trial its strategy continues: the ``trial_continue`` event, the
        decisions held for its mailbox as orders (source ``strategy``), and the job that goes
        on from its newest snapshot file."""
        trial_id = order.trial
        record = next((r for r in self.history.waiting if r.id == trial_id), None)
        if record is None:
            name = self.spec.search.strategy.name
            raise RunnerError(f"strategy {name!r} asked to continue trial {trial_id}, which is not suspended")
        snapshot, meta = newest_intact_snapshot(self.run_dir, trial_id, [])
        first = self.logged[trial_id]
        deliveries = [
            Delivery(f"continue.{trial_id}.{first}.{i}", decision, describe(decision), source="strategy")
            for i, decision in enumerate(order.decisions)
        ]
        self.log.emit(
            "trial_continue",
            trial=trial_id,
            epoch=meta["epoch"] if meta else 0,
            reason=order.reason,
            orders=[{"order": d.order, "what": d.what, "decision": decision_to_json(d.decision)} for d in deliveries],
        )
        for delivery in deliveries:
            self.inbox.hold(trial_id, delivery)
        self.history.continue_trial(trial_id)
        seed = trial_seed(self.spec.seed, trial_id)
        return TrialJob(
            trial_id,
            record.params,
            seed,
            resume=_str(snapshot),
            announced=True,
            logged=self.logged[trial_id],
            continues_at=record.suspensions[-1].epochs,
        )

    def end_waiting(self, reason: str) -> None:
        """Trials still suspended when no more will run end ``stopped``, as they stood."""
        for record in self.history.waiting:
            self.inbox.forget(record.id)
            result = replace(record.suspensions[-1], state="stopped", reason=reason)
            seed = trial_seed(self.spec.seed, record.id)
            end_elsewhere(result, seed, self.run_dir, self.log, self.plugins.hook, self.spec.plugins)
            self.history.finish(result)
            self.strategy.tell(self.history, result)

    def close(self, stopping: bool) -> list[TrialResult]:
        """``results.json``, then ``experiment_complete`` and its hook: the leaderboard, best first."""
        search = self.spec.search
        board = leaderboard([r.result for r in self.history.finished], search.mode)
        document = results_document(self.spec.name, search.metric, search.mode, board)
        write_json(self.run_dir / "results.json", document)
        best = document["best"]
        self.log.emit(
            "experiment_complete", trials=len(board), best_trial=best["trial"] if best else None, stopped_early=stopping
        )
        self.plugins.hook.runner_experiment_complete(experiment=self.experiment, results=board)
        return board


def note_writer(log: EventLog, past: list[dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    """How a strategy's notes reach the log: as ``note`` events, except those a resumed
    run writes again exactly as the run wrote them before it stopped."""
    written = [
        {k: v for k, v in e.items() if k not in ("t", "event", "source")}
        for e in past
        if e["event"] == "note" and e.get("source") == "strategy" and "trial" not in e
    ]

    def write(note: dict[str, Any]) -> None:
        note = orjson.loads(orjson.dumps(note))  # as it reads back: tuples become lists
        if note in written:
            written.remove(note)
            return
        log.emit("note", source="strategy", **note)

    return write


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def initial_control(spec: ExperimentSpec, live: tuple[str, ...]) -> bytes:
    """The control file a run starts with: each live setting with the value trials start
    with, or null where the search chooses it per trial."""
    train = trial_sections(spec, {})[1]
    searched = {p.path for p in spec.search.space}
    return initial_document(
        live, {name: getattr(train, name, None) for name in live if f"train.{name}" not in searched}
    )
