"""The ``optuna`` strategy: the space maps exactly, every sampler asks, a run killed with
SIGKILL and resumed asks for the same trials, and without Optuna it is named unavailable."""

from __future__ import annotations

import math
import signal
import subprocess
import sys

import orjson
import pytest

from runner import History, Space, TrialResult
from runner.experiment_file.typed import build
from tests.conftest import deep_update
from tests.test_resume import EXPERIMENT, assert_same, outcome, resume, start

optuna = pytest.importorskip("optuna")

from runner.plugins.strategies.optuna_search import OptunaSearch  # noqa: E402  (needs optuna)

SPACE = {
    "train.lr": {"low": 1e-4, "high": 1.0, "scale": "log"},
    "train.momentum": {"low": 0.5, "high": 0.999, "scale": "log1m"},
    "model.dropout": {"low": 0.0, "high": 0.5},
    "train.batch_size": {"low": 8, "high": 256, "scale": "log", "type": "int"},
    "train.epochs": {"low": 2, "high": 5, "type": "int"},
    "model.hidden": {"choices": [[16], [32, 32], {"width": 8}, None, "relu"]},
}


def strategy(sampler="random", seed=0, space=SPACE, **options) -> OptunaSearch:
    built = build(OptunaSearch.Options, {"trials": 40, "sampler": sampler, **options})
    return OptunaSearch(space=Space.parse(space), options=built, seed=seed, metric="val_loss", mode="min")


def run_asks(search: OptunaSearch, n: int) -> list[dict]:
    """Ask ``n`` trials one at a time, each finished with a score of its own before the next."""
    history, asked = History(), []
    for trial in range(n):
        params = search.ask(history)
        history.add(trial, params)
        score = math.log10(params["train.lr"]) ** 2 + (1 - params["train.momentum"])
        result = TrialResult(trial, "completed", params, {"val_loss": score}, None, 1, 0.0, score)
        history.finish(result)
        search.tell(history, result)
        asked.append(params)
    return asked


def test_each_kind_of_parameter_maps_to_its_optuna_distribution_and_back_exactly():
    search = strategy()
    distributions = search.distributions
    assert distributions["train.lr"] == optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)
    assert distributions["train.momentum (1 - x)"] == optuna.distributions.FloatDistribution(
        1.0 - 0.999, 0.5, log=True
    )  # log1m: a log-uniform 1 - x
    assert distributions["model.dropout"] == optuna.distributions.FloatDistribution(0.0, 0.5)
    assert distributions["train.batch_size"] == optuna.distributions.IntDistribution(8, 256, log=True)
    assert distributions["train.epochs"] == optuna.distributions.IntDistribution(2, 5)
    assert distributions["model.hidden"] == optuna.distributions.CategoricalDistribution([0, 1, 2, 3, 4])
    asked = run_asks(search, 40)
    choices = SPACE["model.hidden"]["choices"]
    for params in asked:
        assert 1e-4 <= params["train.lr"] <= 1.0 and 0.5 <= params["train.momentum"] <= 0.999
        assert isinstance(params["train.batch_size"], int) and 8 <= params["train.batch_size"] <= 256
        assert params["model.hidden"] in choices  # any JSON value, lists and objects included
    assert {repr(p["model.hidden"]) for p in asked} == {repr(c) for c in choices}
    for m in search.maps:  # the study holds exactly what a trial's value maps back to
        for params, trial in zip(asked, [t for t in search.study.trials if t.state.name != "FAIL"]):
            assert m.to_trial(trial.params[m.name]) == params[m.param.path]
            assert m.to_optuna(params[m.param.path]) == trial.params[m.name]


@pytest.mark.parametrize("sampler", ["tpe", "cmaes", "gp", "qmc", "random"])
def test_every_sampler_asks_a_whole_search_the_same_way_for_the_same_seed(sampler):
    space = {k: SPACE[k] for k in ("train.lr", "train.momentum", "train.batch_size")}
    options = {"n_startup_trials": 3} if sampler in ("tpe", "gp") else {}
    first = run_asks(strategy(sampler, seed=1, space=space, sampler_options=options), 8)
    again = run_asks(strategy(sampler, seed=1, space=space, sampler_options=options), 8)
    other = run_asks(strategy(sampler, seed=2, space=space, sampler_options=options), 8)
    assert first == again and first != other
    assert len({orjson.dumps(p) for p in first}) == 8  # no point asked twice


def test_a_fresh_strategy_given_the_history_asks_what_the_uninterrupted_one_asks():
    """The resume path in process: a new strategy catches up on a history and asks on."""
    options = {"n_startup_trials": 2, "multivariate": True}
    whole = run_asks(strategy("tpe", sampler_options=options), 9)
    resumed = strategy("tpe", sampler_options=options)
    history = History()
    for trial, params in enumerate(whole[:6]):
        history.add(trial, params)
        score = math.log10(params["train.lr"]) ** 2 + (1 - params["train.momentum"])
        history.finish(TrialResult(trial, "completed", params, {"val_loss": score}, None, 1, 0.0, score))
    for trial in range(6, 9):
        params = resumed.ask(history)
        assert params == whole[trial], f"trial {trial} differs after catching up"
        history.add(trial, params)
        score = math.log10(params["train.lr"]) ** 2 + (1 - params["train.momentum"])
        result = TrialResult(trial, "completed", params, {"val_loss": score}, None, 1, 0.0, score)
        history.finish(result)
        resumed.tell(history, result)


OPTUNA_RUN = deep_update(
    EXPERIMENT,
    {
        "name": "optuna-resumable",
        "search": {
            "strategy": {"name": "optuna", "trials": 5, "sampler_options": {"n_startup_trials": 2}},
            "space": {
                "train.lr": {"low": 0.003, "high": 0.03, "scale": "log"},
                "train.momentum": {"low": 0.5, "high": 0.99, "scale": "log1m"},
            },
        },
    },
)


@pytest.fixture(scope="module")
def optuna_uninterrupted(tmp_path_factory):
    proc, run_dir = start(tmp_path_factory.mktemp("optuna-baseline"), "baseline", OPTUNA_RUN)
    assert proc.returncode == 0, proc.stderr
    return outcome(run_dir)


@pytest.mark.parametrize("kill", ["trial_end:2", "step:50"])
def test_sigkill_then_resume_asks_for_the_same_trials(tmp_path, optuna_uninterrupted, kill):
    proc, run_dir = start(tmp_path, "killed", OPTUNA_RUN, kill=kill)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    resumed, _ = resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_same(outcome(run_dir), optuna_uninterrupted)  # every trial's params, scores and final weights


WITHOUT_OPTUNA = "import sys; sys.modules['optuna'] = None; from runner.cli import main; main()"


def test_without_optuna_it_is_named_unavailable_with_the_install_command(tmp_path):
    listed = subprocess.run(
        [sys.executable, "-c", WITHOUT_OPTUNA, "plugins"], capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0 and "pip install 'panda-caviar[optuna]'" in listed.stdout, listed.stdout
    path = tmp_path / "exp.json"
    path.write_bytes(orjson.dumps(OPTUNA_RUN))
    refused = subprocess.run(
        [sys.executable, "-c", WITHOUT_OPTUNA, "validate", str(path)], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2, refused.stderr
    assert 'strategy "optuna" is not available here: needs Optuna' in refused.stderr


def test_an_option_the_sampler_does_not_take_is_bad_input_naming_what_it_takes(tmp_path):
    path = tmp_path / "exp.json"
    path.write_bytes(
        orjson.dumps(deep_update(OPTUNA_RUN, {"search": {"strategy": {"sampler_options": {"n_startup": 2}}}}))
    )
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "validate", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "search.strategy.sampler_options.n_startup: not an option tpe takes" in proc.stderr
    assert "n_startup_trials" in proc.stderr and "gamma" not in proc.stderr  # a function: not from a file


def test_choices_equal_in_python_but_not_in_json_stay_apart():
    search = strategy(space={"model.act": {"choices": [1, True, 1.0, 0, False]}})
    (choice,) = search.maps
    assert [choice.to_optuna(v) for v in (1, True, 1.0, 0, False)] == [0, 1, 2, 3, 4]


def test_qmc_walks_one_sequence_across_trials():
    """QMC's points come from one scrambled sequence, trial after trial: the study's counter
    goes 0, 1, 2, ... (a sampler seeded anew for every ask would start a new one each time).
    Its first trial is drawn independently, to learn the space: 6 asks leave the counter at 4."""
    space = {k: SPACE[k] for k in ("train.lr", "train.momentum")}
    search = strategy("qmc", space=space, sampler_options={"scramble": True})
    run_asks(search, 6)
    attrs = search.study._storage.get_study_system_attrs(search.study._study_id)  # where QMC keeps its counter
    assert [v for k, v in attrs.items() if k.startswith("qmc")] == [4], attrs
