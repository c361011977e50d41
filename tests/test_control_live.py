"""Nudging real ``runner start`` processes through their control file, as a person would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from runner.records.events import read_events
from tests.conftest import QUICK, deep_update

LONG = deep_update(
    QUICK,
    {
        "name": "babysit",
        "train": {"epochs": 100_000, "optimizer": "momentum", "lr": 0.01, "momentum": 0.9},  # runs until stopped
        "checkpoint": {"min_interval": 3600},  # snapshots in memory; a file only when asked
        "search": {"space": None},
    },
)


def runner(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "runner", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


class LiveRun:
    """A ``runner start`` subprocess and what it writes."""

    def __init__(self, tmp_path: Path, changes: dict | None = None, *args: str):
        exp = tmp_path / "exp.json"
        exp.write_bytes(orjson.dumps(deep_update(LONG, changes or {})))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runner", "start", exp, "--out", tmp_path / "runs", "--plain", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.run_dir = self.until(lambda: next((tmp_path / "runs").glob("*/control.json"), None)).parent
        self.control = self.run_dir / "control.json"
        self.until(lambda: self.find("epoch_end"))

    def events(self) -> list[dict]:
        return list(read_events(self.run_dir / "events.jsonl"))

    def find(self, event: str, **fields) -> list[dict]:
        return [e for e in self.events() if e["event"] == event and all(e.get(k) == v for k, v in fields.items())]

    def until(self, found, timeout: float = 60.0):
        """Poll until ``found()`` is truthy; fail (with the run's output) if the run ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = found()
            if value:
                return value
            if self.process.poll() is not None and not found():
                pytest.fail(f"the run ended (exit {self.process.returncode}): {self.process.stderr.read()}")
            time.sleep(0.02)
        pytest.fail("timed out waiting for the run")

    def document(self) -> dict:
        return json.loads(self.control.read_text())

    def write(self, document: dict) -> None:
        """An in-place save: truncate and write the same file."""
        self.control.write_text(json.dumps(document, indent=2))

    def act(self, action_id: int, do: str, **fields) -> dict:
        """Append an action and save (rename-save); return the event that carried it out."""
        document = self.document()
        document["actions"].append({"id": action_id, "do": do, **fields})
        tmp = self.control.with_name("control.json.swp")
        tmp.write_text(json.dumps(document))
        os.replace(tmp, self.control)
        read = self.until(
            lambda: [e for e in self.find("control") if any(o["action"] == action_id for o in e["orders"])]
        )
        order = next(o["order"] for o in read[0]["orders"] if o["action"] == action_id)
        return self.until(lambda: [e for e in self.events() if e.get("order") == order])[0]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.act(999, "stop")
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def live(tmp_path):
    runs = []

    def start(changes: dict | None = None, *args: str) -> LiveRun:
        runs.append(LiveRun(tmp_path, changes, *args))
        return runs[-1]

    yield start
    for run in runs:
        run.kill()


def test_nudges_by_in_place_write_rename_and_sed_are_in_force_from_the_next_step(live):
    run = live()
    assert run.document()["lr"] == 0.01 and run.document()["momentum"] == 0.9  # pre-filled with the values in force

    def nudged_to(lr: float) -> dict:
        nudge = run.until(lambda: [e for e in run.find("nudge", source="control") if e["changes"]["lr"]["new"] == lr])[
            0
        ]
        later = run.until(lambda: [e for e in run.find("epoch_end") if e["step"] > nudge["step"]])
        assert later[0]["lr"] == lr  # in force for every step after the nudge
        return nudge

    document = run.document()
    document["lr"] = 0.02
    run.write(document)  # in place
    first = nudged_to(0.02)
    assert first["changes"]["lr"]["old"] == 0.01 and first["source"] == "control"

    document["lr"] = 0.03
    tmp = run.control.with_name(".control.json.tmp")
    tmp.write_text(json.dumps(document))
    os.replace(tmp, run.control)  # how vim and VS Code save
    second = nudged_to(0.03)

    subprocess.run(["sed", "-i", "-E", r's/"lr": [0-9.e-]+/"lr": 0.04/', str(run.control)], check=True)
    third = nudged_to(0.04)
    assert first["step"] <= second["step"] <= third["step"]
    assert len(run.find("nudge", source="control")) == 3  # each save applied once, however many events it fired

    status = json.loads((run.run_dir / "status.json").read_text())
    assert status["trials"]["0"]["hyperparameters"]["lr"] == 0.04
    assert [o["state"] for r in status["control"]["recent"] for o in r["orders"]] == ["applied"] * 3
    assert run.stop() == 0
    assert run.find("trial_complete")[0]["state"] == "stopped"
    assert orjson.loads((run.run_dir / "results.json").read_bytes())["trials"][0]["state"] == "stopped"


def test_pause_resume_rollback_checkpoint_and_stop_through_the_file(live):
    run = live()
    run.until(lambda: len(run.find("epoch_end")) >= 3)
    paused = run.act(1, "pause")
    assert paused["event"] == "pause" and paused["source"] == "control"
    status = run.until(lambda: json.loads((run.run_dir / "status.json").read_text()))
    assert status["trials"]["0"]["state"] == "paused"
    epochs = len(run.find("epoch_end"))
    time.sleep(0.5)
    assert len(run.find("epoch_end")) == epochs  # no training while paused

    checkpoint = run.act(2, "checkpoint")  # orders are still carried out while paused
    assert checkpoint["event"] == "checkpoint" and (run.run_dir / checkpoint["path"]).is_file()
    assert checkpoint["step"] == paused["step"]
    back_to = epochs - 1  # a recent epoch: its snapshot is still in memory
    rollback = run.act(3, "rollback", to=back_to)
    assert rollback["event"] == "rollback" and rollback["to_epoch"] == back_to and rollback["source"] == "control"
    assert rollback["from_step"] > rollback["to_step"]
    time.sleep(0.3)
    assert len(run.find("epoch_end")) == epochs  # still paused after the rollback
    unpaused = run.act(4, "resume")
    assert unpaused["event"] == "unpause" and unpaused["step"] == rollback["to_step"]
    run.until(lambda: len(run.find("epoch_end")) > epochs)
    failed = run.act(5, "rollback", to="before_nudge")  # there was no nudge: reported, training goes on
    assert failed["event"] == "control_error" and "no snapshot from before a nudge" in failed["message"]
    run.until(lambda: len(run.find("epoch_end")) > epochs + 2)

    assert run.stop() == 0
    stop = run.find("stop")[0]
    assert stop["source"] == "control" and stop["experiment"] is True
    assert len(run.find("pause")) == 1 and len(run.find("rollback")) == 1  # each action applied once


def test_runner_nudge_and_status_on_a_live_run(live):
    run = live()
    done = runner("nudge", run.run_dir, "lr=0.002", "momentum=0.5")
    assert done.returncode == 0, done.stderr
    assert "t000: lr=0.002 momentum=0.5 applied at step" in done.stdout
    assert run.document()["lr"] == 0.002  # written where a person would write it

    again = runner("nudge", run.run_dir, "lr=0.002")  # the file already says so: sent as an action, applied again
    assert again.returncode == 0 and "set lr=0.002 applied" in again.stdout

    shown = runner("status", run.run_dir, "--json")
    status = orjson.loads(shown.stdout)
    assert status["alive"] is True and status["run"]["state"] == "running"
    assert status["trials"]["0"]["hyperparameters"] == {"lr": 0.002, "momentum": 0.5, "beta2": 0.999}
    human = runner("status", run.run_dir)
    assert "running" in human.stdout and "control.json" in human.stdout and "0.002" in human.stdout

    before = run.control.read_bytes()
    bad = runner("nudge", run.run_dir, "lr=-1")
    assert bad.returncode == 2 and "lr: must be > 0" in bad.stderr
    for value in ("nan", "inf", "1e400", "fast"):
        refused = runner("nudge", run.run_dir, f"lr={value}")
        assert refused.returncode == 2 and "must be a finite number" in refused.stderr
    missing = runner("nudge", run.run_dir, "--trial", "7", "lr=0.1")
    assert missing.returncode == 2 and "trial 7 is not running" in missing.stderr
    assert run.control.read_bytes() == before  # refused before anything was written

    stopped = runner("nudge", run.run_dir, "--stop")
    assert stopped.returncode == 0 and "stop applied" in stopped.stdout
    assert run.process.wait(timeout=60) == 0
    late = runner("nudge", run.run_dir, "lr=0.1")
    assert late.returncode == 1 and "no runner process is running" in late.stderr
    finished = runner("status", run.run_dir)
    assert "finished" in finished.stdout and "1 stopped" in finished.stdout


def test_bad_saves_are_reported_and_change_nothing(live):
    run = live({}, "--poll")  # the polling observer, for file systems without inotify
    good = run.document()
    run.control.write_text('{"lr": 0.05,')  # cut short
    error = run.until(lambda: run.find("control_error"))[0]
    assert "not valid JSON" in error["message"]
    run.write({**good, "momentum": 1.5})
    run.until(lambda: [e for e in run.find("control_error") if "momentum: must be < 1" in e["message"]])

    def last_error() -> str:  # status.json is rewritten right after the log line, not with it
        return json.loads((run.run_dir / "status.json").read_text())["control"]["last_error"]["message"]

    assert "momentum: must be < 1" in run.until(lambda: "momentum: must be < 1" in last_error() and last_error())
    run.write({**good, "[/oops]": 1})  # markup-like text is shown as written, not interpreted
    run.until(lambda: [e for e in run.find("control_error") if "[/oops]: unknown key" in e["message"]])
    run.write({**good, "lr": 0.005})  # fixed: the change since the last valid version is applied
    nudge = run.until(lambda: run.find("nudge", source="control"))
    assert nudge[0]["changes"] == {"lr": {"old": 0.01, "new": 0.005}}
    assert run.stop() == 0
    assert "(polling" in runner("status", run.run_dir).stdout
    assert "Traceback" not in run.process.stderr.read()


def test_an_action_is_not_applied_again_after_resume(live, tmp_path):
    run = live()
    run.act(1, "pause")
    run.process.send_signal(signal.SIGTERM)  # interrupted while paused: snapshot, exit 130
    assert run.process.wait(timeout=60) == 130
    resumed = subprocess.Popen(
        [sys.executable, "-m", "runner", "resume", run.run_dir, "--plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run.process = resumed
    resumed_at = run.until(lambda: run.find("trial_resume"))[0]
    run.until(lambda: [e for e in run.find("epoch_end") if e["step"] > resumed_at["step"]])  # trains: not paused again
    assert len(run.find("pause")) == 1
    nudged = runner("nudge", run.run_dir, "lr=0.003")  # read numbers go on from before, so the answer is found
    assert nudged.returncode == 0 and "applied" in nudged.stdout, nudged.stderr
    reads = [e["read"] for e in run.find("control")]
    assert reads == sorted(set(reads)) and len(reads) == 2
    assert run.stop() == 0


def test_a_rollback_to_before_a_mid_epoch_nudge_keeps_epochs_whole(live):
    run = live({"data": {"points_per_class": 400}})  # 30 steps an epoch
    steps = run.until(lambda: run.find("epoch_end"))[0]["step"]
    for n in range(1, 20):  # until the pause lands mid-epoch
        paused = run.act(2 * n, "pause")
        if paused["step"] % steps:
            break
        run.act(2 * n + 1, "resume")
    assert paused["epoch"] * steps < paused["step"] < (paused["epoch"] + 1) * steps, "the pause landed mid-epoch"
    document = run.document()
    document["lr"] = 0.05
    run.write(document)
    nudge = run.until(lambda: run.find("nudge", source="control"))[0]
    rollback = run.act(100, "rollback", to="before_nudge")
    assert rollback["to_step"] == nudge["step"] == paused["step"] and rollback["lr_after"] == 0.01
    run.act(101, "resume")
    run.until(lambda: [e for e in run.find("epoch_end") if e["step"] > paused["step"] + steps])
    assert all(e["step"] == (e["epoch"] + 1) * steps for e in run.find("epoch_end"))  # every epoch whole
    assert run.stop() == 0


def test_an_order_lost_with_a_crash_is_carried_out_again_on_resume(live):
    # Snapshot files only when asked (and no nudge on trial, whose snapshot would be one): a
    # crash restarts the trial from scratch.
    run = live({"divergence": {"nudge_grace_steps": 0}})
    document = run.document()
    document["lr"] = 0.02
    run.write(document)
    nudge = run.until(lambda: run.find("nudge", source="control"))[0]
    run.process.kill()
    run.process.wait()
    run.process = subprocess.Popen(
        [sys.executable, "-m", "runner", "resume", run.run_dir, "--plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def after_resume() -> list[dict]:
        events = run.events()
        starts = [i for i, e in enumerate(events) if e["event"] == "trial_resume"]
        return events[starts[0] :] if starts else []

    again = run.until(lambda: [e for e in after_resume() if e["event"] == "nudge"])[0]
    assert again["order"] == nudge["order"] and again["changes"]["lr"]["new"] == 0.02
    assert again["step"] == 0  # no snapshot file: the trial started again, and the order was carried out again
    assert not [e for e in run.events() if e["event"] == "nudge" and e["step"] == nudge["step"] > 0]  # cut
    run.until(lambda: [e for e in run.find("epoch_end") if e["lr"] == 0.02])
    assert run.stop() == 0
    read = next(
        r for r in orjson.loads((run.run_dir / "status.json").read_bytes())["control"]["recent"] if r["read"] == 1
    )
    assert read["outcome"] == "applied"
