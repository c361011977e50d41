"""runner replay: a babysat trial (a person's nudges, a pause, the strategy's tries, a
divergence rollback, an interruption and runner resume --set) trains again bit for bit;
a tampered log is reported at the step where the replay parts from it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from runner.engine.replay import ReplayScript, first_difference
from runner.errors import RunnerError
from runner.records.events import read_events
from tests.conftest import QUICK, deep_update, run_file
from tests.test_control_live import LiveRun

# A plugin's nudge far too high at epoch 6: the divergence policy rolls it back (once).
BLOW_UP = textwrap.dedent("""
    from runner import Nudge, hookimpl

    @hookimpl
    def runner_epoch_end(trial, epoch):
        if epoch == 6 and trial.divergence_rollbacks == 0:
            return Nudge(lr=1e4, reason="a plugin's typo")
""")

BABYSAT = {
    "model": {"batch_norm": False},
    "search": {"strategy": {"name": "panda-nudge", "every": 2, "probe_epochs": 1}},
}


def cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "runner", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def events_of(run_dir: Path) -> list[dict]:
    return list(read_events(run_dir / "events.jsonl"))


@pytest.fixture(scope="module")
def babysat(tmp_path_factory):
    """A live panda run: a plugin's blow-up rolled back, a person's nudge, a pause and its
    end through the control file, Ctrl-C, then runner resume --set and a stop."""
    tmp = tmp_path_factory.mktemp("babysat")
    plugin = tmp / "blow_up.py"
    plugin.write_text(BLOW_UP)
    run = LiveRun(tmp, BABYSAT, "--plugin", str(plugin))
    try:
        run.until(lambda: run.find("rollback", source="divergence"))
        run.until(lambda: run.find("nudge", source="strategy"))
        document = run.document()
        document["lr"] = 0.02
        run.write(document)
        run.until(lambda: run.find("nudge", source="control"))
        run.act(1, "pause")
        run.act(2, "resume")
        at = len(run.find("epoch_end"))
        run.until(lambda: len(run.find("epoch_end")) > at + 3)
        run.process.send_signal(signal.SIGINT)
        assert run.process.wait(timeout=60) != 0
    finally:
        run.kill()
    assert [e for e in events_of(run.run_dir) if e["event"] == "interrupted"]
    resumed = subprocess.Popen(
        [sys.executable, "-m", "runner", "resume", run.run_dir, "--plain", "--plugin", plugin, "--set", "lr=0.015"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run.process = resumed
        run.until(lambda: [e for e in run.find("nudge", source="resume")])
        at = len(run.find("epoch_end"))
        run.until(lambda: len(run.find("epoch_end")) > at + 5)
        assert run.stop() == 0
    finally:
        run.kill()
    return run.run_dir, plugin


def resume_live(run: LiveRun, plugin: Path) -> None:
    """``runner resume`` of the live run, in its place; returns once the trial trains on.
    (The resume cuts the trial's lost work from the log, a ``trial_resume`` of an earlier
    resume included; its own ``resume`` event stays.)"""
    before = len(run.find("resume"))
    run.process = subprocess.Popen(
        [sys.executable, "-m", "runner", "resume", run.run_dir, "--plain", "--plugin", plugin],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run.until(lambda: len(run.find("resume")) > before)
    resumed = run.events().index(run.find("resume")[-1])
    run.until(lambda: [e for e in run.events()[resumed:] if e["event"] == "epoch_end"])


def more_epochs(run: LiveRun, n: int) -> None:
    at = len(run.find("epoch_end"))
    run.until(lambda: len(run.find("epoch_end")) > at + n)


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A live panda run with a snapshot file every epoch: Ctrl-C while paused, resumed;
    SIGKILL, resumed from its newest file (an epoch's end); then a person's rollback to the start, which
    the new process no longer holds (the order fails), and a stop."""
    tmp = tmp_path_factory.mktemp("killed")
    plugin = tmp / "blow_up.py"
    plugin.write_text(BLOW_UP)
    run = LiveRun(tmp, deep_update(BABYSAT, {"checkpoint": {"min_interval": 0}}), "--plugin", str(plugin))
    try:
        more_epochs(run, 8)
        run.act(1, "pause")
        run.process.send_signal(signal.SIGINT)
        assert run.process.wait(timeout=60) != 0
        resume_live(run, plugin)
        more_epochs(run, 10)
        run.process.kill()
        run.process.wait()
        resume_live(run, plugin)
        more_epochs(run, 3)
        run.act(2, "rollback", to=0)
        more_epochs(run, 3)
        assert run.stop() == 0
    finally:
        run.kill()
    return run.run_dir, plugin


def test_a_trial_killed_and_resumed_replays_as_the_new_processes_went_on(killed, tmp_path):
    run_dir, plugin = killed
    mine = [e for e in events_of(run_dir) if e.get("trial") == 0]
    kinds = [e["event"] for e in mine]
    assert kinds.count("trial_resume") == 2 and kinds.count("interrupted") == 1
    failed = [e for e in mine if e["event"] == "control_error"]
    assert failed and "no snapshot of epoch 0" in failed[0]["message"], "the start was only in the first process"
    replayed = cli("replay", run_dir, "--trial", "0", "--out", tmp_path, "--plugin", plugin)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "identical to the original, bit for bit" in replayed.stdout


def files_of(run_dir: Path) -> list[tuple]:
    """The trial's snapshot files, by what they hold (their names count events, which differ),
    as ``compare_snapshots`` matches them."""
    from runner.engine.snapshot_files import scan_snapshots, trial_folder

    return sorted(
        (m["epoch"], m["step"], m["reason"], m["loop"].get("rollbacks"))
        for _, m in scan_snapshots(trial_folder(run_dir, 0))
    )


def test_where_a_resumed_trial_went_on_is_read_from_its_snapshot_file(tmp_path):
    import numpy as np

    from runner.backend import BackendState
    from runner.engine.replay import went_on_from
    from runner.engine.snapshot_files import write_snapshot

    for name, partial, reason in (("end.safetensors", None, "best"), ("mid.safetensors", [3, 1.5], "requested")):
        meta = {"trial": 0, "epoch": 2, "step": 20, "reason": reason, "best": False, "hyperparameters": {},
                "metrics": {}, "loop": {"events": 9, "partial": partial}}  # fmt: skip
        write_snapshot(tmp_path / name, BackendState({"w": np.zeros(2)}, {}), meta)
    resumed = {"epoch": 2, "step": 20}
    assert went_on_from({**resumed, "snapshot": "trials/t000/end.safetensors"}, tmp_path, False, set()) == (
        True,
        "best",
    )
    assert went_on_from({**resumed, "snapshot": "mid.safetensors"}, tmp_path, False, {20}) == (False, "requested")
    assert went_on_from({**resumed, "snapshot": "gone.safetensors"}, tmp_path, False, {20}) == (True, "epoch"), (
        "epoch 2 ended there"
    )
    assert went_on_from({**resumed, "snapshot": "gone.safetensors"}, tmp_path, False, set()) == (False, "steps")
    assert went_on_from({**resumed, "snapshot": "end.safetensors"}, tmp_path, True, {20}) == (False, "interrupt"), (
        "Ctrl-C"
    )


def test_an_order_whose_event_names_no_step_is_keyed_where_the_trial_stands():
    """Logs written before control_error events named their step: the trial's position is
    its last event's, not a snapshot file's reported later."""
    events = [
        {"event": "experiment_start", "base_dir": "."},
        {
            "event": "control",
            "orders": [
                {"order": "3.0", "trial": 0, "what": "rollback to epoch 99", "decision": {"kind": "Rollback", "to": 99}}
            ],
        },
        {"event": "trial_start", "trial": 0, "params": {}, "seed": 1},
        {"event": "epoch_end", "trial": 0, "epoch": 3, "step": 40},
        {"event": "checkpoint", "trial": 0, "epoch": 1, "step": 10, "reason": "epoch"},
        {"event": "control_error", "trial": 0, "order": "3.0", "message": "no snapshot"},
        {"event": "trial_complete", "trial": 0},
    ]
    script = ReplayScript.from_events(events, 0, "log")
    [(key, delivery)] = list(script.schedule)
    assert key == (0, 40) and delivery.order == "3.0" and script.written[(1, 10, "epoch", None)] == 1


def test_a_babysat_trial_replays_bit_for_bit(babysat, tmp_path):
    run_dir, plugin = babysat
    events = events_of(run_dir)
    mine = [e for e in events if e.get("trial") == 0]
    sources = {(e["event"], e.get("source")) for e in mine}
    for needed in [
        ("nudge", "control"),
        ("nudge", "strategy"),
        ("nudge", "resume"),
        ("rollback", "divergence"),
        ("pause", "control"),
        ("unpause", "control"),
        ("stop", "control"),
        ("trial_resume", None),
    ]:
        assert needed in sources, f"the original has {needed}"
    replayed = cli("replay", run_dir, "--trial", "0", "--out", tmp_path, "--plugin", plugin)
    assert replayed.returncode == 0, replayed.stderr
    assert "identical to the original, bit for bit" in replayed.stdout
    [replay_dir] = [p for p in tmp_path.iterdir() if "-replay-t000-" in p.name]
    theirs = events_of(replay_dir)
    [check] = [e for e in theirs if e["event"] == "replay_check"]
    assert check["identical"] and check["snapshots"] >= 1 and check["undelivered"] == []
    ours_epochs = [e for e in mine if e["event"] == "epoch_end"]
    their_epochs = [e for e in theirs if e["event"] == "epoch_end"]
    assert [(e["step"], e["val_loss"], e["lr"]) for e in ours_epochs] == [
        (e["step"], e["val_loss"], e["lr"]) for e in their_epochs
    ], "every epoch, bit for bit"
    kept = set(files_of(run_dir)) & set(files_of(replay_dir))
    assert check["snapshots"] == len(kept) >= 1, "every file both kept was compared, and agreed"
    [complete] = [e for e in mine if e["event"] == "trial_complete"]
    results = orjson.loads((replay_dir / "results.json").read_bytes())
    assert results["trials"][0]["final"]["val_loss"] == complete["final"]["val_loss"]
    assert results["trials"][0]["state"] == complete["state"] == "stopped"


def test_a_tampered_log_is_reported_at_the_step_where_the_replay_parts(babysat, tmp_path):
    run_dir, plugin = babysat
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(run_dir), str(copy)], check=True)
    lines = (copy / "events.jsonl").read_bytes().splitlines()
    nudge = next(
        orjson.loads(line)
        for line in lines
        if b'"event":"nudge"' in line and orjson.loads(line).get("source") == "control"
    )
    tampered = []
    for line in lines:
        event = orjson.loads(line)
        if event["event"] == "control":
            for order in event["orders"]:
                if order["order"] == nudge["order"]:
                    order["decision"]["changes"]["lr"] = 0.021  # the person asked for 0.02
        tampered.append(orjson.dumps(event))
    (copy / "events.jsonl").write_bytes(b"\n".join(tampered) + b"\n")
    replayed = cli("replay", copy, "--trial", "0", "--out", tmp_path / "out", "--plugin", plugin)
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    expected = f"parts from the original at epoch {nudge['epoch']}, step {nudge['step']} (nudge: changes.lr.new"
    assert expected in replayed.stderr, replayed.stderr


def test_a_run_started_with_a_one_off_plugin_needs_it_again(babysat, tmp_path):
    run_dir, plugin = babysat
    replayed = cli("replay", run_dir, "--trial", "0", "--out", tmp_path)
    assert replayed.returncode == 2 and f"--plugin {plugin}" in replayed.stderr
    assert not list(tmp_path.iterdir()), "nothing made"


def test_an_unknown_trial_and_a_pbt_member_are_refused_by_name(tmp_path):
    events = [
        {"event": "experiment_start", "base_dir": "."},
        {"event": "trial_start", "trial": 0, "params": {}, "seed": 1},
        {"event": "rollback", "trial": 0, "from_step": 40, "donor": 3, "rollbacks": 1},
        {"event": "trial_complete", "trial": 0},
    ]
    with pytest.raises(RunnerError, match="trial 5 never started in log; its trials: 0"):
        ReplayScript.from_events(events, 5, "log")
    with pytest.raises(RunnerError, match="at step 40 it took trial 3's snapshot"):
        ReplayScript.from_events(events, 0, "log")


def test_differences_are_found_bit_for_bit():
    assert first_difference({"a": {"b": [1.0, 2.0]}}, {"a": {"b": [1.0, 2.0]}}) is None
    assert first_difference({"a": 0.1 + 0.2}, {"a": 0.3}) == "a: 0.30000000000000004 != 0.3"
    assert first_difference({"a": float("nan")}, {"a": float("nan")}) is None
    assert first_difference({"a": 1}, {"a": 1.0}) == "a: 1 != 1.0"
    assert first_difference({"a": 1}, {"b": 1}) == "a: 1 != missing"


def test_a_trial_of_a_search_replays_in_process_too(tmp_path):
    """The Python side of the command: a grid trial whose policy answered a divergence."""
    from runner.engine.experiment import load_dataset
    from runner.engine.replay import replay_trial

    plugin = tmp_path / "blow_up.py"
    plugin.write_text(BLOW_UP)
    path = tmp_path / "exp.json"
    experiment = deep_update(QUICK, {"train": {"epochs": 9}, "model": {"batch_norm": False}})
    path.write_bytes(orjson.dumps(experiment))
    original = run_file(path, tmp_path, [str(plugin)])
    events = events_of(original.run_dir)
    assert [e for e in events if e.get("trial") == 1 and e["event"] == "rollback" and e["source"] == "divergence"]
    script = ReplayScript.from_events(events, 1, "log")
    replayed = replay_trial(
        original.run_dir, script, tmp_path / "replays", original.plugins, original.spec,
        load_dataset(original.spec, original.plugins),
    )  # fmt: skip
    assert replayed.comparison.parted is None and replayed.comparison.events > 10
    [theirs] = [r for r in original.board if r.trial == 1]
    timeless = ({k: v for k, v in final.items() if k != "seconds"} for final in (replayed.result.final, theirs.final))
    assert next(timeless) == next(timeless)
    assert json.loads(json.dumps(replayed.comparison.to_json()))["identical"]


def test_a_trial_the_pruner_stopped_replays_with_its_verdicts(tmp_path):
    """ASHA's verdicts depend on the other trials' curves: the replay delivers them from the log."""
    from runner.engine.experiment import load_dataset
    from runner.engine.replay import replay_trial

    path = tmp_path / "exp.json"
    experiment = deep_update(
        QUICK,
        {
            "train": {"epochs": 8},
            "search": {
                "strategy": {"name": "random", "trials": 6},
                "pruner": {"name": "asha", "grace_epochs": 1, "reduction_factor": 2},
                "space": {"train.lr": {"low": 1e-4, "high": 0.3, "scale": "log"}},
            },
        },
    )
    path.write_bytes(orjson.dumps(experiment))
    original = run_file(path, tmp_path)
    events = events_of(original.run_dir)
    pruned = [e for e in events if e["event"] == "prune" and e.get("source") == "pruner"]
    assert pruned, "the search pruned a trial"
    trial = pruned[-1]["trial"]
    script = ReplayScript.from_events(events, trial, "log")
    assert [d.source for _, d in script.schedule] and {d.source for _, d in script.schedule} == {"pruner"}
    replayed = replay_trial(
        original.run_dir, script, tmp_path / "replays", original.plugins, original.spec,
        load_dataset(original.spec, original.plugins),
    )  # fmt: skip
    assert replayed.comparison.parted is None and replayed.result.state == "pruned"
    assert replayed.result.epochs == pruned[-1]["epoch"]


def test_a_trial_that_has_not_ended_is_refused():
    events = [{"event": "experiment_start", "base_dir": "."}, {"event": "trial_start", "trial": 0, "params": {}}]
    with pytest.raises(RunnerError, match="trial 0 has not ended in log"):
        ReplayScript.from_events(events, 0, "log")


def test_a_replay_past_an_orders_step_has_parted_and_ends_there():
    from types import SimpleNamespace

    from runner import Stop
    from runner.control.inbox import Delivery
    from runner.engine.experiment import EndTrial
    from runner.engine.replay import ScheduledMail

    events = [{"event": "experiment_start"}, {"event": "trial_start", "trial": 0, "params": {}, "seed": 1}]
    script = ReplayScript(0, {}, 1, events[0], events)
    script.schedule.extend(
        [((1, 5), Delivery("7.0", Stop("a person"), "stop")), ((1, 9), Delivery("8.0", Stop(), "stop"))]
    )
    trial = SimpleNamespace(rollbacks=1, step=4)
    mail = ScheduledMail(script, trial)
    assert len(mail) == 0, "not yet due"
    trial.step = 5
    assert len(mail) == 1 and mail.popleft().order == "7.0", "due at its step"
    trial.rollbacks, trial.step = 2, 3  # a rollback the original never made: order 8.0 can no longer come
    with pytest.raises(EndTrial, match=r"order 8\.0, due at step 9 after 1 rollbacks, was never reached"):
        len(mail)
