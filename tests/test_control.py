"""The control file's format: validation messages, what a new version orders, and edits."""

from __future__ import annotations

import orjson
import pytest

from runner.control.file import ControlDocument, ControlError, ControlSchema, initial_document, orders, parse
from runner.control.nudge import Change, edit
from runner.decisions import Checkpoint, Nudge, Pause, Rollback, Stop, Unpause
from runner.plugins.backends.numpy_mlp.backend import Train

SCHEMA = ControlSchema(("lr", "momentum", "beta2"), Train)


def doc(**raw) -> ControlDocument:
    return parse(orjson.dumps(raw), SCHEMA)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"", "control.json: the file is empty"),
        (b'{"lr": 0.1', "control.json: not valid JSON"),
        (b"[1, 2]", "control.json: must be a JSON object, got a list"),
        (b'{"lr": 0}', "control.json: lr: must be > 0, got 0"),
        (b'{"lr": "fast"}', 'control.json: lr: must be a number, got string "fast"'),
        (b'{"lr": true}', "control.json: lr: must be a number, got boolean true"),
        (b'{"momentum": 1.0}', "control.json: momentum: must be < 1, got 1.0"),
        (b'{"momentum": -0.1}', "control.json: momentum: must be >= 0"),
        (b'{"lr": 1e999}', "control.json: not valid JSON: number is infinity"),
        (b'{"lr": NaN}', "control.json: not valid JSON"),
        (
            b'{"rl": 0.1}',
            "control.json: rl: unknown key; the keys are help, trials, actions and the settings lr, momentum, beta2",
        ),
        (b'{"trials": {"x3": {}}}', 'control.json: trials.x3: a trial is named by its number, such as 3 or "t003"'),
        (
            '{"trials": {"t\u0663": {}}}'.encode(),
            "control.json: trials.t\u0663: a trial is named by its number",
        ),  # ASCII digits only
        (b'{"trials": {"3": {"lr": -1}}}', "control.json: trials.3.lr: must be > 0"),
        (b'{"trials": {"3": {}, "t003": {}}}', "control.json: trials.t003: trial 3 is named twice"),
        (b'{"actions": {"id": 1}}', "control.json: actions: must be a list"),
        (b'{"actions": [{"do": "pause"}]}', 'control.json: actions[0]: needs an "id"'),
        (b'{"actions": [{"id": 1, "do": "jump"}]}', "control.json: actions[0].do: must be one of set, rollback, pause"),
        (
            b'{"actions": [{"id": 1, "do": "rollback", "to": "yesterday"}]}',
            "control.json: actions[0].to: must be last, best",
        ),
        (
            b'{"actions": [{"id": 1, "do": "pause", "to": "best"}]}',
            'control.json: actions[0].to: unknown key for "do": "pause"',
        ),
        (b'{"actions": [{"id": 1, "do": "set"}]}', 'control.json: actions[0]: "do": "set" needs at least one number'),
        (b'{"actions": [{"id": 1, "do": "set", "lr": -2}]}', "control.json: actions[0].lr: must be > 0"),
        (
            b'{"actions": [{"id": 1, "do": "pause"}, {"id": 1, "do": "stop"}]}',
            "control.json: actions[1].id: id 1 is used twice",
        ),
        (
            b'{"actions": [{"id": true, "do": "pause"}]}',
            "control.json: actions[0].id: must be a number or a short text",
        ),
        (b" " * (1 << 20) + b"{}", "control.json: the file is 1,048,578 bytes; a control file is at most 1,048,576"),
        (b'{"lr": 0.1, "momentum": 0.9, "lr": 0.2}', "control.json: lr: duplicate key"),
        (b'{"trials": {"3": {"lr": 0.1, "lr": 0.2}}}', "control.json: trials.3.lr: duplicate key"),
        (
            b'{"actions": [{"id": 1, "do": "pause"}, {"id": 2, "do": "set", "lr": 0.1, "lr": 0.2}]}',
            "control.json: actions[1].lr: duplicate key",
        ),
    ],
)
def test_bad_versions_are_refused_with_the_path_and_the_rule(raw, message):
    with pytest.raises(ControlError) as caught:
        parse(raw, SCHEMA)
    assert str(caught.value).startswith(message)


def test_cut_off_json_is_marked_incomplete_so_the_watcher_waits_for_the_rest():
    for raw in (b"", b'{"lr": 0.1'):
        with pytest.raises(ControlError) as caught:
            parse(raw, SCHEMA)
        assert caught.value.incomplete
    with pytest.raises(ControlError) as caught:
        parse(b'{"lr": -1}', SCHEMA)
    assert not caught.value.incomplete


def test_the_initial_file_is_valid_and_orders_nothing():
    data = initial_document(SCHEMA.live, {"lr": 0.01, "momentum": 0.9})
    raw = orjson.loads(data)
    assert raw["lr"] == 0.01 and raw["momentum"] == 0.9 and raw["beta2"] is None  # null: chosen per trial
    assert raw["trials"] == {} and raw["actions"] == [] and raw["help"]
    first = parse(data, SCHEMA)
    assert orders(first, first) == []


def test_a_setting_is_ordered_when_its_value_changes_and_only_then():
    start = doc(lr=0.01, momentum=0.9)
    changed = doc(lr=0.02, momentum=0.9)
    (order,) = orders(start, changed)
    assert (
        order.trial is None and order.decision == Nudge({"lr": 0.02}, reason="control.json") and order.what == "lr=0.02"
    )
    assert orders(changed, changed) == []  # the same version read again orders nothing
    assert orders(changed, doc(lr=None, momentum=0.9)) == []  # null: no value, nothing to apply
    assert orders(doc(lr=None), doc(lr=0.02))[0].decision.changes == {"lr": 0.02}


def test_per_trial_settings_go_to_their_trial_after_the_top_level_ones():
    before = doc(lr=0.01, trials={"3": {"lr": 0.05}})
    after = doc(lr=0.02, trials={"t003": {"lr": 0.05, "momentum": 0.5}, "4": {"lr": 0.1}})
    found = orders(before, after)
    assert [(o.trial, o.decision.changes) for o in found] == [
        (None, {"lr": 0.02}),
        (3, {"momentum": 0.5}),
        (4, {"lr": 0.1}),
    ]


def test_each_action_id_is_applied_once_and_cannot_be_reused_for_another_action():
    empty = doc()
    actions = [
        {"id": 1, "do": "pause"},
        {"id": "b", "do": "resume", "trial": "t002"},
        {"id": 3, "do": "rollback", "to": "before_nudge", "reason": "lr too high"},
        {"id": 4, "do": "rollback", "to": 5},
        {"id": 5, "do": "checkpoint"},
        {"id": 6, "do": "set", "lr": 0.3, "beta2": 0.99},
        {"id": 7, "do": "stop", "trial": 2},
        {"id": 8, "do": "stop"},
    ]
    version = doc(actions=actions)
    found = orders(empty, version)
    assert [(o.action, o.trial, o.decision) for o in found] == [
        (1, None, Pause(reason="control action 1")),
        ("b", 2, Unpause(reason="control action b")),
        (3, None, Rollback(to="before_nudge", reason="lr too high")),
        (4, None, Rollback(to=5, reason="control action 4")),
        (5, None, Checkpoint(reason="control action 5")),
        (6, None, Nudge({"lr": 0.3, "beta2": 0.99}, reason="control action 6")),
        (7, 2, Stop(reason="control action 7", experiment=False)),  # one trial: the search goes on
        (8, None, Stop(reason="control action 8", experiment=True)),  # no trial: the whole run
    ]
    assert orders(version, version) == []
    assert [o.action for o in orders(version, doc(actions=actions + [{"id": 9, "do": "pause"}]))] == [9]
    assert orders(version, doc(actions=actions[1:])) == []  # removing an applied action undoes nothing
    with pytest.raises(ControlError, match='id 1 was already applied as "pause"; give a new action a new id'):
        orders(version, doc(actions=[{"id": 1, "do": "stop"}]))


def test_runner_nudge_edits_the_file_as_a_person_would():
    raw = orjson.loads(initial_document(SCHEMA.live, {"lr": 0.01, "momentum": 0.9}))
    raw["actions"] = [{"id": 4, "do": "pause"}, {"id": "x", "do": "resume"}]
    edited = edit(raw, Change({"lr": 0.02, "momentum": 0.9}, [{"do": "checkpoint"}]))
    assert edited["lr"] == 0.02  # changed where a person would change it
    assert edited["actions"][2:] == [
        {"id": 5, "do": "set", "momentum": 0.9},  # already 0.9 in the file: applied anyway
        {"id": 6, "do": "checkpoint"},
    ]
    assert raw["lr"] == 0.01 and len(raw["actions"]) == 2  # the input is left alone
    raw["trials"] = {"t003": {"lr": 0.5}}
    edited = edit(raw, Change({"lr": 0.25}, [{"do": "rollback", "to": "best"}], trial=3))
    assert edited["trials"] == {"t003": {"lr": 0.25}} and edited["lr"] == 0.01
    assert edited["actions"][-1] == {"id": 5, "do": "rollback", "to": "best", "trial": 3}
    found = orders(parse(orjson.dumps(raw), SCHEMA), parse(orjson.dumps(edited), SCHEMA))
    assert [(o.trial, o.decision) for o in found] == [
        (3, Nudge({"lr": 0.25}, reason="control.json")),
        (3, Rollback(to="best", reason="control action 5")),
    ]


def test_an_applied_action_stays_applied_when_taken_out_and_put_back():
    pause = [{"id": 1, "do": "pause"}]
    applied = doc(actions=pause)
    used = dict(applied.actions)
    tidied = doc()  # a person removed the applied action
    assert orders(applied, tidied, used) == []
    assert orders(tidied, doc(actions=pause), used) == []  # put back (an undo): not applied again
    with pytest.raises(ControlError, match='id 1 was already applied as "pause"'):
        orders(tidied, doc(actions=[{"id": 1, "do": "stop"}]), used)
    after_resume = {1: None}  # only the id is known from the event log
    with pytest.raises(ControlError, match="id 1 was already used in this run"):
        orders(tidied, doc(actions=pause), after_resume)
    assert orders(applied, applied, after_resume) == []  # the file as it was: nothing new


def test_nudge_waits_for_status_json_to_list_a_trial_that_has_just_started(tmp_path):
    """status.json is rewritten every quarter second: a trial that started a moment ago is
    in the log before it is in the file. runner nudge --trial waits that long for it, then
    says it is not running."""
    import threading

    from runner.control.nudge import trial_listed

    path = tmp_path / "status.json"
    before = {"run": {"state": "running"}, "control": {}, "trials": {}}
    path.write_bytes(orjson.dumps(before))

    def rewrite() -> None:  # as the run rewrites it: atomically, never an empty file in between
        (tmp_path / "status.json.new").write_bytes(orjson.dumps({**before, "trials": {"3": {}}}))
        (tmp_path / "status.json.new").replace(path)

    later = threading.Timer(0.1, rewrite)
    later.start()
    assert "3" in trial_listed(tmp_path, 3, before)["trials"]
    later.join()
    assert "4" not in trial_listed(tmp_path, 4, before)["trials"]  # after STATUS_LAG: not running
