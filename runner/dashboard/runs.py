"""The runs a dashboard serves, and what it reads of them: only a run's ``status.json``,
``events.jsonl``, ``control.json`` and ``results.json``, each as a bounded regular file,
never through a link.

A request names a run by its folder's name; the name is looked up among the runs found
(``ServedRuns.get``), never joined onto a path, so no request reaches a file outside them.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from runner.control.file import FILE_NAME as CONTROL_FILE
from runner.inputs import CONTROL_FILE as CONTROL_LIMIT
from runner.inputs import EVENT_LOG, InputError, read_bytes
from runner.inputs import STATUS_FILE as STATUS_LIMIT
from runner.records.files import run_is_held
from runner.records.status import FILE_NAME as STATUS_NAME

EVENTS_FILE = "events.jsonl"
RESULTS_FILE = "results.json"
LINE_LIMIT = 4 << 20  # one event log line; a longer one is not runner's, and is skipped


@dataclass(frozen=True)
class ServedRuns:
    """Either the run directories under ``root`` (each folder holding an ``events.jsonl``),
    or the one run ``only``."""

    root: Path
    only: Path | None = None

    def names(self) -> list[str]:
        """The served runs' names, newest event log first."""
        if self.only is not None:
            return [self.only.name]
        found = []
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return []
        for entry in entries:
            log = Path(entry.path) / EVENTS_FILE
            try:
                if entry.is_dir(follow_symlinks=False) and stat.S_ISREG((info := os.lstat(log)).st_mode):
                    found.append((info.st_mtime_ns, entry.name))
            except OSError:  # (deleted while we look)
                continue
        return [name for _, name in sorted(found, reverse=True)]

    def get(self, name: str) -> Path | None:
        """The run directory called ``name``, or None when no served run is."""
        if name not in self.names():
            return None
        return self.only if self.only is not None else self.root / name


def read_document(path: Path, limit) -> Any:
    """The JSON document in ``path``, or None when it is missing, not a regular file, over
    ``limit`` or not JSON (a run that has not written it yet, or is writing it now)."""
    try:
        return orjson.loads(read_bytes(path, limit, follow_symlinks=False))
    except (InputError, orjson.JSONDecodeError, OSError):
        return None


def status(run_dir: Path) -> dict[str, Any] | None:
    """``status.json`` with ``alive`` (a runner process holds the run now), or None."""
    doc = read_document(run_dir / STATUS_NAME, STATUS_LIMIT)
    if not isinstance(doc, dict) or not isinstance(doc.get("run"), dict):
        return None
    doc["alive"] = run_is_held(run_dir)
    return doc


def control_file(run_dir: Path) -> tuple[str | None, str | None]:
    """The control file as it is now, and its SHA-256 (the page tells by it whether the run
    has yet to read an order it wrote); None, None where it cannot be read as one."""
    try:
        data = read_bytes(run_dir / CONTROL_FILE, CONTROL_LIMIT, follow_symlinks=False)
    except (InputError, OSError):
        return None, None
    return data.decode("utf-8", "replace"), hashlib.sha256(data).hexdigest()


def summary(name: str, run_dir: Path) -> dict[str, Any]:
    """One line of the runs page: the run's state and best score so far, of the trials that
    ended and those still training."""
    doc = status(run_dir) or {}
    run = doc.get("run") or {}
    finished = doc.get("finished") or {}
    return {
        "name": name,
        "experiment": run.get("name"),
        "state": run.get("state", "unknown"),
        "alive": bool(doc.get("alive")),
        "metric": run.get("metric"),
        "mode": run.get("mode"),
        "best": best_so_far(doc),
        "running": len(doc.get("trials") or {}),
        "finished": finished.get("count", 0),
        "planned": run.get("planned_trials"),
        "updated": run.get("updated"),
    }


def best_so_far(doc: dict[str, Any]) -> dict[str, Any] | None:
    """``{"trial", "score"}``: the best score in ``status.json``, of a trial that ended or
    of a running trial's best epoch; None before any."""
    run = doc.get("run") or {}
    metric, sign = run.get("metric"), -1 if run.get("mode") == "min" else 1
    found = [(doc.get("finished") or {}).get("best")]
    for trial, entry in (doc.get("trials") or {}).items():
        score = ((entry or {}).get("best") or {}).get(metric)
        found.append({"trial": int(trial), "score": score})
    scored = [f for f in found if isinstance(f, dict) and isinstance(f.get("score"), int | float)]
    return max(scored, key=lambda f: sign * f["score"], default=None)


def details(run_dir: Path) -> dict[str, Any]:
    """What the run page shows besides the log: status, the control file, the results."""
    text, sha = control_file(run_dir)
    return {
        "status": status(run_dir),
        "control_file": text,
        "control_sha256": sha,
        "results": read_document(run_dir / RESULTS_FILE, STATUS_LIMIT),
    }


class LogTail:
    """Reads the complete lines an event log gained since the last read. A log that was
    replaced, cut or gone (a run directory made anew under the same name) is read from its
    start again: ``reset`` says so. A line over ``LINE_LIMIT`` bytes is skipped."""

    def __init__(self, path: Path):
        self.path, self.offset, self.identity, self.reset = path, 0, None, False

    def new_lines(self) -> Iterator[bytes]:
        self.reset = False
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            if self.identity is not None:
                self.identity = ()  # gone: whatever comes back under its name is read anew
            return
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > EVENT_LOG.bytes():
                return
            identity = (info.st_dev, info.st_ino)
            if identity != self.identity or info.st_size < self.offset:
                self.reset = self.identity is not None
                self.identity, self.offset = identity, 0
            f.seek(self.offset)
            while self.offset < info.st_size:
                line = f.readline(LINE_LIMIT)
                if not line.endswith(b"\n"):
                    if len(line) < LINE_LIMIT:
                        return  # still being written: read it next time
                    skipped = self._skip_line(f)
                    if skipped is None:
                        return
                    self.offset += len(line) + skipped
                    continue
                self.offset += len(line)
                yield line

    @staticmethod
    def _skip_line(f) -> int | None:
        """Read past the rest of an over-long line: the bytes read, or None if it has no end yet."""
        skipped = 0
        while True:
            chunk = f.readline(LINE_LIMIT)
            skipped += len(chunk)
            if chunk.endswith(b"\n"):
                return skipped
            if len(chunk) < LINE_LIMIT:
                return None
