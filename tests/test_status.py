"""status.json: the run folded from its events, each order's fate, which writes wait for the flush."""

from __future__ import annotations

import orjson

import runner.records.status as status_module
from runner.records.status import StatusBoard


def board(tmp_path) -> StatusBoard:
    return StatusBoard(
        tmp_path / "status.json", control={"path": "control.json", "watching": "inotify", "settings": ["lr"]}
    )


def on_disk(tmp_path) -> dict:
    return orjson.loads((tmp_path / "status.json").read_bytes())


START = [
    {"t": 1.0, "event": "experiment_start", "name": "x", "metric": "val_acc", "mode": "max", "planned_trials": 2},
    {"t": 1.1, "event": "trial_start", "trial": 0, "params": {"train.lr": 0.1}, "hyperparameters": {"lr": 0.1}},
    {"t": 1.2, "event": "trial_start", "trial": 1, "params": {"train.lr": 0.2}, "hyperparameters": {"lr": 0.2}},
]


def test_orders_are_acknowledged_by_the_events_that_carry_them_out(tmp_path):
    status = board(tmp_path)
    for e in START:
        status.observe(e)
    status.observe(
        {
            "t": 2.0,
            "event": "control",
            "read": 1,
            "sha256": "a",
            "orders": [
                {"order": "1.0", "trial": 0, "what": "lr=0.05", "action": None},
                {"order": "1.1", "trial": 1, "what": "lr=0.05", "action": None},
            ],
        }
    )
    read = on_disk(tmp_path)["control"]["recent"][0]
    assert read["outcome"] == "pending" and [o["state"] for o in read["orders"]] == ["pending", "pending"]
    status.observe(
        {
            "t": 2.1,
            "event": "nudge",
            "trial": 0,
            "epoch": 3,
            "step": 40,
            "source": "control",
            "changes": {"lr": {"old": 0.1, "new": 0.05}},
            "order": "1.0",
        }
    )
    status.observe(
        {
            "t": 2.2,
            "event": "trial_complete",
            "trial": 1,
            "state": "completed",
            "score": 0.9,
            "params": {"train.lr": 0.2},
        }
    )  # trial 1 ended before it took its order
    doc = on_disk(tmp_path)
    read = doc["control"]["recent"][0]
    assert [(o["state"], o.get("step")) for o in read["orders"]] == [("applied", 40), ("dropped", None)]
    assert read["outcome"] == "partly applied"
    assert doc["trials"]["0"]["hyperparameters"] == {"lr": 0.05} and list(doc["trials"]) == ["0"]
    assert doc["control"]["last_change"]["changes"] == {"lr": {"old": 0.1, "new": 0.05}}
    assert doc["finished"] == {
        "count": 1,
        "states": {"completed": 1},
        "best": {"trial": 1, "score": 0.9, "params": {"train.lr": 0.2}},
    }
    status.observe({"t": 3.0, "event": "control_error", "read": 2, "sha256": "b", "message": "control.json: lr: bad"})
    doc = on_disk(tmp_path)
    assert doc["control"]["recent"][-1]["outcome"] == "rejected" and doc["control"]["reads"] == 2
    assert doc["control"]["last_error"]["message"] == "control.json: lr: bad"


def test_epoch_ends_wait_for_flush_and_what_a_person_asked_for_is_written_at_once(tmp_path, monkeypatch):
    status = board(tmp_path)
    for e in START:
        status.observe(e)  # experiment_start is written at once: a flush now would be too soon
    status.flush()
    assert on_disk(tmp_path)["trials"] == {}
    monkeypatch.setattr(status_module, "FLUSH_EVERY", 0.0)
    status.flush()
    assert list(on_disk(tmp_path)["trials"]) == ["0", "1"]
    epoch = {
        "t": 2.0,
        "event": "epoch_end",
        "trial": 0,
        "epoch": 0,
        "step": 10,
        "train_loss": 1.0,
        "val_loss": 1.0,
        "val_acc": 0.5,
        "lr": 0.1,
    }
    status.observe(epoch)
    status.observe({**epoch, "epoch": 1, "step": 20, "val_acc": 0.7})
    assert on_disk(tmp_path)["trials"]["0"]["epoch"] == 0  # left to the watcher thread's flush
    status.flush()
    trial = on_disk(tmp_path)["trials"]["0"]
    assert trial["epoch"] == 2 and trial["best"] == {"epoch": 2, "val_acc": 0.7}
    status.observe({"t": 4.0, "event": "pause", "trial": 0, "epoch": 2, "step": 20, "source": "control", "reason": ""})
    assert on_disk(tmp_path)["trials"]["0"]["state"] == "paused"  # what a person asked for: written at once
