"""Snapshot files: written durably, read back checked, found by name.

A snapshot is one safetensors file (``runner.engine.snapshot_format``): the backend's arrays,
and as metadata the trial, epoch, step, reason, hyperparameters, metrics, the loop's state,
the backend's own meta and a checksum of everything. Nothing is ever unpickled from disk.
A file is durable once written under a temporary name, flushed, fsynced, renamed into
place and its folder fsynced. ``runner.engine.checkpoints`` decides when to write one, and
which to keep. Files named ``.npz`` are snapshots of runs made by runner 0.2 and earlier: they are
read, and kept or pruned, like the others; new ones are never written so.
"""

from __future__ import annotations

import functools
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from runner.backend import BackendState
from runner.engine.snapshot_format import CorruptSnapshot, Encoded, crc32, decode, decode_npz, encode
from runner.inputs import InputError, read_into_memory
from runner.records.files import replacing, temporary_of, write_all

SUFFIX = ".safetensors"
LEGACY_SUFFIX = ".npz"
SNAPSHOT_NAME = re.compile(  # as ``CheckpointStore.save`` names its files
    rf"e\d{{5,}}-s\d{{9,}}-n\d{{6,}}(?:{re.escape(SUFFIX)}|{re.escape(LEGACY_SUFFIX)})"
)

TRIAL_FOLDER = re.compile(r"t\d{3,}")  # as ``trial_folder`` names a trial's folder

# Snapshot reasons a resume never starts from: taken in the middle of applying decisions, a
# resume starts from the one taken after them (they stay, for rolling back to).
MID_DECISIONS = ("before_nudge", "exploit")

__all__ = ["CorruptSnapshot", "read_snapshot", "snapshot_name", "write_snapshot"]


def snapshot_name(epoch: int, step: int, events: int) -> str:
    """The file name of a snapshot taken after ``epoch`` epochs and ``step`` steps, with the
    trial's event count (which makes it unique when a rollback trains an epoch again)."""
    return f"e{epoch:05d}-s{step:09d}-n{events:06d}{SUFFIX}"


def write_snapshot(path: Path, state: BackendState, meta: dict[str, Any], *, within: Path | None = None) -> None:
    """Write atomically and durably: temporary name, fsync, rename, fsync the folder. The
    folders from ``within`` (the run directory; by default the file's own folder) down must
    be real ones, never links (``runner.records.files.replacing``); missing ones are made.
    UnstorableArray (a ValueError) names an array of a dtype a snapshot cannot hold.

    The header holds the checksum of the arrays' bytes: for a large state it is computed on
    another thread while the arrays are written, and the header written again once it is
    known (the file is renamed into place only after that)."""
    encoded = encode(state.arrays, {**meta, "backend": state.meta})
    with replacing(path, within=within) as f:
        write_encoded(f.fileno(), encoded, path)


def write_encoded(fd: int, encoded: Encoded, path: Path) -> None:
    """The snapshot's bytes into the new file ``fd`` (``path``, for a message): with the CRC
    computed alongside and the header written again, above ``PARALLEL_CRC_BYTES``."""
    if encoded.nbytes < PARALLEL_CRC_BYTES:
        write_all(fd, [encoded.head(crc32(encoded.arrays)), *encoded.arrays])
        return
    crc = _checksummer().submit(crc32, encoded.arrays)
    write_all(fd, [encoded.head(0), *encoded.arrays])
    head = encoded.head(crc.result())
    if os.pwrite(fd, head, 0) != len(head):  # (a regular file takes it whole, or raises)
        raise OSError(f"{path}: the snapshot's header was written short")


PARALLEL_CRC_BYTES = 1 << 20  # below this, a thread hand-off costs more than it saves


@functools.cache
def _checksummer() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="runner-snapshot-crc")


def read_snapshot(path: Path | str) -> tuple[BackendState, dict[str, Any]]:
    """Load and verify a snapshot (its arrays are views into one buffer the file was read
    into, writable); CorruptSnapshot says what is wrong with it (a link, a FIFO or a device
    where the file belongs included: it is refused before it is read)."""
    return decode_snapshot(snapshot_bytes(path), path)


def snapshot_bytes(path: Path | str) -> bytearray:
    """A snapshot file's bytes, unchecked (``decode_snapshot`` checks them): a regular file
    only, never read through a link (CorruptSnapshot otherwise, or if it is gone)."""
    try:
        return read_into_memory(path, None, follow_symlinks=False)
    except InputError as err:
        raise CorruptSnapshot(str(err)) from None


def decode_snapshot(buffer: bytearray, path: Path | str) -> tuple[BackendState, dict[str, Any]]:
    """The snapshot in ``buffer``, the bytes of the file ``path`` (its suffix says the format;
    messages name it): arrays that are views into the buffer, and the metadata, checked."""
    path = Path(path)
    arrays, document = (decode_npz if path.suffix == LEGACY_SUFFIX else decode)(buffer, str(path))
    try:
        backend = document.pop("backend")
    except KeyError:
        raise CorruptSnapshot(f"{path}: its metadata is damaged") from None
    return BackendState(arrays=arrays, meta=backend), document


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


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
