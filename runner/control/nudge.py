"""``runner nudge``: change a running run's control file as a person would, then wait until
the run says what became of the change.

The edit is made under a lock (two ``runner nudge`` at once do not lose each other's
change), checked with the same validation the run applies, written atomically (a new file
renamed over the old one, as editors save), and acknowledged through ``status.json``: the
run records every version of the control file it reads (by SHA-256) and the fate of every
order in it.
"""

from __future__ import annotations

import fcntl
import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from runner.control.file import FILE_NAME as CONTROL_FILE
from runner.control.file import ControlError, ControlSchema, parse, render, trial_id
from runner.errors import RunnerError, SpecError
from runner.inputs import CONTROL_FILE as CONTROL_LIMIT
from runner.inputs import STATUS_FILE as STATUS_LIMIT
from runner.inputs import InputError, read_bytes
from runner.records.events import read_events
from runner.records.files import atomic_write, lock_file, run_is_held
from runner.records.status import FILE_NAME as STATUS_FILE
from runner.records.status import FLUSH_EVERY

STATUS_LAG = 2 * FLUSH_EVERY  # how long status.json may be behind the log (it is rewritten every FLUSH_EVERY s)


@dataclass
class Change:
    """What ``runner nudge`` was asked for."""

    settings: dict[str, float] = field(default_factory=dict)
    actions: list[dict[str, Any]] = field(default_factory=list)  # {"do": ..., "to": ...} without ids
    trial: int | None = None


def latest_run(root: Path) -> Path:
    """The run directory under ``root`` that a process is running (a paused run writes no
    events, but is still the one meant), else the one whose event log changed last."""
    logs = [p for p in root.glob("*/events.jsonl") if p.is_file()] if root.is_dir() else []
    if not logs:
        raise RunnerError(f"no run directory in {root}/; name one: runner status RUN_DIR", exit_code=2)
    return max(logs, key=lambda p: (run_is_held(p.parent), p.stat().st_mtime_ns)).parent


def trial_listed(run_dir: Path, trial: int, status: dict[str, Any]) -> dict[str, Any]:
    """``status.json`` once it lists ``trial`` as running, or as it is after the time the run
    takes to rewrite it (a trial that has just started is in the log a moment before it is
    in the file)."""
    deadline = time.monotonic() + STATUS_LAG
    while str(trial) not in status["trials"] and time.monotonic() < deadline:
        time.sleep(0.05)
        status = read_status(run_dir)
    return status


def read_status(run_dir: Path) -> dict[str, Any]:
    """``status.json`` of a run, read as a regular file (not through a link) of at most
    ``inputs.STATUS_FILE`` bytes; a RunnerError (exit 2) if there is none or it cannot be read."""
    path = run_dir / STATUS_FILE
    try:
        doc = orjson.loads(read_bytes(path, STATUS_LIMIT, follow_symlinks=False))
    except InputError as err:
        if err.kind != "missing":
            raise
        raise RunnerError(
            f"{run_dir} has no {STATUS_FILE}: not a run directory, or one from before runner tracked status",
            exit_code=2,
        ) from None
    except orjson.JSONDecodeError as err:
        raise RunnerError(f"cannot read {path}: {err}", exit_code=2) from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(key), dict) for key in ("run", "control", "trials")):
        raise RunnerError(f"{path} is damaged: not the status of a run (run, control and trials)", exit_code=2)
    return doc


def control_schema(run_dir: Path, plugin_refs: tuple[str, ...] = ()) -> ControlSchema:
    """What the run's backend lets a person change, checked before anything is written
    (``runner nudge``, the dashboard).

    The settings and their bounds as the run recorded them in ``status.json``, which needs
    no plugin loaded (``runner nudge`` answers in a fraction of a second). A run that did
    not record bounds (runner 0.2) is checked by its backend's class, from the installed
    plugins and ``--plugin`` alone, never from code the run directory names; a backend they
    lack, by the settings ``status.json`` lists, as finite numbers. The run checks every
    change again when it reads the file, and ``runner nudge`` reports its refusal."""
    control = read_status(run_dir)["control"]
    live, bounds = control.get("settings"), control.get("bounds")
    listed = isinstance(live, list) and all(isinstance(setting, str) for setting in live)
    if listed and recorded_bounds(bounds):
        return ControlSchema(tuple(live), bounds=bounds)
    from runner.engine.plugin_manager import load_plugins
    from runner.experiment_file.spec import DEFAULT_PLUGINS, read_json

    experiment = read_json(run_dir / "experiment.json")
    backend = experiment.get("backend", DEFAULT_PLUGINS["backend"]) if isinstance(experiment, dict) else None
    name = backend.get("name") if isinstance(backend, dict) else backend
    try:
        backend_cls = load_plugins(plugin_refs).registry.get("backend", str(name))
        model = experiment.get("model", {}) if isinstance(experiment, dict) else {}
        return ControlSchema.for_backend(backend_cls.for_model(model if isinstance(model, dict) else {}))
    except SpecError:
        pass  # not installed here, or unavailable
    if not listed:
        raise RunnerError(
            f"cannot tell which settings the run's backend {name!r} takes: it is not installed here and "
            f"{run_dir / 'status.json'} does not list them; give the backend's --plugin",
            exit_code=2,
        )
    return ControlSchema(tuple(live))


def recorded_bounds(bounds: object) -> bool:
    """Whether ``status.json``'s ``control.bounds`` is what a run writes there (a damaged or
    edited one sends ``runner nudge`` to the backend's class instead)."""
    return isinstance(bounds, dict) and all(
        isinstance(rule, dict)
        and all(key in ("gt", "ge", "lt", "le") and type(limit) in (int, float) for key, limit in rule.items())
        for rule in bounds.values()
    )


def check_change(schema: ControlSchema, change: Change) -> None:
    """Before anything is written (``runner nudge``, the dashboard): a RunnerError (exit 2)
    naming the first setting of ``change`` that ``schema`` refuses, as the person wrote it."""
    for name, value in change.settings.items():
        try:
            schema.check(name, value, name)
        except ControlError as err:
            raise RunnerError(f"not sent: {err}", exit_code=2) from None


@contextmanager
def control_lock(run_dir: Path):
    """One ``runner nudge`` at a time edits a run's control file. The lock file is never
    opened through a link (UnsafePath, exit 2)."""
    with lock_file(run_dir, ".control.lock") as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield


def used_action_ids(run_dir: Path) -> set[int | str]:
    """Every action id the run has read, from its ``control`` events (the file may have
    lost some: a person can tidy the list)."""
    return {
        order["action"]
        for event in read_events(run_dir / "events.jsonl")
        if event["event"] == "control"
        for order in event["orders"]
        if order["action"] is not None
    }


def edit(raw: dict[str, Any], change: Change, used: set[int | str] = frozenset()) -> dict[str, Any]:
    """The control document with ``change`` made as a person would make it: each setting
    written where it applies (top level, or under ``trials``); a setting the file already
    holds becomes a ``set`` action, so it is applied again; each action gets an id above
    every one in the file and in ``used``."""
    raw = dict(raw)
    actions = list(raw.get("actions") or [])
    if change.trial is None:
        target = raw
    else:
        trials = dict(raw.get("trials") or {})
        key = next((k for k in trials if _names(k, change.trial)), str(change.trial))
        target = trials[key] = dict(trials.get(key) or {})
        raw["trials"] = trials
    again = {}
    for name, value in change.settings.items():
        if target.get(name) == value:
            again[name] = value
        else:
            target[name] = value
    wanted = ([{"do": "set", **again}] if again else []) + change.actions
    ids = {a.get("id") for a in actions if isinstance(a, dict)} | set(used)
    next_id = 1 + max([i for i in ids if isinstance(i, int) and not isinstance(i, bool)], default=0)
    for n, action in enumerate(wanted):
        actions.append({"id": next_id + n, **action, **({"trial": change.trial} if change.trial is not None else {})})
    raw["actions"] = actions
    return raw


def _names(key: str, trial: int) -> bool:
    try:
        return trial_id(key, "") == trial
    except ControlError:
        return False


def send(run_dir: Path, change: Change, schema: ControlSchema, timeout: float | None) -> dict[str, Any] | None:
    """Write the change into the control file (as ``write_change`` does) and, unless
    ``timeout`` is None, wait for the run's record of reading it (see ``wait``). The control
    lock is held until the run has answered, so two ``runner nudge`` never race."""
    check_running(run_dir, change)
    with control_lock(run_dir):
        sha, reads = _write_change(run_dir, change, schema)
        return None if timeout is None else wait(run_dir, sha, reads, timeout)


def write_change(run_dir: Path, change: Change, schema: ControlSchema) -> tuple[str, int]:
    """Write the change into the control file, under the control lock, and return at once:
    the SHA-256 of the version written and how many versions the run had read before it,
    by which ``wait`` (or a page watching ``status.json``: the dashboard) finds the run's
    verdict. Raises RunnerError if the run is not running, or the file or the change is not
    valid (then nothing is written)."""
    check_running(run_dir, change)
    with control_lock(run_dir):
        return _write_change(run_dir, change, schema)


def check_running(run_dir: Path, change: Change) -> None:
    """A RunnerError unless a runner process runs ``run_dir`` and the trial ``change`` names
    (if any) is running in it."""
    status = read_status(run_dir)
    if not run_is_held(run_dir):
        raise RunnerError(
            f"no runner process is running {run_dir} (last state: {status['run']['state']}); "
            f"an interrupted run goes on with: runner resume {run_dir}"
        )
    if change.trial is not None:
        status = trial_listed(run_dir, change.trial, status)
    if change.trial is not None and str(change.trial) not in status["trials"]:
        names = ", ".join(f"t{int(t):03d}" for t in sorted(status["trials"], key=int)) or "none"
        raise RunnerError(f"trial {change.trial} is not running (running: {names}); nothing was written", exit_code=2)


def _write_change(run_dir: Path, change: Change, schema: ControlSchema) -> tuple[str, int]:
    """``write_change``'s work, with the control lock held."""
    path = run_dir / CONTROL_FILE
    try:
        current = read_bytes(path, CONTROL_LIMIT)
        parse(current, schema)
    except ControlError as err:
        raise RunnerError(
            f"{path} is not valid now, so it was left alone: {err}. Fix it first; "
            "the run keeps its last valid settings",
            exit_code=2,
        ) from None
    data = render(edit(orjson.loads(current), change, used_action_ids(run_dir)))
    try:
        parse(data, schema)
    except ControlError as err:
        raise RunnerError(f"not sent: {err}", exit_code=2) from None
    reads = read_status(run_dir)["control"]["reads"]
    atomic_write(path, data)
    return hashlib.sha256(data).hexdigest(), reads


def awaiting_verdict(read: dict[str, Any], status: dict[str, Any]) -> bool:
    """True while a nudge of ``read`` is on trial in a trial that trains: a divergence in its
    next few steps would still refuse it (``runner.control.refusal``). A paused trial gives no verdict
    until it goes on, so its nudges are not waited for."""
    trials = status["trials"]
    return any(
        order.get("refusable_until") is not None and trials.get(str(order["trial"]), {}).get("state") == "running"
        for order in read["orders"]
    )


def _control_changed(path: Path, sha: str) -> bool:
    """Whether the control file holds other contents than the version ``sha`` (a file that
    is gone, or cannot be read as one, counts as unchanged: the run reports that itself)."""
    try:
        return hashlib.sha256(read_bytes(path, CONTROL_LIMIT)).hexdigest() != sha
    except InputError:
        return False


def wait(run_dir: Path, sha: str, reads_before: int, timeout: float, interval: float = 0.02) -> dict[str, Any]:
    """The run's record of reading the version ``sha``, once every order in it is settled
    (applied, refused, failed or dropped) and training has had its say on the nudges in it
    (see ``awaiting_verdict``; at ``timeout`` an applied nudge still on trial is returned
    as applied). A RunnerError if it is rejected, superseded, or not settled within
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    read = None
    while time.monotonic() < deadline:
        try:
            status = read_status(run_dir)
        except RunnerError:  # replaced between our stat and read: try again
            time.sleep(interval)
            continue
        recent = [r for r in status["control"]["recent"] if (r["read"] or 0) > reads_before]
        read = next((r for r in recent if r["sha256"] == sha), None)
        if read is not None and read["outcome"] == "rejected":
            raise RunnerError(f"the run refused it: {read['message']}", exit_code=2)
        settled = read is not None and read["outcome"] != "pending"
        ended = status["run"]["state"] in ("finished", "interrupted") or not run_is_held(run_dir)
        if settled and (ended or not awaiting_verdict(read, status)):
            return read
        if read is None and any(r["sha256"] != sha for r in recent) and _control_changed(run_dir / CONTROL_FILE, sha):
            raise RunnerError("the control file was changed again before the run read this change; see runner status")
        if ended:
            raise RunnerError(f"the run ended before it applied the change (state: {status['run']['state']})")
        time.sleep(interval)
    if read is not None and read["outcome"] != "pending":
        return read  # applied; a nudge still on trial (slow steps) may yet be refused, as runner status will say
    pending = [o["what"] for o in read["orders"] if o["state"] == "pending"] if read else []
    raise RunnerError(
        f"no acknowledgement within {timeout:g} s"
        + (
            f" ({', '.join(pending)} still pending: a trial in a long step, or paused?)"
            if pending
            else " (the run has not read the file yet)"
        )
    )
