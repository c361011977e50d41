"""Snapshot files: the ``.npz`` format, written durably and read back checked.

A snapshot is one ``.npz`` file: the backend's arrays plus a ``__meta__`` entry holding
JSON metadata (trial, epoch, step, reason, hyperparameters, metrics, the loop's state, the
backend's own meta, and a SHA-256 checksum of everything else). It is loaded with
``allow_pickle=False``: nothing is ever unpickled from disk. A file is durable once
written under a temporary name, flushed, fsynced, renamed into place and its folder
fsynced. ``runner.engine.checkpoints`` decides when to write one, and which to keep.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from runner.backend import BackendState
from runner.inputs import InputError, open_binary
from runner.records.files import folder_exists, replacing, temporary_of

META_KEY = "__meta__"
SNAPSHOT_NAME = re.compile(r"e\d{5,}-s\d{9,}-n\d{6,}\.npz")  # as ``CheckpointStore.save`` names its files

# Snapshot reasons a resume never starts from: taken in the middle of applying decisions, a
# resume starts from the one taken after them (they stay, for rolling back to).
MID_DECISIONS = ("before_nudge", "exploit")


class CorruptSnapshot(Exception):
    """A snapshot file is truncated, damaged or not a snapshot."""


def checksum(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    """SHA-256 over the file's layout (each array's name, dtype, shape) and the metadata.

    The array bytes need no second checksum: every member of an ``.npz`` (a zip file)
    carries a CRC-32 that ``np.load`` verifies as it reads, so a damaged byte already
    fails the load. Hashing the bytes again cost a third of a large snapshot's write time.
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = arrays[name]
        digest.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
    digest.update(orjson.dumps(meta, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


def write_snapshot(path: Path, state: BackendState, meta: dict[str, Any], *, within: Path | None = None) -> None:
    """Write atomically and durably: temporary name, fsync, rename, fsync the folder. The
    folders from ``within`` (the run directory; by default the file's own folder) down must
    be real ones, never links (``runner.records.files.replacing``); missing ones are made."""
    meta = {**meta, "backend": state.meta}
    document = {**meta, "checksum": checksum(state.arrays, meta)}
    payload = {**state.arrays, META_KEY: np.frombuffer(orjson.dumps(document), dtype=np.uint8)}
    with replacing(path, within=within) as f:
        np.savez(f, **payload)


def read_snapshot(path: Path) -> tuple[BackendState, dict[str, Any]]:
    """Load and verify a snapshot; CorruptSnapshot says what is wrong with it (a link, a
    FIFO or a device where the file belongs included: it is refused before it is read)."""
    try:
        with open_binary(path, None, follow_symlinks=False) as handle, np.load(handle, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except InputError as err:
        raise CorruptSnapshot(str(err)) from None
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


def trial_folder(run_dir: Path, trial: int) -> Path:
    """Where a trial's snapshot files go: ``RUN_DIR/trials/tNNN``."""
    return run_dir / "trials" / f"t{trial:03d}"


def is_snapshot_temporary(name: str) -> bool:
    """True for the name of a snapshot file half written: what ``write_snapshot`` names its
    temporary file (or what earlier versions did, ``NAME.tmp``)."""
    written = temporary_of(name) or name.removesuffix(".tmp")
    return name.endswith(".tmp") and SNAPSHOT_NAME.fullmatch(written) is not None


def snapshot_files(folder: Path) -> list[Path]:
    """The files in ``folder`` named as runner names its snapshots: regular files only (a
    link of that name is not one runner made); none if the folder is missing."""
    try:
        with os.scandir(folder) as entries:
            return [
                folder / e.name for e in entries if SNAPSHOT_NAME.fullmatch(e.name) and e.is_file(follow_symlinks=False)
            ]
    except FileNotFoundError:
        return []


def scan_snapshots(folder: Path, skipped=None) -> list[tuple[Path, dict[str, Any]]]:
    """The snapshot files in ``folder`` that read back intact, in the order they were taken
    (by the trial's event count, then step). ``skipped(path, error_or_None)`` hears about a
    damaged file (with its CorruptSnapshot) or one without loop state (with None). Only
    runner's own snapshot names are looked at (``snapshot_files``)."""
    found = []
    for path in snapshot_files(folder):
        try:
            _, meta = read_snapshot(path)
        except CorruptSnapshot as err:
            if skipped:
                skipped(path, err)
            continue
        if "loop" not in meta:
            if skipped:
                skipped(path, None)
            continue
        found.append(((meta["loop"]["events"], meta["step"]), path, meta))
    return [(path, meta) for _, path, meta in sorted(found, key=lambda item: item[0])]


def trial_snapshot(
    run_dir: Path, trial: int, to: str | int, older: int = 0
) -> tuple[Path, BackendState, dict[str, Any]] | None:
    """A snapshot file of ``trial`` taken at an epoch's end, for another trial to take
    (``Rollback(trial=...)``): ``"last"`` (its newest), ``"best"`` or the one taken after
    epoch ``to``, skipping ``older`` newer matches; damaged files are passed over (and left
    where they are: they are another trial's). None if none matches; UnsafePath if the
    trial's folder, or one above it in the run directory, is a link."""
    folder = trial_folder(run_dir, trial)
    if not folder_exists(folder, within=run_dir):
        return None
    found = None
    for path, meta in reversed(scan_snapshots(folder)):
        at_boundary = not meta["loop"].get("partial") and meta["reason"] != "before_nudge"
        if at_boundary and (to == "last" or (to == "best" and meta["best"]) or meta["epoch"] == to):
            found = path
            if older == 0:
                break
            older -= 1
    if found is None:
        return None
    try:
        return (found, *read_snapshot(found))
    except CorruptSnapshot:  # deleted or replaced since the scan read it
        return None


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
