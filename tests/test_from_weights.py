"""runner start EXP --from RUN_DIR --weights: every trial starts from the best trial's weights
and optimizer state, not only its config; a model they do not fit is refused before anything runs."""

from __future__ import annotations

import orjson
import pytest

from runner.api import start_run
from runner.errors import RunnerError
from runner.records.events import read_run
from tests.conftest import QUICK, deep_update
from tests.test_resume import runner

# One trial of plain momentum SGD (no schedule), ranked by the highest training loss, so that
# its "best" snapshot is the one after its first epoch: the new run's first epoch must then
# be the original's second, to the last bit.
ONE = deep_update(
    QUICK,
    {
        "name": "weights",
        "train": {"epochs": 4, "optimizer": "momentum", "lr": 0.05, "momentum": 0.9},
        "checkpoint": {"min_interval": 0},
        "search": {"strategy": {"name": "grid"}, "metric": "train_loss", "mode": "max", "space": None},
    },
)


def epochs_of(run_dir):
    return [
        {k: e[k] for k in ("train_loss", "val_loss", "val_acc", "lr", "momentum")}
        for e in read_run(run_dir)
        if e["event"] == "epoch_end"
    ]


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    return start_run(ONE, out=tmp_path_factory.mktemp("original"))


def test_the_new_trial_goes_on_from_the_weights_and_optimizer_state(tmp_path, original):
    first = epochs_of(original.run_dir)
    assert max(range(4), key=lambda e: first[e]["train_loss"]) == 0, "its best snapshot is after epoch 0"
    again = start_run(ONE, out=tmp_path, from_run=original.run_dir, weights=True)
    then = epochs_of(again.run_dir)
    assert then[:3] == first[1:], "bit for bit the epochs the original trained after that snapshot"
    start = read_run(again.run_dir)[0]
    taken = start["started_from"]["weights"]
    assert taken["epoch"] == 1 and taken["snapshot"].startswith("trials/t000/e00001-")
    assert start["started_from"]["trial"] == 0
    fresh = start_run(ONE, out=tmp_path / "fresh", from_run=original.run_dir)
    assert epochs_of(fresh.run_dir)[0] == first[0], "without --weights, the config alone: a fresh start"


def test_weights_that_do_not_fit_the_model_are_refused_naming_the_first_array(tmp_path, original):
    four = deep_update(ONE, {"data": {"classes": 4}})  # --from brings the model section; the data has 4 classes
    with pytest.raises(RunnerError) as refused:
        start_run(four, out=tmp_path / "four", from_run=original.run_dir, weights=True)
    assert refused.value.exit_code == 2
    assert str(refused.value).endswith(
        "do not fit this experiment's model: param/W2: [16, 3] in the snapshot, [16, 4] here"
    )
    assert not (tmp_path / "four").exists(), "refused before a run directory was made"
    exp = tmp_path / "exp.json"
    exp.write_bytes(orjson.dumps(ONE))
    cli = runner("start", exp, "--out", tmp_path / "cli", "--weights")
    assert cli.returncode == 2 and "--weights starts from the weights of --from RUN_DIR's best trial" in cli.stderr


def test_the_new_trials_own_settings_are_in_force_over_the_weights(tmp_path, original):
    """The weights and optimizer state come across; the live settings are the new trial's."""
    slower = deep_update(ONE, {"search": {"space": {"train.lr": {"choices": [0.02]}}}})
    again = start_run(slower, out=tmp_path, from_run=original.run_dir, weights=True)
    assert {e["lr"] for e in epochs_of(again.run_dir)} == {0.02}
    assert epochs_of(again.run_dir)[0]["train_loss"] != epochs_of(original.run_dir)[1]["train_loss"]
