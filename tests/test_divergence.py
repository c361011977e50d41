"""Divergence: detection values, the rollback policy on real runs, and its limits."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest

from runner.engine.divergence import DivergenceOptions, SpikeDetector, val_divergence
from runner.engine.experiment import load_dataset
from runner.engine.plugin_manager import load_plugins
from runner.experiment_file.spec import load
from runner.records.files import create_run_dir
from tests.conftest import run_file


def test_spike_detector_waits_for_warmup_and_patience_and_keeps_spikes_out_of_the_average():
    d = SpikeDetector(DivergenceOptions(spike_factor=4, spike_floor=0.0, patience=2, warmup_steps=3, smoothing=0.5))
    assert [d.spiked(x) for x in (1.0, 100.0, 1.0)] == [False, False, False]  # warm-up: 100 is folded in
    assert d.average == pytest.approx(0.5 * (0.5 * 1.0 + 0.5 * 100.0) + 0.5 * 1.0)  # 25.75
    d = SpikeDetector(DivergenceOptions(spike_factor=4, spike_floor=0.0, patience=2, warmup_steps=0, smoothing=0.5))
    d.spiked(1.0)
    assert d.spiked(5.0) is False and d.strikes == 1 and d.average == 1.0  # a spike, not yet divergence
    assert d.spiked(1.0) is False and d.strikes == 0  # a normal step resets the count
    assert d.spiked(4.5) is False and d.spiked(4.5) is True  # two in a row: diverged
    assert d.threshold() == 4.0


def test_the_floor_keeps_tiny_losses_from_counting_as_spikes():
    d = SpikeDetector(DivergenceOptions(spike_factor=4, spike_floor=0.1, patience=1, warmup_steps=0, smoothing=0.9))
    d.spiked(0.01)
    assert d.spiked(0.3) is False  # 30x the average, but under 4 x 0.1
    assert d.spiked(0.5) is True


def test_val_divergence():
    options = DivergenceOptions(val_spike_factor=4, spike_floor=0.1)
    assert val_divergence(float("nan"), 0.5, options) == ("non_finite_val_loss", None)
    assert val_divergence(2.1, 0.5, options) == ("val_loss_spike", 2.0)
    assert val_divergence(1.9, 0.5, options) is None and val_divergence(5.0, None, options) is None
    assert DivergenceOptions().val_spike_factor == 10.0, "overfitting alone must not look like divergence"


def run(path, tmp_path, extra=()):
    r = run_file(path, tmp_path, extra)
    return r.board, r.events


ABSURD = textwrap.dedent("""
    from runner import Nudge, hookimpl

    @hookimpl
    def runner_epoch_end(trial, epoch):
        if trial.id == 0 and epoch == 2 and trial.rollbacks == 0:
            return Nudge(lr=1e4, reason="a person's typo")
""")


@pytest.mark.parametrize(
    "backend", [{"name": "numpy"}, pytest.param({"name": "torch", "device": "cpu"}, marks=pytest.mark.torch)]
)
def test_an_absurd_nudge_is_rolled_back_the_lr_cut_and_training_recovers(write_experiment, tmp_path, backend):
    plugin = tmp_path / "absurd.py"
    plugin.write_text(ABSURD)
    changes = {
        "model": {"hidden": [16], "batch_norm": False},
        "backend": backend,
        "train": {"epochs": 8, "optimizer": "momentum", "lr": 0.1},
        "search": {"strategy": {"name": "grid"}, "space": None},
    }
    board, events = run(write_experiment(changes), tmp_path, [str(plugin)])
    result = board[0]
    assert result.state == "completed" and result.epochs == 8
    kinds = [e["event"] for e in events]
    assert kinds.count("divergence") >= 1 and kinds.count("rollback") == kinds.count("divergence")
    rollbacks = [e for e in events if e["event"] == "rollback"]
    last = rollbacks[-1]
    assert last["snapshot"] == "before_nudge" and last["to_epoch"] == 3, "back to before the bad nudge"
    assert last["lr_after"] == pytest.approx(0.1 * 0.5) and last["reshuffled"] is True
    assert all(r["lr_before"] == 1e4 or r["lr_before"] == 5e3 for r in rollbacks)
    lrs_after = [e["lr"] for e in events if e["event"] == "epoch_end"][3:]
    assert lrs_after and all(lr == pytest.approx(0.05) for lr in lrs_after), "the cut rate stays in force"
    losses = [e["train_loss"] for e in events if e["event"] == "epoch_end"]
    assert math.isfinite(losses[-1]) and losses[-1] < losses[0], "training goes on learning"
    assert result.final["val_acc"] > 0.45, "well above chance (1/3)"


NAN_BACKEND = textwrap.dedent('''
    from runner import hookimpl
    from runner.plugins.backends.numpy_mlp import NumpyBackend

    class NanData(NumpyBackend):
        """The NumPy backend with one poisoned training example."""
        name = "numpy-nan"

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            if self._seed_trial == 0:
                self._x_train[5, 0] = float("nan")

    @hookimpl
    def runner_register(registry):
        registry.add_backend(NanData)
''')


def test_a_nan_in_the_data_exhausts_the_rollbacks_and_the_search_goes_on(write_experiment, tmp_path):
    plugin = tmp_path / "nan_backend.py"
    plugin.write_text(NAN_BACKEND.replace("self._seed_trial == 0", "True"))
    changes = {
        "backend": {"name": "numpy-nan"},
        "train": {"epochs": 3},
        "divergence": {"max_rollbacks": 2},
        "search": {"strategy": {"name": "random", "trials": 2}, "space": None},
    }
    board, events = run(write_experiment(changes), tmp_path, [str(plugin)])
    assert [r.state for r in sorted(board, key=lambda r: r.trial)] == ["diverged", "diverged"], "both trials ran"
    for trial in (0, 1):
        mine = [e for e in events if e.get("trial") == trial]
        assert [e["event"] for e in mine].count("rollback") == 2
        assert mine[-1]["reason"].endswith("after 2 rollbacks")
        cuts = [e["lr_after"] for e in mine if e["event"] == "rollback"]
        assert cuts == [pytest.approx(0.005), pytest.approx(0.0025)]


def test_a_plugin_can_replace_the_rollback_policy(write_experiment, tmp_path):
    plugin = tmp_path / "policy.py"
    plugin.write_text(
        NAN_BACKEND.replace("self._seed_trial == 0", "True")
        + textwrap.dedent("""
        from runner import Stop

        @hookimpl
        def runner_divergence(trial, event):
            return Stop(f"my policy: {event.kind}")
    """)
    )
    changes = {"backend": {"name": "numpy-nan"}, "search": {"space": None, "strategy": {"name": "grid"}}}
    board, events = run(write_experiment(changes), tmp_path, [str(plugin)])
    assert board[0].state == "stopped" and board[0].reason == "my policy: non_finite_loss"
    assert not [e for e in events if e["event"] == "rollback"]


def test_a_rollback_restores_the_backend_exactly(write_experiment, tmp_path):
    """Rolling back to a snapshot and training on gives what training from it gives."""
    plugins = load_plugins()
    spec = load(write_experiment({"train": {"epochs": 2}, "search": {"space": None}}), plugins.registry)
    from runner.control.file import ControlSchema
    from runner.control.inbox import ControlInbox
    from runner.engine.checkpoints import SnapshotWriter
    from runner.engine.experiment import Experiment, TrialJob
    from runner.engine.trial_loop import TrialLoop, TrialRunner
    from runner.records.events import EventLog

    run_dir = create_run_dir(tmp_path, "x")
    writer = SnapshotWriter()
    with EventLog(run_dir / "events.jsonl") as log:
        inbox = ControlInbox(run_dir / "control.json", ControlSchema(("lr",)), log)  # not watching: no orders
        runner = TrialRunner(Experiment(spec, run_dir, 1), plugins, load_dataset(spec, plugins), log, writer, inbox)
        loop = TrialLoop(runner, TrialJob(0, {}, 7))
        loop.run()
        state, meta = loop.store.find("last")
        before = {k: v.copy() for k, v in state.arrays.items()}

        def train_on() -> tuple[list[float], dict[str, np.ndarray]]:
            """A whole epoch from where the backend stands: each step's loss, then the state."""
            loop.backend.begin_epoch(2)
            losses = [float(loop.backend.train_step()) for _ in range(loop.backend.steps_per_epoch)]
            return losses, loop.backend.state().arrays

        first_losses, first = train_on()  # from the snapshot, the first time
        loop.backend.load_state(state)  # the rollback
        after = loop.backend.state().arrays
        again_losses, again = train_on()  # and on from it
    writer.close()
    assert all(np.array_equal(before[k], after[k]) for k in before), "load_state copies: the ring stays intact"
    assert meta["epoch"] == 2 and meta["loop"]["best"] is not None
    assert not all(np.array_equal(before[k], first[k]) for k in before), "the epoch trained changed the model"
    assert again_losses == first_losses, "trained on after the rollback: the same steps, bit for bit"
    assert first.keys() == again.keys() and all(np.array_equal(first[k], again[k]) for k in first)


REWINDER = textwrap.dedent("""
    from runner import Nudge, Rollback, hookimpl

    @hookimpl
    def runner_epoch_end(trial, epoch):
        if trial.rollbacks < 3:  # a person, a strategy or a plugin going back: not a divergence
            return Rollback("last", reason="look again")
        if epoch == 2 and trial.divergence_rollbacks == 0:
            return Nudge(lr=1e4, reason="a typo")
""")


def test_only_rollbacks_answering_a_divergence_count_against_max_rollbacks(write_experiment, tmp_path):
    plugin = tmp_path / "rewinder.py"
    plugin.write_text(REWINDER)
    changes = {
        "model": {"hidden": [16], "batch_norm": False},
        "divergence": {"max_rollbacks": 2},
        "train": {"epochs": 5, "optimizer": "momentum", "lr": 0.1},
        "search": {"strategy": {"name": "grid"}, "space": None},
    }
    board, events = run(write_experiment(changes), tmp_path, [str(plugin)])
    sources = [e["source"] for e in events if e["event"] == "rollback"]
    assert sources == ["plugin"] * 3 + ["divergence"] * 2, "three rollbacks by a plugin, then two answering the blow-up"
    assert board[0].state == "completed" and board[0].epochs == 5


@pytest.mark.parametrize("factor", [0, -0.5, float("nan"), float("inf"), "0.5"])
def test_a_rollback_with_an_lr_factor_that_is_no_positive_number_is_refused_when_made(factor):
    from runner import Rollback

    with pytest.raises(ValueError, match="lr_factor must be a positive number"):
        Rollback("last", lr_factor=factor)
    assert Rollback("last", lr_factor=0.5).lr_factor == 0.5
