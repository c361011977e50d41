"""Collapse: a network that stopped learning without blowing up is a divergence of its own
kind; the policy goes back to before it began and cuts the learning rate harder; slow but
healthy starts are never flagged; panda never reverts onto a sick snapshot."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import orjson
import pytest

from runner import dead_fraction, read_snapshot
from runner.engine.collapse import CollapseDetector
from runner.engine.divergence import DivergenceOptions
from runner.plugins.backends.numpy_mlp import NumpyBackend
from runner.testing import small_dataset
from tests.conftest import QUICK, ROOT, deep_update, run_file

# -- the detector, sign by sign ----------------------------------------------------------------


def detector(classes: int = 10, **options) -> CollapseDetector:
    return CollapseDetector(DivergenceOptions(**options), classes)


def test_a_loss_jump_counts_after_patience_steps_above_jump_factor_times_the_first_loss():
    d = detector(jump_factor=10, patience=3)
    assert d.stepped(2.0, 0, 1) is None and d.limit() == 20.0  # the first step's loss sets the scale
    assert [d.stepped(1.5, 0, s) for s in range(2, 10)] == [None] * 8
    assert [d.stepped(x, 0, s) for x, s in ((25.0, 10), (30.0, 11))] == [None, None]
    assert d.stepped(19.0, 0, 12) is None and d.strikes == 0  # back under the limit: the count restarts
    assert [d.stepped(21.0, 0, s) for s in (13, 14)] == [None, None]
    event = d.stepped(21.0, 0, 15)
    assert (event.kind, event.epoch, event.step, event.loss, event.threshold) == ("collapse", 0, 15, 21.0, 20.0)
    assert event.seen == {"loss_jump": {"first_loss": 2.0, "steps": 3}}
    # The loss reported at step 10 was measured on the weights after 9 updates; a GPU backend
    # reports it a step late: the weights after 7 updates are the newest known healthy.
    assert (event.since_epoch, event.since_step) == (0, 7)


def test_a_leap_in_an_epochs_first_steps_goes_back_into_the_epoch_before():
    d = detector(jump_factor=10, patience=1)
    d.stepped(2.0, 0, 1)
    assert d.epoch_end(0, 10, 1.0, {"val_acc": 0.9, "val_loss": 0.3}, None) is None and d.calm == (1, 10)
    event = d.stepped(50.0, 1, 11)
    assert (event.since_epoch, event.since_step) == (0, 8), "the epoch-end snapshot may already hold the leap"


def test_a_tiny_first_loss_counts_as_spike_floor():
    d = detector(jump_factor=10, patience=1, spike_floor=0.1)
    d.stepped(0.001, 0, 1)
    assert d.stepped(0.9, 0, 2) is None and d.stepped(1.01, 0, 3) is not None  # the limit is 10 x 0.1


def test_dead_units_for_collapse_epochs_in_a_row():
    d = detector(dead_fraction=0.95, collapse_epochs=2)
    metrics = {"val_loss": 0.5, "val_acc": 0.9}
    assert d.epoch_end(0, 10, 0.5, metrics, {"layer1": 0.2, "layer2": 0.94}) is None and d.signs == []
    assert d.calm == (1, 10)
    assert d.epoch_end(1, 20, 0.5, metrics, {"layer1": 0.2, "layer2": 0.95}) is None and d.signs == ["dead_units"]
    event = d.epoch_end(2, 30, 0.6, metrics, {"layer1": 0.3, "layer2": 1.0})
    assert event.seen == {"dead_units": {"layer2": 1.0}} and event.loss == 0.6
    assert (event.since_epoch, event.since_step) == (1, 10), "the end of the last epoch without a sign"


def test_one_healthy_epoch_between_sick_ones_resets_the_count():
    d = detector(collapse_epochs=2)
    metrics = {"val_loss": 0.5, "val_acc": 0.9}
    assert d.epoch_end(0, 10, 0.5, metrics, {"l": 0.99}) is None
    assert d.epoch_end(1, 20, 0.5, metrics, {"l": 0.5}) is None and d.calm == (2, 20)
    assert d.epoch_end(2, 30, 0.5, metrics, {"l": 0.99}) is None


def test_accuracy_and_loss_back_at_chance_after_being_better():
    d = detector(classes=10, chance_margin=0.05, collapse_epochs=2)
    ln10 = math.log(10)
    assert d.epoch_end(0, 10, 1.0, {"val_acc": 0.60, "val_loss": 1.0}, None) is None  # better than 0.1 + 4 x 0.05
    assert d.epoch_end(1, 20, 2.4, {"val_acc": 0.14, "val_loss": 0.95 * ln10 + 1e-9}, None) is None
    assert d.signs == ["chance"]
    event = d.epoch_end(2, 30, 2.4, {"val_acc": 0.12, "val_loss": 2.5}, None)
    assert event.seen["chance"] == {
        "val_acc": 0.12,
        "val_loss": 2.5,
        "chance": 0.1,
        "chance_loss": pytest.approx(ln10),
        "best_val_acc": 0.6,
    }
    assert (event.since_epoch, event.since_step) == (1, 10)


@pytest.mark.parametrize(
    "accs, losses",
    [
        ([0.14, 0.12, 0.13, 0.11, 0.15, 0.14], [2.6] * 6),  # a slow start: at chance from the first epoch
        ([0.28, 0.12, 0.13, 0.11], [2.0, 2.5, 2.5, 2.5]),  # above chance, but never by four margins
        ([0.60, 0.14, 0.13, 0.12], [1.9] * 4),  # back near chance accuracy, but learning: loss well below ln 10
    ],
)
def test_no_false_alarm_on_slow_or_learning_runs(accs, losses):
    d = detector(classes=10)
    for epoch, (acc, loss) in enumerate(zip(accs, losses)):
        assert d.epoch_end(epoch, 10 * (epoch + 1), loss, {"val_acc": acc, "val_loss": loss}, {"l": 0.0}) is None
    assert d.signs == []


def test_on_a_small_split_better_than_chance_must_beat_a_guesses_noise():
    small = CollapseDetector(DivergenceOptions(chance_margin=0.05), classes=2, val_examples=20)
    assert small.better == pytest.approx(0.5 + 3 * math.sqrt(0.25 / 20))  # 0.835: 15 of 20 right is luck
    large = CollapseDetector(DivergenceOptions(chance_margin=0.05), classes=10, val_examples=360)
    assert large.better == pytest.approx(0.1 + 4 * 0.05), "digits: the margins decide"
    for epoch, acc in enumerate((0.75, 0.55, 0.5)):
        assert small.epoch_end(epoch, epoch + 1, 0.7, {"val_acc": acc, "val_loss": 0.7}, None) is None


def test_turned_off_it_sees_nothing_and_its_state_round_trips():
    off = detector(collapse=False, patience=1)
    off.stepped(1.0, 0, 1)
    assert off.stepped(1e6, 0, 2) is None and off.epoch_end(0, 2, 1.0, {}, {"l": 1.0}) is None
    d = detector(patience=5)
    d.stepped(1.0, 0, 1)
    d.stepped(50.0, 0, 2)
    d.epoch_end(0, 2, 1.0, {"val_acc": 0.9, "val_loss": 0.3}, {"l": 1.0})
    copy = detector()
    copy.load_state(d.state())
    assert copy.state() == d.state() and copy.leapt and copy.calm == (0, 0)
    fresh = detector()
    fresh.load_state({})  # a snapshot written before collapses were watched for
    assert fresh.state() == detector().state()


# -- dead units, as backends report them -------------------------------------------------------


def test_dead_fraction_counts_units_constant_over_examples():
    a = np.array([[0.0, 1.0, 3.0], [0.0, 2.0, 3.0], [0.0, 5.0, 3.0]])
    assert dead_fraction(a) == pytest.approx(2 / 3)
    images = np.zeros((4, 2, 3, 3))  # (examples, channels, height, width): channel 1 varies by position only
    images[:, 1] = np.arange(9).reshape(3, 3)
    assert dead_fraction(images) == 0.5
    assert dead_fraction(a[:1]) == 0.0, "one example says nothing"


def numpy_backend(hidden=(8, 6), **model):
    from runner.plugins.backends.mlp_family import Model, Train
    from runner.plugins.backends.numpy_mlp.backend import Options

    data = small_dataset(n=80)
    return NumpyBackend(
        model=Model(hidden=hidden, **model), train=Train(epochs=1, lr=0.1), options=Options(), data=data, seed=3
    )


@pytest.mark.parametrize("batch_norm", [False, True])
def test_the_numpy_mlp_reports_each_hidden_layers_dead_units(batch_norm):
    backend = numpy_backend(batch_norm=batch_norm)
    assert backend.dead_units() == {"layer1": 0.0, "layer2": 0.0}
    shift = "beta1" if batch_norm else "b1"
    backend.params[shift][:3] = -1e6  # three of eight units never fire
    assert backend.dead_units() == {"layer1": 3 / 8, "layer2": 0.0}
    backend.params[shift][:] = -1e6  # the whole layer: the next one sees a constant too
    assert backend.dead_units() == {"layer1": 1.0, "layer2": 1.0}


@pytest.mark.torch
def test_the_torch_mlp_reports_what_the_numpy_one_does():
    import torch

    from runner.plugins.backends.mlp_family import Model, Train
    from runner.plugins.backends.torch_mlp.backend import Options, TorchBackend

    backend = TorchBackend(
        model=Model(hidden=(8, 6)), train=Train(epochs=1, lr=0.1), options=Options(device="cpu"),
        data=small_dataset(n=80), seed=3,
    )  # fmt: skip
    with torch.no_grad():
        backend.params["b1"][:2] = -1e6
    assert backend.dead_units() == {"layer1": 2 / 8, "layer2": 0.0}


MODULES = textwrap.dedent("""
    import torch

    class Hooked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first = torch.nn.Linear(5, 8)
            self.act = torch.nn.ReLU()
            self.second = torch.nn.Linear(8, 4)
            self.out = torch.nn.Linear(4, 3)
            with torch.no_grad():
                self.first.bias[:2] = -1e6

        def forward(self, x):
            return self.out(self.act(self.second(self.act(self.first(x)))))

    class Functional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.out = torch.nn.Linear(5, 8), torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.out(torch.relu(self.first(x)))
""")


@pytest.mark.torch
def test_a_persons_module_reports_each_activation_modules_dead_units(tmp_path, monkeypatch):
    from runner.plugins.backends.torch_mlp.backend import Options
    from runner.plugins.backends.torch_module.backend import ModuleBackend
    from runner.plugins.backends.torch_module.config import Model, Train

    (tmp_path / "nets.py").write_text(MODULES)
    monkeypatch.syspath_prepend(str(tmp_path))

    def build(name):
        return ModuleBackend(
            model=Model(class_path=f"nets.{name}"), train=Train(epochs=1, lr=0.1), options=Options(device="cpu"),
            data=small_dataset(n=80), seed=3,
        )  # fmt: skip

    dead = build("Hooked").dead_units()
    assert dead["act"] == 2 / 8 and set(dead) == {"act", "act#2"}, "one module called twice: each call is a layer"
    assert build("Functional").dead_units() is None, "torch.relu as a function: nothing to watch"


# -- whole runs ---------------------------------------------------------------------------------------

TOO_HIGH = {  # Adam with batch norm at a learning rate far too high: no NaN, the network collapses
    "digits": {
        "data": {"name": "digits", "val_fraction": 0.2},
        "model": {"hidden": [64], "activation": "relu", "batch_norm": True},
        "train": {"epochs": 12, "batch_size": 64, "optimizer": "adam", "lr": 3.0},
    },
    "spirals": {
        "data": {"name": "spirals", "classes": 3, "points_per_class": 100, "noise": 0.2},
        "model": {"hidden": [32, 32], "activation": "relu", "batch_norm": True},
        "train": {"epochs": 25, "batch_size": 32, "optimizer": "adam", "lr": 3.0},
    },
}


def one_run(tmp_path, changes, extra=()):
    """One trial of the quick experiment with ``changes`` (a ``data`` section replaces its own)."""
    base = {"search": {"strategy": {"name": "grid"}, "space": None}, "checkpoint": {"min_interval": 0, "keep": 1000}}
    experiment = deep_update(QUICK, deep_update(base, changes))
    experiment["data"] = changes.get("data", QUICK["data"])
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "exp.json"
    path.write_bytes(orjson.dumps(experiment))
    return run_file(path, tmp_path, extra)


def trained_path(events):
    """Each epoch_end of the path the trial ended on (later epochs replace those a rollback undid)."""
    by_epoch = {}
    for e in events:
        if e["event"] == "epoch_end":
            by_epoch = {k: v for k, v in by_epoch.items() if k < e["epoch"]}
            by_epoch[e["epoch"]] = e
    return [by_epoch[k] for k in sorted(by_epoch)]


@pytest.mark.parametrize("data", sorted(TOO_HIGH))
def test_a_collapse_is_caught_early_rolled_back_to_a_live_snapshot_and_the_run_ends_well(tmp_path, data):
    watched = one_run(tmp_path / "on", TOO_HIGH[data])
    blind = one_run(tmp_path / "off", {**TOO_HIGH[data], "divergence": {"collapse": False}})
    chance = 1 / {"digits": 10, "spirals": 3}[data]
    collapses = [e for e in watched.events if e["event"] == "divergence" and e["kind"] == "collapse"]
    assert collapses and collapses[0]["epoch"] <= 2, "caught within a few epochs"
    rollbacks = [e for e in watched.events if e["event"] == "rollback"]
    for collapse, rollback in zip(collapses, rollbacks):
        assert rollback["to_step"] <= collapse["since_step"], "back to before the collapse began"
        assert rollback["lr_after"] == pytest.approx(rollback["lr_before"] * 0.1)
    [result] = watched.board
    [blind_result] = blind.board
    assert result.best["val_acc"] > chance + 0.5 and result.final["val_acc"] > chance + 0.5, "well above chance"
    assert blind_result.final["val_acc"] < result.final["val_acc"] - 0.2, "unwatched, the same run stays wrecked"


SLOW = {  # learning rates far too low: at chance for many epochs, and healthy
    "digits-sgd": {
        "data": {"name": "digits", "val_fraction": 0.2},
        "model": {"hidden": [64], "batch_norm": False},
        "train": {"epochs": 15, "batch_size": 64, "optimizer": "momentum", "lr": 1e-5, "momentum": 0.9},
    },
    "digits-adam-bn": {
        "data": {"name": "digits", "val_fraction": 0.2},
        "model": {"hidden": [64], "batch_norm": True},
        "train": {"epochs": 15, "batch_size": 64, "optimizer": "adam", "lr": 1e-6},
    },
    "spirals-adam-bn": {
        "data": {"name": "spirals", "classes": 3, "points_per_class": 100, "noise": 0.2},
        "model": {"hidden": [32, 32], "batch_norm": True},
        "train": {"epochs": 30, "batch_size": 32, "optimizer": "adam", "lr": 1e-5},
    },
    "spirals-slowly-above-chance": {  # a small validation split, a little above chance for long
        "train": {"epochs": 60, "optimizer": "momentum", "lr": 0.01, "momentum": 0.9},
    },
}


@pytest.mark.parametrize("case", sorted(SLOW))
def test_a_slow_but_healthy_start_is_never_flagged(tmp_path, case):
    run = one_run(tmp_path, SLOW[case])
    assert not [e for e in run.events if e["event"] in ("divergence", "rollback")]
    [result] = run.board
    assert result.state == "completed" and result.epochs == SLOW[case]["train"]["epochs"]


FRAGILE = textwrap.dedent("""
    from runner import hookimpl
    from runner.plugins.backends.numpy_mlp import NumpyBackend

    class Fragile(NumpyBackend):
        \"\"\"The NumPy backend; its first hidden layer looks dead after epochs SICK_FROM to SICK_UNTIL - 1.\"\"\"
        name = "numpy-fragile"

        def dead_units(self):
            found = super().dead_units()
            return {**found, "layer1": 0.99} if SICK_FROM <= self._epoch < SICK_UNTIL else found

    @hookimpl
    def runner_register(registry):
        registry.add_backend(Fragile)
""")


def fragile(tmp_path, sick_from: int, sick_until: int) -> str:
    plugin = tmp_path / "fragile.py"
    plugin.write_text(FRAGILE.replace("SICK_FROM", str(sick_from)).replace("SICK_UNTIL", str(sick_until)))
    return str(plugin)


@pytest.mark.parametrize(
    "sick_from, checkpoint",
    [
        (5, {"min_interval": 0, "keep": 1000}),  # snapshots after every epoch: the newest ones are sick
        (0, {"min_interval": 3600, "memory": 1}),  # sick from the first epoch, one snapshot in memory, no file
    ],
)
def test_a_collapse_goes_back_to_the_last_calm_epoch_not_to_the_newest_snapshot(tmp_path, sick_from, checkpoint):
    changes = {
        "backend": {"name": "numpy-fragile"},
        "train": {"epochs": 12},
        "checkpoint": checkpoint,
        "divergence": {"max_rollbacks": 2},
    }
    run = one_run(tmp_path, changes, [fragile(tmp_path, sick_from, 1000)])
    collapses = [e for e in run.events if e["event"] == "divergence"]
    rollbacks = [e for e in run.events if e["event"] == "rollback"]
    assert [c["kind"] for c in collapses] == ["collapse"] * 3 and len(rollbacks) == 2
    steps = [e["step"] for e in run.events if e["event"] == "epoch_end"]
    calm_step = 0 if sick_from == 0 else steps[sick_from - 1]
    for collapse, rollback in zip(collapses, rollbacks):
        assert collapse["epoch"] == sick_from + 1 and collapse["seen"] == {"dead_units": {"layer1": 0.99}}
        assert (collapse["since_epoch"], collapse["since_step"]) == (sick_from, calm_step)
        assert (rollback["to_epoch"], rollback["to_step"]) == (sick_from, calm_step), "not the newest, sick, one"
    assert rollbacks[0]["lr_after"] == pytest.approx(0.001) and rollbacks[1]["lr_after"] == pytest.approx(0.0001)
    assert run.board[0].state == "diverged", "sick whatever the rate: after max_rollbacks it ends"


def test_panda_never_tries_from_a_sick_state_so_no_revert_lands_on_one(tmp_path):
    changes = {
        "backend": {"name": "numpy-fragile"},
        "train": {"epochs": 30, "optimizer": "momentum", "lr": 0.05, "momentum": 0.9},
        "divergence": {"collapse_epochs": 1000},  # the loop never calls it: panda is on its own
        "search": {"strategy": {"name": "panda-nudge", "every": 2, "probe_epochs": 2}},
    }
    run = one_run(tmp_path, changes, [fragile(tmp_path, 5, 20)])
    notes = [e for e in run.events if e["event"] == "note"]
    assert any(n["kind"] == "wait" and "dead_units" in n["reason"] for n in notes), "a try came due while sick"
    sick_verdicts = [n for n in notes if n["kind"] == "revert" and "signs of a collapse: dead_units" in n["reason"]]
    assert sick_verdicts, "a try that brought signs on was reverted"
    before_nudge = [
        read_snapshot(run.run_dir / c["path"])[1]
        for c in run.events
        if c["event"] == "checkpoint" and c["reason"] == "before_nudge"
    ]
    assert before_nudge and all(meta["loop"]["collapse"]["signs"] == [] for meta in before_nudge)
    reverts = [e for e in run.events if e["event"] == "rollback" and e["source"] == "strategy"]
    tried_at = {meta["step"] for meta in before_nudge}
    assert reverts and all(r["to_step"] in tried_at for r in reverts), "every revert lands on a sign-free snapshot"


def test_the_leap_of_a_learning_rate_far_too_high_is_caught_in_the_first_steps(tmp_path):
    """The shipped panda example's lr 30, run fixed: its loss leaps to hundreds of times its
    start within a few steps, a collapse caught during the spike detector's warm-up; from the
    trial's first snapshot, with a tenfold cut, it completes, where it used to diverge for good."""
    experiment = orjson.loads((ROOT / "experiments" / "digits_panda.json").read_bytes())
    experiment["train"]["epochs"] = 12
    experiment["search"]["strategy"] = {"name": "grid"}
    run = one_run(tmp_path, experiment)
    first = next(e for e in run.events if e["event"] == "divergence")
    assert first["kind"] == "collapse" and first["epoch"] == 0 and first["step"] < 20
    rollback = next(e for e in run.events if e["event"] == "rollback")
    assert (rollback["to_step"], rollback["snapshot"], rollback["lr_after"]) == (0, "start", 3.0)
    [result] = run.board
    assert result.state == "completed" and result.best["val_acc"] > 0.9


def test_panda_reverts_a_try_that_brings_a_sign_on_however_good_the_metric():
    from types import SimpleNamespace

    from runner import Nudge, Rollback
    from runner.plugins.strategies.panda_nudge import PandaBabysitter, PandaOptions

    sitter = PandaBabysitter(PandaOptions(every=1, probe_epochs=1), "val_loss", "min", budget=100, live=("lr",))
    trial = SimpleNamespace(epoch=0, hyperparameters={"lr": 0.1}, collapse_signs=())
    losses = iter([1.0, 0.9, 0.8, 0.1])  # the try at the third epoch's end beats the trend by far

    def epoch_end():
        trial.epoch += 1
        return sitter.epoch_end(trial, trial.epoch - 1, {"val_loss": next(losses)})

    epoch_end(), epoch_end()
    [tried] = [d for d in epoch_end() if isinstance(d, Nudge)]
    trial.hyperparameters = {"lr": tried.changes["lr"]}
    trial.collapse_signs = ("dead_units",)
    verdict = epoch_end()
    assert verdict[0].kind == "revert" and "signs of a collapse: dead_units" in verdict[0].reason
    assert isinstance(verdict[1], Rollback) and verdict[1].to == "before_nudge"


def test_after_a_short_leap_no_later_point_counts_as_healthy():
    d = detector(jump_factor=10, patience=5, collapse_epochs=2)
    d.stepped(2.0, 0, 1)
    assert d.stepped(200.0, 0, 6) is None and d.stepped(2.0, 0, 7) is None, "one step: no collapse yet"
    metrics = {"val_acc": 0.9, "val_loss": 0.3}
    assert d.epoch_end(0, 10, 1.0, metrics, {"l": 0.5}) is None and d.epoch_end(1, 20, 1.0, metrics, {"l": 0.6}) is None
    assert d.calm == (0, 3), "the epochs after the leap look fine, but its damage may still show"
    d.epoch_end(2, 30, 1.0, metrics, {"l": 0.96})
    event = d.epoch_end(3, 40, 1.0, metrics, {"l": 0.97})
    assert (event.since_epoch, event.since_step) == (0, 3), "back to before the leap"


def test_a_small_validation_splits_noisy_accuracy_is_no_collapse(tmp_path):
    """Binary spirals with heavy noise and 20 validation examples: accuracy jumps between
    0.55 and 0.75 by luck while the loss sits near ln 2. Twenty runs, none flagged (one was,
    before "better than chance" had to beat the noise of a guess on 20 examples)."""
    for lr in (0.003, 0.01):
        for seed in range(10):
            changes = {
                "seed": seed,
                "data": {"name": "spirals", "classes": 2, "points_per_class": 50, "noise": 1.0},
                "model": {"batch_norm": False},
                "train": {"epochs": 40, "optimizer": "momentum", "lr": lr, "momentum": 0.9},
            }
            run = one_run(tmp_path / f"{lr}-{seed}", changes)
            assert not [e for e in run.events if e["event"] == "divergence"], (lr, seed)
