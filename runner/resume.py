"""Resuming a run that was killed or interrupted: what to keep, and where each trial goes on.

The event log and the snapshot files are the whole truth. A finished trial (its
``trial_complete`` is in the log) stays finished. An interrupted trial continues from its
newest snapshot file that reads back intact (damaged ones are skipped, with a message);
each snapshot records how many of its trial's events came before it, so the log is cut
exactly there, and the events of the lost work after it are dropped. With no usable
snapshot the trial starts again from scratch, keeping only its ``trial_start``. The log is
rewritten atomically; strategies rebuild their progress from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from runner.checkpoints import CorruptSnapshot, scan_snapshots
from runner.errors import RunnerError
from runner.events import read_events
from runner.files import atomic_write


@dataclass
class ResumePlan:
    """What ``plan_resume`` found: the events to keep, the trials to continue, messages."""

    events: list[dict[str, Any]]
    continue_from: dict[int, Path | None]  # interrupted trial -> snapshot file (None: from scratch)
    start: dict[str, Any]  # the experiment_start event
    notes: list[str] = field(default_factory=list)


def read_run(run_dir: Path) -> list[dict[str, Any]]:
    """The events of a run directory; a RunnerError (exit 2) if it is not one."""
    path = run_dir / "events.jsonl"
    if not path.is_file() or not (run_dir / "experiment.json").is_file():
        raise RunnerError(f"{run_dir} is not a run directory (no events.jsonl and experiment.json)", exit_code=2)
    try:
        events = list(read_events(path))
    except orjson.JSONDecodeError as err:
        raise RunnerError(f"{path} is damaged: {err}", exit_code=2) from None
    if not events or events[0]["event"] != "experiment_start":
        raise RunnerError(f"{path} does not begin with experiment_start", exit_code=2)
    return events


def plan_resume(run_dir: Path) -> ResumePlan:
    """Decide how to continue the run in ``run_dir``. Changes nothing on disk but setting
    damaged snapshot files aside (renamed ``*.damaged``)."""
    events = read_run(run_dir)
    if any(e["event"] == "experiment_complete" for e in events):
        raise RunnerError(f"the run in {run_dir} has finished; there is nothing to resume", exit_code=2)
    started = {e["trial"]: e for e in events if e["event"] == "trial_start"}
    finished = {e["trial"] for e in events if e["event"] == "trial_complete"}
    plan = ResumePlan(events=[], continue_from={}, start=events[0])
    keep: dict[int, int] = {}  # interrupted trial -> how many of its events to keep
    for trial in sorted(set(started) - finished):
        snapshot, meta = newest_intact_snapshot(run_dir / "trials" / f"t{trial:03d}", plan.notes)
        plan.continue_from[trial] = snapshot
        keep[trial] = meta["loop"]["events"] if meta else 1  # from scratch: only its trial_start
    seen: dict[int, int] = {}
    for event in events:
        trial = event.get("trial")
        if trial in keep:
            seen[trial] = seen.get(trial, 0) + 1
            if seen[trial] > keep[trial]:
                continue
        plan.events.append(event)
    return plan


def newest_intact_snapshot(folder: Path, notes: list[str]) -> tuple[Path | None, dict | None]:
    """The trial's snapshot file taken last that reads back intact (checksum verified);
    damaged files are set aside as ``*.damaged``, each with a note."""

    def skipped(path: Path, error: CorruptSnapshot | None) -> None:
        if error is None:
            notes.append(f"{path}: not a snapshot this version of runner can continue from; ignored")
        else:
            notes.append(f"{error}; using an earlier snapshot")
            path.rename(path.with_name(path.name + ".damaged"))

    # A before-nudge snapshot is taken in the middle of applying an epoch's decisions: a
    # resume starts from the one taken after them (it stays, for reverting the nudge).
    found = [(path, meta) for path, meta in scan_snapshots(folder, skipped) if meta["reason"] != "before_nudge"]
    return found[-1] if found else (None, None)


def clean_temporary_files(run_dir: Path) -> list[Path]:
    """Remove what a crash can leave half written: temporary snapshot and JSON files."""
    removed = [p for p in [*run_dir.glob("trials/*/*.tmp"), *run_dir.glob(".*.tmp")] if p.is_file()]
    for p in removed:
        p.unlink()
    return removed


def rewrite_events(run_dir: Path, events: list[dict[str, Any]]) -> None:
    """Replace the event log with ``events``, atomically."""
    atomic_write(
        run_dir / "events.jsonl", b"".join(orjson.dumps(e, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for e in events)
    )
