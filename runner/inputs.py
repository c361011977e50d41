"""Reading the files runner is given: regular files only, never more than a limit.

Every file runner reads that a person or another program could have put there (an
experiment file, a data file, the control file, and each file of a run directory:
``events.jsonl``, ``status.json``, ``experiment.json``, snapshots) is opened here. The path
is looked at before it is opened, so a device is never opened at all; the open itself is
non-blocking (a FIFO put there between the look and the open cannot hang it), and the
open file is checked again (``fstat``): anything but a regular file is refused. So is a
file over its limit, by its size before anything is read and by what is read if it grows
meanwhile. A refusal is an ``InputError``: exit 2, one line naming the path.

Each kind of file has a generous default limit, raised through an environment variable:

================================  ==========  ===========================
file                              default     raised with
================================  ==========  ===========================
experiment file, experiment.json  4 MiB       RUNNER_MAX_EXPERIMENT_BYTES
data file (csv, npz)              1 GiB       RUNNER_MAX_DATA_FILE_BYTES
events.jsonl                      512 MiB     RUNNER_MAX_EVENTS_BYTES
status.json                       16 MiB      RUNNER_MAX_STATUS_BYTES
control.json                      1 MiB       (fixed)
================================  ==========  ===========================

``duplicate_key`` finds a key written twice in one object of the JSON people write
(experiment and control files), which a JSON parser would otherwise let the last one win.

This module is public (``runner.PUBLIC_MODULES``): bounded regular files, for a dataset
that reads the files an experiment names. Its ``__all__`` is what a plugin uses:
``open_binary(path, DATA_FILE)`` and ``read_bytes`` read a file, ``check_regular`` looks at
one without opening it (for an ``estimate``), ``Limit`` is a limit of a plugin's own, and
``InputError`` is what they raise.
"""

from __future__ import annotations

import io
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from runner.errors import RunnerError

__all__ = ["DATA_FILE", "InputError", "Limit", "check_regular", "open_binary", "read_bytes"]

_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class InputError(RunnerError):
    """A file runner was given that it will not read: exit 2, one line naming the path.

    ``kind`` says why, for callers that word it their own way: ``missing``, ``folder``,
    ``not_regular``, ``link`` (a symbolic link where links are not followed), ``too_big``,
    ``unreadable``, ``bad_limit`` (the environment variable that raises the limit is not a
    number).
    """

    exit_code = 2

    def __init__(self, path: Path | str, kind: str, problem: str):
        self.path = Path(path)
        self.kind = kind
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class Limit:
    """How many bytes one kind of file may hold: ``default``, or the value of the
    environment variable ``env`` when it is set."""

    what: str  # how a message names the kind of file: "an experiment file"
    default: int
    env: str | None = None

    def bytes(self) -> int:
        """The limit in force, read from the environment each time (a test or a person may set it)."""
        value = os.environ.get(self.env, "").strip() if self.env else ""
        if not value:
            return self.default
        try:
            limit = int(value.replace("_", ""))
        except ValueError:
            limit = -1
        if limit < 0:
            raise InputError(self.env, "bad_limit", f"must be a whole number of bytes, got {value!r}")
        return limit

    def exceeded(self, path: Path | str, size: int, limit: int) -> InputError:
        """The error for a file of ``size`` bytes over ``limit``."""
        raise_it = f" (raise the limit with {self.env}=BYTES)" if self.env else ""
        return InputError(path, "too_big", f"the file is {size:,} bytes; {self.what} is at most {limit:,}{raise_it}")


EXPERIMENT_FILE = Limit("an experiment file", 4 << 20, "RUNNER_MAX_EXPERIMENT_BYTES")
DATA_FILE = Limit("a data file", 1 << 30, "RUNNER_MAX_DATA_FILE_BYTES")
EVENT_LOG = Limit("an event log", 512 << 20, "RUNNER_MAX_EVENTS_BYTES")
STATUS_FILE = Limit("a status file", 16 << 20, "RUNNER_MAX_STATUS_BYTES")
CONTROL_FILE = Limit("a control file", 1 << 20)


def check_regular(path: Path | str, limit: Limit | None = None, *, follow_symlinks: bool = True) -> os.stat_result:
    """Called before a file is opened (and by whoever only needs to know that a file could
    be read): its ``stat``, or an InputError if it is missing, is not a regular file, or is
    over ``limit`` (None: no limit). Opens nothing, so a device is never opened."""
    try:
        info = os.stat(path, follow_symlinks=follow_symlinks)
    except FileNotFoundError:
        raise InputError(path, "missing", "no such file") from None
    except OSError as err:
        raise InputError(path, "unreadable", f"cannot be read: {err.strerror}") from None
    _refuse_irregular(path, info)
    bound = limit.bytes() if limit else None
    if bound is not None and info.st_size > bound:
        raise limit.exceeded(path, info.st_size, bound)
    return info


def _refuse_irregular(path: Path | str, info: os.stat_result) -> None:
    """Raise the InputError that says what ``path`` is, unless ``info`` is a regular file's."""
    if stat.S_ISREG(info.st_mode):
        return
    if stat.S_ISLNK(info.st_mode):
        raise InputError(path, "link", "is a symbolic link; runner does not follow links in a run directory")
    if stat.S_ISDIR(info.st_mode):
        raise InputError(path, "folder", "is a folder, not a file")
    kind = next((name for test, name in _KINDS if test(info.st_mode)), "another kind of file")
    raise InputError(path, "not_regular", f"is not a regular file but {kind}")


def _open_checked(path: Path | str, limit: Limit | None, follow_symlinks: bool) -> tuple[int, int | None]:
    """An open descriptor of the regular file ``path`` and the limit in force (None: no
    limit); an InputError (nothing left open) for anything else."""
    check_regular(path, follow_symlinks=follow_symlinks)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise InputError(path, "missing", "no such file") from None
    except IsADirectoryError:
        raise InputError(path, "folder", "is a folder, not a file") from None
    except OSError as err:
        if not follow_symlinks and os.path.islink(path):
            raise InputError(
                path, "link", "is a symbolic link; runner does not follow links in a run directory"
            ) from None
        raise InputError(path, "unreadable", f"cannot be read: {err.strerror}") from None
    try:
        info = os.fstat(fd)
        _refuse_irregular(path, info)  # replaced between the look and the open
        bound = limit.bytes() if limit else None
        if bound is not None and info.st_size > bound:
            raise limit.exceeded(path, info.st_size, bound)
    except BaseException:
        os.close(fd)
        raise
    return fd, bound


def read_bytes(path: Path | str, limit: Limit, *, follow_symlinks: bool = True) -> bytes:
    """The whole of the regular file ``path``; an InputError if it is not one, or holds
    more than ``limit`` (by its size, or by what is read: never more than limit + 1 bytes).
    ``follow_symlinks=False`` refuses a symbolic link (files of a run directory)."""
    fd, bound = _open_checked(path, limit, follow_symlinks)
    try:
        chunks, size = [], 0
        while chunk := os.read(fd, (bound + 1 - size) if bound is not None else 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if bound is not None and size > bound:
                raise limit.exceeded(path, size, bound)
        return b"".join(chunks)
    except OSError as err:
        raise InputError(path, "unreadable", f"cannot be read: {err.strerror}") from None
    finally:
        os.close(fd)


def read_into_memory(path: Path | str, limit: Limit | None, *, follow_symlinks: bool = True) -> bytearray:
    """The whole of the regular file ``path``, read straight into one writable buffer (no
    copy after the read: arrays can be views into it); an InputError if it is not a regular
    file or is over ``limit`` (None: no limit). A file cut short while it is read gives
    the bytes it still had."""
    fd, _ = _open_checked(path, limit, follow_symlinks)
    try:
        buffer = bytearray(os.fstat(fd).st_size)
        view, filled = memoryview(buffer), 0
        while filled < len(buffer) and (count := os.readv(fd, [view[filled:]])):
            filled += count
        view.release()
        return buffer if filled == len(buffer) else buffer[:filled]
    except OSError as err:
        raise InputError(path, "unreadable", f"cannot be read: {err.strerror}") from None
    finally:
        os.close(fd)


class _BoundedFile(io.RawIOBase):
    """A regular file opened by ``open_binary``: reading past ``bound`` bytes from its start
    (it grew after it was opened) raises the limit's InputError."""

    def __init__(self, fd: int, path: Path | str, limit: Limit | None, bound: int | None):
        self._file = io.FileIO(fd, "rb", closefd=True)
        self._path, self._limit, self._bound = path, limit, bound
        self.name = str(path)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def readinto(self, buffer) -> int:
        count = self._file.readinto(buffer)
        if self._bound is not None and count and self._file.tell() > self._bound:
            raise self._limit.exceeded(self._path, self._file.tell(), self._bound)
        return count

    def close(self) -> None:
        self._file.close()
        super().close()


@contextmanager
def open_binary(path: Path | str, limit: Limit | None, *, follow_symlinks: bool = True) -> Iterator[BinaryIO]:
    """The regular file ``path`` open for reading (buffered, seekable: ``np.load`` and
    ``csv`` read it), closed on leaving; an InputError if it is not a regular file or is
    over ``limit`` (None: no limit), checked on opening and again as it is read."""
    fd, bound = _open_checked(path, limit, follow_symlinks)
    with io.BufferedReader(_BoundedFile(fd, path, limit, bound)) as handle:
        yield handle


class _Duplicated(dict):
    """An object in which ``key`` was written more than once."""

    key: str


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj and not isinstance(obj, _Duplicated):
            obj = _Duplicated(obj)
            obj.key = key
        obj[key] = value
    return obj


def duplicate_key(text: bytes | str) -> list[str | int] | None:
    """The path (keys and list indices, outermost first) of the first key written twice
    in one object of the JSON ``text``, or None. Called on text already parsed as valid,
    so it never raises for it; the JSON people write is checked this way, because a
    parser lets the last of two keys win without a word."""
    try:
        root = json.loads(text, object_pairs_hook=_pairs)
    except RecursionError:  # nested deeper than Python parses: the file's own checks refuse it
        return None
    stack: list[tuple[Any, list[str | int]]] = [(root, [])]
    while stack:  # depth first, in document order
        node, path = stack.pop()
        if isinstance(node, _Duplicated):
            return [*path, node.key]
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        stack.extend(reversed([(value, [*path, key]) for key, value in items]))
    return None
