"""Files people and scripts read while a run goes on: written whole or not at all."""

from __future__ import annotations

import fcntl
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from runner.errors import RunnerError


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never
    a mix: temporary name, then rename. ``durable`` also fsyncs before the rename, so a
    power cut never leaves it half written (files rewritten often and rebuilt from the
    event log, such as ``status.json``, skip that cost)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, value: Any) -> None:
    """``atomic_write`` of pretty-printed JSON (NaN and infinities become null)."""
    atomic_write(path, orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n")


@contextmanager
def run_lock(run_dir: Path):
    """Hold the run directory for this process: a second ``start``/``resume`` on it fails at
    once with a clear message instead of interleaving two writers. Released on exit."""
    handle = open(run_dir / ".lock", "a+")
    try:
        for attempt in range(20):  # ``run_is_held`` (runner nudge, status) holds it for an instant
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 19:
                    raise RunnerError(f"another runner process is using {run_dir}", exit_code=2) from None
                time.sleep(0.01)
        yield
    finally:
        handle.close()


def run_is_held(run_dir: Path) -> bool:
    """True while a ``runner start`` or ``runner resume`` process holds ``run_dir``."""
    try:
        handle = open(run_dir / ".lock")
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
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
