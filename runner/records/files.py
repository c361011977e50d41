"""Files in a run directory: written whole or not at all, and only where runner made them.

People and scripts read these files while a run goes on, so each is written under a
temporary name and renamed into place. And a run directory is data that anyone may have
touched: runner writes, renames and deletes only regular files it made, inside real
folders of the run directory. Every folder from the run directory down is opened one name
at a time without following a symbolic link (``O_NOFOLLOW``), and each file is made,
renamed or removed relative to that open folder (``dir_fd``), so a link planted anywhere on
the way, even between a check and a write, makes runner refuse (``UnsafePath``, exit 2)
instead of writing, renaming or deleting outside.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from runner.errors import RunnerError

_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # non-blocking: a FIFO planted there cannot hang the open
# ``.NAME.PID-RANDOM.tmp``, as ``replacing`` names its files (``.NAME.PID.tmp``: as earlier versions did).
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.\d+(?:-[0-9a-f]{8})?\.tmp")


class UnsafePath(RunnerError, OSError):
    """A member of a run directory that runner will not write through: a symbolic link, or
    not the kind of file runner made there (a folder where a file belongs, a FIFO...).

    An OSError to code that carries on after a failed write (``status.json``, snapshot
    files: the run goes on, nothing is written outside), a RunnerError (exit 2, one line)
    to the command line."""

    exit_code = 2

    def __init__(self, path: Path, what: str):
        self.path = path
        super().__init__(f"{path} {what}: runner writes only real files and folders it made in a run directory")


def check_real(path: Path, *, folder: bool) -> None:
    """Raise UnsafePath if ``path`` is a symbolic link, or exists and is not a real folder
    (``folder``) or a regular file. Its own folders are not looked at."""
    _check_entry(str(path), None, path, folder=folder)


def _check_entry(name: str, dir_fd: int | None, shown: Path, *, folder: bool) -> None:
    """``check_real`` of the entry ``name`` of the open folder ``dir_fd`` (None: a path)."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise UnsafePath(shown, "is a symbolic link")
    if folder and not stat.S_ISDIR(mode):
        raise UnsafePath(shown, "is not a folder")
    if not folder and not stat.S_ISREG(mode):
        raise UnsafePath(shown, "is not a regular file")


def _open_folder(name: str | Path, dir_fd: int | None, shown: Path) -> int:
    """Open one folder without following a link: UnsafePath if it is a link or not a folder."""
    try:
        return os.open(name, _FOLDER_FLAGS, dir_fd=dir_fd)
    except OSError as err:
        if err.errno in (errno.ENOTDIR, errno.ELOOP):
            _check_entry(str(name), dir_fd, shown, folder=True)
        raise


@contextmanager
def real_folder(folder: Path, *, within: Path | None = None, create: bool = False) -> Iterator[int]:
    """An open descriptor of ``folder``, reached from ``within`` (by default the folder
    itself) one name at a time without following a symbolic link: ``within`` and every
    folder below it down to ``folder`` must be real folders (UnsafePath names the first that
    is not). The folders above ``within`` are the person's choice and may be links.
    ``create`` makes the missing ones below ``within``. Called before every write, rename
    and removal in a run directory; the descriptor is closed on leaving."""
    top = folder if within is None else within
    fd = _open_folder(top, None, top)
    try:
        reached = top
        for name in folder.relative_to(top).parts:
            reached = reached / name
            if create:
                try:
                    os.mkdir(name, dir_fd=fd)
                except FileExistsError:
                    pass
            inner = _open_folder(name, fd, reached)
            os.close(fd)
            fd = inner
        yield fd
    finally:
        os.close(fd)


def folder_exists(folder: Path, *, within: Path) -> bool:
    """True if ``folder`` is there, reached from ``within`` through real folders only; False
    if it (or a folder on the way) is missing; UnsafePath if one of them is a link."""
    try:
        with real_folder(folder, within=within):
            return True
    except FileNotFoundError:
        return False


def _open_file(folder_fd: int, name: str, shown: Path, flags: int, mode: int = 0o666) -> int:
    """Open the regular file ``name`` of an open folder without following a link."""
    try:
        fd = os.open(name, flags | _FILE_FLAGS, mode, dir_fd=folder_fd)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            _check_entry(name, folder_fd, shown, folder=False)
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath(shown, "is not a regular file")
    return fd


@contextmanager
def replacing(path: Path, *, within: Path | None = None, durable: bool = True) -> Iterator[BinaryIO]:
    """A new file to write ``path``'s content into; on leaving the block it replaces ``path``
    in one rename, so a reader sees the old file or the new one, never a mix. ``durable``
    also fsyncs the data before the rename and the folder after it, so a power cut never
    leaves it half written (files rewritten often and rebuilt from the event log, such as
    ``status.json``, skip that cost). The folders from ``within`` (by default the file's
    own) down to ``path`` must be real (missing ones are made), and ``path`` is missing or a
    regular file; the temporary file (``.NAME.PID-RANDOM.tmp``) is made new, and removed if
    the block fails."""
    with real_folder(path.parent, within=within or path.parent, create=True) as folder:
        _check_entry(path.name, folder, path, folder=False)
        temporary = f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        fd = _open_file(folder, temporary, path.with_name(temporary), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(temporary, path.name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            _remove_quietly(temporary, folder)
            raise
        if durable:
            os.fsync(folder)


def _remove_quietly(name: str, folder_fd: int) -> None:
    """Remove the file ``name`` of an open folder, if it can be (a temporary file: clean-up)."""
    try:
        os.unlink(name, dir_fd=folder_fd)
    except OSError:
        pass


def write_all(fd: int, buffers: list) -> None:
    """Write ``buffers`` (bytes, arrays: anything with the buffer protocol) to ``fd`` one after
    another, in as few system calls as the kernel allows and without joining them first."""
    views = [memoryview(b).cast("B") for b in buffers if memoryview(b).nbytes]
    while views:
        written = os.writev(fd, views[:IOV_MAX]) if hasattr(os, "writev") else os.write(fd, views[0])
        while views and written >= views[0].nbytes:
            written -= views.pop(0).nbytes
        if views and written:
            views[0] = views[0][written:]


IOV_MAX = 1024  # the least POSIX systems allow in one writev


def atomic_write(path: Path, data: bytes, *, durable: bool = True, within: Path | None = None) -> None:
    """Write ``data`` to ``path`` in a run directory, whole or not at all (see ``replacing``)."""
    with replacing(path, within=within, durable=durable) as f:
        f.write(data)


def write_own_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a person's own ``path`` outside any run directory (``runner schema
    --out``), whole or not at all: links on the way are followed, as the person meant them;
    a link at ``path`` itself is replaced by the file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    f = open(temporary, "xb")
    try:
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any, *, within: Path | None = None) -> None:
    """``atomic_write`` of pretty-printed JSON (NaN and infinities become null)."""
    atomic_write(
        path, orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n", within=within
    )


def open_for_append(path: Path, *, within: Path | None = None) -> BinaryIO:
    """``path`` opened to append to (made if missing): a regular file in real folders from
    ``within`` (by default its own folder) down. Called once per run for ``events.jsonl``."""
    with real_folder(path.parent, within=within or path.parent) as folder:
        fd = _open_file(folder, path.name, path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return os.fdopen(fd, "ab")


def remove_file(path: Path, *, within: Path | None = None) -> None:
    """Delete ``path`` (a file runner made: callers name only those) if it is there; the
    folders from ``within`` (by default its own) down must be real."""
    with real_folder(path.parent, within=within or path.parent) as folder:
        try:
            os.unlink(path.name, dir_fd=folder)
        except FileNotFoundError:
            pass


def rename_file(path: Path, new_name: str, *, within: Path | None = None) -> Path:
    """Rename the regular file ``path`` to ``new_name`` in the same folder (the folders from
    ``within`` down must be real); returns the new path."""
    with real_folder(path.parent, within=within or path.parent) as folder:
        _check_entry(path.name, folder, path, folder=False)
        _check_entry(new_name, folder, path.with_name(new_name), folder=False)
        os.rename(path.name, new_name, src_dir_fd=folder, dst_dir_fd=folder)
    return path.with_name(new_name)


def temporary_of(name: str) -> str | None:
    """The file that ``name`` is a temporary file of, as ``replacing`` names them; None if
    it is not one."""
    match = _TEMPORARY.fullmatch(name)
    return match["name"] if match else None


def remove_temporary_files(folder: Path, owned: Callable[[str], bool], *, within: Path | None = None) -> list[Path]:
    """Delete the regular files in ``folder`` whose name ``owned`` says runner gave a
    temporary file there (what a crash or a killed worker left half written); returns them.
    The folders from ``within`` (by default ``folder`` itself) down must be real; a missing
    ``folder`` has none."""
    removed = []
    try:
        with real_folder(folder, within=within) as fd, os.scandir(fd) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False) and owned(entry.name):
                    os.unlink(entry.name, dir_fd=fd)
                    removed.append(folder / entry.name)
    except FileNotFoundError:  # no such folder: nothing was left in it
        pass
    return removed


@contextmanager
def lock_file(folder: Path, name: str) -> Iterator[int]:
    """An open descriptor of the lock file ``folder/name`` (made if missing, never through a
    link), for ``fcntl.flock``; closed, and so released, on leaving."""
    with real_folder(folder) as parent:
        fd = _open_file(parent, name, folder / name, os.O_RDWR | os.O_CREAT)
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def run_lock(run_dir: Path):
    """Hold the run directory for this process: a second ``start``/``resume`` on it fails at
    once with a clear message instead of interleaving two writers. Released on exit."""
    with lock_file(run_dir, ".lock") as fd:
        for attempt in range(20):  # ``run_is_held`` (runner nudge, status) holds it for an instant
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 19:
                    raise RunnerError(f"another runner process is using {run_dir}", exit_code=2) from None
                time.sleep(0.01)
        yield


def run_is_held(run_dir: Path) -> bool:
    """True while a ``runner start`` or ``runner resume`` process holds ``run_dir``. A
    ``.lock`` that is a link or not a regular file is one no runner process can hold."""
    try:
        fd = os.open(run_dir / ".lock", os.O_RDONLY | _FILE_FLAGS)
    except FileNotFoundError:
        return False
    except OSError as err:
        if err.errno == errno.ELOOP:
            return False
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def safe_name(name: str) -> str:
    """A folder name made from an experiment name: letters, digits, ``.``, ``_``, ``-`` only,
    never ``.`` or ``..``, at most 64 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-_")[:64].strip(".-_")
    return cleaned or "run"


def create_run_dir(root: Path, name: str, now: float | None = None) -> Path:
    """Create a new, empty run directory ``root/<safe name>-<YYYYmmdd-HHMMSS>``.

    Never reuses an existing folder: a second run in the same second gets ``-2``, ``-3``...
    The folder is created inside ``root`` whatever the experiment's name says.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunnerError(f"cannot create the output folder {root}: {err.strerror}", exit_code=2) from None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = f"{safe_name(name)}-{stamp}"
    for n in range(1, 10_000):
        candidate = root / (base if n == 1 else f"{base}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        except OSError as err:
            raise RunnerError(f"cannot create a run directory in {root}: {err.strerror}", exit_code=2) from None
        return candidate
    raise FileExistsError(f"could not find a free run directory name under {root}")
