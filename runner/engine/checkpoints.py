"""Snapshots of a trial: when to take them, a ring of recent ones in memory, and which
files to keep (the file format is ``runner.engine.snapshot_files``).

Every snapshot that is due goes to a ring in memory (a copy of ``Backend.state()``, a
fraction of a millisecond), so a rollback never touches the disk. Files are written at
most once per ``min_interval`` seconds while a trial trains, and its best snapshot when it
ends, on a background thread: training waits for a write only when it reports it (before
the next file, and at the end of the trial). A snapshot is durable once
written under a temporary name, flushed, fsynced, renamed into place and its folder
fsynced; only then is it reported (``runner_checkpoint_saved`` fires on the loop's thread)
and only then are older snapshots beyond ``keep`` deleted.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.backend import BackendState
from runner.engine.snapshot_files import MID_DECISIONS, CorruptSnapshot, snapshot_name
from runner.engine.snapshot_storage import LocalSnapshots, SnapshotStorage
from runner.experiment_file.typed import bounds


@dataclass(frozen=True)
class CheckpointOptions:
    """The ``checkpoint`` section of an experiment file."""

    every_epochs: int = field(
        default=1, metadata=bounds(ge=0, doc="take a snapshot every N epochs; 0 turns periodic snapshots off")
    )
    every_steps: int = field(
        default=0,
        metadata=bounds(ge=0, doc="also take a snapshot every N training steps, mid-epoch included; 0 turns this off"),
    )
    min_interval: float = field(
        default=30.0,
        metadata=bounds(
            ge=0,
            doc="seconds between two snapshot files of a trial; snapshots due sooner stay in memory only; "
            "0 writes each one",
        ),
    )
    keep: int = field(
        default=3,
        metadata=bounds(
            ge=1,
            doc="how many recent snapshot files each trial keeps, besides its best and the newest a resume "
            "can start from",
        ),
    )
    best: bool = field(
        default=True,
        metadata=bounds(
            doc="also snapshot whenever the experiment's metric improves; the best is written when the trial ends"
        ),
    )
    memory: int = field(
        default=4,
        metadata=bounds(
            ge=1,
            doc="recent snapshots each trial keeps in memory for fast rollback "
            "(more than divergence.max_rollbacks, so rollbacks in a row stay in memory)",
        ),
    )


@dataclass(frozen=True)
class Snapshot:
    """A durable snapshot, as reported to hooks and in the event log."""

    path: Path
    trial: int
    epoch: int  # epochs completed when it was taken
    step: int
    reason: str  # "epoch", "best", ...
    best: bool
    rollbacks: int | None = None  # the trial's rollbacks when it was taken: the same point again after one differs

    def to_json(self, relative_to: Path | None = None) -> dict[str, Any]:
        """As reported in ``checkpoint`` events: ``path`` relative to the run directory if given."""
        path = self.path.relative_to(relative_to) if relative_to else self.path
        document = {"path": str(path), "epoch": self.epoch, "step": self.step, "reason": self.reason, "best": self.best}
        return document if self.rollbacks is None else {**document, "rollbacks": self.rollbacks}


class NoSnapshot(Exception):
    """No snapshot matches what a rollback asked for."""


class SnapshotWriter:
    """One background thread per run (or per worker) that writes snapshots in the order they come."""

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue(maxsize=4)  # bounds memory if the disk is slow
        self._thread = threading.Thread(target=self._work, name="runner-snapshot-writer", daemon=True)
        self._thread.start()

    def submit(self, write: Callable[[], None], done: Callable[[Exception | None], None]) -> None:
        """Queue ``write()`` (a ``SnapshotStorage.write``); ``done(error)`` is called on the writer
        thread once it returned (error None: the file is durable) or raised."""
        self._jobs.put((write, done))

    def close(self) -> None:
        """Finish every queued write, then stop the thread. Called once, at the end of a run."""
        self._jobs.put(None)
        self._thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            write, done = job
            try:
                write()
            except Exception as err:  # reported to the loop, which logs it; training goes on
                done(err)
            else:
                done(None)


class CheckpointStore:
    """The snapshots of one trial: files in ``folder``, the latest ones in memory.

    Called on the training thread: ``save`` when a snapshot is due, ``finish`` when the
    trial ends, ``collect`` to learn which files have become durable. Writing and pruning
    happen on the writer thread. ``storage`` keeps the files (by default ``LocalSnapshots``
    of the folder's parent, with no event log to sync): the trial loop's makes the run's event
    log durable on the writer thread before each file, so that no snapshot file is ever ahead
    of the log after a power cut, without training waiting for that fsync.
    """

    def __init__(
        self,
        folder: Path,
        trial: int,
        options: CheckpointOptions,
        writer: SnapshotWriter,
        clock=time.monotonic,
        *,
        storage: SnapshotStorage | None = None,
    ):
        self.folder, self.trial, self.options, self.writer, self.clock = folder, trial, options, writer, clock
        self.storage = storage or LocalSnapshots(folder.parent)
        self.ring: deque[tuple[Snapshot, BackendState, dict]] = deque(maxlen=options.memory)
        self.best: Snapshot | None = None  # the best durable snapshot
        self._unwritten_best: tuple[Snapshot, BackendState, dict] | None = None
        self._before_nudge: tuple[Snapshot, BackendState, dict] | None = None  # kept past the ring's length
        self._before_nudge_file: Snapshot | None = None  # its file, if it has one: spared by pruning
        self._start: tuple[Snapshot, BackendState, dict] | None = None  # the trial's first, kept past the ring
        # each file's (events, before_nudge_events): a file a resume starts from needs the
        # before-nudge file it names (a try in progress may still be reverted to it)
        self._counts: dict[Path, tuple[int, int | None]] = {}
        self._abandoned: list[tuple[int, int]] = []  # event-count ranges of paths rollbacks left behind
        self._last_write = clock()  # the first file comes min_interval after the trial starts
        self._durable: list[Snapshot] = []  # oldest first
        self._new: list[Snapshot | Exception] = []
        self._pending = 0  # writes submitted and not finished
        self._changed = threading.Condition()

    def save(
        self,
        state: BackendState,
        *,
        epoch: int,
        step: int,
        reason: str,
        best: bool,
        hyperparameters: dict[str, float],
        metrics: dict[str, float],
        loop: dict[str, Any],
        durable: bool | None = None,
        in_ring: bool = True,
    ) -> Snapshot:
        """Keep ``state`` in memory; write it too if ``min_interval`` has passed since the last
        file (``durable`` True or False forces the choice). ``loop`` is the trial loop's own
        state (best metrics, divergence detector, event count...), restored with the backend's.
        ``in_ring`` False keeps a before-nudge snapshot only as the target of ``"before_nudge"``
        (one of a point just restored, whose weights the ring holds already: rollbacks in a
        row must still go further back)."""
        # The trial's event count makes the name unique even when a rollback retrains an epoch.
        name = snapshot_name(epoch, step, loop.get("events", 0))
        snapshot = Snapshot(self.folder / name, self.trial, epoch, step, reason, best, loop.get("rollbacks"))
        meta = {
            "trial": self.trial,
            "epoch": epoch,
            "step": step,
            "reason": reason,
            "best": best,
            "hyperparameters": hyperparameters,
            "metrics": metrics,
            "loop": loop,
        }
        if in_ring:
            self.ring.append((snapshot, state, meta))
        if reason == "before_nudge":
            self._before_nudge, self._before_nudge_file = (snapshot, state, meta), None
        elif reason == "start":
            self._start = (snapshot, state, meta)
        if durable is None:
            durable = self.due()
        if durable:
            self._write(snapshot, state, meta)
            if best:
                self._unwritten_best = None
        elif best:
            self._unwritten_best = (snapshot, state, meta)
        return snapshot

    def adopt(self, folder: Path, upto: int, before_nudge_events: int | None = None) -> None:
        """On resume from the snapshot taken at ``upto`` events: take over the valid snapshot
        files already in ``folder``, oldest first, so that keeping the last ``keep`` and the
        best goes on as before; and the before-nudge snapshot taken at ``before_nudge_events``
        events, if it was written to a file. Files of work after ``upto`` (lost with the
        interruption, to be done again) are deleted."""
        scanned = []
        for path, meta in self.storage.scan(folder):
            if meta["loop"]["events"] > upto:
                self.storage.remove(path)
            else:
                scanned.append((path, meta))
        found = [
            Snapshot(
                path,
                self.trial,
                meta["epoch"],
                meta["step"],
                meta["reason"],
                meta["best"],
                meta["loop"].get("rollbacks"),
            )
            for path, meta in scanned
        ]
        counts = {path: (meta["loop"]["events"], meta["loop"].get("before_nudge_events")) for path, meta in scanned}
        for snapshot, (path, meta) in zip(found, scanned):
            if meta["reason"] == "before_nudge" and meta["loop"]["events"] == before_nudge_events:
                self._before_nudge = (snapshot, *self.storage.read(path))
                self._before_nudge_file = snapshot
        with self._changed:
            self._durable, self._counts = found, counts
            self.best = next((s for s in reversed(found) if s.best), None)
        self._last_write = self.clock()

    def forget_memory(self) -> None:
        """What a process that resumes here no longer has (``runner replay`` replays a resume):
        the snapshots only memory held, and which paths earlier rollbacks left behind."""
        self.ring.clear()
        self._start = self._unwritten_best = None
        if self._before_nudge_file is None:
            self._before_nudge = None
        self._abandoned.clear()

    def finish(self) -> None:
        """At the end of a trial: write its best snapshot if only memory holds it."""
        if self._unwritten_best is not None:
            self._write(*self._unwritten_best)
            self._unwritten_best = None

    def due(self) -> bool:
        """True if the next ``save`` will write a file (``min_interval`` has passed)."""
        return self.clock() - self._last_write >= self.options.min_interval

    def abandon(self, after: int, until: int) -> None:
        """Called after a rollback to the snapshot taken at ``after`` events, ``until`` events
        into the trial: the snapshots taken between are of a path left behind, and no later
        rollback may go forward onto it. Files stay (a resume may still start from one)."""
        self._abandoned.append((after, until))
        kept = [entry for entry in self.ring if not self._left_behind(entry[2])]
        self.ring.clear()
        self.ring.extend(kept)

    def _left_behind(self, meta: dict[str, Any]) -> bool:
        events = meta["loop"]["events"]
        return any(after < events <= until for after, until in self._abandoned)

    def find(
        self, to: str | int, older: int = 0, upto_step: int | None = None
    ) -> tuple[BackendState, dict[str, Any]] | None:
        """The snapshot a rollback asks for: ``"last"``, ``"best"``, ``"before_nudge"`` or
        the one after epoch ``to``, taken at step ``upto_step`` or earlier if given, skipping
        ``older`` newer matches (or the oldest match, if there are fewer). Memory first, then
        files (newest first, damaged ones skipped), then the trial's first snapshot (kept in
        memory past the ring); never one of a path an earlier rollback left behind. None if
        none matches."""

        def wanted(meta: dict) -> bool:
            at_boundary = not meta["loop"].get("partial")
            if upto_step is not None and meta["step"] > upto_step:
                return False
            return (
                to == "last"
                or (to == "best" and meta["best"])
                or (to == meta["reason"] == "before_nudge")
                or (meta["epoch"] == to and not isinstance(to, str) and at_boundary)
            )

        def candidates():
            if to == "before_nudge":  # only ever the latest, in memory (it may not be in the ring)
                if self._before_nudge is not None:
                    yield self._before_nudge[1], self._before_nudge[2]
                return
            in_memory = set()
            for snapshot, state, meta in reversed(self.ring):
                in_memory.add(snapshot.path)
                yield state, meta
            if self._unwritten_best is not None:
                yield self._unwritten_best[1], self._unwritten_best[2]
            with self._changed:
                durable = list(self._durable)
            for snapshot in reversed(durable):
                if snapshot.path in in_memory:
                    continue
                in_memory.add(snapshot.path)
                try:
                    yield self.storage.read(snapshot.path)
                except CorruptSnapshot:
                    continue
            if self._start is not None and self._start[0].path not in in_memory:
                yield self._start[1], self._start[2]

        found = None
        for state, meta in candidates():
            if wanted(meta) and not self._left_behind(meta):
                found = (state, meta)
                if older == 0:
                    break
                older -= 1
        return found

    def collect(self, wait: bool = False) -> list[Snapshot | Exception]:
        """Snapshots (or write errors) that became durable since the last call.

        With ``wait``, first waits until this trial's queued writes are finished.
        """
        with self._changed:
            if wait:
                self._changed.wait_for(lambda: self._pending == 0)
            done, self._new = self._new, []
        return done

    def _write(self, snapshot: Snapshot, state: BackendState, meta: dict) -> None:
        """Queue the file (the writer makes the trial's folder if it is missing)."""
        self._last_write = self.clock()
        loop = meta["loop"]
        with self._changed:
            self._pending += 1
            self._counts[snapshot.path] = (loop.get("events", 0), loop.get("before_nudge_events"))
        self.writer.submit(
            lambda: self.storage.write(snapshot.path, state, meta), lambda error: self._finished(snapshot, error)
        )

    def _finished(self, snapshot: Snapshot, error: Exception | None) -> None:
        """On the writer thread, once the file is durable (or failed): record it, prune old files."""
        with self._changed:
            if error is None:
                self._durable.append(snapshot)
                if snapshot.best:
                    self.best = snapshot
                if self._before_nudge is not None and snapshot is self._before_nudge[0]:
                    self._before_nudge_file = snapshot
                self._prune()
            self._new.append(error if error is not None else snapshot)
            self._pending -= 1
            self._changed.notify_all()

    def _prune(self) -> None:
        """Delete durable snapshots beyond the last ``keep``, sparing the best, the latest
        before-nudge one (a try of a strategy may be reverted to it after a resume), the
        latest two a suspension took (other trials of a population may still take them) and
        the latest a resume can start from (the last ``keep`` may all be before-nudge ones,
        taken in the middle of applying decisions) with the before-nudge one it names. A
        file that cannot be deleted (its folder was replaced by a link, say) stays, and the
        error is reported with the snapshots, as a write error is."""
        recent = self._durable[-self.options.keep :]
        suspended = [s for s in self._durable if s.reason == "suspend"][-2:]
        resumable = next((s for s in reversed(self._durable) if s.reason not in MID_DECISIONS), None)
        named = self._counts.get(resumable.path, (0, None))[1] if resumable is not None else None
        its_before_nudge = next(
            (s for s in self._durable if s.reason == "before_nudge" and self._counts.get(s.path, (None,))[0] == named),
            None,
        )
        spared = (self.best, self._before_nudge_file, resumable, its_before_nudge, *suspended)
        for old in self._durable[: -self.options.keep]:
            if not any(old is s for s in spared):
                try:
                    self.storage.remove(old.path)
                except OSError as err:
                    self._new.append(err)
                else:
                    self._counts.pop(old.path, None)
        self._durable = [s for s in self._durable if s in recent or any(s is k for k in spared)]
