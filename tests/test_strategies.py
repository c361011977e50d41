"""Built-in strategies: what they ask for, and that their progress rebuilds from the event log."""

from __future__ import annotations

import orjson
import pytest

from runner import History, Space, Stop, hookimpl
from runner.engine.experiment import load_dataset
from runner.engine.loop import run_experiment
from runner.engine.plugin_manager import load_plugins
from runner.experiment_file.spec import load
from runner.records.files import create_run_dir

SPACE = Space.parse(
    {
        "train.lr": {"low": 1e-4, "high": 1.0, "scale": "log"},
        "model.hidden": {"choices": [[8], [16]]},
    }
)


def make(plugins, name, **options):
    from runner.experiment_file.typed import build

    cls = plugins.registry.get("strategy", name)
    return cls(space=SPACE, options=build(cls.Options, options), seed=3, metric="val_loss", mode="min")


def test_grid_asks_every_point_once_in_order_then_stops(plugins):
    grid = make(plugins, "grid", points=3)
    history = History()
    asked = []
    while (params := grid.ask(history)) is not None:
        history.add(len(history), params)
        asked.append((round(params["train.lr"], 12), params["model.hidden"]))
    assert asked == [(1e-4, [8]), (1e-4, [16]), (1e-2, [8]), (1e-2, [16]), (1.0, [8]), (1.0, [16])]
    assert grid.planned_trials() == 6


def test_grid_takes_a_count_per_parameter_and_points_for_the_rest(plugins):
    from runner.experiment_file.typed import build

    space = Space.parse(
        {
            "train.lr": {"low": 1e-3, "high": 1.0, "scale": "log"},
            "train.momentum": {"low": 0.8, "high": 0.9},
            "model.hidden": {"choices": [[8], [16], [32]]},
        }
    )
    cls = plugins.registry.get("strategy", "grid")
    options = build(cls.Options, {"points": 2, "per_parameter": {"train.lr": 4}})
    grid = cls(space=space, options=options, seed=3, metric="val_loss", mode="min")
    history, asked = History(), []
    while (params := grid.ask(history)) is not None:
        history.add(len(history), params)
        asked.append((round(params["train.lr"], 12), round(params["train.momentum"], 12), params["model.hidden"][0]))
    assert grid.planned_trials() == len(asked) == 4 * 2 * 3  # 24: a size no single `points` gives (8, 27, 64)
    assert sorted({a[0] for a in asked}) == [1e-3, 1e-2, 1e-1, 1.0] and sorted({a[1] for a in asked}) == [0.8, 0.9]
    assert asked[:4] == [(1e-3, 0.8, 8), (1e-3, 0.8, 16), (1e-3, 0.8, 32), (1e-3, 0.9, 8)]  # the first varies slowest


@pytest.mark.parametrize(
    "per_parameter, message",
    [
        ({"train.lrr": 4}, "search.strategy.per_parameter.train.lrr: not a parameter of search.space; did you mean"),
        ({"model.hidden": 2}, "search.strategy.per_parameter.model.hidden: is a choice"),
        ({"train.lr": 0}, "search.strategy.per_parameter.train.lr: must be >= 1, got 0"),
        ({"train.lr": "4"}, "search.strategy.per_parameter.train.lr: must be an integer"),
    ],
)
def test_a_grid_count_for_a_parameter_it_cannot_size_is_bad_input(write_experiment, per_parameter, message):
    from tests.test_cli import runner

    path = write_experiment(
        {
            "search": {
                "strategy": {"name": "grid", "per_parameter": per_parameter},
                "space": {
                    "train.lr": {"low": 1e-3, "high": 1.0, "scale": "log"},
                    "model.hidden": {"choices": [[8], [16]]},
                },
            }
        }
    )
    result = runner("validate", str(path))
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_random_asks_the_same_trials_for_the_same_seed_and_stops_at_its_count(plugins):
    first, second = make(plugins, "random", trials=4), make(plugins, "random", trials=4)
    history = History()
    for k in range(4):
        params = first.ask(history)
        assert params == second.ask(history)
        assert 1e-4 <= params["train.lr"] <= 1.0
        history.add(k, params)
    assert first.ask(history) is None


class StopAfter:
    """Stops the whole run when trial ``n`` ends, like a crash after n trials would."""

    def __init__(self, n: int):
        self.n = n

    @hookimpl
    def runner_epoch_end(self, trial):
        if trial.id == self.n - 1:
            return Stop("simulated interruption", experiment=True)


@pytest.mark.parametrize("name, options", [("random", {"trials": 5}), ("grid", {"points": 2})])
def test_progress_rebuilds_from_the_event_log(write_experiment, tmp_path, name, options):
    """A history rebuilt from a partial run's events asks for what an uninterrupted run asked next."""
    changes = {
        "train": {"epochs": 1},
        "checkpoint": {"every_epochs": 0, "best": False},
        "search": {
            "strategy": {"name": name, **options},
            "space": {"train.lr": {"low": 1e-3, "high": 0.1, "scale": "log"}, "model.hidden": {"choices": [[8], [16]]}},
        },
    }
    path = write_experiment(changes)

    def events_of(extra_plugin=None):
        plugins = load_plugins()
        if extra_plugin:
            plugins.manager.register(extra_plugin)
        spec = load(path, plugins.registry)
        run_dir = create_run_dir(tmp_path / "runs", spec.name)
        run_experiment(spec, plugins, load_dataset(spec, plugins), run_dir)
        return spec, plugins, [orjson.loads(x) for x in (run_dir / "events.jsonl").read_bytes().splitlines()]

    _, _, full = events_of()
    spec, plugins, partial = events_of(StopAfter(2))
    history = History.from_events(partial)
    assert len(history) == 2 and all(r.result is not None for r in history)
    assert history[1].result.state == "stopped" and history[0].result.state == "completed"
    strategy = plugins.registry.get("strategy", name)(
        space=spec.search.space,
        options=spec.search.strategy.options,
        seed=spec.seed,
        metric=spec.search.metric,
        mode=spec.search.mode,
    )
    third = next(e for e in full if e["event"] == "trial_start" and e["trial"] == 2)
    assert strategy.ask(history) == third["params"]
