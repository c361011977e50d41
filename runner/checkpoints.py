"""Snapshots of a trial: durable files on disk, and a ring of recent ones in memory.

A snapshot is one ``.npz`` file: the backend's arrays plus a ``__meta__`` entry holding
JSON metadata (trial, epoch, step, reason, hyperparameters, metrics, the backend's own
meta, and a SHA-256 checksum of everything else). It is loaded with
``allow_pickle=False``: nothing is ever unpickled from disk.

Writing happens on a background thread so that training rarely waits for the disk: the
training thread only copies the state (``Backend.state()``), and waits for a write only
when it takes the next snapshot (a whole epoch later) or ends the trial. A snapshot is durable once
written under a temporary name, flushed, fsynced, renamed into place and its folder
fsynced; only then is it reported (``runner_checkpoint_saved`` fires on the loop's thread)
and only then are older snapshots beyond ``keep`` deleted.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from runner.backend import BackendState
from runner.typed import bounds

META_KEY = "__meta__"


@dataclass(frozen=True)
class CheckpointOptions:
    """The ``checkpoint`` section of an experiment file."""

    every_epochs: int = field(default=1, metadata=bounds(ge=0, doc="snapshot every N epochs; 0 turns periodic snapshots off"))
    keep: int = field(default=3, metadata=bounds(ge=1, doc="how many recent snapshots each trial keeps on disk, besides its best"))
    best: bool = field(default=True, metadata=bounds(doc="also snapshot whenever the experiment's metric improves, and keep the best"))
    memory: int = field(default=2, metadata=bounds(ge=0, doc="recent snapshots each trial keeps in memory for fast rollback"))


@dataclass(frozen=True)
class Snapshot:
    """A durable snapshot, as reported to hooks and in the event log."""

    path: Path
    trial: int
    epoch: int  # epochs completed when it was taken
    step: int
    reason: str  # "epoch", "best", ...
    best: bool

    def to_json(self, relative_to: Path | None = None) -> dict[str, Any]:
        """As reported in ``checkpoint`` events: ``path`` relative to the run directory if given."""
        path = self.path.relative_to(relative_to) if relative_to else self.path
        return {"path": str(path), "epoch": self.epoch, "step": self.step, "reason": self.reason, "best": self.best}


class CorruptSnapshot(Exception):
    """A snapshot file is truncated, damaged or not a snapshot."""


def checksum(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    """SHA-256 over every array (name, dtype, shape, bytes) and the metadata."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        digest.update(a.data)
    digest.update(orjson.dumps(meta, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


def write_snapshot(path: Path, state: BackendState, meta: dict[str, Any]) -> None:
    """Write atomically and durably: temporary name, fsync, rename, fsync the folder."""
    meta = {**meta, "backend": state.meta}
    document = {**meta, "checksum": checksum(state.arrays, meta)}
    payload = {**state.arrays, META_KEY: np.frombuffer(orjson.dumps(document), dtype=np.uint8)}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_snapshot(path: Path) -> tuple[BackendState, dict[str, Any]]:
    """Load and verify a snapshot; CorruptSnapshot says what is wrong with it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception as err:  # zipfile, OSError, ValueError: all mean the file is unusable
        raise CorruptSnapshot(f"{path}: cannot be read ({type(err).__name__}: {err})") from None
    raw = arrays.pop(META_KEY, None)
    if raw is None:
        raise CorruptSnapshot(f"{path}: has no metadata")
    try:
        document = orjson.loads(raw.tobytes())
        stored = document.pop("checksum")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise CorruptSnapshot(f"{path}: its metadata is damaged") from None
    if checksum(arrays, document) != stored:
        raise CorruptSnapshot(f"{path}: checksum mismatch, the file is damaged")
    return BackendState(arrays=arrays, meta=document.pop("backend")), document


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SnapshotWriter:
    """One background thread per run that writes snapshots in the order they come."""

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue(maxsize=4)  # bounds memory if the disk is slow
        self._thread = threading.Thread(target=self._work, name="runner-snapshot-writer", daemon=True)
        self._thread.start()

    def submit(self, path: Path, state: BackendState, meta: dict[str, Any], done) -> None:
        """Queue a write; ``done(error)`` is called on the writer thread once it is durable (error None)."""
        self._jobs.put((path, state, meta, done))

    def close(self) -> None:
        """Finish every queued write, then stop the thread. Called once, at the end of a run."""
        self._jobs.put(None)
        self._thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            path, state, meta, done = job
            try:
                write_snapshot(path, state, meta)
            except Exception as err:  # reported to the loop, which logs it; training goes on
                done(err)
            else:
                done(None)


class CheckpointStore:
    """The snapshots of one trial: files in ``folder`` and a ring of the latest in memory.

    ``save`` is called by the loop on the training thread; ``collect`` (also on the loop's
    thread) returns the snapshots that have become durable since the last call, after
    pruning old files.
    """

    def __init__(self, folder: Path, trial: int, options: CheckpointOptions, writer: SnapshotWriter):
        self.folder, self.trial, self.options, self.writer = folder, trial, options, writer
        self.ring: deque[tuple[Snapshot, BackendState]] = deque(maxlen=options.memory)
        self._durable: list[Snapshot] = []  # oldest first
        self._new: list[Snapshot | Exception] = []
        self._pending = 0  # writes submitted and not finished
        self._changed = threading.Condition()
        self.best: Snapshot | None = None

    def save(self, state: BackendState, *, epoch: int, step: int, reason: str, best: bool,
             hyperparameters: dict[str, float], metrics: dict[str, float]) -> Snapshot:
        self.folder.mkdir(parents=True, exist_ok=True)
        snapshot = Snapshot(self.folder / f"e{epoch:05d}-s{step:09d}.npz", self.trial, epoch, step, reason, best)
        meta = {"trial": self.trial, "epoch": epoch, "step": step, "reason": reason, "best": best,
                "hyperparameters": hyperparameters, "metrics": metrics}
        self.ring.append((snapshot, state))
        with self._changed:
            self._pending += 1
        self.writer.submit(snapshot.path, state, meta, lambda error: self._finished(snapshot, error))
        return snapshot

    def collect(self, wait: bool = False) -> list[Snapshot | Exception]:
        """Snapshots (or write errors) that became durable since the last call.

        With ``wait``, first waits until this trial's queued writes are finished.
        """
        with self._changed:
            if wait:
                self._changed.wait_for(lambda: self._pending == 0)
            done, self._new = self._new, []
        for item in done:
            if isinstance(item, Snapshot):
                self._durable.append(item)
                if item.best:
                    self.best = item
        if done:
            self._prune()
        return done

    def _finished(self, snapshot: Snapshot, error: Exception | None) -> None:
        with self._changed:
            self._new.append(error if error is not None else snapshot)
            self._pending -= 1
            self._changed.notify_all()

    def _prune(self) -> None:
        """Delete durable snapshots beyond the last ``keep``, sparing the best."""
        recent = self._durable[-self.options.keep:]
        for old in self._durable[: -self.options.keep]:
            if old is not self.best and old not in recent:
                old.path.unlink(missing_ok=True)
        self._durable = [s for s in self._durable if s in recent or s is self.best]
