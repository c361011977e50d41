"""Suspended trials: a Suspend frees the trial's place, the strategy continues it later from
its snapshot, and a trial suspended and continued trains exactly as one that never stopped."""

from __future__ import annotations

import signal
import textwrap

import orjson
import pytest

from runner import Continue, History, Nudge, TrialResult
from tests.conftest import deep_update, run_file
from tests.test_resume import EXPERIMENT, assert_same, outcome, resume, start

# A strategy that asks three trials (as random does), has each suspend after two of its four
# epochs, and continues them one by one once all three wait, giving trial 1 a nudge first.
RELAY = textwrap.dedent("""
    import os
    from runner import Babysitter, Continue, Nudge, Strategy, Suspend, hookimpl

    NUDGE = os.environ.get("RUNNER_TEST_RELAY_NUDGE") == "1"

    class Halfway(Babysitter):
        def epoch_end(self, trial, epoch, metrics):
            if epoch + 1 == 2:
                return Suspend("halfway")

    class Relay(Strategy):
        name = "relay"

        def ask(self, history):
            if len(history) < 3:
                return self.space.sample(self.rng(len(history)))
            if history.running or not history.waiting:
                return None  # until all three wait, and once none does
            trial = history.waiting[0].id
            orders = (Nudge(lr=0.001, reason="slower"),) if NUDGE and trial == 1 else ()
            return Continue(trial, orders, reason="all three are halfway")

        def babysitter(self, trial):
            return Halfway()

    @hookimpl
    def runner_register(registry):
        registry.add_strategy(Relay)
""")

THREE = deep_update(EXPERIMENT, {"name": "relay", "search": {"strategy": {"name": "random", "trials": 3}}})
RELAYED = deep_update(THREE, {"search": {"strategy": {"name": "relay", "trials": None}}})


@pytest.fixture
def relay(tmp_path):
    path = tmp_path / "relay.py"
    path.write_text(RELAY)
    return path


def run(tmp_path, experiment, plugins=()):
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "exp.json"
    path.write_bytes(orjson.dumps(experiment))
    return run_file(path, tmp_path, [str(p) for p in plugins])


def test_suspended_and_continued_trials_train_exactly_as_uninterrupted_ones(tmp_path, relay):
    straight = run(tmp_path / "straight", THREE)
    relayed = run(tmp_path / "relayed", RELAYED, [relay])
    assert_same(outcome(relayed.run_dir), outcome(straight.run_dir))  # results and final arrays, bit for bit
    events = relayed.events
    kinds = [(e["event"], e.get("trial")) for e in events if e["event"].startswith("trial_")]
    # all three run their first half, then each goes on in turn
    assert [k for k in kinds if k[0] in ("trial_suspend", "trial_continue", "trial_complete")] == [
        ("trial_suspend", 0),
        ("trial_suspend", 1),
        ("trial_suspend", 2),
        ("trial_continue", 0),
        ("trial_complete", 0),
        ("trial_continue", 1),
        ("trial_complete", 1),
        ("trial_continue", 2),
        ("trial_complete", 2),
    ]
    [suspended] = [e for e in events if e["event"] == "trial_suspend" and e["trial"] == 1]
    assert suspended["state"] == "suspended" and suspended["epochs"] == 2 and suspended["reason"] == "halfway"
    goes_on = events[events.index(next(e for e in events if e["event"] == "trial_continue" and e["trial"] == 1)) + 1]
    assert goes_on["event"] == "trial_resume" and goes_on["epoch"] == 2
    assert goes_on["snapshot"].startswith("trials/t001/e00002-")


def test_a_strategys_orders_are_carried_out_first_when_the_trial_goes_on(tmp_path, relay, monkeypatch):
    monkeypatch.setenv("RUNNER_TEST_RELAY_NUDGE", "1")
    r = run(tmp_path, RELAYED, [relay])
    [went_on] = [e for e in r.events if e["event"] == "trial_continue" and e["trial"] == 1]
    assert [o["what"] for o in went_on["orders"]] == ["lr=0.001"]
    [nudge] = [e for e in r.events if e["event"] == "nudge"]
    assert nudge["trial"] == 1 and nudge["source"] == "strategy" and nudge["order"] == went_on["orders"][0]["order"]
    assert nudge["step"] == went_on["epoch"] * next(e for e in r.events if e["event"] == "epoch_end")["step"]
    assert [e["lr"] for e in r.events if e["event"] == "epoch_end" and e["trial"] == 1][2:] == [0.001, 0.001]


def test_the_history_knows_suspended_trials_and_rebuilds_them_from_the_log(tmp_path, relay):
    r = run(tmp_path, RELAYED, [relay])
    cut = next(i for i, e in enumerate(r.events) if e["event"] == "trial_continue")
    history = History.from_events(r.events[:cut])  # all three wait
    assert [rec.id for rec in history.waiting] == [0, 1, 2] and history.running == []
    assert [s.epochs for s in history[1].suspensions] == [2] and history[1].suspensions[0].state == "suspended"
    history = History.from_events(r.events[: cut + 1])  # trial 0 goes on
    assert [rec.id for rec in history.waiting] == [1, 2] and [rec.id for rec in history.running] == [0]
    final = History.from_events(r.events)
    assert not final.waiting and len(final.finished) == 3 and len(final[2].suspensions) == 1
    live = History()
    live.add(0, {})
    live.suspend(TrialResult(0, "suspended", {}, None, None, 2, 0.1, None))
    assert live.waiting and not live.running
    live.continue_trial(0)
    assert live.running and not live.waiting


def test_trials_a_strategy_leaves_suspended_end_stopped_as_they_stood(tmp_path, relay):
    relay.write_text(RELAY.replace('return Continue(trial, orders, reason="all three are halfway")', "return None"))
    r = run(tmp_path, RELAYED, [relay])
    assert {x.trial: (x.state, x.epochs, x.reason) for x in r.board} == {
        t: ("stopped", 2, "its strategy left it suspended") for t in range(3)
    }
    assert [e["event"] for e in r.events].count("trial_complete") == 3


def test_continuing_a_trial_that_is_not_suspended_is_an_error_naming_the_strategy(tmp_path, relay):
    relay.write_text(RELAY.replace("trial = history.waiting[0].id", "trial = 7"))
    with pytest.raises(Exception, match="strategy 'relay' asked to continue trial 7, which is not suspended"):
        run(tmp_path, RELAYED, [relay])


@pytest.mark.parametrize("kill", ["trial_end:0", "step:14"])
def test_sigkill_then_resume_gives_the_uninterrupted_result(tmp_path, relay, kill):
    baseline, base_dir = start(tmp_path, "base", RELAYED, plugins=[relay])
    assert baseline.returncode == 0, baseline.stderr
    proc, run_dir = start(tmp_path, "killed", RELAYED, kill=kill, plugins=[relay])
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    resumed, _ = resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_same(outcome(run_dir), outcome(base_dir))
    events = [orjson.loads(line) for line in (run_dir / "events.jsonl").read_bytes().splitlines()]
    for trial in range(3):
        mine = [e["event"] for e in events if e.get("trial") == trial]
        assert mine.count("trial_complete") == mine.count("trial_suspend") == 1, (trial, mine)
    # the resumed run knew which trials were suspended: each went on only when the strategy said so
    assert [e["trial"] for e in events if e["event"] == "trial_continue"] == [0, 1, 2]


def test_continue_is_a_value():
    assert Continue(3, (Nudge(lr=0.1),)).decisions == (Nudge(lr=0.1),)


def test_a_resumed_run_gives_a_continued_trial_the_orders_it_had_not_carried_out(tmp_path):
    from runner.control.file import ControlSchema
    from runner.control.inbox import ControlInbox
    from runner.decisions import decision_to_json
    from runner.plugins.backends.numpy_mlp.backend import NumpyBackend
    from runner.records.events import EventLog

    nudge = Nudge(lr=0.001, reason="slower")
    went_on = {
        "event": "trial_continue",
        "trial": 1,
        "epoch": 2,
        "reason": "",
        "orders": [
            {"order": "continue.1.9.0", "what": "lr=0.001", "decision": decision_to_json(nudge)},
            {"order": "continue.1.9.1", "what": "lr=0.002", "decision": decision_to_json(Nudge(lr=0.002))},
        ],
    }
    done = {"event": "nudge", "trial": 1, "order": "continue.1.9.1"}  # the second was carried out before the kill
    with EventLog(tmp_path / "events.jsonl") as log:
        inbox = ControlInbox(tmp_path / "control.json", ControlSchema.for_backend(NumpyBackend), log)
        inbox.resume([went_on, done], continuing={1})
        [owed] = inbox.open(1).items
    assert (owed.order, owed.decision, owed.source) == ("continue.1.9.0", nudge, "strategy")


def test_a_worker_keeps_mail_for_a_trials_next_run_apart_from_its_last():
    """A continued (or retried) trial may run again in the worker that ran it: an order for
    its new run that comes before the run starts waits for it, one for its old run fails."""
    from runner.control.inbox import Delivery
    from runner.engine.experiment import TrialJob
    from runner.execution.worker import WorkerLink

    sent = []
    link = WorkerLink(sent.append)
    late, early = Delivery("1.0", Nudge(lr=0.1), "lr=0.1"), Delivery("continue.3.17.0", Nudge(lr=0.2), "lr=0.2")
    link.start(TrialJob(3, {}, 1))
    link.open(3)
    link.close_mailbox(3)
    link.receive(("mail", 3, late, None))  # for the run that ended
    link.receive(("mail", 3, early, 17))  # for the run that continues it, not started yet
    assert sent[-1] == ("unreachable", 3, late)
    link.start(TrialJob(3, {}, 1, logged=17))
    assert list(link.open(3).items) == [early]


def test_orders_a_suspended_trial_had_not_carried_out_wait_for_its_next_run(tmp_path):
    from runner.control.file import ControlSchema
    from runner.control.inbox import ControlInbox, Delivery
    from runner.plugins.backends.numpy_mlp.backend import NumpyBackend
    from runner.records.events import EventLog, read_events

    first, second, exploit = (
        Delivery("1.0", Nudge(lr=0.1), "lr=0.1"),
        Delivery("2.0", Nudge(lr=0.2), "lr=0.2"),
        Delivery("continue.3.9.0", Nudge(lr=0.3), "lr=0.3", source="strategy"),
    )
    with EventLog(tmp_path / "events.jsonl") as log:
        inbox = ControlInbox(tmp_path / "control.json", ControlSchema.for_backend(NumpyBackend), log)
        inbox.open(3).put(first)  # came as the trial was suspended
        inbox.close_mailbox(3, suspended=True)
        inbox.undelivered(3, second)  # one its worker got too late is kept too
        inbox.hold(3, exploit)  # its strategy continues it
        assert list(inbox.open(3).items) == [exploit, first, second], "the strategy's first, then the person's"
        inbox.open(3).put(first)
        inbox.close_mailbox(3)  # ended: an order left over is reported, not lost silently
        inbox.undelivered(3, second)
    errors = [e for e in read_events(tmp_path / "events.jsonl") if e["event"] == "control_error"]
    assert [(e["order"], e["message"]) for e in errors] == [
        ("1.0", "lr=0.1: trial 3 ended before the order reached it"),
        ("2.0", "lr=0.2: trial 3 ended before the order reached it"),
    ]


def test_after_a_resume_a_persons_order_for_a_suspended_trial_still_comes_after_its_strategys(tmp_path):
    from runner.control.file import ControlSchema
    from runner.control.inbox import ControlInbox, Delivery
    from runner.decisions import decision_to_json
    from runner.plugins.backends.numpy_mlp.backend import NumpyBackend
    from runner.records.events import EventLog

    person = Nudge(lr=0.5, reason="control action 1")
    read = {
        "event": "control",
        "read": 1,
        "orders": [{"order": "1.0", "trial": 3, "what": "lr=0.5", "action": 1, "decision": decision_to_json(person)}],
    }
    exploit = Delivery("continue.3.9.0", Nudge(lr=0.1), "lr=0.1", source="strategy")
    with EventLog(tmp_path / "events.jsonl") as log:
        inbox = ControlInbox(tmp_path / "control.json", ControlSchema.for_backend(NumpyBackend), log)
        inbox.resume([read], continuing={3}, suspended={3})
        inbox.hold(3, exploit)  # its strategy continues it
        assert [d.order for d in inbox.open(3).items] == ["continue.3.9.0", "1.0"]
        late = Delivery("2.0", person, "lr=0.5")
        inbox.undelivered(3, late)  # a worker's "too late" for the last run, while the next one runs
        assert [d.order for d in inbox._mailboxes[3].items][-1] == "2.0"


def test_a_continued_trials_rollback_to_a_missing_snapshot_is_reported_and_it_goes_on(tmp_path, relay, monkeypatch):
    orders = RELAY.replace('(Nudge(lr=0.001, reason="slower"),)', "(Rollback(2, trial=9), Nudge(lr=0.001))")
    relay.write_text(
        orders.replace("import Babysitter, Continue, Nudge,", "import Babysitter, Continue, Nudge, Rollback,")
    )
    monkeypatch.setenv("RUNNER_TEST_RELAY_NUDGE", "1")
    r = run(tmp_path, RELAYED, [relay])
    [error] = [e for e in r.events if e["event"] == "control_error"]
    assert error["trial"] == 1
    assert error["message"] == "rollback to epoch 2 of t009: trial 9 has no snapshot of epoch 2 file to take"
    assert [x.state for x in r.board] == ["completed"] * 3
    assert [e["lr"] for e in r.events if e["event"] == "epoch_end" and e["trial"] == 1][2:] == [0.001, 0.001]
