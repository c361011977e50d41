"""The dataclass builder every config section goes through."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from runner import SpecError, bounds
from runner.experiment_file.typed import build, check_field


@dataclass(frozen=True)
class Inner:
    size: int = field(default=1, metadata=bounds(ge=1))


@dataclass(frozen=True)
class Outer:
    rate: float = field(metadata=bounds(gt=0, lt=1))
    kind: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (1,)
    inner: Inner = Inner()
    label: str | None = None
    flag: bool = False


def test_builds_and_converts():
    built = build(Outer, {"rate": 1e-3, "sizes": [3, 4], "inner": {"size": 2}, "flag": True})
    assert built == Outer(rate=0.001, sizes=(3, 4), inner=Inner(2), flag=True)
    assert isinstance(build(Outer, {"rate": 0}.copy() | {"rate": 1 // 2 + 0.5}).rate, float)


@pytest.mark.parametrize(
    "data, message",
    [
        ({}, "cfg.rate: is required"),
        ({"rate": 1.5}, "cfg.rate: must be < 1, got 1.5"),
        ({"rate": True}, "cfg.rate: must be a number, got boolean true"),
        ({"rate": 0.5, "kind": "c"}, 'cfg.kind: must be one of "a", "b", got "c"'),
        ({"rate": 0.5, "sizes": [1, "x"]}, 'cfg.sizes.1: must be an integer, got string "x"'),
        ({"rate": 0.5, "inner": {"size": 0}}, "cfg.inner.size: must be >= 1, got 0"),
        ({"rate": 0.5, "flag": 1}, "cfg.flag: must be a boolean, got number 1"),
        ({"rate": 0.5, "label": 3}, "cfg.label: must be a string, got number 3"),
        ({"rate": 0.5, "rat": 1}, 'cfg.rat: unknown key (did you mean "rate"?)'),
        ([], "cfg: must be an object, got a list"),
    ],
)
def test_errors_name_the_path(data, message):
    with pytest.raises(SpecError) as info:
        build(Outer, data, "cfg")
    assert str(info.value).startswith(message)


def test_check_field_uses_the_same_rules():
    assert check_field(Outer, "rate", 0.5, "nudge.rate") == 0.5
    with pytest.raises(SpecError, match=r"nudge.rate: must be > 0, got -1"):
        check_field(Outer, "rate", -1, "nudge.rate")
    with pytest.raises(SpecError, match="finite"):
        check_field(Outer, "rate", float("nan"), "nudge.rate")
