"""The plugin contract: the exact order of hook calls in a real run, decisions from hooks,
and a meta-test that every hook is documented and exercised here."""

from __future__ import annotations

import textwrap

import orjson

from runner import hookspecs
from tests.conftest import ROOT, run_file

RECORDER = textwrap.dedent(
    '''
    """Records every hook call; nudges trial 1 after its first epoch."""
    from runner import Nudge, hookimpl

    CALLS = []

    @hookimpl
    def runner_register(registry):
        CALLS.append(("runner_register",))

    @hookimpl
    def runner_experiment_start(experiment):
        CALLS.append(("runner_experiment_start", experiment.planned_trials))

    @hookimpl
    def runner_trial_start(trial):
        CALLS.append(("runner_trial_start", trial.id))

    @hookimpl
    def runner_epoch_end(trial, epoch, metrics):
        CALLS.append(("runner_epoch_end", trial.id, epoch))
        if trial.id == 1 and epoch == 0:
            return Nudge(lr=0.005, reason="test")

    @hookimpl
    def runner_nudge_applied(trial, change, source):
        CALLS.append(("runner_nudge_applied", trial.id, change["lr"]["new"], source))

    @hookimpl
    def runner_checkpoint_saved(trial, checkpoint):
        CALLS.append(("runner_checkpoint_saved", trial.id, checkpoint["epoch"]))

    @hookimpl
    def runner_divergence(trial, event):
        CALLS.append(("runner_divergence", trial.id))

    @hookimpl
    def runner_trial_complete(trial, result):
        CALLS.append(("runner_trial_complete", trial.id, result.state))

    @hookimpl
    def runner_experiment_complete(experiment, results):
        CALLS.append(("runner_experiment_complete", [r.trial for r in results]))

    @hookimpl
    def runner_event(experiment, event, replayed):
        if event["event"] == "experiment_complete":  # (one call of many: the run's last event)
            CALLS.append(("runner_event", event["event"], replayed))

    @hookimpl
    def runner_report_figures(run):
        CALLS.append(("runner_report_figures", [t.id for t in run.trials]))
    '''
)


def run(path, tmp_path, extra=()):
    r = run_file(path, tmp_path, extra)
    return r.board, r.events, r.run_dir


def recorder(tmp_path):
    path = tmp_path / "recorder.py"
    path.write_text(RECORDER)
    return str(path)


def test_exact_hook_order_for_two_trials_of_two_epochs(write_experiment, tmp_path):
    board, events, _ = run(write_experiment(), tmp_path, [recorder(tmp_path)])
    import sys

    recorded = sys.modules["runner_plugin_recorder"].CALLS
    # runner_event runs on a thread of its own: it is in no fixed order with the other hooks
    assert [c for c in recorded if c[0] == "runner_event"] == [("runner_event", "experiment_complete", False)]
    calls = [c for c in recorded if c[0] != "runner_event"]
    best_first = [r.trial for r in board]
    assert calls == [
        ("runner_register",),
        ("runner_experiment_start", 2),
        ("runner_trial_start", 0),
        ("runner_epoch_end", 0, 0),
        ("runner_epoch_end", 0, 1),
        ("runner_checkpoint_saved", 0, 1),  # a snapshot is reported before the next one is taken
        ("runner_checkpoint_saved", 0, 2),  # and the last one before the trial completes
        ("runner_trial_complete", 0, "completed"),
        ("runner_trial_start", 1),
        ("runner_epoch_end", 1, 0),
        ("runner_nudge_applied", 1, 0.005, "plugin"),
        ("runner_epoch_end", 1, 1),
        ("runner_checkpoint_saved", 1, 1),
        ("runner_checkpoint_saved", 1, 2),
        ("runner_trial_complete", 1, "completed"),
        ("runner_experiment_complete", best_first),
    ]
    # The event log says the same, and the nudge is in force from the next epoch on.
    kinds = [(e["event"], e.get("trial")) for e in events]
    assert kinds == [
        ("experiment_start", None),
        ("trial_queued", None),  # the driver's: it names the trial as "queued"
        ("trial_start", 0),
        ("epoch_end", 0),
        ("epoch_end", 0),
        ("checkpoint", 0),
        ("checkpoint", 0),
        ("trial_complete", 0),
        ("trial_queued", None),
        ("trial_start", 1),
        ("epoch_end", 1),
        ("nudge", 1),
        ("epoch_end", 1),
        ("checkpoint", 1),
        ("checkpoint", 1),
        ("trial_complete", 1),
        ("experiment_complete", None),
    ]
    epochs_of_1 = [e for e in events if e["event"] == "epoch_end" and e["trial"] == 1]
    assert epochs_of_1[0]["lr"] == 0.01 and epochs_of_1[1]["lr"] == 0.005
    nudge = next(e for e in events if e["event"] == "nudge")
    assert nudge["changes"] == {"lr": {"old": 0.01, "new": 0.005}} and nudge["reason"] == "test"


DIVERGING = {
    "model": {"hidden": [16], "batch_norm": False},
    "train": {"optimizer": "gd", "lr": 1e6, "epochs": 3},
    "search": {"strategy": {"name": "grid"}, "space": None},
}


def test_a_non_finite_loss_calls_runner_divergence_and_ends_the_trial_as_diverged(write_experiment, tmp_path):
    board, events, _ = run(write_experiment(DIVERGING), tmp_path, [recorder(tmp_path)])
    import sys

    calls = sys.modules["runner_plugin_recorder"].CALLS
    assert ("runner_divergence", 0) in calls
    assert board[0].state == "diverged" and board[0].reason.endswith("after 3 rollbacks")
    assert board[0].reason.startswith("non_finite_loss at step ")
    divergence = next(e for e in events if e["event"] == "divergence")
    assert divergence["kind"] == "non_finite_loss" and divergence["lr"] == 1e6


def test_a_divergence_policy_plugin_decides_the_outcome(write_experiment, tmp_path):
    policy = tmp_path / "policy.py"
    policy.write_text(
        textwrap.dedent("""
        from runner import Prune, hookimpl

        @hookimpl
        def runner_divergence(trial, event):
            return Prune(f"pruned at step {event.step}")
    """)
    )
    board, _, _ = run(write_experiment(DIVERGING), tmp_path, [str(policy)])
    assert board[0].state == "pruned" and board[0].reason.startswith("pruned at step ")


def test_stop_and_prune_decisions_end_trials_in_their_state(write_experiment, tmp_path):
    plugin = tmp_path / "deciders.py"
    plugin.write_text(
        textwrap.dedent("""
        from runner import Prune, Stop, hookimpl

        @hookimpl
        def runner_epoch_end(trial, epoch):
            if trial.id == 0 and epoch == 0:
                return Prune("not promising")
            if trial.id == 1 and epoch == 0:
                return [Stop("enough", experiment=True)]
    """)
    )
    changes = {"train": {"epochs": 3}, "search": {"strategy": {"name": "random", "trials": 5}, "space": None}}
    board, events, run_dir = run(write_experiment(changes), tmp_path, [str(plugin)])
    states = {r.trial: (r.state, r.epochs, r.reason) for r in board}
    assert states == {0: ("pruned", 1, "not promising"), 1: ("stopped", 1, "enough")}, "no trial after the stop"
    assert events[-1]["event"] == "experiment_complete" and events[-1]["stopped_early"] is True
    results = orjson.loads((run_dir / "results.json").read_bytes())
    assert results["counts"] == {"pruned": 1, "stopped": 1}


def test_a_bad_nudge_from_a_plugin_fails_the_trial_with_a_clear_reason(write_experiment, tmp_path):
    plugin = tmp_path / "badnudge.py"
    plugin.write_text(
        textwrap.dedent("""
        from runner import Nudge, hookimpl

        @hookimpl
        def runner_epoch_end(trial):
            return Nudge(lr=-1.0)
    """)
    )
    board, events, _ = run(write_experiment({"search": {"space": None}}), tmp_path, [str(plugin)])
    assert board[0].state == "failed"
    assert board[0].reason == "SpecError: nudge.lr: must be > 0, got -1.0"
    assert "Traceback" in next(e for e in events if e["event"] == "trial_complete")["traceback"]


def test_third_party_plugin_adds_a_strategy_and_a_hook_that_changes_the_run(write_experiment, tmp_path):
    """A plugin from a user's file: a new strategy, and a hook that halves lr after epoch 0."""
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(
        textwrap.dedent('''
        from dataclasses import dataclass, field
        from runner import Nudge, Strategy, bounds, hookimpl

        @dataclass(frozen=True)
        class Options:
            lrs: tuple[float, ...] = field(default=(0.1, 0.01), metadata=bounds(doc="learning rates to try"))

        class LrList(Strategy):
            """Tries the listed learning rates, in order."""
            name = "lr-list"
            Options = Options

            def ask(self, history):
                if len(history) < len(self.options.lrs):
                    return {"train.lr": self.options.lrs[len(history)]}

        @hookimpl
        def runner_register(registry):
            registry.add_strategy(LrList)

        @hookimpl
        def runner_epoch_end(trial, epoch, metrics):
            if epoch == 0:
                return Nudge(lr=metrics["lr"] / 2, reason="halve after warm-up")
    ''')
    )
    changes = {"search": {"strategy": {"name": "lr-list", "lrs": [0.2, 0.02, 0.002]}, "space": None}}
    board, events, _ = run(write_experiment(changes), tmp_path, [str(plugin)])
    assert sorted(r.params["train.lr"] for r in board) == [0.002, 0.02, 0.2]
    lrs = [(e["trial"], e["lr"]) for e in events if e["event"] == "epoch_end"]
    assert lrs == [(0, 0.2), (0, 0.1), (1, 0.02), (1, 0.01), (2, 0.002), (2, 0.001)]


def hook_names() -> list[str]:
    return [name for name in vars(hookspecs) if name.startswith("runner_")]


def test_every_hook_is_documented_and_fires_in_a_real_run(write_experiment, tmp_path):
    """One run whose second trial diverges, and its report, call every hook in the contract."""
    from runner.report import read_run_view
    from runner.report.build import draw_figures

    changes = {
        "model": {"batch_norm": False},
        "train": {"optimizer": "gd", "epochs": 2},
        "search": {"strategy": {"name": "grid"}, "space": {"train.lr": {"choices": [0.01, 1e6]}}},
    }
    outcome = run_file(write_experiment(changes), tmp_path, [recorder(tmp_path)])
    draw_figures(read_run_view(outcome.run_dir), outcome.plugins.manager)
    import sys

    called = {call[0] for call in sys.modules["runner_plugin_recorder"].CALLS}
    readme = (ROOT / "docs" / "plugins.md").read_text()
    for name in hook_names():
        spec = getattr(hookspecs, name)
        assert spec.__doc__ and len(spec.__doc__) > 80, f"{name} needs a docstring saying when it is called"
        assert f"`{name}" in readme, f"{name} is not documented in docs/plugins.md"
        assert name in called, f"{name} did not fire"


def test_an_exception_in_a_trial_hook_fails_that_trial_and_the_search_goes_on(write_experiment, tmp_path):
    plugin = tmp_path / "flaky.py"
    plugin.write_text(
        textwrap.dedent("""
        from runner import hookimpl

        @hookimpl
        def runner_trial_start(trial):
            if trial.id == 0:
                raise ValueError("plugin bug")
    """)
    )
    board, events, _ = run(write_experiment(), tmp_path, [str(plugin)])
    states = {r.trial: (r.state, r.reason) for r in board}
    assert states[0] == ("failed", "ValueError: plugin bug") and states[1][0] == "completed"
    assert [e["event"] for e in events if e.get("trial") == 0] == ["trial_start", "trial_complete"]


def test_a_trial_whose_params_the_backend_refuses_fails_alone_and_is_still_announced(write_experiment, tmp_path):
    """Each parameter is valid alone; the combination (step schedule, decay 2) is not."""
    changes = {
        "search": {
            "strategy": {"name": "grid"},
            "space": {
                "model.hidden": None,
                "train.lr_schedule": {"choices": ["inverse_time", "step"]},
                "train.lr_decay": {"choices": [0.5, 2.0]},
            },
        }
    }
    board, events, _ = run(write_experiment(changes), tmp_path)
    failed = [r for r in board if r.state == "failed"]
    assert [r.params for r in failed] == [{"train.lr_schedule": "step", "train.lr_decay": 2.0}]
    assert "train.lr_decay" in failed[0].reason
    from runner import History

    history = History.from_events(events)
    assert len(history) == 4 and len(history.finished) == 4


LAGGING = '''
from runner import hookimpl
from runner.plugins.backends.numpy_mlp import NumpyBackend

class Lagging(NumpyBackend):
    """The NumPy backend answering as a GPU backend does: each step returns the previous
    step's loss (None at first), the rest comes from pending_losses."""
    name = "numpy-lagging"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.owed = []

    def train_step(self):
        self.owed.append(super().train_step())
        return self.owed.pop(0) if len(self.owed) > 1 else None

    def pending_losses(self):
        owed, self.owed = self.owed, []
        return owed

@hookimpl
def runner_register(registry):
    registry.add_backend(Lagging)
'''


def test_a_backend_that_returns_losses_late_gets_the_same_epochs_as_one_that_does_not(write_experiment, tmp_path):
    plugin = tmp_path / "lagging.py"
    plugin.write_text(LAGGING)
    changes = {"train": {"epochs": 3}, "checkpoint": {"every_steps": 2}}
    plain = run_file(write_experiment(changes), tmp_path / "plain")
    late = run_file(
        write_experiment({**changes, "backend": {"name": "numpy-lagging"}}, name="late.json"),
        tmp_path / "late",
        [str(plugin)],
    )

    def epochs(run):
        return [
            (e["trial"], e["epoch"], e["step"], e["train_loss"], e["val_loss"])
            for e in run.events
            if e["event"] == "epoch_end"
        ]

    assert epochs(late) == epochs(plain)  # every loss counted, in its own epoch


def test_a_trial_names_its_own_folder_and_the_run_directory(write_experiment, tmp_path):
    seen = tmp_path / "seen.json"
    plugin = tmp_path / "where.py"
    plugin.write_text(
        textwrap.dedent(f"""
        import pathlib, warnings
        import orjson
        from runner import hookimpl

        @hookimpl
        def runner_trial_start(trial):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                old = trial.run_dir
            record = {{"folder": str(trial.folder), "run_folder": str(trial.run_folder), "old": str(old),
                      "warned": [str(w.message) for w in caught if w.category is DeprecationWarning]}}
            path = pathlib.Path({str(seen)!r})
            found = orjson.loads(path.read_bytes()) if path.exists() else []
            path.write_bytes(orjson.dumps([*found, record]))
    """)
    )
    run = run_file(write_experiment(), tmp_path, [str(plugin)])
    records = orjson.loads(seen.read_bytes())
    assert [r["folder"] for r in records] == [str(run.run_dir / "trials" / f"t{i:03d}") for i in range(2)]
    assert all(r["run_folder"] == str(run.run_dir) and r["old"] == r["folder"] for r in records)
    assert all(
        r["warned"]
        == ["Trial.run_dir is the trial's own folder; use trial.folder (or trial.run_folder for the run directory)"]
        for r in records
    )
