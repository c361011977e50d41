"""Where a trial's snapshot files are kept, as the trial loop reaches them.

The trial loop and its ``CheckpointStore`` never open a snapshot file themselves: they
write, read, list and delete through a ``SnapshotStorage``.

- ``LocalSnapshots`` works on this machine's disk, in the run directory: a trial in the
  driver, in a worker process, or on a Ray cluster whose nodes all mount the run directory.
- ``runner.execution.worker.DriverSnapshots`` asks the driver to do each of these things,
  for a worker that cannot see the run directory (Ray without a shared disk). The driver
  answers with a ``LocalSnapshots`` of its own, so the files, their checks and their
  safety rules are the same either way.

Paths are the ones ``CheckpointStore`` names (``RUN_DIR/trials/tNNN/NAME``, with the run
directory as the trial's ``Experiment`` has it); the storage decides where they really are.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner.backend import BackendState
from runner.engine.snapshot_files import (
    CorruptSnapshot,
    decode_snapshot,
    scan_snapshots,
    snapshot_bytes,
    trial_folder,
    write_snapshot,
)
from runner.records.files import folder_exists, remove_file


class SnapshotStorage(ABC):
    """The snapshot files of one run, wherever they are kept."""

    run_dir: Path  # the run directory, as the paths this storage is given start

    @abstractmethod
    def write(self, path: Path, state: BackendState, meta: dict[str, Any]) -> None:
        """Called on the snapshot writer's thread: make ``path`` a durable snapshot of
        ``state`` and ``meta``, the run's event log made durable first (no file is ever ahead
        of the log). Raises OSError (or UnstorableArray) if it cannot."""

    @abstractmethod
    def read(self, path: Path) -> tuple[BackendState, dict[str, Any]]:
        """The snapshot in ``path``, checked; CorruptSnapshot if it is damaged or gone."""

    @abstractmethod
    def scan(self, folder: Path) -> list[tuple[Path, dict[str, Any]]]:
        """The intact snapshot files of a trial's folder with their metadata, in the order they
        were taken (``runner.engine.snapshot_files.scan_snapshots``); none if the folder is
        missing. Damaged files are passed over."""

    @abstractmethod
    def remove(self, path: Path) -> None:
        """Delete the snapshot file ``path`` if it is there; OSError if it cannot be."""

    def trial_snapshot(
        self, trial: int, to: str | int, older: int = 0
    ) -> tuple[Path, BackendState, dict[str, Any]] | None:
        """A snapshot file of ``trial`` taken at an epoch's end, for another trial to take
        (``Rollback(trial=...)``): ``"last"`` (its newest), ``"best"`` or the one taken after
        epoch ``to``, skipping ``older`` newer matches; damaged files are passed over (and
        left where they are: they are another trial's). None if none matches."""
        matches = [
            path
            for path, meta in reversed(self.scan(trial_folder(self.run_dir, trial)))
            if not meta["loop"].get("partial")
            and meta["reason"] != "before_nudge"
            and (to == "last" or (to == "best" and meta["best"]) or meta["epoch"] == to)
        ]
        for path in matches[min(older, len(matches) - 1) :]:
            try:
                return (path, *self.read(path))
            except CorruptSnapshot:  # pruned or replaced since the scan read it: the next one matches too
                continue
        return None


class LocalSnapshots(SnapshotStorage):
    """Snapshot files in ``run_dir`` on this machine's disk. Every folder from the run
    directory down to a file must be a real one, never a link (UnsafePath, an OSError,
    otherwise). ``before_write`` (the run's ``EventLog.sync``, or a worker's) is called
    before each file is written."""

    def __init__(self, run_dir: Path, before_write: Callable[[], None] | None = None):
        self.run_dir, self.before_write = Path(run_dir), before_write

    def write(self, path: Path, state: BackendState, meta: dict[str, Any]) -> None:
        if self.before_write is not None:
            self.before_write()
        write_snapshot(path, state, meta, within=self.run_dir)

    def read(self, path: Path) -> tuple[BackendState, dict[str, Any]]:
        return decode_snapshot(self.raw(path), path)

    def raw(self, path: Path) -> bytearray:
        """The file's bytes, unchecked (what the driver sends a worker that asks to read it);
        one in the run directory is reached through real folders only (a ``--weights`` file of
        another run is not in it). CorruptSnapshot if it is not there."""
        if path.is_relative_to(self.run_dir) and not folder_exists(path.parent, within=self.run_dir):
            raise CorruptSnapshot(f"{path}: no such snapshot file")
        return snapshot_bytes(path)

    def scan(self, folder: Path) -> list[tuple[Path, dict[str, Any]]]:
        if not folder_exists(folder, within=self.run_dir):
            return []
        return scan_snapshots(folder)

    def remove(self, path: Path) -> None:
        remove_file(path, within=self.run_dir)


def trial_snapshot(
    run_dir: Path, trial: int, to: str | int, older: int = 0
) -> tuple[Path, BackendState, dict[str, Any]] | None:
    """``SnapshotStorage.trial_snapshot`` of the run in ``run_dir`` on this machine (UnsafePath
    if the trial's folder, or one above it in the run directory, is a link)."""
    return LocalSnapshots(run_dir).trial_snapshot(trial, to, older)
