"""A person's nudge that blows training up is undone, not paid for (``runner.control.refusal``).

Real ``runner start`` processes, nudged through their real control file (and ``runner
nudge``), as in ``tests/test_control_live.py``. Each test waits for events, never for time.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import runner.control.nudge as nudge_module
from runner.control.nudge import awaiting_verdict
from runner.records.status import StatusBoard
from tests.conftest import deep_update
from tests.test_control_live import live, runner  # noqa: F401  (live is a fixture)

ORIGINAL = {"lr": 0.01, "momentum": 0.9}  # what LONG trains with
GRACE = 20  # the default divergence.nudge_grace_steps

# A trial trains until the test creates RUN_DIR/finish, then ends as completed.
FINISH_WHEN_TOLD = textwrap.dedent("""
    from pathlib import Path

    from runner import Finish, hookimpl

    @hookimpl
    def runner_epoch_end(trial):
        if (trial.run_folder / "finish").exists():
            return Finish("the test is done")
""")

# Fifteen typos in a row: each changes the file from the one before, so each is an order.
ABSURD = [
    {"lr": 1e308},
    {"lr": 1e3},
    {"lr": 1e4, "momentum": 0.99999},  # two settings at once: both are restored
    {"lr": 5e5},
    {"lr": 1e300},
    {"lr": 2e3},
    {"lr": 7e4, "momentum": 0.5},
    {"lr": 1e6},
    {"lr": 3e3},
    {"lr": 1e200},
    {"lr": 4e4, "momentum": 0.0},
    {"lr": 9e3},
    {"lr": 1e100},
    {"lr": 6e5},
    {"lr": 1e308},
]


def start(live, tmp_path, changes: dict | None = None, *args: str):  # noqa: F811
    """A live run that trains until told to finish; nudged only once past the spike
    detector's warm-up, so every blow-up is seen in the steps after a nudge."""
    plugin = tmp_path / "finish_when_told.py"
    plugin.write_text(FINISH_WHEN_TOLD)
    run = live(deep_update({"model": {"batch_norm": False}}, changes or {}), "--plugin", str(plugin), *args)
    run.until(lambda: [e for e in run.find("epoch_end") if e["step"] > 2 * GRACE])
    return run


def save(run, settings: dict) -> str:
    """Save ``settings`` into the control file as a person would; the id of the order it gave."""
    reads = len(run.find("control"))
    run.write({**run.document(), **settings})
    read = run.until(lambda: run.find("control")[reads:])[0]
    assert [o["what"] for o in read["orders"]] == [" ".join(f"{k}={v:g}" for k, v in settings.items())]
    return read["orders"][0]["order"]


def finish(run) -> int:
    (run.run_dir / "finish").touch()
    return run.process.wait(timeout=60)


def status(run) -> dict:
    return json.loads((run.run_dir / "status.json").read_text())


def order_states(run) -> dict[str, dict]:
    return {o["order"]: o for r in status(run)["control"]["recent"] for o in r["orders"]}


def assert_refused_and_undone(events: list[dict], order: str, asked: dict) -> dict:
    """The order's nudge was refused and undone: the settings from before it, no lr cut."""
    refused = [e for e in events if e["event"] == "nudge_refused" and e.get("order") == order]
    assert len(refused) == 1, f"order {order} refused once"
    refusal = refused[0]
    assert refusal["asked"] == asked and refusal["restored"] == {k: ORIGINAL[k] for k in asked}
    assert 0 < refusal["step"] - refusal["nudge_step"] <= GRACE
    assert refusal["divergence"]["kind"] in refusal["reason"]
    undo = events[events.index(refusal) + 1]
    assert undo["event"] == "rollback" and undo["order"] == order and undo["source"] == "control"
    assert undo["snapshot"] == "before_nudge" and undo["to_step"] == refusal["nudge_step"]
    assert undo["lr_after"] == ORIGINAL["lr"] and undo["reshuffled"] is False, "no lr cut, the same batches"
    return refusal


def test_fifteen_absurd_nudges_are_each_refused_and_the_run_completes_at_its_own_settings(live, tmp_path):  # noqa: F811
    run = start(live, tmp_path)
    orders = []
    for settings in ABSURD:
        order = save(run, settings)
        run.until(lambda order=order: run.find("nudge_refused", order=order))
        orders.append(order)
    assert finish(run) == 0
    events = run.events()

    assert len(set(orders)) == 15
    assert [e["order"] for e in events if e["event"] == "nudge_refused"] == orders
    for order, settings in zip(orders, ABSURD):
        refusal = assert_refused_and_undone(events, order, settings)
        nudge = next(e for e in events if e["event"] == "nudge" and e.get("order") == order)
        assert nudge["step"] == refusal["nudge_step"] and nudge["refusable_until"] == nudge["step"] + GRACE
    rollbacks = [e for e in events if e["event"] == "rollback"]
    assert len(rollbacks) == 15 and not [r for r in rollbacks if r["source"] == "divergence"], "none counted"

    result = run.find("trial_complete")[0]
    assert result["state"] == "completed" and result["reason"] == "the test is done"
    assert {k: result["final"][k] for k in ORIGINAL} == ORIGINAL, "training at its original settings"
    last = max(i for i, e in enumerate(events) if e["event"] == "nudge_refused")
    assert {(e["lr"], e["momentum"]) for e in events[last:] if e["event"] == "epoch_end"} == {(0.01, 0.9)}
    states = order_states(run)
    for order in orders:
        assert states[order]["state"] == "refused" and states[order]["refusable_until"] is None
        assert "training diverged" in states[order]["detail"] and "lr=0.01" in states[order]["detail"]
    assert status(run)["finished"]["states"] == {"completed": 1}
    assert status(run)["control"]["last_change"]["what"] == "lr=1e+308 refused: back to before it"


POISON = """
from pathlib import Path

from runner import hookimpl
from runner.plugins.backends.numpy_mlp import NumpyBackend

POISON = Path({path!r})


class Poisoned(NumpyBackend):
    \"\"\"The NumPy backend; the step after the file POISON appears reports a NaN loss (once).\"\"\"

    name = "numpy-poison"

    def train_step(self):
        loss = super().train_step()
        if POISON.exists():
            POISON.unlink()
            return float("nan")
        return loss


@hookimpl
def runner_register(registry):
    registry.add_backend(Poisoned)
"""


def test_a_divergence_after_a_persons_nudge_was_kept_gets_the_lr_cut_and_counts(live, tmp_path):  # noqa: F811
    poison = tmp_path / "poison"
    backend = tmp_path / "poisoned.py"
    backend.write_text(POISON.format(path=str(poison)))
    changes = {"backend": {"name": "numpy-poison"}, "divergence": {"max_rollbacks": 1}}
    run = start(live, tmp_path, changes, "--plugin", str(backend))
    order = save(run, {"lr": 0.03})
    kept = run.until(lambda: run.find("nudge_kept", order=order))[0]
    nudge = run.find("nudge", order=order)[0]
    assert kept["nudge_step"] == nudge["step"] and kept["step"] == nudge["step"] + GRACE
    assert order_states(run)[order]["state"] == "applied"

    poison.touch()  # far from any nudge: the policy answers, and it counts
    cut = run.until(lambda: run.find("rollback", source="divergence"))[0]
    assert cut["lr_before"] == 0.03 and cut["lr_after"] == 0.03 * 0.5 and cut["reshuffled"] is True
    poison.touch()  # the second divergence is one more than max_rollbacks allows
    assert run.process.wait(timeout=60) == 0
    result = run.find("trial_complete")[0]
    assert result["state"] == "diverged" and result["reason"].endswith("after 1 rollback")
    assert not run.find("nudge_refused") and order_states(run)[order]["state"] == "applied"


def test_with_the_process_executor_runner_nudge_reports_the_refusal_and_exits_1(live, tmp_path):  # noqa: F811
    run = start(live, tmp_path, {"executor": {"name": "process", "workers": 1, "threads": 1}})
    done = runner("nudge", run.run_dir, "lr=1e308", "momentum=0.999")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "t000: refused: training diverged" in done.stderr and "lr=0.01 momentum=0.9" in done.stderr
    order = save(run, {"lr": 1e3})
    run.until(lambda: run.find("nudge_refused", order=order))
    fine = runner("nudge", run.run_dir, "lr=0.02")  # a sane nudge is kept, and said to be applied
    assert fine.returncode == 0 and "lr=0.02 applied at step" in fine.stdout, fine.stderr
    assert finish(run) == 0
    events = run.events()
    first = run.find("nudge_refused")[0]["order"]
    assert_refused_and_undone(events, first, {"lr": 1e308, "momentum": 0.999})
    assert_refused_and_undone(events, order, {"lr": 1e3})
    assert [e["order"] for e in events if e["event"] == "nudge_refused"] == [first, order]
    assert not run.find("rollback", source="divergence")
    assert run.find("trial_complete")[0]["state"] == "completed"
    assert run.find("trial_complete")[0]["final"]["lr"] == 0.02
    states = order_states(run)
    assert states[first]["state"] == states[order]["state"] == "refused"


def test_a_nudge_on_trial_when_the_run_stopped_is_refused_after_resume_and_none_twice(live, tmp_path):  # noqa: F811
    run = start(live, tmp_path)
    before = save(run, {"lr": 1e3})  # refused before the run stops: not again after
    run.until(lambda: run.find("nudge_refused", order=before))
    run.act(1, "pause")
    paused = save(run, {"lr": 1e308})  # applied while paused: on trial, not one step trained
    run.until(lambda: run.find("nudge", order=paused))
    run.process.send_signal(signal.SIGTERM)
    assert run.process.wait(timeout=60) == 130
    run.process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runner",
            "resume",
            run.run_dir,
            "--plain",
            "--plugin",
            tmp_path / "finish_when_told.py",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run.until(lambda: run.find("nudge_refused", order=paused))  # the resumed trial goes on, unpaused
    after = save(run, {"lr": 1e4})
    run.until(lambda: run.find("nudge_refused", order=after))
    assert finish(run) == 0

    events = run.events()
    resumed = next(i for i, e in enumerate(events) if e["event"] == "resume")
    for order, asked in ((before, {"lr": 1e3}), (paused, {"lr": 1e308}), (after, {"lr": 1e4})):
        assert len(run.find("nudge", order=order)) == 1, "carried out once: not again after the resume"
        refusal = assert_refused_and_undone(events, order, asked)
        assert (events.index(refusal) > resumed) == (order != before)
    assert not run.find("rollback", source="divergence")
    assert run.find("trial_complete")[0]["state"] == "completed"
    assert {o: s["state"] for o, s in order_states(run).items() if o in (before, paused, after)} == dict.fromkeys(
        (before, paused, after), "refused"
    )


def test_with_no_grace_steps_a_persons_nudge_is_left_to_the_policy(live, tmp_path):  # noqa: F811
    run = start(live, tmp_path, {"divergence": {"nudge_grace_steps": 0}})
    order = save(run, {"lr": 1e308})
    cut = run.until(lambda: run.find("rollback", source="divergence"))[0]
    assert cut["lr_after"] == ORIGINAL["lr"] * 0.5, "back before the nudge, and the lr cut: what a refusal spares"
    assert "refusable_until" not in run.find("nudge", order=order)[0]
    assert not run.find("nudge_refused")


def nudge_event(order: str, step: int, lr: float, **fields) -> dict:
    change = {"lr": {"old": 0.01, "new": lr}}
    event = {"t": 2.0, "event": "nudge", "trial": 0, "epoch": 1, "step": step, "source": "control", "changes": change}
    return {**event, "order": order, **fields}


def test_status_json_holds_an_order_on_trial_until_training_keeps_refuses_or_moves_on_from_it(tmp_path):
    board = StatusBoard(tmp_path / "status.json", control={"path": "control.json", "settings": ["lr", "momentum"]})
    for event in (
        {"t": 1.0, "event": "experiment_start", "name": "x", "metric": "val_acc", "mode": "max", "planned_trials": 1},
        {"t": 1.1, "event": "trial_start", "trial": 0, "params": {}, "hyperparameters": ORIGINAL},
        {
            "t": 1.2,
            "event": "control",
            "read": 1,
            "sha256": "a",
            "orders": [{"order": f"1.{n}", "trial": 0, "what": f"lr={n}", "action": None} for n in range(5)],
        },
    ):
        board.observe(event)

    def order(n: int) -> dict:
        return next(o for o in board.doc["control"]["recent"][0]["orders"] if o["order"] == f"1.{n}")

    board.observe(nudge_event("1.0", 10, 1e3, refusable_until=30))
    assert order(0)["state"] == "applied" and order(0)["refusable_until"] == 30
    read = board.doc["control"]["recent"][0]
    assert awaiting_verdict(read, board.doc), "runner nudge waits for the verdict"
    board.doc["trials"]["0"]["state"] = "paused"
    assert not awaiting_verdict(read, board.doc), "a paused trial gives none: not waited for"
    board.doc["trials"]["0"]["state"] = "running"
    board.observe(
        {"t": 2.1, "event": "nudge_refused", "trial": 0, "order": "1.0", "epoch": 1, "step": 12, "nudge_step": 10}
        | {"asked": {"lr": 1e3}, "restored": {"lr": 0.01}, "reason": "training diverged 2 steps after it (...)"}
    )
    assert order(0)["state"] == "refused" and order(0)["refusable_until"] is None
    assert (
        order(0)["detail"].startswith("training diverged") and board.doc["trials"]["0"]["hyperparameters"] == ORIGINAL
    )

    board.observe(nudge_event("1.1", 14, 0.02, refusable_until=34))
    board.observe(
        {"t": 2.2, "event": "nudge_kept", "trial": 0, "order": "1.1", "epoch": 2, "step": 34, "nudge_step": 14}
    )
    assert order(1)["state"] == "applied" and order(1)["refusable_until"] is None
    board.observe(nudge_event("1.2", 40, 0.03, refusable_until=60))
    board.observe(nudge_event("1.3", 41, 0.04, refusable_until=61))
    assert order(2)["refusable_until"] is None and order(3)["refusable_until"] == 61, "only the latest is on trial"
    rollback = {"t": 2.3, "event": "rollback", "trial": 0, "to_epoch": 2, "to_step": 40, "snapshot": "before_nudge"}
    board.observe(rollback | {"source": "strategy", "rollbacks": 1, "lr_after": 0.03})
    assert order(3)["state"] == "applied" and order(3)["refusable_until"] is None, "a rollback moved on from it"
    board.observe(nudge_event("1.4", 50, 0.05, refusable_until=70))
    board.observe({"t": 2.4, "event": "trial_complete", "trial": 0, "state": "stopped", "params": {}})
    assert order(4)["state"] == "applied" and order(4)["refusable_until"] is None, "the trial ended under it"
    assert [o["state"] for o in board.doc["control"]["recent"][0]["orders"]] == ["refused"] + ["applied"] * 4
    assert board.doc["control"]["recent"][0]["outcome"] == "partly applied"


def status_showing(order: dict, outcome: str, trial_state: str = "running") -> dict:
    read = {"read": 1, "sha256": "a", "outcome": outcome, "orders": [order]}
    return {"run": {"state": "running"}, "trials": {"0": {"state": trial_state}}, "control": {"recent": [read]}}


def test_runner_nudge_waits_for_trainings_verdict_on_a_nudge_on_trial(tmp_path, monkeypatch):
    on_trial = {"order": "1.0", "trial": 0, "what": "lr=1000", "state": "applied", "refusable_until": 30}
    refused = {**on_trial, "state": "refused", "refusable_until": None, "detail": "training diverged"}
    answers = iter([status_showing(on_trial, "applied"), status_showing(refused, "not applied")])
    monkeypatch.setattr(nudge_module, "read_status", lambda run_dir: next(answers))
    monkeypatch.setattr(nudge_module, "run_is_held", lambda run_dir: True)
    assert nudge_module.wait(tmp_path, "a", 0, timeout=60, interval=0)["orders"] == [refused]

    paused = status_showing(on_trial, "applied", trial_state="paused")  # no verdict until it goes on
    monkeypatch.setattr(nudge_module, "read_status", lambda run_dir: paused)
    assert nudge_module.wait(tmp_path, "a", 0, timeout=60, interval=0)["orders"] == [on_trial]
