"""Pruners: exact verdicts on curves known in advance, the verdict as an order that reaches
trials inline and in worker processes, pruned results that agree with their snapshots, and a
resume after SIGKILL that prunes as the uninterrupted run did."""

from __future__ import annotations

import signal
import textwrap

import numpy as np
import orjson
import pytest

from runner import Curves, Note, Prune, SpecError
from runner.engine.plugin_manager import load_plugins
from runner.engine.snapshot_files import read_snapshot
from runner.errors import RunnerError
from runner.experiment_file.spec import parse
from runner.plugins.pruners.asha import Asha, AshaOptions, rung_epochs
from runner.plugins.pruners.median import MedianOptions, MedianPruner
from runner.report import read_run_view
from runner.report.build import draw_figures
from tests.conftest import deep_update, run_file
from tests.plugins.test_executors import elsewhere, ray_cluster  # noqa: F401  (ray_cluster: a fixture)
from tests.test_resume import EXPERIMENT, outcome, resume, start

# A backend whose val_acc after epoch e is model.curve[e]: every verdict can be worked out by hand.
CURVE_BACKEND = textwrap.dedent('''
    import time
    from dataclasses import dataclass, field

    import numpy as np

    from runner import Backend, BackendState, TrainConfig, bounds, hookimpl


    @dataclass(frozen=True)
    class Model:
        curve: tuple[float, ...] = (0.5,)


    @dataclass(frozen=True)
    class Train(TrainConfig):
        lr: float = field(default=0.1, metadata=bounds(gt=0))
        momentum: float = 0.9
        step_seconds: float = 0.0


    class CurveBackend(Backend):
        """val_acc after epoch e is model.curve[e]; three steps an epoch, each of loss 1."""

        name = "curve"
        Model = Model
        Train = Train

        def __init__(self, *, model, train, options, data, seed):
            self.curve, self.pause = model.curve, train.step_seconds
            self.values = {"lr": train.lr, "momentum": train.momentum}
            self.epoch, self.done = -1, 3

        @property
        def steps_per_epoch(self):
            return 3

        def begin_epoch(self, epoch):
            self.epoch, self.done = epoch, 0

        def train_step(self):
            if self.done >= 3:
                raise RuntimeError("no epoch begun")
            time.sleep(self.pause)
            self.done += 1
            return 1.0

        def evaluate(self, split):
            acc = self.curve[min(self.epoch, len(self.curve) - 1)]
            return {"loss": 1.0 - acc, "acc": acc}

        def hyperparameters(self):
            return dict(self.values)

        def set_hyperparameters(self, **values):
            self.values.update(values)

        def reshuffle(self, salt):
            pass

        def state(self):
            return BackendState({"progress": np.array([self.epoch, self.done])}, dict(self.values))

        def load_state(self, state):
            self.epoch, self.done = (int(v) for v in state.arrays["progress"])
            self.values = dict(state.meta)


    @hookimpl
    def runner_register(registry):
        registry.add_backend(CurveBackend)
''')

# Five trials in grid order, eight epochs; ASHA with η 2 from 1 epoch judges at 1, 2 and 4 epochs.
CURVES = [
    [0.50, 0.55, 0.60, 0.65, 0.70, 0.72, 0.74, 0.75],  # t0: first at every rung: completes
    [0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.80],  # t1: rung 1 of 2, keep 1 (0.50): pruned at 1
    [0.60, 0.62, 0.63, 0.64, 0.80, 0.90, 0.95, 0.99],  # t2: best at 1 and 2; at 4, 0.64 < t0's 0.65: pruned at 4
    [0.45, 0.70, 0.80, 0.85, 0.90, 0.91, 0.92, 0.93],  # t3: rung 1 of 4, keep 2 (0.50): pruned at 1
    [0.55, 0.56, 0.57, 0.58, 0.90, 0.91, 0.92, 0.93],  # t4: ties the cutoff 0.55 at 1; at 2, 0.56 < 0.62: pruned
]
EXPECTED = {0: ("completed", 8), 1: ("pruned", 1), 2: ("pruned", 4), 3: ("pruned", 1), 4: ("pruned", 2)}
PASSED = {0: [1, 2, 4], 2: [1, 2], 4: [1]}  # the rungs each trial went on from


def curve_experiment(pruner: dict, executor: dict | None = None, step_seconds: float = 0.0) -> dict:
    return {
        "name": "curves",
        "data": {"name": "spirals", "classes": 3, "points_per_class": 10},
        "backend": "curve",
        "train": {"epochs": 8, "step_seconds": step_seconds},
        "checkpoint": {"min_interval": 0},
        "search": {
            "strategy": "grid",
            "pruner": pruner,
            "metric": "val_acc",
            "space": {"model.curve": {"choices": CURVES}},
        },
        "executor": executor or {"name": "inline"},
    }


@pytest.fixture
def curve_plugin(tmp_path):
    path = tmp_path / "curve_backend.py"
    path.write_text(CURVE_BACKEND)
    return str(path)


def run_curves(tmp_path, plugin, experiment):
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "curves.json"
    path.write_bytes(orjson.dumps(experiment))
    return run_file(path, tmp_path, [plugin])


def of(events, trial, *kinds):
    return [e for e in events if e.get("trial") == trial and e["event"] in kinds]


# -- the rules, on curves made by hand --------------------------------------------------------


def curves_of(values: dict[int, list[float | None]], mode="max", ended=None) -> Curves:
    curves = Curves("val_acc", mode)
    for trial, curve in values.items():
        for epoch, value in enumerate(curve):
            curves.record(trial, epoch, {"val_acc": value})
    for trial, state in (ended or {}).items():
        curves.end(trial, state)
    return curves


def test_curves_keep_each_epochs_latest_value_and_the_best_over_the_first_epochs():
    curves = curves_of({0: [0.3, 0.5, 0.4]})
    curves.record(0, 1, {"val_acc": float("nan")})  # epoch 1 trained again after a rollback: no value now
    assert curves.curve(0) == [0.3, None, 0.4] and curves.epochs(0) == 3
    assert curves.best(0, 1) == 0.3 and curves.best(0) == 0.4 and curves.best(7) is None
    assert curves_of({0: [0.3, 0.2]}, mode="min").best(0) == 0.2
    assert curves.state(0) == "running" and curves.is_better(0.5, None) and not curves.is_better(None, 0.1)


def test_asha_rungs_are_grace_times_powers_of_eta_below_the_last_epoch():
    assert rung_epochs(AshaOptions(), 100) == (1, 4, 16, 64)
    assert rung_epochs(AshaOptions(grace_epochs=3, reduction_factor=3), 27) == (3, 9)
    assert rung_epochs(AshaOptions(grace_epochs=3, reduction_factor=3, rungs=1), 27) == (3,)
    assert rung_epochs(AshaOptions(grace_epochs=2, reduction_factor=2), 2) == ()


def test_asha_keeps_the_best_n_over_eta_of_the_trials_at_a_rung_itself_included():
    asha = Asha(options=AshaOptions(grace_epochs=2, reduction_factor=3), metric="val_acc", mode="max", epochs=20)
    # six trials at rung 2 (best over the first two epochs): 0.6, 0.5, 0.8, 0.7, 0.4, 0.65; keep 6 // 3 = 2
    curves = curves_of({0: [0.6, 0.1], 1: [0.2, 0.5], 2: [0.8, 0.8], 3: [0.7, 0.7], 4: [0.4, 0.4], 5: [0.3, 0.65]})
    verdict = asha.judge(curves, 3, 1)
    assert verdict == Note(
        "rung",
        "rung 2: val_acc 0.7 is among the best 2 of 6",
        {"rung": 2, "value": 0.7, "cutoff": 0.7, "kept": 2, "reached": 6},
    )
    assert asha.judge(curves, 5, 1) == Prune(
        "rung 2: val_acc 0.65 is worse than 0.7, the cutoff for the best 2 of 6", rung=2
    )
    assert asha.judge(curves, 5, 0) is None, "1 epoch is no rung"
    assert asha.judge(curves_of({0: [0.6, 0.7], 1: [0.9, None]}), 0, 1) == Prune(
        "rung 2: val_acc 0.7 is worse than 0.9, the cutoff for the best 1 of 2", rung=2
    )
    lower = Asha(options=AshaOptions(reduction_factor=2), metric="val_loss", mode="min", epochs=8)
    assert isinstance(lower.judge(curves_of({0: [0.3], 1: [0.2]}, mode="min"), 1, 0), Note), "lower is better"
    assert isinstance(lower.judge(curves_of({0: [0.3], 1: [None]}, mode="min"), 1, 0), Prune), "no finite value"


def test_median_compares_with_the_completed_trials_only_after_warm_up_and_start_up():
    median = MedianPruner(
        options=MedianOptions(startup_trials=2, warmup_epochs=1), metric="val_acc", mode="max", epochs=10
    )
    done = {0: "completed", 1: "completed", 2: "pruned"}
    curves = curves_of({0: [0.5, 0.6, 0.7], 1: [0.3, 0.4, 0.9], 2: [0.9, 0.95], 3: [0.55, 0.45]}, ended=done)
    # at 2 epochs the completed trials' bests are 0.6 and 0.4 (t2 was pruned: not counted): median 0.5
    assert median.judge(curves, 3, 1) is None, "0.55 beats the median 0.5"
    assert median.judge(curves, 3, 0) is None, "within the warm-up"
    worse = curves_of({0: [0.5, 0.6], 1: [0.3, 0.8], 3: [0.1, 0.2]}, ended=done)
    assert median.judge(worse, 3, 1) == Prune(
        "val_acc 0.2 after 2 epochs is worse than the median 0.7 of the 2 completed trials there", rung=2
    )
    early = curves_of({0: [0.5, 0.6], 3: [0.1, 0.2]}, ended={0: "completed"})
    assert median.judge(early, 3, 1) is None, "only one trial has completed"


# -- whole runs --------------------------------------------------------------------------------


def test_asha_prunes_exactly_the_trials_the_rules_say_at_their_rungs(tmp_path, curve_plugin):
    pruner = {"name": "asha", "grace_epochs": 1, "reduction_factor": 2}
    r = run_curves(tmp_path, curve_plugin, curve_experiment(pruner))
    results = {x.trial: (x.state, x.epochs) for x in r.board}
    assert results == EXPECTED
    for trial, (state, epochs) in EXPECTED.items():
        passed = [e["rung"] for e in of(r.events, trial, "note") if e["kind"] == "rung" and e["source"] == "pruner"]
        assert passed == PASSED.get(trial, []), trial
        prunes = of(r.events, trial, "prune")
        if state == "completed":
            assert prunes == []
            continue
        [prune] = prunes
        # inline, the verdict lands at the very next step: the epoch judged is the trial's last
        assert (prune["rung"], prune["epoch"], prune["step"], prune["source"]) == (epochs, epochs, 3 * epochs, "pruner")
        assert prune["order"].startswith(f"pruner.{trial}.") and "rung" in prune["reason"]
        [complete] = of(r.events, trial, "trial_complete")
        assert complete["reason"] == prune["reason"]
        assert complete["final"]["val_acc"] == CURVES[trial][epochs - 1]
    again = run_curves(tmp_path / "again", curve_plugin, curve_experiment(pruner))
    assert {x.trial: (x.state, x.epochs) for x in again.board} == results, "inline, a run prunes the same every time"


def test_the_report_draws_every_curve_and_counts_the_epochs_pruning_saved(tmp_path, curve_plugin):
    r = run_curves(tmp_path, curve_plugin, curve_experiment({"name": "asha", "reduction_factor": 2}))
    figures, problems = draw_figures(read_run_view(r.run_dir), None)
    [pruning] = [f for f in figures if f.name == "pruning"]
    assert problems == []
    assert pruning.caption == (
        "4 of 5 trials were pruned; the trials trained 16 epochs in all, of the 40 they would have "
        "trained without pruning (40%)."
    )
    [ax] = pruning.figure.axes
    crosses = [line for line in ax.lines if line.get_marker() == "x"]
    assert sorted(int(c.get_xdata()[0]) for c in crosses) == [1, 1, 2, 4], "a cross where each pruned curve ends"
    assert sorted(int(line.get_xdata()[0]) for line in ax.lines if line.get_linestyle() == ":") == [1, 2, 4]


def test_the_median_pruner_on_the_same_curves(tmp_path, curve_plugin):
    r = run_curves(tmp_path, curve_plugin, curve_experiment({"name": "median", "startup_trials": 1}))
    # t0 completes; then each trial is pruned at its first epoch whose best so far is worse than
    # t0's best there: t1 at 1 (0.40 < 0.50), t2 at 4 (0.64 < 0.65), t3 at 1 (0.45 < 0.50), t4 at
    # 3 (0.57 < 0.60, though it had led t0 at 1 and 2)
    assert {x.trial: (x.state, x.epochs) for x in r.board} == {
        0: ("completed", 8),
        1: ("pruned", 1),
        2: ("pruned", 4),
        3: ("pruned", 1),
        4: ("pruned", 3),
    }
    assert not [e for e in r.events if e["event"] == "note"], "the median pruner logs only its prunes"


@pytest.fixture(params=["process", "ray"])
def one_worker(request) -> dict:
    """An executor that runs trials outside the driver, one at a time (so verdicts are as inline)."""
    return elsewhere(request, 1)


def test_pruning_orders_reach_trials_in_workers_and_results_agree_with_snapshots(tmp_path, curve_plugin, one_worker):
    pruner = {"name": "asha", "grace_epochs": 1, "reduction_factor": 2}
    experiment = curve_experiment(pruner, one_worker, step_seconds=0.01)
    r = run_curves(tmp_path, curve_plugin, experiment)
    states = {x.trial: x.state for x in r.board}
    assert states == {t: s for t, (s, _) in EXPECTED.items()}, "one worker: trials in order, the same verdicts"
    for result in r.board:
        if result.state != "pruned":
            continue
        [prune] = of(r.events, result.trial, "prune")
        assert prune["source"] == "pruner" and prune["rung"] == EXPECTED[result.trial][1]
        # the order travels to the worker and lands at a step boundary there, at the rung or a little after
        assert prune["epoch"] >= prune["rung"] and result.epochs == prune["epoch"]
        newest = max(
            (r.run_dir / "trials" / f"t{result.trial:03d}").glob("*.safetensors"),
            key=lambda p: read_snapshot(p)[1]["loop"]["events"],
        )
        _, meta = read_snapshot(newest)
        assert meta["epoch"] == result.epochs, "the newest snapshot is of the epoch the result reports"
        assert {k: v for k, v in meta["metrics"].items() if k != "seconds"} == {
            k: v for k, v in result.final.items() if k != "seconds"
        }
        assert result.final["val_acc"] == CURVES[result.trial][result.epochs - 1]


# -- resume -----------------------------------------------------------------------------------

PRUNED_RUN = deep_update(
    EXPERIMENT,
    {
        "name": "pruned-resumable",
        "train": {"epochs": 6},
        "search": {
            "strategy": {"name": "random", "trials": 5},
            "pruner": {"name": "asha", "grace_epochs": 1, "reduction_factor": 2},
            "space": {"train.lr": {"low": 0.0003, "high": 0.3, "scale": "log"}},
        },
    },
)

# SIGKILL while a pruning verdict is on its way, for trial T that was pruned at rung R:
# "epoch_end:T:R" right after the rung's epoch ends (the verdict is in the trial's mailbox, the
# epoch's snapshot not yet taken: the resumed run trains that epoch again and judges it anew);
# "saved:T:R" once the rung's snapshot is saved, which the trial reports after it carried out
# the verdict (the resumed run goes on from that snapshot, the verdict's event lost: it is owed).
KILL_AT = textwrap.dedent("""
    import os, signal
    from runner import hookimpl

    where, trial_id, rung = (os.environ.get("RUNNER_TEST_PRUNE_KILL") or "none:-1:-1").split(":")

    def kill_if(now, trial, epochs):
        if now == where and trial.id == int(trial_id) and epochs == int(rung):
            os.kill(os.getpid(), signal.SIGKILL)

    @hookimpl
    def runner_epoch_end(trial, epoch):
        kill_if("epoch_end", trial, epoch + 1)

    @hookimpl
    def runner_checkpoint_saved(trial, checkpoint):
        kill_if("saved", trial, checkpoint["epoch"])
""")


@pytest.fixture(scope="module")
def pruned_uninterrupted(tmp_path_factory):
    proc, run_dir = start(tmp_path_factory.mktemp("pruned-baseline"), "baseline", PRUNED_RUN)
    assert proc.returncode == 0, proc.stderr
    events = [orjson.loads(line) for line in (run_dir / "events.jsonl").read_bytes().splitlines()]
    return outcome_of(run_dir), events


def outcome_of(run_dir):
    """Every trial's result and final arrays (a pruned trial's end before its last epoch)."""
    found = outcome(run_dir)
    return found["trials"], {t: (epoch, arrays) for t, (epoch, arrays) in found["finals"].items()}


def assert_same_outcome(a, b):
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys()
    for trial, (epoch, arrays) in a[1].items():
        assert epoch == b[1][trial][0]
        for name, array in arrays.items():
            assert np.array_equal(array, b[1][trial][1][name]), (trial, name)


def test_the_baseline_prunes_some_trials_at_rungs(pruned_uninterrupted):
    trials, _ = pruned_uninterrupted[0]
    states = [t[0] for t in trials.values()]
    assert "pruned" in states and "completed" in states


@pytest.mark.parametrize("kill", ["epoch_end", "saved", "trial_end:1", "step:20"])
def test_sigkill_then_resume_prunes_as_the_uninterrupted_run(tmp_path, pruned_uninterrupted, kill):
    baseline, base_events = pruned_uninterrupted
    if kill in ("epoch_end", "saved"):
        prune = next(e for e in base_events if e["event"] == "prune")
        plugin = tmp_path / "kill_at.py"
        plugin.write_text(KILL_AT)
        at = f"{kill}:{prune['trial']}:{prune['rung']}"
        proc, run_dir = start(tmp_path, "killed", PRUNED_RUN, plugins=[plugin], env={"RUNNER_TEST_PRUNE_KILL": at})
    else:
        proc, run_dir = start(tmp_path, "killed", PRUNED_RUN, kill=kill)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    resumed, _ = resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_outcome(outcome_of(run_dir), baseline)
    events = [orjson.loads(line) for line in (run_dir / "events.jsonl").read_bytes().splitlines()]
    for trial in baseline[0]:
        assert len(of(events, trial, "trial_complete")) == 1
        assert len(of(events, trial, "prune")) == len(of(base_events, trial, "prune")), trial


# -- bad input and bad pruners ----------------------------------------------------------------


def test_the_pruner_section_is_checked_before_anything_runs(plugins):
    base = deep_update(EXPERIMENT, {"train": {"epochs": 4}})

    def refused(pruner) -> str:
        with pytest.raises(SpecError) as err:
            parse(deep_update(base, {"search": {"pruner": pruner}}), plugins.registry)
        return str(err.value)

    assert refused({"name": "ashaa"}).startswith('search.pruner.name: unknown pruner "ashaa" (did you mean "asha"?)')
    assert refused({"name": "asha", "grace_epochs": 4}).startswith(
        "search.pruner.grace_epochs: must be below train.epochs (4)"
    )
    assert refused({"name": "asha", "reduction_factor": 1}).startswith("search.pruner.reduction_factor:")
    assert refused({"name": "median", "patience": 1}).startswith("search.pruner.patience: unknown key")
    spec = parse(deep_update(base, {"search": {"pruner": "median"}}), plugins.registry)
    assert spec.search.pruner.name == "median" and spec.search.pruner.options == MedianOptions()
    assert parse(base, plugins.registry).search.pruner is None


BROKEN_PRUNER = textwrap.dedent("""
    from runner import Pruner, hookimpl

    class Broken(Pruner):
        name = "broken"

        def judge(self, curves, trial, epoch):
            if trial == 1:
                raise ZeroDivisionError("a bug")

    @hookimpl
    def runner_register(registry):
        registry.add_pruner(Broken)
""")


def test_a_pruner_that_raises_ends_the_run_naming_it(tmp_path, write_experiment):
    plugin = tmp_path / "broken.py"
    plugin.write_text(BROKEN_PRUNER)
    path = write_experiment({"search": {"pruner": "broken", "strategy": {"name": "random", "trials": 3}}})
    with pytest.raises(RunnerError, match=r"pruner 'broken' failed on trial 1, epoch 0: ZeroDivisionError: a bug"):
        run_file(path, tmp_path, [str(plugin)])


def test_a_third_party_pruner_registers_like_the_built_ins(tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text(BROKEN_PRUNER)
    assert "broken" in load_plugins([str(plugin)]).registry.names("pruner")
