"""``status.json``: the run as it is now, for ``runner status``, ``runner nudge`` and scripts.

``StatusBoard`` folds the event stream into one small document: the run's state, each
running trial (epoch, step, losses, the hyperparameters in force, paused or not: its
standing, as ``runner.records.fold`` reads it, and its latest change), a summary of finished
trials, and the control file's recent reads with the fate of every order each one gave
(pending, applied, refused, failed, dropped). A person's nudge keeps
``refusable_until`` (the last step at which a divergence refuses it, ``runner.control.refusal``)
until training has kept it, refused it, or moved on from it (the trial's next nudge or
rollback, or its end). The event log calls ``observe`` after writing each event, so the
file never says anything the log does not.

The file is replaced atomically (a reader sees the old version or the new one). What a
person asked for, every control-file error and the run's start and end rewrite it at once,
on the thread that wrote the event; anything else (epoch ends, trials starting and ending)
is written by ``flush``, which the control watcher's thread calls every 0.1 s and which
writes at most every ``FLUSH_EVERY`` seconds: the training thread never waits for those
writes, and a fast search pays for 4 a second at most (a write costs 0.5 to 2 ms here).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any

import orjson

from runner.records.files import atomic_write
from runner.records.fold import RunFold, TrialStanding
from runner.trial import better

FILE_NAME = "status.json"
RECENT_READS = 20  # control-file reads kept in status.json
# Written at once: what a person or ``runner nudge`` waits for, and the run's start and end.
FLUSH_EVERY = 0.25
AT_ONCE = {
    "control",
    "control_error",
    "nudge",
    "nudge_kept",
    "nudge_refused",
    "rollback",
    "pause",
    "unpause",
    "stop",
    "experiment_start",
    "experiment_complete",
    "resume",
    "interrupted",
}
LOSSES = ("train_loss", "val_loss", "val_acc")  # of a trial's latest epoch


class StatusBoard:
    """Keeps the live picture of one run and writes it to ``path``."""

    def __init__(self, path: Path, *, control: dict[str, Any]):
        self.path = path
        self.doc: dict[str, Any] = {
            "run": {
                "state": "starting",
                "pid": os.getpid(),
                "name": None,
                "run_dir": str(path.parent.resolve()),
                "metric": None,
                "mode": None,
                "planned_trials": None,
                "updated": None,
            },
            "control": {"watching": None, **control, "reads": 0, "last_change": None, "last_error": None, "recent": []},
            "trials": {},
            "finished": {"count": 0, "states": {}, "best": None},
        }
        self.fold = RunFold(keep_epochs=False)  # each trial's standing
        self._changes: dict[int, dict[str, Any]] = {}  # trial -> its latest change (a nudge, a rollback, ...)
        self._reads: deque[dict[str, Any]] = deque(maxlen=RECENT_READS)
        self._orders: dict[str, dict[str, Any]] = {}  # order id -> its entry in a read, while kept
        self._lock = threading.Lock()
        self._dirty = self._urgent = False
        self._written = -float("inf")  # time.monotonic() of the last write
        self.write_error: str | None = None  # why the last write failed, if it did

    # -- folding events ---------------------------------------------------------------------

    def observe(self, record: dict[str, Any]) -> None:
        """Called with every event, as written to the log: rewrites the file at once if
        someone may be waiting for it, else leaves that to ``flush``."""
        with self._lock:
            self._fold(record)
            self._dirty = True
            if self._urgent or record["event"] in AT_ONCE:
                self._write()

    def set_control(self, **fields: Any) -> None:
        """Called by the driver once the control file is watched: how (``watching``)."""
        with self._lock:
            self.doc["control"].update(fields)
            self._write()

    def replay(self, events: list[dict[str, Any]]) -> None:
        """Fold the events a resumed run keeps, then write the file once."""
        with self._lock:
            for record in events:
                self._fold(record)
            self._write()

    def flush(self) -> None:
        """Called every 0.1 s by the control watcher's thread: write the file if events
        came since the last write, ``FLUSH_EVERY`` seconds ago or more."""
        with self._lock:
            if self._dirty and time.monotonic() - self._written >= FLUSH_EVERY:
                self._write()

    def _fold(self, record: dict[str, Any]) -> None:
        try:
            self.fold.observe(record)
            handler = getattr(self, f"_on_{record['event']}", None)
            if handler is not None:
                handler(record)
            if "order" in record:
                self._order_done(record)
        except Exception:  # a bug here must not stop training; the event log has everything
            traceback.print_exc()

    def _on_experiment_start(self, e: dict) -> None:
        run = self.doc["run"]
        run.update(
            state="running",
            name=e["name"],
            metric=e["metric"],
            mode=e["mode"],
            planned_trials=e["planned_trials"],
            started=e["t"],
        )

    def _on_resume(self, e: dict) -> None:
        self.doc["run"]["state"] = "running"
        self.doc["run"]["resumed"] = e["t"]

    def _on_nudge(self, e: dict) -> None:
        self._end_nudge_trials(e["trial"])  # only the latest nudge can be refused
        if e.get("refusable_until") is not None and (entry := self._orders.get(e.get("order"))) is not None:
            entry["refusable_until"] = e["refusable_until"]
        if self._known(e):
            self._record_change(
                {
                    "t": e["t"],
                    "trial": e["trial"],
                    "what": "nudge",
                    "changes": e["changes"],
                    "source": e["source"],
                    "step": e["step"],
                },
            )

    def _on_nudge_kept(self, e: dict) -> None:
        """A person's nudge trained through its grace steps: it stays applied, for good."""
        entry = self._orders.get(e["order"])
        if entry is not None:
            entry["refusable_until"] = None
            self._settle(entry["read"])

    def _on_nudge_refused(self, e: dict) -> None:
        """Training diverged within a person's nudge's grace steps: the order is refused
        (however it stood), and the settings from before it are in force again."""
        entry = self._orders.get(e["order"])
        if entry is not None:
            entry.update(state="refused", detail=e["reason"], refusable_until=None, t=e["t"], step=e["nudge_step"])
            self._settle(entry["read"])

    def _end_nudge_trials(self, trial_id: int) -> None:
        """The trial's nudge on trial, if any, can no longer be refused (a later nudge or a
        rollback moved on from it, or the trial ended): it stays as it stands."""
        for entry in self._orders.values():
            if entry["trial"] == trial_id and entry.get("refusable_until") is not None:
                entry["refusable_until"] = None
                self._settle(entry["read"])

    def _on_rollback(self, e: dict) -> None:
        self._end_nudge_trials(e["trial"])
        if self._known(e):
            refused = self._orders.get(e.get("order"))
            if refused is None or refused["state"] != "refused":
                what = f"rollback to {e['snapshot']}"
            else:  # the undoing of a person's nudge that training refused
                what = f"{refused['what']} refused: back to before it"
            self._record_change(
                {
                    "t": e["t"],
                    "trial": e["trial"],
                    "what": what,
                    "source": e["source"],
                    "step": e["to_step"],
                },
            )

    def _on_pause(self, e: dict) -> None:
        if self._known(e):
            self._record_change(
                {"t": e["t"], "trial": e["trial"], "what": e["event"], "source": e["source"], "step": e["step"]}
            )

    _on_unpause = _on_pause

    def _record_change(self, change: dict[str, Any]) -> None:
        """A trial's latest change; the control file's too, if it asked for it."""
        self._changes[change["trial"]] = change
        if change["source"] == "control":
            self.doc["control"]["last_change"] = change

    def _on_trial_complete(self, e: dict) -> None:
        self._end_nudge_trials(e["trial"])
        self._changes.pop(e["trial"], None)
        finished = self.doc["finished"]
        finished["count"] += 1
        finished["states"][e["state"]] = finished["states"].get(e["state"], 0) + 1
        score = e.get("score")
        if score is not None and better(score, (finished["best"] or {}).get("score"), self.doc["run"]["mode"]):
            finished["best"] = {"trial": e["trial"], "score": score, "params": e["params"]}
        for entry in self._orders.values():
            if entry["trial"] == e["trial"] and entry["state"] == "pending":
                entry.update(state="dropped", detail=f"the trial ended ({e['state']}) first")
                self._settle(entry["read"])

    def _on_interrupted(self, e: dict) -> None:
        self.doc["run"]["state"] = "interrupted"  # Ctrl-C or SIGTERM: the run stops after saving

    def _on_experiment_complete(self, e: dict) -> None:
        self.doc["run"]["state"] = "finished"
        for entry in self._orders.values():
            if entry["state"] == "pending":  # for the next trial to start, and none did
                entry.update(state="dropped", detail="the run ended first")
                self._settle(entry["read"])

    # -- the control file -------------------------------------------------------------------

    def _on_control(self, e: dict) -> None:
        """A valid version of the control file was read; its orders are now pending."""
        read = {
            "read": e["read"],
            "t": e["t"],
            "sha256": e["sha256"],
            "message": None,
            "orders": [dict(o, read=e["read"], state="pending", detail=None) for o in e["orders"]],
        }
        read["outcome"] = "pending" if read["orders"] else "no change"
        self._add_read(read)
        for entry in read["orders"]:
            self._orders[entry["order"]] = entry

    def _on_control_error(self, e: dict) -> None:
        error = {"t": e["t"], "message": e["message"], "read": e.get("read"), "order": e.get("order")}
        self.doc["control"]["last_error"] = error
        if "order" in e:  # a valid order that could not be carried out (no snapshot to roll back to)
            return
        self._add_read(
            {
                "read": e.get("read"),
                "t": e["t"],
                "sha256": e.get("sha256"),
                "outcome": "rejected",
                "message": e["message"],
                "orders": [],
            }
        )

    def _order_done(self, e: dict) -> None:
        entry = self._orders.get(e["order"])
        if entry is None or entry["state"] != "pending":
            return
        failed = e["event"] in ("control_error", "checkpoint_error")
        entry.update(
            trial=e.get("trial", entry["trial"]),
            state="failed" if failed else "applied",
            detail=e.get("message"),
            t=e["t"],
            step=e.get("step", e.get("to_step")),
        )
        self._settle(entry["read"])

    def _settle(self, read_id: int) -> None:
        """A read's outcome once none of its orders is pending: applied, or partly so.
        Someone may be waiting for it (``runner nudge``): the file is written at once."""
        self._urgent = True
        for read in self._reads:
            if read["read"] == read_id and not any(o["state"] == "pending" for o in read["orders"]):
                states = {o["state"] for o in read["orders"]}
                read["outcome"] = (
                    "applied" if states == {"applied"} else "partly applied" if "applied" in states else "not applied"
                )

    def _add_read(self, read: dict[str, Any]) -> None:
        if len(self._reads) == self._reads.maxlen:
            for entry in self._reads[0]["orders"]:
                self._orders.pop(entry["order"], None)
        self._reads.append(read)
        control = self.doc["control"]
        control["reads"] = max(control["reads"], read["read"] or 0)

    # -- writing ----------------------------------------------------------------------------

    def _known(self, e: dict) -> bool:
        """Whether the event is about a trial that began (``runner.records.fold``)."""
        return e.get("trial") in self.fold.trials

    def _trial_entry(self, trial: TrialStanding) -> dict[str, Any]:
        """A running trial as ``status.json`` shows it."""
        metric, best, metrics = self.fold.metric, trial.best, trial.metrics or {}
        return {
            "state": trial.state,
            "epoch": trial.epoch,
            "step": trial.step,
            "params": trial.params,
            "hyperparameters": trial.hyperparameters,
            "best": None if best is None else {"epoch": best["epoch"] + 1, metric: best[metric]},
            "rollbacks": trial.rollbacks,
            "last_change": self._changes.get(trial.id),
            **{k: metrics[k] for k in LOSSES if k in metrics},
        }

    def _write(self) -> None:
        self.doc["run"]["updated"] = round(time.time(), 6)
        try:
            running = [] if self.fold.finished else [t for t in self.fold.trials.values() if not t.ended]
            self.doc["trials"] = {str(trial.id): self._trial_entry(trial) for trial in running}
        except Exception:  # a bug here must not stop training: the file keeps its last trials
            traceback.print_exc()
        self.doc["control"]["recent"] = list(self._reads)
        data = orjson.dumps(self.doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
        try:
            atomic_write(self.path, data + b"\n", durable=False)
        except OSError as err:  # a full disk or a removed folder must not stop training: the log has it all
            if self.write_error is None:
                print(
                    f"runner: cannot write {self.path} ({err.strerror or err}); training goes on, the event log "
                    "has everything",
                    file=sys.stderr,
                )
            self.write_error = str(err)
            return
        self.write_error = None
        self._dirty = self._urgent = False
        self._written = time.monotonic()
