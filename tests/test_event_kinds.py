"""The catalogue of events (``runner.records.event_kinds``) is what the log accepts."""

from __future__ import annotations

import pytest

import runner.records.events
from runner.records.event_kinds import EVENTS, unknown_fields
from runner.records.events import EventLog


def test_the_log_refuses_a_kind_the_catalogue_lacks_and_writes_nothing(tmp_path):
    with EventLog(tmp_path / "events.jsonl") as log:
        with pytest.raises(ValueError, match=r"'epoch_ended' is not in runner\.records\.event_kinds"):
            log.emit("epoch_ended", trial=0)
        log.emit("checkpoint_error", trial=0, message="disk full")
    assert (tmp_path / "events.jsonl").read_bytes().count(b"\n") == 1


def test_with_checks_on_a_field_the_catalogue_does_not_list_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(runner.records.events, "CHECK_FIELDS", True)
    with EventLog(tmp_path / "events.jsonl") as log:
        with pytest.raises(ValueError, match=r"'divergence' has fields .* does not list: \['los'\]"):
            log.emit("divergence", trial=0, kind="loss_spike", epoch=1, step=9, los=3.0)
        log.emit(
            "epoch_end", trial=0, epoch=0, step=9, train_loss=1.0, val_mae=0.5, weight_decay=0.0
        )  # open: any metric


def test_every_kind_names_its_fields_once_and_unknown_fields_reads_a_record():
    for kind in EVENTS.values():
        assert len(set(kind.fields)) == len(kind.fields), kind.name
    assert unknown_fields({"t": 1, "event": "trial_queued", "queued": 0, "params": {}}) == []
    assert unknown_fields({"t": 1, "event": "trial_queued", "queued": 0, "params": {}, "x": 1}) == ["x"]
    assert unknown_fields({"t": 1, "event": "nope"}) == ["event 'nope'"]
