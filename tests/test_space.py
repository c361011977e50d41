"""Search spaces (runner/experiment_file/space.py): scales, sampling, grids and parse errors.

Statistical checks use fixed seeds, so each is exact for a given NumPy; their tolerances are
several standard deviations wide, so another NumPy's generator would pass them too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from runner.errors import SpecError
from runner.experiment_file.space import Choice, Float, Int, Space, parse_param

N = 40_000


def samples(param, n: int = N, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([param.sample(rng) for _ in range(n)])


# --------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------


def test_log_float_lands_in_each_decade_equally_often():
    lr = Float("train.lr", 1e-4, 1.0, "log")
    values = samples(lr)
    assert values.min() >= 1e-4 and values.max() <= 1.0
    decades = np.floor(np.log10(values)).astype(int)
    decades[decades == 0] = -1  # the single point 1.0 belongs to the top decade
    for d in (-4, -3, -2, -1):
        assert abs(np.mean(decades == d) - 0.25) <= 0.01, d
    assert np.median(values) == pytest.approx(1e-2, rel=0.05)


def test_log1m_float_is_uniform_in_log_of_one_minus_x():
    momentum = Float("train.momentum", 0.9, 0.999, "log1m")
    values = samples(momentum)
    assert values.min() >= 0.9 and values.max() <= 0.999
    w = np.log10(1 - values)
    assert w.min() >= -3 - 1e-9 and w.max() <= -1 + 1e-9
    assert abs(np.mean(w < -2) - 0.5) <= 0.01  # 1 - x in [1e-3, 1e-2): x in (0.99, 0.999]
    for lo in (-3.0, -2.5, -2.0, -1.5):  # quarters of [-3, -1] equally full
        assert abs(np.mean((w >= lo) & (w < lo + 0.5)) - 0.25) <= 0.01
    assert np.median(values) == pytest.approx(0.99, abs=0.001)


def test_linear_float_is_uniform():
    p = Float("x", -2.0, 3.0)
    values = samples(p)
    assert values.min() >= -2 and values.max() <= 3
    counts = np.histogram(values, bins=5, range=(-2, 3))[0] / N
    assert np.all(np.abs(counts - 0.2) <= 0.01)
    assert values.mean() == pytest.approx(0.5, abs=0.02)


def test_linear_int_covers_every_value_equally():
    p = Int("model.layers", 1, 5)
    values = samples(p)
    assert values.dtype.kind == "i"
    assert set(values.tolist()) == {1, 2, 3, 4, 5}
    for k in range(1, 6):
        assert abs(np.mean(values == k) - 0.2) <= 0.01, k
    assert all(type(p.sample(np.random.default_rng(s))) is int for s in range(5))


def test_log_int_makes_each_factor_of_ten_equally_likely():
    p = Int("model.hidden", 1, 99, "log")
    values = samples(p)
    assert values.min() == 1 and values.max() == 99
    assert abs(np.mean(values <= 9) - 0.5) <= 0.01
    assert abs(np.mean(values >= 10) - 0.5) <= 0.01
    # Within a decade, smaller values are likelier: 1 owns log(2) - log(1) of log(100).
    assert np.mean(values == 1) == pytest.approx(math.log(2) / math.log(100), abs=0.01)


def test_choice_samples_every_choice_equally():
    p = Choice("model.hidden", ([32], [64], [128, 64]))
    rng = np.random.default_rng(0)
    values = [p.sample(rng) for _ in range(30_000)]
    for c in p.choices:
        assert abs(sum(v == c for v in values) / 30_000 - 1 / 3) <= 0.01
    assert p.sample(np.random.default_rng(1)) in p.choices


def test_same_seed_same_samples():
    space = Space.parse(
        {
            "train.lr": {"low": 1e-4, "high": 1.0, "scale": "log"},
            "train.momentum": {"low": 0.9, "high": 0.999, "scale": "log1m"},
            "model.layers": {"low": 1, "high": 3, "type": "int"},
            "model.hidden": {"choices": [[32], [64], [128, 64]]},
        }
    )
    draw = lambda seed: [space.sample(rng) for rng in [np.random.default_rng(seed)] for _ in range(20)]  # noqa: E731
    assert draw(5) == draw(5)
    assert draw(5) != draw(6)
    point = space.sample(np.random.default_rng(0))
    assert list(point) == ["train.lr", "train.momentum", "model.layers", "model.hidden"]


# --------------------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------------------


def test_float_grids():
    assert Float("lr", 1e-4, 1.0, "log").grid(3) == pytest.approx([1e-4, 1e-2, 1.0], rel=1e-12)
    assert Float("lr", 1e-4, 1.0, "log").grid(5) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0], rel=1e-12)
    assert Float("m", 0.9, 0.999, "log1m").grid(3) == pytest.approx([0.9, 0.99, 0.999], abs=1e-12)
    assert Float("x", 0.0, 1.0).grid(5) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert Float("x", 0.0, 1.0).grid(1) == [0.5]
    assert Float("lr", 1e-4, 1.0, "log").grid(1) == pytest.approx([1e-2])


@pytest.mark.parametrize(
    "param",
    [
        Float("lr", 1e-4, 1.0, "log"),
        Float("lr", 1e-3, 0.1, "log"),
        Float("m", 0.9, 0.999, "log1m"),
        Float("x", 0.1, 0.7),
    ],
    ids=["log-1e-4", "log-1e-3", "log1m", "linear"],
)
def test_grid_ends_are_the_range_ends_exactly(param):
    # The ends of a grid are the bounds the user wrote, not values a rounding error away
    # (a log grid over [1e-4, 1] must start at 1e-4, not 1.0000000000000009e-4).
    grid = param.grid(4)
    assert grid[0] == param.low and grid[-1] == param.high
    assert param.from_unit(0.0) == param.low and param.from_unit(1.0) == param.high


def test_int_grids():
    assert Int("n", 1, 5).grid(5) == [1, 2, 3, 4, 5]
    assert Int("n", 1, 5).grid(3) == [1, 3, 5]
    assert Int("n", 1, 3).grid(10) == [1, 2, 3]  # no repeats when asking for more points than values
    assert Int("n", 1, 99, "log").grid(2) == [1, 99]  # both ends included
    assert Int("n", 1, 1000, "log").grid(4) == [1, 10, 100, 1000]  # evenly spaced in log scale
    assert all(isinstance(v, int) for v in Int("n", 1, 5).grid(3))


def test_choice_grid_is_every_choice():
    p = Choice("opt", ("sgd", "adam", "rmsprop"))
    assert p.grid(1) == ["sgd", "adam", "rmsprop"]
    assert p.grid(7) == ["sgd", "adam", "rmsprop"]


def test_space_grid_order_and_count():
    space = Space.parse(
        {
            "a": {"choices": ["x", "y"]},
            "b": {"low": 1, "high": 3, "type": "int"},
            "c": {"low": 0.0, "high": 1.0},
        }
    )
    grid = space.grid(2)
    assert len(grid) == 2 * 2 * 2
    assert [tuple(p.values()) for p in grid] == [
        ("x", 1, 0.0),
        ("x", 1, 1.0),
        ("x", 3, 0.0),
        ("x", 3, 1.0),
        ("y", 1, 0.0),
        ("y", 1, 1.0),
        ("y", 3, 0.0),
        ("y", 3, 1.0),
    ]
    per_param = space.grid({"b": 3, "c": 4})
    assert len(per_param) == 2 * 3 * 4
    assert [p["c"] for p in per_param[:4]] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])  # last varies fastest
    assert [p["a"] for p in per_param] == ["x"] * 12 + ["y"] * 12  # first varies slowest
    assert len(space.grid()) == 2 * 3 * 3  # three points per numeric parameter by default
    assert list(Space().grid()) == [{}]


def test_a_huge_grid_is_computed_point_by_point():
    space = Space.parse({f"p{i}": {"low": 0.0, "high": 9.0} for i in range(10)})
    grid = space.grid(10)
    assert len(grid) == 10**10
    assert grid[1234567890] == {f"p{i}": float(d) for i, d in enumerate("1234567890")}
    assert grid[-1] == {f"p{i}": 9.0 for i in range(10)}
    with pytest.raises(IndexError):
        grid[10**10]


def test_grid_needs_a_point():
    with pytest.raises(ValueError):
        Float("x", 0.0, 1.0).grid(0)


# --------------------------------------------------------------------------------------
# The unit interval
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "param",
    [Float("x", -3.0, 5.0), Float("lr", 1e-5, 10.0, "log"), Float("m", 0.5, 0.9999, "log1m")],
    ids=["linear", "log", "log1m"],
)
def test_float_unit_round_trip(param):
    for u in np.linspace(0, 1, 11):
        assert param.to_unit(param.from_unit(u)) == pytest.approx(u, abs=1e-9)
    for value in param.grid(7):
        assert param.from_unit(param.to_unit(value)) == pytest.approx(value, rel=1e-9)
    assert param.to_unit(param.low) == pytest.approx(0.0, abs=1e-12)
    assert param.to_unit(param.high) == pytest.approx(1.0)


def test_unit_positions_follow_the_scale():
    assert Float("lr", 1e-4, 1.0, "log").to_unit(1e-2) == pytest.approx(0.5)
    assert Float("m", 0.9, 0.999, "log1m").to_unit(0.99) == pytest.approx(0.5)
    assert Float("x", 0.0, 10.0).to_unit(2.5) == pytest.approx(0.25)
    assert Float("x", 0.0, 10.0).from_unit(1.5) == 10.0  # clamped to the range


@pytest.mark.parametrize("param", [Int("n", -3, 7), Int("n", 1, 1000, "log")], ids=["linear", "log"])
def test_int_unit_round_trip(param):
    for k in range(param.low, param.high + 1):
        u = param.to_unit(k)
        assert 0 <= u <= 1
        assert param.from_unit(u) == k


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------


def test_parse_builds_each_kind():
    space = Space.parse(
        {
            "train.lr": {"low": 1e-4, "high": 1, "scale": "log"},
            "train.momentum": {"low": 0.9, "high": 0.999, "scale": "log1m"},
            "model.layers": {"low": 1, "high": 3, "type": "int"},
            "model.width": {"low": 16, "high": 256, "type": "int", "scale": "log"},
            "model.hidden": {"choices": [[32], [64]]},
        }
    )
    assert space["train.lr"] == Float("train.lr", 1e-4, 1.0, "log")
    assert isinstance(space["train.lr"].high, float)
    assert space["train.momentum"] == Float("train.momentum", 0.9, 0.999, "log1m")
    assert space["model.layers"] == Int("model.layers", 1, 3)
    assert space["model.width"] == Int("model.width", 16, 256, "log")
    assert space["model.hidden"] == Choice("model.hidden", ([32], [64]))
    assert len(space) == 5 and next(p.path for p in space) == "train.lr"
    assert Space.parse(space.to_json()).to_json() == space.to_json()
    with pytest.raises(KeyError):
        space["train.nope"]


def parse_error(data) -> SpecError:
    with pytest.raises(SpecError) as info:
        Space.parse(data)
    return info.value


def test_log_low_must_be_positive_exact_message():
    err = parse_error({"train.lr": {"low": 0, "high": 1, "scale": "log"}})
    assert str(err) == 'search.space.train.lr.low: must be > 0 for scale "log", got 0'
    assert err.path == "search.space.train.lr.low"


@pytest.mark.parametrize(
    "param, message",
    [
        ({"low": -1, "high": 10, "type": "int", "scale": "log"}, 'p.low: must be > 0 for scale "log", got -1'),
        ({"low": 0.9, "high": 1, "scale": "log1m"}, 'p.high: must be < 1 for scale "log1m", got 1'),
        ({"low": 0.5, "high": 1.5, "scale": "log1m"}, 'p.high: must be < 1 for scale "log1m", got 1.5'),
        ({"low": 2, "high": 1}, "p.high: must be greater than low (2), got 1"),
        ({"low": 1, "high": 1, "type": "int"}, "p.high: must be greater than low (1), got 1"),
        ({"low": 0, "high": 1, "step": 0.1}, "p.step: unknown key; known keys: choices, high, low, scale, type"),
        ({"choices": [1, 2], "low": 0}, 'p.low: unknown key; a choice parameter takes only "choices"'),
        ({"choices": []}, "p.choices: must be a non-empty list"),
        ({"choices": "abc"}, "p.choices: must be a non-empty list"),
        ({"low": "a", "high": 1}, 'p.low: must be a finite number, got "a"'),
        ({"low": 0, "high": True}, "p.high: must be a finite number, got true"),
        ({"low": 0, "high": float("inf")}, "p.high: must be a finite number, got inf"),
        ({"low": 0.5, "high": 3, "type": "int"}, "p.low: must be an integer, got 0.5"),
        ({"low": 0, "high": 1, "type": "str"}, 'p.type: must be "float" or "int", got "str"'),
        (
            {"low": 1, "high": 9, "type": "int", "scale": "log1m"},
            'p.scale: must be one of "linear", "log" for type "int", got "log1m"',
        ),
        (
            {"low": 1, "high": 9, "scale": "exp"},
            'p.scale: must be one of "linear", "log", "log1m" for type "float", got "exp"',
        ),
        ({"high": 9}, "p.low: is required"),
        ({"low": 1}, "p.high: is required"),
        ([1, 2], "p: must be an object"),
    ],
)
def test_parse_errors_name_the_key(param, message):
    err = parse_error({"p": param})
    assert str(err).startswith("search.space.")
    assert str(err).removeprefix("search.space.").startswith(message)


def test_parse_rejects_bad_keys_and_sections():
    assert str(parse_error([])) == "search.space: must be an object mapping dotted config paths to parameters"
    err = parse_error({"train..lr": {"low": 0, "high": 1}})
    assert err.path == "search.space.train..lr" and "dotted path" in str(err)
    err = parse_error({"ok": {"low": 0, "high": 1}, "bad": {"choices": []}})
    assert err.path == "search.space.bad.choices"
    with pytest.raises(SpecError) as info:
        parse_param("x", {"low": 0, "high": 1, "scale": "log"}, "spec.x")
    assert str(info.value) == 'spec.x.low: must be > 0 for scale "log", got 0'
