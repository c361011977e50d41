"""The event log (``events.jsonl``): one JSON object a line, written by one writer.

Every line has ``t`` (unix time, seconds), ``event`` and, where it applies, ``trial``; the
kinds of event and their fields are catalogued in ``runner.records.event_kinds``.
Lines are flushed as they are written, so ``tail -f`` and scripts see them at once.
Non-finite numbers (a NaN loss) are written as null.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from runner.errors import RunnerError
from runner.inputs import EVENT_LOG, check_regular, open_binary
from runner.records.event_kinds import EVENTS, unknown_fields
from runner.records.files import open_for_append

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
CHECK_FIELDS = os.environ.get("RUNNER_CHECK_EVENTS") == "1"  # every field against the catalogue (tests)


class EventLog:
    """Appends events to a file. Only the driver process holds one; its threads (the trial
    loop, the control-file watcher, an executor writing what its workers send) take turns.
    ``observers`` are called with each event after it is written, in log order
    (``status.json`` is kept this way)."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open_for_append(path)  # a regular file in the real run directory, never through a link
        self._lock = threading.Lock()
        self.observers: list[Callable[[dict[str, Any]], None]] = []

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event now and return it as written (before JSON encoding)."""
        return self.write({"t": round(time.time(), 6), "event": event, **fields})

    def write(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write an event made elsewhere (a worker process: ``t`` is when it happened there).
        An event kind missing from ``runner.records.event_kinds`` is a bug: ValueError, nothing
        written. With ``RUNNER_CHECK_EVENTS=1`` (the test suite sets it), a field the
        catalogue does not list is one too."""
        if record.get("event") not in EVENTS:
            raise ValueError(f"event {record.get('event')!r} is not in runner.records.event_kinds.EVENTS")
        if CHECK_FIELDS and (extra := unknown_fields(record)):
            raise ValueError(f"event {record['event']!r} has fields runner.records.event_kinds does not list: {extra}")
        with self._lock:
            self._file.write(orjson.dumps(record, option=_OPTIONS) + b"\n")
            self._file.flush()
            for observe in self.observers:
                observe(record)
        return record

    def sync(self) -> None:
        """Make what was written durable (fsync): called before a snapshot file is written,
        so that no snapshot on disk is ever ahead of the log after a power cut."""
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """Events in order. A last line cut short by a crash is skipped, not an error. The log
    is read as a regular file, not through a link, of at most ``inputs.EVENT_LOG`` bytes
    (an InputError, exit 2, otherwise)."""
    with open_binary(path, EVENT_LOG, follow_symlinks=False) as f:
        for line in f:
            if not line.endswith(b"\n"):
                return
            yield orjson.loads(line)


START_FIELDS = ("name", "metric", "mode")  # what every reader of a run takes from experiment_start


def read_run(run_dir: Path) -> list[dict[str, Any]]:
    """The events of a run directory; a RunnerError (exit 2) if it is not one, and an
    InputError (exit 2) if its ``events.jsonl`` or ``experiment.json`` is not a regular
    file (a link, a FIFO, a device) or its log is over ``inputs.EVENT_LOG``."""
    path = run_dir / "events.jsonl"
    if not os.path.lexists(path) or not os.path.lexists(run_dir / "experiment.json"):
        raise RunnerError(f"{run_dir} is not a run directory (no events.jsonl and experiment.json)", exit_code=2)
    check_regular(run_dir / "experiment.json", follow_symlinks=False)  # read later by whoever needs it
    try:
        events = list(read_events(path))
    except orjson.JSONDecodeError as err:
        raise RunnerError(f"{path} is damaged: {err}", exit_code=2) from None
    for number, event in enumerate(events, 1):
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            raise RunnerError(f"{path} is damaged: line {number} is not an event", exit_code=2)
    if not events or events[0]["event"] != "experiment_start":
        raise RunnerError(f"{path} does not begin with experiment_start", exit_code=2)
    missing = [name for name in START_FIELDS if not isinstance(events[0].get(name), str)]
    if missing:
        raise RunnerError(f"{path} is damaged: experiment_start has no {', '.join(missing)}", exit_code=2)
    return events
