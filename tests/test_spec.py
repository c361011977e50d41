"""The experiment file: valid examples load; every bad input names its JSON path and rule."""

from __future__ import annotations

import pytest

from runner import SpecError
from runner.experiment_file.spec import load
from tests.conftest import ROOT

EXAMPLES = [
    pytest.param(p, marks=pytest.mark.torch) if "torch" in p.name else p
    for p in sorted((ROOT / "experiments").glob("*.json"))
    if not p.name.endswith(".schema.json")
]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_experiment_is_valid(path, plugins):
    spec = load(path, plugins.registry)
    assert spec.train.epochs >= 1
    task = spec.data.options.task
    assert spec.search.metric in ["train_loss", *(f"val_{m}" for m in spec.backend_class.metrics_for(task))]


def test_defaults_fill_every_section_but_data_and_train(write_experiment, plugins):
    path = write_experiment({"name": None, "seed": None, "model": None, "search": None})
    spec = load(path, plugins.registry)
    assert (spec.name, spec.seed) == ("experiment", 0)
    assert (spec.backend.name, spec.executor.name, spec.search.strategy.name) == ("numpy", "inline", "random")
    assert (spec.search.metric, spec.search.mode) == ("val_loss", "min")
    assert spec.search.strategy.options.trials == 20
    assert len(spec.search.space) == 0


def test_mode_follows_the_metric_when_not_given(write_experiment, plugins):
    spec = load(write_experiment({"search": {"metric": "val_acc"}}), plugins.registry)
    assert spec.search.mode == "max"


def test_seed_override(write_experiment, plugins):
    assert load(write_experiment(), plugins.registry, seed=7).seed == 7


def test_trial_config_applies_dotted_paths(write_experiment, plugins):
    spec = load(write_experiment(), plugins.registry)
    config = spec.trial_config({"train.lr": 0.5, "model.hidden": [8, 8]})
    assert config["train"]["lr"] == 0.5 and config["model"]["hidden"] == [8, 8]
    assert spec.raw["train"]["lr"] == 0.01, "the base config must not change"


def error_of(path, plugins) -> str:
    with pytest.raises(SpecError) as info:
        load(path, plugins.registry)
    return str(info.value)


# Broken experiments: changes to tests.conftest.QUICK (deep_update) and what the error says.
# tests/test_schema.py checks that the JSON Schema rejects every one of them too.
BAD_SPECS = [
    ({"train": {"epochs": "ten"}}, 'train.epochs: must be an integer, got string "ten"'),
    ({"train": {"epochs": 0}}, "train.epochs: must be >= 1, got 0"),
    ({"train": {"lr": -0.1}}, "train.lr: must be > 0"),
    ({"train": {"optimiser": "adam"}}, 'train.optimiser: unknown key (did you mean "optimizer"?)'),
    ({"train": {"optimizer": "sgd"}}, 'train.optimizer: must be one of "gd", "momentum", "rmsprop", "adam", got "sgd"'),
    ({"data": None}, "data: is required"),
    ({"data": {"name": "digitz"}}, 'data.name: unknown dataset "digitz" (did you mean "digits"?)'),
    ({"backend": {"name": "jax"}}, 'backend.name: unknown backend "jax"'),
    (
        {"search": {"strategy": {"name": "randm"}}},
        'search.strategy.name: unknown strategy "randm" (did you mean "random"?)',
    ),
    ({"search": {"strategy": {"name": "random", "trials": 0}}}, "search.strategy.trials: must be >= 1, got 0"),
    (
        {"search": {"space": {"train.lr": {"low": 0, "high": 1, "scale": "log"}}}},
        'search.space.train.lr.low: must be > 0 for scale "log", got 0',
    ),
    (
        {"search": {"space": {"train.lr": {"low": -1, "high": 1, "scale": "log"}}}},
        'search.space.train.lr.low: must be > 0 for scale "log", got -1',
    ),
    (
        {"search": {"space": {"train.momentum": {"low": 0.9, "high": 1.0, "scale": "log1m"}}}},
        'search.space.train.momentum.high: must be < 1 for scale "log1m", got 1.0',
    ),
    (
        {"search": {"space": {"train.learning_rate": {"low": 0.1, "high": 1}}}},
        "search.space.train.learning_rate: the value 0.1 is not accepted: train.learning_rate: unknown key",
    ),
    (
        {"search": {"space": {"data.val_fraction": {"low": 0.1, "high": 0.3}}}},
        "search.space.data.val_fraction: must be a dotted path into the model, train or backend section",
    ),
    (
        {"search": {"space": {"model.activation": {"choices": ["relu", "swish"]}}}},
        'search.space.model.activation: the value "swish" is not accepted: model.activation: must be one of',
    ),
    (
        {"search": {"metric": "val_accuracy"}},
        'search.metric: backend "numpy" does not report "val_accuracy"; it reports train_loss, val_loss, val_acc',
    ),
    (
        {"search": {"space": {"backend.name": {"choices": ["numpy", "torch"]}}}},
        "search.space.backend.name: the backend cannot be searched",
    ),
    ({"seed": 2**63}, "seed: must be >= 0 and < 2**63"),
    ({"search": {"mode": "maximize"}}, 'search.mode: must be "min" or "max", got "maximize"'),
    ({"executor": {"name": "inline", "workers": 2}}, "executor.workers: unknown key"),
    ({"seed": -1}, "seed: must be >= 0 and < 2**63, got -1"),
    ({"trials": 5}, "trials: unknown section"),
]


@pytest.mark.parametrize("changes, expected", BAD_SPECS)
def test_bad_specs_name_the_path_and_the_rule(write_experiment, plugins, changes, expected):
    path = write_experiment(changes)
    message = error_of(path, plugins)
    assert expected in message
    assert message.startswith(str(path)), "the message names the file"


def test_plugin_sections_may_be_written_as_a_name(write_experiment, plugins):
    spec = load(
        write_experiment(
            {
                "backend": "numpy",
                "data": "digits",
                "executor": "inline",
                "search": {"strategy": "grid", "space": {"backend.dtype": {"choices": ["float64"]}}},
            }
        ),
        plugins.registry,
    )
    assert (spec.backend.name, spec.data.name, spec.search.strategy.name) == ("numpy", "digits", "grid")
    assert spec.trial_config({"backend.dtype": "float64"})["backend"] == {"name": "numpy", "dtype": "float64"}


def test_a_strategy_path_outside_the_searchable_sections_is_a_spec_error(write_experiment, plugins):
    spec = load(write_experiment(), plugins.registry)
    with pytest.raises(SpecError, match=r"search\.space\.data\.val_fraction: must be a dotted path"):
        spec.trial_config({"data.val_fraction": 0.5})


def test_broken_json_says_where(tmp_path, plugins):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "name": "x",\n  "train": {"epochs": 2,}\n}\n')
    message = error_of(path, plugins)
    assert "not valid JSON" in message and "line 3" in message


def test_missing_file_and_non_object(tmp_path, plugins):
    assert "no such file" in error_of(tmp_path / "nope.json", plugins)
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    assert "must hold a JSON object" in error_of(path, plugins)
