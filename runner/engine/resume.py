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

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from runner.engine.snapshot_files import (
    MID_DECISIONS,
    TRIAL_FOLDER,
    CorruptSnapshot,
    is_snapshot_temporary,
    scan_snapshots,
    trial_folder,
)
from runner.errors import RunnerError
from runner.records.events import read_run
from runner.records.files import (
    atomic_write,
    check_real,
    folder_exists,
    real_folder,
    remove_temporary_files,
    rename_file,
    temporary_of,
)
from runner.records.fold import RunFold

# What runner writes in a run directory (the table in docs/run-directory.md), besides the trials' snapshots
# and the report's figures: each must be a regular file, never a link.
RUN_FILES = (
    "experiment.json",
    "events.jsonl",
    "status.json",
    "control.json",
    "results.json",
    "error.log",
    "report.html",
    ".lock",
    ".control.lock",
)
RUN_FOLDERS = ("trials", "report")


@dataclass
class ResumePlan:
    """What ``plan_resume`` found: the events to keep, the trials to continue, messages."""

    events: list[dict[str, Any]]
    continue_from: dict[int, Path | None]  # interrupted trial -> snapshot file (None: from scratch)
    start: dict[str, Any]  # the experiment_start event
    notes: list[str] = field(default_factory=list)
    unannounced: set[int] = field(default_factory=set)  # queued trials whose trial_start never reached the log
    settings: dict[str, float] = field(default_factory=dict)  # runner resume --set: live settings in force at once


def plan_resume(run_dir: Path) -> ResumePlan:
    """Decide how to continue the run in ``run_dir``. Changes nothing on disk but setting
    damaged snapshot files aside (renamed ``*.damaged``)."""
    events = read_run(run_dir)
    fold = RunFold.of(events, keep_epochs=False)
    if fold.finished:
        raise RunnerError(f"the run in {run_dir} has finished; there is nothing to resume", exit_code=2)
    plan = ResumePlan(events=[], continue_from={}, start=events[0])
    keep: dict[int, int] = {}  # interrupted trial -> how many of its events to keep
    for trial in sorted(fold.unannounced()):  # handed to a worker that had not started it
        plan.continue_from[trial] = None
        plan.unannounced.add(trial)
    for trial in sorted(trial_id for trial_id, standing in fold.trials.items() if not standing.ended):
        snapshot, meta = newest_intact_snapshot(run_dir, trial, plan.notes)
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


def newest_intact_snapshot(run_dir: Path, trial: int, notes: list[str]) -> tuple[Path | None, dict | None]:
    """The trial's snapshot file taken last that reads back intact (checksum verified);
    damaged files are set aside as ``*.damaged``, each with a note. Called by a resume and
    when a trial's worker died; UnsafePath (exit 2) if the trial's folder, or a folder
    above it in the run directory, is a link: nothing is read or renamed through one."""
    folder = trial_folder(run_dir, trial)
    if not folder_exists(folder, within=run_dir):
        return None, None

    def skipped(path: Path, error: CorruptSnapshot | None) -> None:
        if error is None:
            notes.append(f"{path}: not a snapshot this version of runner can continue from; ignored")
        else:
            notes.append(f"{error}; using an earlier snapshot")
            rename_file(path, path.name + ".damaged", within=run_dir)

    # A before-nudge or exploit snapshot is taken in the middle of applying decisions: a
    # resume starts from the one taken after them (it stays, for rolling back to).
    found = [(path, meta) for path, meta in scan_snapshots(folder, skipped) if meta["reason"] not in MID_DECISIONS]
    return found[-1] if found else (None, None)


def check_run_dir(run_dir: Path) -> None:
    """Called by ``runner resume`` before it changes anything: the run directory, each file
    runner writes in it (``RUN_FILES``) and its ``trials`` and ``report`` folders must be
    real, not links, and of the right kind, where they exist. UnsafePath (exit 2) names the
    first that is not. (Each trial's folder is checked as ``clean_temporary_files`` opens it.)"""
    check_real(run_dir, folder=True)
    for name in RUN_FILES:
        check_real(run_dir / name, folder=False)
    for name in RUN_FOLDERS:
        check_real(run_dir / name, folder=True)


def clean_temporary_files(run_dir: Path) -> list[Path]:
    """Remove what a crash can leave half written: the temporary files of runner's own
    files in the run directory and of snapshots in each trial's folder; nothing else, and
    nothing through a link (UnsafePath, exit 2). Called by ``runner resume`` before it
    plans; returns what it removed."""
    removed = remove_temporary_files(run_dir, lambda name: temporary_of(name) in RUN_FILES)
    for folder in trial_folders(run_dir):
        removed += remove_temporary_files(folder, is_snapshot_temporary, within=run_dir)
    return removed


def remove_trial_temporaries(run_dir: Path, trial: int) -> list[Path]:
    """Remove the half-written snapshot files in a trial's folder. Called when the worker
    that ran the trial died (a retry writes files of its own); returns what it removed."""
    return remove_temporary_files(trial_folder(run_dir, trial), is_snapshot_temporary, within=run_dir)


def trial_folders(run_dir: Path) -> list[Path]:
    """The folders in ``RUN_DIR/trials`` named as trials' folders are (``tNNN``)."""
    try:
        with real_folder(run_dir / "trials", within=run_dir) as fd, os.scandir(fd) as entries:
            names = sorted(e.name for e in entries if TRIAL_FOLDER.fullmatch(e.name))
    except FileNotFoundError:
        return []
    return [run_dir / "trials" / name for name in names]


def rewrite_events(run_dir: Path, events: list[dict[str, Any]]) -> None:
    """Replace the event log with ``events``, atomically."""
    atomic_write(
        run_dir / "events.jsonl", b"".join(orjson.dumps(e, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for e in events)
    )
