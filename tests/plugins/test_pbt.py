"""Population-based training: exploit copies the donor's snapshot exactly, explore stays in
the space's bounds, the log holds the whole family tree, and the population is the same
inline, in worker processes and after a kill -9 and a resume, bit for bit."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import numpy as np
import orjson
import pytest

from runner import Continue, Float, Int, Nudge, Rollback, Space, SpecError, TrialResult
from runner.engine.plugin_manager import load_plugins
from runner.engine.snapshot_files import read_snapshot, scan_snapshots
from runner.experiment_file.spec import parse
from runner.experiment_file.typed import build
from runner.history import History
from runner.plugins.strategies.pbt import STEERED, Interval, Pbt, PbtOptions, lineage, perturb
from tests.conftest import deep_update, run_file
from tests.plugins.test_executors import blindfolded, elsewhere, ray_cluster  # noqa: F401  (ray_cluster: a fixture)
from tests.test_resume import EXPERIMENT, assert_same, outcome, resume, start

SPACE = {
    "train.lr": {"low": 0.001, "high": 0.3, "scale": "log"},
    "train.momentum": {"low": 0.5, "high": 0.99, "scale": "log1m"},
}
POPULATION = deep_update(
    EXPERIMENT,
    {
        "name": "pbt",
        "train": {"epochs": 6},
        "checkpoint": {"min_interval": 0, "keep": 50},
        "search": {
            "strategy": {"name": "pbt", "population": 4, "interval": 2, "trials": None},
            "metric": "val_acc",
            "space": SPACE,
        },
    },
)


def strategy(**options) -> Pbt:
    return Pbt(space=Space.parse(SPACE), options=build(PbtOptions, options, "o"), seed=0, metric="val_acc", mode="max")


def standing(trial: int, value: float | None, epochs: int = 2, reason: str = "every 2 epochs") -> TrialResult:
    final = {"val_acc": value, "lr": 0.01 * (trial + 1), "momentum": 0.9}
    return TrialResult(trial, "suspended", {}, final, final, epochs, 0.1, value, reason)


def run(tmp_path, experiment):
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "exp.json"
    path.write_bytes(orjson.dumps(experiment))
    return run_file(path, tmp_path)


@pytest.fixture(scope="module")
def inline(tmp_path_factory):
    return run(tmp_path_factory.mktemp("pbt-inline"), POPULATION)


# -- the rules ---------------------------------------------------------------------------------


def test_perturbing_moves_each_kind_of_setting_in_its_scale_and_never_out_of_bounds():
    lr, momentum = Float("train.lr", 0.001, 0.3, "log"), Float("train.momentum", 0.5, 0.99, "log1m")
    assert perturb(lr, 0.01, 1.2) == pytest.approx(0.012) and perturb(lr, 0.29, 1.2) == 0.3
    assert perturb(momentum, 0.9, 1.2) == pytest.approx(0.88) and perturb(momentum, 0.9, 0.5) == pytest.approx(0.95)
    assert perturb(momentum, 0.98, 0.1) == 0.99 and perturb(Int("train.x", 1, 9), 8, 1.3) == 9
    rng = np.random.default_rng(0)
    pbt = strategy(factors=[0.5, 0.8, 1.2, 2.0], resample=0.3)
    for _ in range(2000):
        donor = {"lr": float(rng.uniform(0.001, 0.3)), "momentum": float(rng.uniform(0.5, 0.99))}
        explored = pbt.explore(donor, rng)
        assert 0.001 <= explored["lr"] <= 0.3 and 0.5 <= explored["momentum"] <= 0.99, explored


def test_the_bottom_quantile_exploits_the_top_and_a_steered_member_is_left_alone():
    pbt = strategy(population=8, quantile=0.25)
    values = [0.5, 0.9, None, 0.7, 0.8, 0.1, 0.6, 0.95]
    plan = pbt.plan(2, {t: standing(t, v) for t, v in enumerate(values)})
    # 8 members, 2 each: bottom t005 (0.1) and t002 (no value, last); top t007 (0.95) and t001 (0.9)
    assert sorted(plan) == [2, 5]
    for _member, (rollback, nudge) in plan.items():
        assert isinstance(rollback, Rollback) and rollback.to == 2 and rollback.trial in (1, 7)
        assert isinstance(nudge, Nudge) and set(nudge.changes) == {"lr", "momentum"}
    assert pbt.plan(2, {t: standing(t, v) for t, v in enumerate(values)}) == plan, "a function of the standings"
    steered = {t: standing(t, v, reason=STEERED if t == 5 else "") for t, v in enumerate(values)}
    assert sorted(strategy(population=8, quantile=0.25).plan(2, steered)) == [2]
    [note] = [n for n in pbt.notes if n["kind"] == "generation"]
    assert note["ranking"][0] == [7, 0.95] and note["ranking"][-1] == [2, None]


def test_members_wait_for_each_other_and_exploiters_go_on_first():
    pbt = strategy(population=3, quantile=0.34)
    history = History()
    for t in range(3):
        history.add(t, {})
    history.suspend(standing(0, 0.9))
    assert pbt.ask(history) is None, "two members have not reached epoch 2"
    history.suspend(standing(2, 0.1))
    history.suspend(standing(1, 0.5))
    first = pbt.ask(history)
    assert isinstance(first, Continue) and first.trial == 2 and first.decisions[0].trial == 0
    history.continue_trial(2)
    second = pbt.ask(history)
    assert second == Continue(0, (), reason="interval at epoch 2"), "then the others, no orders"


def test_a_members_babysitter_suspends_it_every_interval_and_remembers_a_person():
    sitter = Interval(2, 6)
    assert [sitter.epoch_end(None, e, {}) is not None for e in range(6)] == [False, True, False, True, False, False]
    sitter.nudge_applied(None, {"lr": {}}, "strategy")
    assert sitter.epoch_end(None, 1, {}).reason == "every 2 epochs"
    sitter.nudge_applied(None, {"lr": {}}, "control")
    assert sitter.epoch_end(None, 1, {}).reason == STEERED
    restored = Interval(2, 6)
    restored.load_state(sitter.state())
    assert restored.steered


def test_the_space_must_hold_live_settings_only(plugins):
    def refused(changes) -> str:
        with pytest.raises(SpecError) as err:
            parse(deep_update(POPULATION, changes), plugins.registry)
        return str(err.value)

    assert refused({"search": {"space": {"model.hidden": {"choices": [[8], [16]]}}}}).startswith(
        "search.space.model.hidden: population-based training searches live settings only"
    )
    assert refused({"search": {"strategy": {"factors": [0.8, -1]}}}).startswith("search.strategy.factors:")


# -- a whole run --------------------------------------------------------------------------------


def test_exploit_copies_the_donors_snapshot_exactly(inline):
    exploits = [e for e in inline.events if e["event"] == "rollback" and e.get("donor") is not None]
    assert len(exploits) == 2, "one member of four at each of the two intervals"
    for exploit in exploits:
        donor, _ = read_snapshot(inline.run_dir / exploit["donor_snapshot"])
        folder = inline.run_dir / "trials" / f"t{exploit['trial']:03d}"
        [(path, meta)] = [
            (p, m) for p, m in scan_snapshots(folder) if m["reason"] == "exploit" and m["epoch"] == exploit["to_epoch"]
        ]
        taken, _ = read_snapshot(path)
        assert taken.arrays.keys() == donor.arrays.keys()
        for name, array in donor.arrays.items():
            assert np.array_equal(array, taken.arrays[name]), name
        assert meta["hyperparameters"] == {k: v["new"] for k, v in exploit["changes"].items()}


def test_explore_keeps_every_setting_within_the_space(inline):
    nudges = [e for e in inline.events if e["event"] == "nudge" and e["source"] == "strategy"]
    assert len(nudges) == 2
    for nudge in nudges:
        for name, change in nudge["changes"].items():
            bound = SPACE[f"train.{name}"]
            assert bound["low"] <= change["new"] <= bound["high"]


def test_the_lineage_events_give_the_whole_family_tree(inline):
    events = inline.events
    notes = [e for e in events if e["event"] == "note" and e.get("kind") == "generation"]
    assert [n["at_epoch"] for n in notes] == [2, 4]
    tree = lineage(events)
    assert tree == {
        member: [(note["at_epoch"], donor) for note in notes for m, donor in note["exploits"] if m == member]
        for member in {m for note in notes for m, _ in note["exploits"]}
    }
    for note in notes:
        ranked = [t for t, _ in note["ranking"]]
        for member, donor in note["exploits"]:
            assert member == ranked[-1] and donor == ranked[0], "the worst member of four takes the best one's"
    # every member is suspended at each interval and goes on once; the exploiter first
    for epoch in (2, 4):
        went_on = [e["trial"] for e in events if e["event"] == "trial_continue" and e["epoch"] == epoch]
        assert sorted(went_on) == [0, 1, 2, 3]
        assert went_on[0] == next(n for n in notes if n["at_epoch"] == epoch)["exploits"][0][0]
    assert {r.state for r in inline.board} == {"completed"} and {r.epochs for r in inline.board} == {6}


@pytest.fixture(params=["process", "ray", "ray-storage-driver"])
def two_workers(request) -> dict:
    """Two workers; on Ray, with the actors' snapshot files on the shared disk, or (so that an
    exploit takes the donor's file through the driver) kept by the driver."""
    section = elsewhere(request, 2)
    return {**section, "storage": "driver"} if request.param == "ray-storage-driver" else section


def test_the_population_is_the_same_in_worker_processes_and_on_ray(tmp_path, inline, two_workers, monkeypatch):
    experiment = deep_update(POPULATION, {"executor": two_workers})
    if two_workers.get("storage") == "driver":  # actors where the run directory is not: exploits go through the driver
        monkeypatch.setenv("RUNNER_TEST_DRIVER", "1")
        monkeypatch.chdir(tmp_path)
        (tmp_path / "exp.json").write_bytes(orjson.dumps(experiment))
        elsewhere = run_file(Path("exp.json"), Path("."), [str(blindfolded(tmp_path))])
        assert list((tmp_path / "actors").iterdir()) == [] and not elsewhere.run_dir.is_absolute()
    else:
        elsewhere = run(tmp_path, experiment)
    assert_same(outcome(elsewhere.run_dir), outcome(inline.run_dir), epochs=6)
    assert lineage(elsewhere.events) == lineage(inline.events)


@pytest.mark.parametrize("kill", ["trial_end:1", "step:20", "step:33"])
def test_sigkill_then_resume_gives_the_same_population_bit_for_bit(tmp_path, inline, kill):
    proc, run_dir = start(tmp_path, "killed", POPULATION, kill=kill)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    resumed, _ = resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_same(outcome(run_dir), outcome(inline.run_dir), epochs=6)
    events = [orjson.loads(line) for line in (run_dir / "events.jsonl").read_bytes().splitlines()]
    assert lineage(events) == lineage(inline.events)
    for trial in range(4):
        assert [e["event"] for e in events if e.get("trial") == trial].count("trial_complete") == 1


def test_values_without_a_score_rank_last():
    pbt = strategy()
    assert pbt._rank(standing(0, None)) > pbt._rank(standing(1, 0.0)) and math.isfinite(pbt._rank(standing(1, 0.3))[1])
    assert load_plugins().registry.get("strategy", "pbt") is Pbt


def test_a_persons_nudge_to_a_member_wins_over_exploit_and_explore(tmp_path):
    from tests.test_control_live import LiveRun

    changes = {
        "search": {
            "strategy": {"name": "pbt", "population": 2, "interval": 2, "quantile": 0.5},
            "metric": "val_acc",
            "space": {"train.lr": {"low": 0.001, "high": 0.3, "scale": "log"}},
        }
    }
    run = LiveRun(tmp_path, changes)
    try:
        nudge = run.act(1, "set", lr=0.0123)  # whichever member is training now
        member = nudge["trial"]
        run.until(lambda: len([e for e in run.find("trial_suspend", trial=member) if e["step"] > nudge["step"]]) >= 3)
        # (read while no member trains, the order waits for the next to start: it may follow that member's exploit)
        assert run.stop() == 0
    finally:
        run.kill()
    events = run.events()
    at = next(i for i, e in enumerate(events) if e.get("order") == nudge["order"] and e["event"] == "nudge")
    after = [e for e in events[at + 1 :] if e.get("trial") == member]
    assert {e["reason"] for e in after if e["event"] == "trial_suspend"} == {STEERED}
    assert not [e for e in after if e["event"] == "rollback" and e.get("donor") is not None], "never made to exploit"
    assert not [e for e in after if e["event"] == "nudge" and e["source"] == "strategy"], "never made to explore"
    assert [e["lr"] for e in after if e["event"] == "epoch_end"][-1] == 0.0123
    other = 1 - member
    assert [e for e in events if e["event"] == "note" and e.get("kind") == "generation"], "the population went on"
    assert all(e["trial"] == other for e in events[at:] if e["event"] == "rollback" and e.get("donor") is not None)


DIES_SUSPENDED = """
import os, signal
from pathlib import Path
from runner import hookimpl

@hookimpl
def runner_checkpoint_saved(trial, checkpoint):
    marker = Path(os.environ["RUNNER_TEST_MARKER"])
    if checkpoint["reason"] == "suspend" and trial.id == 1 and checkpoint["epoch"] == 2 and not marker.exists():
        marker.write_text("died")  # its worker dies once, after the suspension is logged and saved
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_worker_that_dies_just_after_suspending_its_member_changes_nothing(tmp_path, inline, monkeypatch):
    plugin = tmp_path / "dies.py"
    plugin.write_text(DIES_SUSPENDED)
    monkeypatch.setenv("RUNNER_TEST_MARKER", str(tmp_path / "died"))
    path = tmp_path / "exp.json"
    path.write_bytes(orjson.dumps(deep_update(POPULATION, {"executor": {"name": "process", "workers": 2}})))
    r = run_file(path, tmp_path, [str(plugin)])
    assert (tmp_path / "died").exists()
    assert_same(outcome(r.run_dir), outcome(inline.run_dir), epochs=6)
    assert not [e for e in r.events if e["event"] == "trial_retry"], "a suspended member is not retried"
    assert [e["trial"] for e in r.events if e["event"] == "trial_suspend" and e["epochs"] == 2].count(1) == 1


def test_a_searched_setting_the_backend_cannot_change_while_training_fails_the_member_naming_it():
    from types import SimpleNamespace

    pbt = Pbt(
        space=Space.parse({"train.batch_size": {"choices": [16, 32]}}),
        options=PbtOptions(),
        seed=0,
        metric="val_acc",
        mode="max",
    )
    member = SimpleNamespace(hyperparameters={"lr": 0.1, "momentum": 0.9}, config={"train": {"epochs": 6}})
    with pytest.raises(SpecError, match=r"search.space.train.batch_size: .* live settings only; live: lr, momentum"):
        pbt.babysitter(member)
