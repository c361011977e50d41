"""The driver's end of trials that run outside it: ``RemoteExecutor``, the base of executors
whose workers are other processes (a pool on this machine, a Ray cluster).

A subclass provides the transport: start a worker in a slot, hand it a job, send it a
message, receive the next message from any worker, and say which busy workers died. This
class does the rest, the same for every transport:

- what workers send (``runner.execution.worker`` lists the messages) is written to the one event
  log in the order it comes, so ``events.jsonl`` and ``status.json`` read as in a single
  process; a worker's request to sync is answered once the log is durable;
- a worker that cannot see the run directory (its setup's ``snapshots`` is ``"driver"``) has
  its snapshot files written, read, listed and deleted here, in the run directory, on a
  writer thread of the driver's own: it may name only snapshot files of this run's trial
  folders (and its job's ``weights`` file, to read), nothing else;
- each running trial's mailbox in the control inbox forwards its orders to the worker;
- a worker that dies takes only its trial with it: the trial is retried in a new worker
  from its newest snapshot file (a ``trial_retry`` event), up to ``options.retries``
  times, then ends ``failed``; orders it had not carried out by that snapshot are sent
  again;
- Ctrl-C (or SIGTERM) reaching the driver is passed on to every worker, each trial saves a
  snapshot, and the run stops resumable.
"""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rich.markup import escape

from runner.control.inbox import Delivery
from runner.engine.experiment import end_elsewhere
from runner.engine.interrupt import FLAG, Interrupted
from runner.engine.resume import newest_intact_snapshot, remove_trial_temporaries
from runner.engine.snapshot_files import SNAPSHOT_NAME, TRIAL_FOLDER, CorruptSnapshot
from runner.engine.snapshot_storage import LocalSnapshots
from runner.errors import RunnerError
from runner.executor import Executor
from runner.trial import TrialResult

DEATH_CHECK_SECONDS = 0.5  # how often busy workers are checked for death while messages keep coming


@dataclass
class Running:
    """A trial in a worker, as the driver follows it."""

    job: Any  # the TrialJob it runs
    started: float = field(default_factory=time.perf_counter)
    attempt: int = 0  # retries so far, after its worker died
    delivered: list[Delivery] = field(default_factory=list)  # orders sent to it
    named: dict[str, int] = field(default_factory=dict)  # order -> the trial's event count when an event named it
    completed: dict[str, Any] | None = None  # its trial_complete event, once written
    suspended: dict[str, Any] | None = None  # its trial_suspend event, once written


class Forward:
    """The driver's mailbox of a trial that runs in a worker: each order goes on to the worker."""

    def __init__(self, executor: RemoteExecutor, slot: int, running: Running):
        self.executor, self.slot, self.running = executor, slot, running

    def put(self, delivery: Delivery) -> None:
        """Called on the watcher's thread (or by ``ControlInbox.open``)."""
        self.running.delivered.append(delivery)
        job = self.running.job
        self.executor.send(self.slot, ("mail", job.trial, delivery, job.logged))


class RemoteExecutor(Executor):
    """Runs each trial in one of ``slots`` workers. Options must have ``retries``."""

    slots: int  # how many trials run at once; set by the subclass before ``submit`` is called

    def __init__(self, options, *, run_trial, session):
        super().__init__(options, run_trial=run_trial, session=session)
        self.running: dict[int, Running] = {}  # slot -> its trial
        self.started: set[int] = set()  # slots whose worker is up
        self.finished: deque[TrialResult] = deque()
        self.interrupted: list[str] = []  # trials that saved a snapshot and stopped
        self.lost_stopping: list[int] = []  # trials whose worker died while the run was stopping
        self.interrupting = False
        self._last_death_check = 0.0
        self.snapshots = LocalSnapshots(session.run_dir, before_write=session.log.sync)  # for workers' questions
        self._files: ThreadPoolExecutor | None = None  # the thread that answers workers' snapshot questions, in order

    # -- the transport: what a subclass provides ------------------------------------------------

    @abstractmethod
    def start(self, slot: int) -> None:
        """Start a worker in ``slot`` (again, after the one before it died)."""

    @abstractmethod
    def launch(self, slot: int, job: Any) -> None:
        """Hand the worker in ``slot`` a job to run with ``runner.execution.worker.run_job``."""

    @abstractmethod
    def send(self, slot: int, message: tuple) -> None:
        """Send a message to the worker in ``slot``; called from the driver's threads."""

    @abstractmethod
    def receive(self, timeout: float) -> tuple[int, tuple] | None:
        """The next message from any worker as ``(slot, message)``, or None after ``timeout``."""

    @abstractmethod
    def dead(self, slots: list[int]) -> dict[int, str]:
        """Which of these busy slots' workers died, each with why ("killed by SIGKILL")."""

    @abstractmethod
    def shutdown(self, *, now: bool) -> None:
        """Stop every worker: let them exit, or (``now``) kill them."""

    # -- the Executor contract ------------------------------------------------------------------

    def has_room(self) -> bool:
        return len(self.running) < self.slots

    def pending(self) -> int:
        return len(self.running) + len(self.finished)

    def submit(self, job: Any) -> None:
        slot = min(set(range(self.slots)) - set(self.running))
        self.begin(slot, Running(job))

    def next_result(self) -> TrialResult:
        while not self.finished:
            if FLAG.requested and not self.interrupting:
                self.interrupt()
            if self.interrupting and not self.running:
                lost = ", ".join(f"t{t:03d}" for t in self.lost_stopping)
                raise Interrupted(
                    f"interrupted: {len(self.interrupted)} running trials saved a snapshot"
                    + (f" ({lost} lost their worker first and go on from their newest snapshot file)" if lost else "")
                    + f"; continue with: runner resume {self.session.run_dir}"
                )
            self.pump()
        return self.finished.popleft()

    def close(self, *, aborting: bool = False) -> None:
        try:
            if not aborting and FLAG.requested:  # Ctrl-C: let every trial save its snapshot first
                if not self.interrupting:
                    self.interrupt()
                while self.running:
                    self.pump()
        finally:
            try:
                self.shutdown(now=aborting)
            finally:
                if self._files is not None:  # (workers wait for their answers: none is queued by now)
                    self._files.shutdown()

    # -- the driver's side of the protocol ------------------------------------------------------

    def begin(self, slot: int, running: Running, undone: list[Delivery] = ()) -> None:
        """Run a trial in ``slot``: its mailbox forwards to the worker (``undone``, orders a
        dead worker had not carried out, go first), then the job goes."""
        if slot not in self.started:
            self.start(slot)
            self.started.add(slot)
        self.running[slot] = running
        mailbox = Forward(self, slot, running)
        for delivery in undone:
            mailbox.put(delivery)
        self.session.inbox.open(running.job.trial, mailbox=mailbox)  # replaces a dead worker's: no gap
        self.launch(slot, running.job)

    def pump(self) -> None:
        """Handle what the workers sent for a moment, and notice workers that died."""
        got = self.receive(0.1)
        if got is not None:
            self.handle(*got)
        now = time.monotonic()
        if got is None or now - self._last_death_check > DEATH_CHECK_SECONDS:
            self._last_death_check = now
            for slot, why in self.dead(sorted(self.running)).items():
                self.lost(slot, why)

    def handle(self, slot: int, message: tuple) -> None:
        """One message from the worker in ``slot`` (see ``runner.execution.worker``)."""
        kind, session = message[0], self.session
        if kind == "event":
            record = message[1]
            session.log.write(record)
            if (running := self.running.get(slot)) is not None:
                if "order" in record:
                    running.named.setdefault(record["order"], session.logged[record["trial"]])
                if record["event"] == "trial_complete":
                    running.completed = record
                elif record["event"] == "trial_suspend":
                    running.suspended = record
        elif kind == "ask":
            self.answer(slot, *message[1:])
        elif kind == "notify":
            session.inbox.notify(message[1])
        elif kind == "closed":
            _, trial, left, suspended = message
            session.inbox.close_mailbox(trial, suspended=suspended, carried=left)
        elif kind == "unreachable":
            session.inbox.undelivered(message[1], message[2])
        elif kind == "done":
            del self.running[slot]
            self.finished.append(message[2])
        elif kind == "interrupted":
            del self.running[slot]
            self.interrupted.append(message[2])
        elif kind == "crashed":
            _, trial, details = message
            where = (
                f"trial {trial} stopped its worker"
                if trial is not None
                else f"the worker in slot {slot} could not start"
            )
            raise RunnerError(f"{where}: an error in the runner or a plugin:\n{details}")
        else:
            raise RunnerError(f"unknown message from the worker in slot {slot}: {message!r}")

    def answer(self, slot: int, token: int, question: str, args: tuple) -> None:
        """A worker's question (``runner.execution.worker`` lists them), answered with
        ``("answer", token, value, error)``. A sync is answered at once; a snapshot file's
        question on the driver's file thread, in the order they came, so that no file work
        holds up the workers' events. A path it may not reach, a file that is gone or damaged,
        a failed write: the error goes back to the worker, which handles it as it would its own."""
        if question == "sync":
            self.session.log.sync()
            self.send(slot, ("answer", token, None, None))
            return
        files, weights = self.snapshots, {running.job.weights for running in self.running.values()} - {None}
        work = {
            "snapshot_write": lambda path, state, meta: files.write(self.snapshot_path(path), state, meta),
            "snapshot_read": lambda path: files.raw(Path(path) if path in weights else self.snapshot_path(path)),
            "snapshot_scan": lambda folder: [
                (str(path), meta) for path, meta in files.scan(self.snapshot_path(folder, folder=True))
            ],
            "snapshot_remove": lambda path: files.remove(self.snapshot_path(path)),
        }.get(question)
        if work is None:
            raise RunnerError(f"unknown question from the worker in slot {slot}: {question!r}")
        if self._files is None:
            self._files = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runner-driver-files")

        def reply(done: Future) -> None:  # on the files thread, before it takes the next question
            error = done.exception()
            self.send(slot, ("answer", token, None if error else done.result(), portable(error)))

        self._files.submit(work, *args).add_done_callback(reply)

    def snapshot_path(self, named: str, *, folder: bool = False) -> Path:
        """The path a worker named, if it is a snapshot file of one of this run's trial folders
        (``folder``: one of those folders); PermissionError otherwise."""
        path = Path(named)
        trial_dir = path if folder else path.parent
        if (
            trial_dir.parent == Path(self.session.run_dir) / "trials"
            and TRIAL_FOLDER.fullmatch(trial_dir.name)
            and (folder or SNAPSHOT_NAME.fullmatch(path.name))
        ):
            return path
        raise PermissionError(f"{named}: not a snapshot {'folder' if folder else 'file'} of this run")

    def interrupt(self) -> None:
        """Ctrl-C or SIGTERM reached the driver: every running trial snapshots and stops."""
        self.interrupting = True
        for slot in self.running:
            self.send(slot, ("interrupt",))

    def drain(self) -> None:
        """Handle every message already sent, before deciding what a dead worker left behind."""
        while (got := self.receive(0.0)) is not None:
            self.handle(*got)

    def lost(self, slot: int, why: str) -> None:
        """The worker in ``slot`` died: retry its trial from its newest snapshot file, or,
        past ``options.retries``, end it ``failed``. Either way the other trials go on, and
        what the dead worker left half written in the trial's folder is removed."""
        self.drain()
        if self._files is not None:  # what it asked of the driver is done (and answered) before its files are looked at
            self._files.submit(lambda: None).result()
        self.started.discard(slot)
        running = self.running.pop(slot, None)
        if running is None:  # it had finished after all
            return
        trial_id, session = running.job.trial, self.session
        try:
            remove_trial_temporaries(session.run_dir, trial_id)  # it may have died writing a snapshot
        except OSError as err:  # a link planted in its folder: nothing is removed through it, the run goes on
            session.log.emit("checkpoint_error", trial=trial_id, message=f"{type(err).__name__}: {err}")
        attempt = running.attempt + 1
        if running.suspended is not None and running.completed is None:  # it was suspended: that run is over
            session.inbox.close_mailbox(trial_id, suspended=True)
            self.finished.append(TrialResult.from_json(running.suspended))
            return
        if running.completed is not None or self.interrupting:
            session.inbox.close_mailbox(trial_id)
            if running.completed is not None:  # it had ended; only telling the driver was left
                self.finished.append(TrialResult(**{f.name: running.completed[f.name] for f in fields(TrialResult)}))
            else:  # stopping anyway: a resume continues it from its newest snapshot
                self.lost_stopping.append(trial_id)
            return
        if not running.job.announced and session.logged[trial_id] == 0:  # it died before the trial began
            if attempt > self.options.retries:
                raise RunnerError(
                    f"workers keep dying before trial {trial_id} can start (last: {why}); "
                    f"its worker's output above may say why"
                )
            self.begin(slot, Running(running.job, started=running.started, attempt=attempt), running.delivered)
            return
        notes: list[str] = []
        snapshot, meta = newest_intact_snapshot(session.run_dir, trial_id, notes)
        if attempt > self.options.retries:
            session.inbox.close_mailbox(trial_id)
            self.finished.append(self.give_up(running, meta, why))
            return
        kept = meta["loop"]["events"] if meta else 1
        session.log.emit(
            "trial_retry",
            trial=trial_id,
            attempt=attempt,
            retries=self.options.retries,
            reason=why,
            snapshot=str(snapshot.relative_to(session.run_dir)) if snapshot else None,
            epoch=meta["epoch"] if meta else 0,
            step=meta["step"] if meta else 0,
            notes=notes,
        )
        session.inbox.notify(
            f"[yellow]t{trial_id:03d}: its worker died ({escape(why)}); retry {attempt} of "
            f"{self.options.retries} from {'epoch ' + str(meta['epoch']) if meta else 'the start'}[/]"
        )
        job = replace(
            running.job, resume=str(snapshot) if snapshot else None, announced=True, logged=session.logged[trial_id]
        )
        undone = [  # after the snapshot, or never; a pruner judges the epochs trained again anew
            d for d in running.delivered if running.named.get(d.order, math.inf) > kept and d.source != "pruner"
        ]
        self.begin(slot, Running(job, started=running.started, attempt=attempt), undone)

    def give_up(self, running: Running, meta: dict[str, Any] | None, why: str) -> TrialResult:
        """End a trial whose worker died once too often, as its newest snapshot left it."""
        job, session = running.job, self.session
        loop = meta["loop"] if meta else {}
        best = loop.get("best")
        result = TrialResult(
            trial=job.trial,
            state="failed",
            params=job.params,
            best=best,
            final=(meta or {}).get("metrics") or None,
            epochs=meta["epoch"] if meta else 0,
            seconds=time.perf_counter() - running.started,
            score=best.get(session.metric) if best else None,
            reason=f"its worker died {running.attempt + 1} times (last: {why})",
        )
        end_elsewhere(result, job.seed, Path(session.run_dir), session.log, session.hook, session.plugin_options)
        return result


def portable(error: BaseException | None) -> BaseException | None:
    """An error to send to a worker, as one it can unpickle and handle as it would its own:
    Python's own and CorruptSnapshot as they are, another (UnsafePath) as an OSError naming it."""
    if error is None or type(error).__module__ == "builtins":
        return error
    if isinstance(error, CorruptSnapshot):
        return CorruptSnapshot(str(error))
    return OSError(f"{type(error).__name__}: {error}")
