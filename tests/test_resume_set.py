"""runner resume --set: new live settings, checked like a nudge, logged as one with source
resume, in force from the first step of every trial that goes on."""

from __future__ import annotations

import signal

import orjson

from tests.test_resume import EXPERIMENT, log_of, runner, start


def resume_with(run_dir, *args):
    plugins = [p for p in log_of(run_dir)[0]["plugin_files"]]
    return runner(
        "resume",
        run_dir,
        "--plain",
        *args,
        *[a for p in plugins for a in ("--plugin", p)],
        env={"RUNNER_TEST_KILL": ""},
    )


def test_settings_given_to_resume_are_in_force_from_the_first_step_and_logged(tmp_path):
    proc, run_dir = start(tmp_path, "killed", EXPERIMENT, kill="step:7")  # in trial 0's third epoch
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    resumed = resume_with(run_dir, "--set", "lr=0.0123", "--set", "momentum=0.8")
    assert resumed.returncode == 0, resumed.stderr
    events = log_of(run_dir)
    [again] = [e for e in events if e["event"] == "resume"]
    assert again["settings"] == {"lr": 0.0123, "momentum": 0.8}
    [order] = again["orders"]
    assert order["trial"] == 0 and order["what"] == "lr=0.0123 momentum=0.8"
    going_on = events[events.index(next(e for e in events if e["event"] == "trial_resume")) :]
    nudge = next(e for e in going_on if e["event"] == "nudge")
    assert nudge["source"] == "resume" and nudge["order"] == order["order"]
    assert nudge["changes"]["lr"]["new"] == 0.0123 and nudge["changes"]["momentum"]["new"] == 0.8
    assert nudge["step"] == going_on[0]["step"], "before the first step it trains"
    assert all(
        e["lr"] == 0.0123 and e["momentum"] == 0.8 for e in going_on if e["event"] == "epoch_end" and e["trial"] == 0
    )
    others = [e for e in events if e["event"] == "epoch_end" and e["trial"] > 0]
    assert others and all(e["lr"] != 0.0123 for e in others), "trials that start later keep their own settings"


def test_a_bad_setting_is_refused_before_anything_changes(tmp_path):
    proc, run_dir = start(tmp_path, "killed", EXPERIMENT, kill="step:7")
    assert proc.returncode == -signal.SIGKILL
    before = (run_dir / "events.jsonl").read_bytes()
    for arg, message in (
        ("batch_size=8", "--set batch_size: not a live setting of backend 'numpy'; live: lr, momentum, beta2"),
        ("lr=-1", "--set lr: must be > 0"),
        ("lr=fast", "--set lr=fast: the value must be a finite number"),
        ("lr", "--set lr: the value must be a finite number"),
    ):
        refused = resume_with(run_dir, "--set", arg)
        assert refused.returncode == 2 and message in refused.stderr, (arg, refused.stderr)
        assert "Traceback" not in refused.stderr
    assert (run_dir / "events.jsonl").read_bytes() == before
    assert orjson.loads((run_dir / "events.jsonl").read_bytes().splitlines()[-1])["event"] != "resume"


def test_an_earlier_resumes_settings_not_yet_in_force_are_given_again(tmp_path):
    """Killed again before a trial carried out its --set nudge: the next resume gives it again."""
    from runner.control.file import ControlSchema
    from runner.control.inbox import ControlInbox
    from runner.decisions import Nudge, decision_to_json
    from runner.plugins.backends.numpy_mlp.backend import NumpyBackend
    from runner.records.events import EventLog

    nudge = Nudge(lr=0.0123, reason="runner resume --set")
    order = {"order": "resume.1.0", "trial": 0, "what": "lr=0.0123", "decision": decision_to_json(nudge)}
    earlier = {"event": "resume", "trials": {"0": None}, "settings": {"lr": 0.0123}, "orders": [order]}
    with EventLog(tmp_path / "events.jsonl") as log:
        inbox = ControlInbox(tmp_path / "control.json", ControlSchema.for_backend(NumpyBackend), log)
        inbox.resume([earlier], continuing={0})
        [owed] = inbox.open(0).items
    assert (owed.order, owed.decision, owed.source) == ("resume.1.0", nudge, "resume")
