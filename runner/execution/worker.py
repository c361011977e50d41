"""The worker's end of trials that run outside the driver (a pool of processes, a Ray cluster).

A worker builds its own ``TrialRunner`` from a ``WorkerSetup`` (everything picklable: the
experiment file as run, the plugin files, the prepared data set) and runs the jobs the
driver sends it. The trial loop runs exactly as in the driver; only its two links to the
outside change. ``WorkerLink`` stands in for the driver's event log and control inbox:

worker → driver, through ``send`` (order kept)::

    ("event", record)              an event, timestamped here; the driver writes it to the log
    ("ask", token, question, args)  a question the worker waits on; the driver answers
                                   ("answer", token, value, error) once it is done (``WorkerLink.ask``):
        ("sync", ())               before a snapshot file this worker writes: the driver fsyncs the log
        ("snapshot_write", (path, state, meta))  a worker that cannot see the run directory
                                   (``DriverSnapshots``): the driver writes the file durably, its log
                                   synced first, and answers once it is
        ("snapshot_read", (path,))  the file's bytes (a snapshot of this run, or the job's ``weights``)
        ("snapshot_scan", (folder,))  a trial folder's intact snapshots: [(path, meta)]
        ("snapshot_remove", (path,))  delete a snapshot file of this run
    ("notify", message)            a line for the person at the terminal (rich markup)
    ("closed", trial, left, suspended)  the trial's mailbox closed, ``left`` the orders it had not
                                   carried out: they, and orders for it from now on, fail, or wait
                                   for its next run if it was ``suspended``
    ("unreachable", trial, delivery)  an order that arrived after its trial ended
    ("done", trial, result)        the trial ended (a TrialResult)
    ("interrupted", trial, message)   it saved a snapshot after ("interrupt",) and stopped
    ("crashed", trial, traceback)  the runner itself failed (trial None: building the worker's
                                   trial runner): the driver ends the run

driver → worker, through ``receive`` (on the worker's receiving thread)::

    ("mail", trial, delivery, run)  an order (the control file's, a pruner's, a strategy's) for the
                                   trial's mailbox in its run ``run`` (its job's ``logged``: each
                                   start of a trial, a retry or a continuation, is a run of its own)
    ("answer", token, value, error)  what a question asked returned, or the error it raised
    ("interrupt",)                 Ctrl-C or SIGTERM reached the driver: snapshot and stop
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.control.inbox import Delivery, Mailbox
from runner.data import Dataset
from runner.engine.checkpoints import SnapshotWriter
from runner.engine.experiment import Experiment, build_strategy
from runner.engine.interrupt import FLAG, Interrupted
from runner.engine.plugin_manager import load_plugins
from runner.engine.snapshot_files import decode_snapshot
from runner.engine.snapshot_storage import SnapshotStorage
from runner.engine.trial_loop import TrialRunner
from runner.experiment_file.spec import parse

Message = tuple


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to train any trial of a run; picklable, sent once per worker."""

    raw: dict[str, Any]  # the experiment file as run (``experiment.json``: the seed in force included)
    base_dir: str
    plugin_files: tuple[str, ...]  # one-off plugins (``--plugin``) besides the installed ones
    run_dir: str
    planned_trials: int | None
    dataset: Dataset
    # The modules the worker's trial runner is made of (runner's worker side, the backend
    # plugin's module): an executor that starts workers from a warm parent imports them there.
    modules: tuple[str, ...] = ()
    # Who reads and writes snapshot files: the worker itself, in ``run_dir`` ("local"), or the
    # driver, for a worker that cannot see the run directory ("driver": ``DriverSnapshots``).
    snapshots: str = "local"

    def runner(self, link: WorkerLink, writer: SnapshotWriter):
        """Called once in each worker: the worker's own plugins, spec, strategy and TrialRunner."""
        plugins = load_plugins(self.plugin_files)
        spec = parse(self.raw, plugins.registry, base_dir=Path(self.base_dir))
        experiment = Experiment(spec, Path(self.run_dir), self.planned_trials)
        storage = DriverSnapshots(link, experiment.run_dir) if self.snapshots == "driver" else None
        return TrialRunner(
            experiment, plugins, self.dataset, link, writer, link, build_strategy(spec, plugins.registry), storage
        )


class WorkerLink:
    """The driver as a worker's trial loop sees it: an event log (``emit``, ``sync``) and a
    control inbox (``open``, ``close_mailbox``, ``notify``). ``send`` carries a message to
    the driver and must keep their order; ``alive`` says whether the driver is still there."""

    def __init__(self, send: Callable[[Message], None], alive: Callable[[], bool] = lambda: True):
        self.send, self.alive = send, alive
        self._mailboxes: dict[int, Mailbox] = {}
        self._runs: dict[int, int | None] = {}  # trial -> the run of it this worker started last
        self._early: dict[tuple[int, int | None], list[Delivery]] = {}  # mail that came before its run opened
        self._closed: set[tuple[int, int | None]] = set()  # runs that ended here
        self._asked: dict[int, list] = {}  # token -> [answered, value, error]
        self._tokens = itertools.count(secrets.randbits(48))  # unlike a late answer to a worker of the slot before
        self._lock = threading.Lock()

    # -- the event log -----------------------------------------------------------------------

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"t": round(time.time(), 6), "event": event, **fields}
        self.send(("event", record))
        return record

    def sync(self) -> None:
        """Block until the driver has made every event sent so far durable: no snapshot file
        is ever ahead of the log."""
        self.ask("sync")

    def ask(self, question: str, *args: Any) -> Any:
        """Ask the driver ``question`` (the module's docstring lists them) and block until it
        answers: its value, or the error it raised there, raised here. Called from any of the
        worker's threads; the answer comes on the receiving thread."""
        token, answered = next(self._tokens), threading.Event()
        self._asked[token] = [answered, None, None]
        self.send(("ask", token, question, args))
        while not answered.wait(1.0):
            if not self.alive():
                raise Interrupted("the driver is gone; this worker stops")
        _, value, error = self._asked.pop(token)
        if error is not None:
            raise error
        return value

    # -- the control inbox ---------------------------------------------------------------------

    def start(self, job) -> None:
        """Called by ``run_job`` before a job runs: mail for this run of its trial (a retry or a
        continuation of one that ran here before included) waits for its mailbox."""
        with self._lock:
            self._runs[job.trial] = job.logged

    def open(self, trial: int) -> Mailbox:
        mailbox = Mailbox()
        with self._lock:
            self._mailboxes[trial] = mailbox
            for delivery in self._early.pop((trial, self._runs.get(trial)), []):
                mailbox.put(delivery)
        return mailbox

    def close_mailbox(self, trial: int, *, suspended: bool = False) -> None:
        with self._lock:
            mailbox = self._mailboxes.pop(trial, None)
            self._closed.add((trial, self._runs.get(trial)))
            left = [] if mailbox is None else [mailbox.items.popleft() for _ in range(len(mailbox.items))]
        self.send(("closed", trial, left, suspended))

    def notify(self, message: str) -> None:
        self.send(("notify", message))

    # -- from the driver ---------------------------------------------------------------------

    def receive(self, message: Message) -> None:
        """Called on the worker's receiving thread with each message from the driver."""
        kind = message[0]
        if kind == "mail":
            _, trial, delivery, run = message
            with self._lock:
                if trial in self._mailboxes and self._runs.get(trial) == run:
                    self._mailboxes[trial].put(delivery)
                elif (trial, run) in self._closed:
                    self.send(("unreachable", trial, delivery))
                else:
                    self._early.setdefault((trial, run), []).append(delivery)
        elif kind == "answer":
            _, token, value, error = message
            if (asked := self._asked.get(token)) is not None:
                asked[1:] = value, error
                asked[0].set()
        elif kind == "interrupt":
            FLAG.requested = True
        else:
            raise ValueError(f"unknown message from the driver: {message!r}")


class DriverSnapshots(SnapshotStorage):
    """The snapshot files of a worker that cannot see the run directory: the driver reads and
    writes them (``LocalSnapshots`` there) and the bytes travel through ``link``. A file is
    checked here, where it is used, as one read from a disk is."""

    def __init__(self, link: WorkerLink, run_dir: Path):
        self.link, self.run_dir = link, run_dir

    def write(self, path: Path, state, meta: dict[str, Any]) -> None:
        self.link.ask("snapshot_write", str(path), state, meta)

    def read(self, path: Path):
        return decode_snapshot(self.link.ask("snapshot_read", str(path)), path)

    def scan(self, folder: Path) -> list[tuple[Path, dict[str, Any]]]:
        return [(Path(path), meta) for path, meta in self.link.ask("snapshot_scan", str(folder))]

    def remove(self, path: Path) -> None:
        self.link.ask("snapshot_remove", str(path))


def build_runner(setup: WorkerSetup, link: WorkerLink, writer: SnapshotWriter):
    """A worker's trial runner; if it cannot be built (a plugin fails to load here), the
    driver is told why, with the traceback, and ends the run, rather than retrying trials
    on workers that can never run them."""
    try:
        return setup.runner(link, writer)
    except BaseException:
        link.send(("crashed", None, traceback.format_exc()))
        raise


def run_job(runner, link: WorkerLink, job) -> None:
    """Train one job in a worker and tell the driver how it ended."""
    link.start(job)
    try:
        result = runner(job)
    except Interrupted as stopped:
        link.send(("interrupted", job.trial, str(stopped)))
    except BaseException:
        link.send(("crashed", job.trial, traceback.format_exc()))
        raise
    else:
        link.send(("done", job.trial, result))
