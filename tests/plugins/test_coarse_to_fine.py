"""coarse-to-fine: regions narrow in each parameter's scale, zoom in on a planted optimum,
and a run killed mid-round resumes to exactly the uninterrupted search."""

from __future__ import annotations

import itertools
import math
import textwrap

import orjson
import pytest

from runner import History, SpecError, TrialResult
from runner.experiment_file.space import Choice, Float, Int, Space
from runner.experiment_file.spec import parse
from runner.experiment_file.typed import build
from tests.test_resume import KILLER, assert_resumed_from, resume, runner, snapshots_to_resume

# A backend whose "loss" is a known function of its hyperparameters: the optimum is planted
# at lr 3e-3 (log scale), momentum 0.99 (log1m scale), width 20 and kind "b".
SYNTHETIC = textwrap.dedent("""
    import math
    from dataclasses import dataclass, field
    import numpy as np
    from runner import Backend, BackendState, TrainConfig, hookimpl

    @dataclass(frozen=True)
    class Model:
        width: int = 8
        kind: str = "a"

    @dataclass(frozen=True)
    class Train(TrainConfig):
        lr: float = 0.1
        momentum: float = 0.9

    def objective(lr, momentum, width, kind):
        return ((math.log10(lr) - math.log10(3e-3)) ** 2 + (math.log10(1 - momentum) - math.log10(0.01)) ** 2
                + ((width - 20) / 8) ** 2 + (0.0 if kind == "b" else 0.5))

    class Synthetic(Backend):
        name = "synthetic"
        Model, Train = Model, Train

        def __init__(self, *, model, train, options, data, seed):
            self.model, self.lr, self.momentum, self.steps = model, train.lr, train.momentum, 0

        @property
        def steps_per_epoch(self):
            return 1

        def begin_epoch(self, epoch):
            pass

        def loss(self):
            return objective(self.lr, self.momentum, self.model.width, self.model.kind)

        def train_step(self):
            self.steps += 1
            return self.loss()

        def evaluate(self, split):
            return {"loss": self.loss(), "acc": 1 / (1 + self.loss())}

        def hyperparameters(self):
            return {"lr": self.lr, "momentum": self.momentum}

        def set_hyperparameters(self, **values):
            self.lr, self.momentum = values.get("lr", self.lr), values.get("momentum", self.momentum)

        def reshuffle(self, salt):
            pass

        def state(self):
            return BackendState({"steps": np.array([self.steps])}, {"lr": self.lr, "momentum": self.momentum})

        def load_state(self, state):
            self.steps = int(state.arrays["steps"][0])
            self.lr, self.momentum = state.meta["lr"], state.meta["momentum"]

    @hookimpl
    def runner_register(registry):
        registry.add_backend(Synthetic)
""")

SEARCH = {
    "name": "zoom",
    "seed": 0,
    "data": {"name": "spirals", "points_per_class": 10},
    "backend": {"name": "synthetic"},
    "train": {"epochs": 1},
    "checkpoint": {"every_epochs": 0, "best": False},
    "search": {
        "strategy": {"name": "coarse-to-fine", "rounds": 4, "trials_per_round": 12, "keep_top": 3, "margin": 0.1},
        "metric": "val_loss",
        "space": {
            "train.lr": {"low": 1e-4, "high": 1.0, "scale": "log"},
            "train.momentum": {"low": 0.9, "high": 0.9999, "scale": "log1m"},
            "model.width": {"low": 1, "high": 64, "type": "int"},
            "model.kind": {"choices": ["a", "b", "c"]},
        },
    },
}


def make(plugins, space: Space, **options):
    cls = plugins.registry.get("strategy", "coarse-to-fine")
    return cls(space=space, options=build(cls.Options, options), seed=0, metric="val_loss", mode="min")


def finished(trial: int, params: dict, score: float | None) -> TrialResult:
    return TrialResult(
        trial=trial, state="completed", params=params, best=None, final=None, epochs=1, seconds=0.0, score=score
    )


def test_a_region_is_the_top_trials_span_in_each_parameters_own_scale_plus_the_margin(plugins):
    space = Space(
        [
            Float("train.lr", 1e-4, 1.0, "log"),
            Float("train.momentum", 0.9, 0.9999, "log1m"),
            Int("model.width", 1, 64),
            Choice("model.kind", ("a", "b", "c")),
        ]
    )
    strategy = make(plugins, space, rounds=2, trials_per_round=3, keep_top=2, margin=0.1)
    history = History()
    tried = [
        ({"train.lr": 1e-3, "train.momentum": 0.99, "model.width": 20, "model.kind": "b"}, 1.0),
        ({"train.lr": 1e-2, "train.momentum": 0.999, "model.width": 24, "model.kind": "a"}, 2.0),
        ({"train.lr": 0.5, "train.momentum": 0.9, "model.width": 60, "model.kind": "c"}, 9.0),
    ]
    for k, (params, score) in enumerate(tried):
        assert strategy.ask(history) is not None
        history.add(k, params)
        history.finish(finished(k, params, score))
    strategy.ask(history)
    region = strategy.regions[1]
    # lr: log10 positions 0.25 and 0.5 of [-4, 0], widened by 0.1 of the width: [0.15, 0.6]
    assert region["train.lr"].low == pytest.approx(10**-3.4) and region["train.lr"].high == pytest.approx(10**-1.6)
    # momentum: 1 - m at log10 positions 1/3 and 2/3 of [-1, -4], widened: [0.2333, 0.7667]
    assert region["train.momentum"].low == pytest.approx(1 - 10**-1.7)
    assert region["train.momentum"].high == pytest.approx(1 - 10**-3.3)
    # width: the cells of 20 and 24 in [1, 65) span [0.296875, 0.375]; widened by 0.1: 13 to 31
    assert (region["model.width"].low, region["model.width"].high) == (13, 31)
    assert region["model.kind"].choices == ("a", "b")  # the choices the top two used, in the space's order
    note = strategy.notes[-1]
    assert note["kind"] == "round" and note["round"] == 1 and note["top"] == [0, 1]
    assert note["region"]["train.lr"] == {
        "low": region["train.lr"].low,
        "high": region["train.lr"].high,
        "scale": "log",
    }


def test_a_round_waits_for_the_round_before_and_unscored_trials_leave_the_region(plugins):
    space = Space([Float("train.lr", 1e-4, 1.0, "log")])
    strategy = make(plugins, space, rounds=2, trials_per_round=2, keep_top=1)
    history = History()
    for k in range(2):
        history.add(k, strategy.ask(history))
    assert strategy.ask(history) is None, "round 1 needs round 0's results"
    history.finish(finished(0, history[0].params, None))
    assert strategy.ask(history) is None
    history.finish(finished(1, history[1].params, math.nan))
    assert strategy.ask(history) is not None
    assert strategy.regions[1] is space and "no trial so far has a score" in strategy.notes[-1]["reason"]
    for k in range(2, 4):
        history.add(k, strategy.ask(history) or {})
    assert strategy.ask(history) is None and strategy.planned_trials() == 4


@pytest.mark.parametrize(
    "options, message",
    [
        ({"keep_top": 2.5}, "keep_top: must be a whole count (3) or a fraction below 1 (0.3), got 2.5"),
        ({"keep_top": 0}, "keep_top: must be > 0"),
        ({"rounds": 0}, "rounds: must be >= 1"),
    ],
)
def test_bad_options_are_refused_by_name(plugins, options, message):
    raw = {
        **SEARCH,
        "backend": {"name": "numpy"},
        "search": {**SEARCH["search"], "space": {"train.lr": {"low": 1e-3, "high": 1.0, "scale": "log"}}},
    }
    raw["search"]["strategy"] = {"name": "coarse-to-fine", **options}
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(raw, plugins.registry)


def test_an_empty_space_is_refused(plugins):
    raw = {**SEARCH, "backend": {"name": "numpy"}, "search": {"strategy": {"name": "coarse-to-fine"}}}
    with pytest.raises(SpecError, match=r"search.space: coarse-to-fine needs parameters to search"):
        parse(raw, plugins.registry)


def run_search(tmp_path, name: str, kill: str | None = None):
    exp = tmp_path / f"{name}.json"
    exp.write_bytes(orjson.dumps(SEARCH))
    (tmp_path / "synthetic.py").write_text(SYNTHETIC)
    (tmp_path / "killer.py").write_text(KILLER)
    out = tmp_path / name
    proc = runner(
        "start",
        exp,
        "--out",
        out,
        "--plain",
        "--plugin",
        tmp_path / "synthetic.py",
        "--plugin",
        tmp_path / "killer.py",
        env={"RUNNER_TEST_KILL": kill or ""},
    )
    [run_dir] = out.iterdir()
    return proc, run_dir


def log_of(run_dir) -> list[dict]:
    return [orjson.loads(line) for line in (run_dir / "events.jsonl").read_bytes().splitlines()]


@pytest.fixture(scope="module")
def zoomed(tmp_path_factory):
    proc, run_dir = run_search(tmp_path_factory.mktemp("zoom"), "whole")
    assert proc.returncode == 0, proc.stderr
    return log_of(run_dir)


def rounds_of(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "note" and e["kind"] == "round"]


def test_regions_shrink_around_the_planted_optimum_in_log_space(zoomed):
    rounds = rounds_of(zoomed)
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    decades = []
    for r in rounds:
        lr, momentum, width = r["region"]["train.lr"], r["region"]["train.momentum"], r["region"]["model.width"]
        assert lr["low"] <= 3e-3 <= lr["high"] and momentum["low"] <= 0.99 <= momentum["high"]
        assert width["low"] <= 20 <= width["high"]
        decades.append(math.log10(lr["high"] / lr["low"]))
    assert decades[0] == pytest.approx(4) and all(b < a for a, b in itertools.pairwise(decades))
    assert decades[-1] < 1.0, "the last round searches less than a decade of lr"
    last = rounds[-1]["region"]
    # Narrowed on a linear scale, a margin of the width would keep lr's bottom decade (1e-4 .. 1e-3)
    # in every region; in log space the region leaves it and centres on 3e-3 in decades.
    assert last["train.lr"]["low"] > 1e-3
    assert abs(math.log10(math.sqrt(last["train.lr"]["low"] * last["train.lr"]["high"])) - math.log10(3e-3)) < 0.3
    assert last["model.kind"] == {"choices": ["b"]}
    scores = [e["score"] for e in zoomed if e["event"] == "trial_complete"]
    per_round = [sorted(scores[k * 12 : (k + 1) * 12])[0] for k in range(4)]
    assert per_round[-1] < per_round[0] / 10, f"the last round's best is far better than the first's: {per_round}"


@pytest.mark.parametrize("kill", ["trial_end:5", "trial_end:17"])
def test_a_run_killed_mid_round_resumes_to_the_same_search(tmp_path, zoomed, kill):
    """Killed after trial 5 (round 0 ends) or 17 (mid round 1), resumed: the same trials, the
    same regions, each region noted once."""
    proc, run_dir = run_search(tmp_path, "killed", kill)
    assert proc.returncode == -9
    assert snapshots_to_resume(run_dir) == {}, "killed between trials: none to continue"
    resumed, trained = resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_resumed_from(run_dir, {}, trained)  # the finished trials are not run again
    events = log_of(run_dir)
    k = int(kill.partition(":")[2])
    assert [e["trial"] for e in events if e["event"] == "trial_start"] == list(range(48))
    resumed_at = next(i for i, e in enumerate(events) if e["event"] == "resume")
    assert {e["trial"] for e in events[resumed_at:] if "trial" in e} == set(range(k + 1, 48))
    assert [(r["round"], r["region"], r["top"]) for r in rounds_of(events)] == [
        (r["round"], r["region"], r["top"]) for r in rounds_of(zoomed)
    ]

    def trials(log):
        return [(e["trial"], e["params"], e["score"]) for e in log if e["event"] == "trial_complete"]

    assert trials(events) == trials(zoomed)


def test_a_region_around_one_value_with_no_margin_is_that_value(plugins):
    ints, lr = Int("model.width", 1, 1000, "log"), Float("train.lr", 1e-4, 1.0, "log")
    strategy = make(plugins, Space([ints, lr]), keep_top=1, margin=0.0)
    for v in range(1, 1001):
        narrowed = strategy.narrow(ints, ints, [v])
        assert (narrowed.low, narrowed.high) == (v, v)
    point = strategy.narrow(lr, lr, [0.003])
    assert point.low <= 0.003 <= point.high and point.high - point.low < 1e-15
