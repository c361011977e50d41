"""Search spaces: parameters, their scales, random sampling and grids.

A space maps dotted paths into the base config (``train.lr``) to parameters::

    {"train.lr":       {"low": 1e-4, "high": 1.0, "scale": "log"},
     "train.momentum": {"low": 0.9,  "high": 0.999, "scale": "log1m"},
     "model.layers":   {"low": 1, "high": 3, "type": "int"},
     "model.hidden":   {"choices": [[32], [64], [128, 64]]}}

Each numeric parameter maps its range onto the unit interval in its own scale (``to_unit``
and ``from_unit``): uniform for ``linear``, uniform in log(x) for ``log``, uniform in
log(1 - x) for ``log1m``. Sampling draws a uniform number in [0, 1) and maps it back, so a
log-scaled lr in [1e-4, 1] lands in each decade equally often; grids are evenly spaced in
the same unit interval.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from runner.errors import SpecError, join_path

Scale = Literal["linear", "log", "log1m"]
SCALES = ("linear", "log", "log1m")


class Param(ABC):
    """One searched parameter at ``path`` (a dotted path into the config)."""

    path: str

    @abstractmethod
    def sample(self, rng: np.random.Generator) -> Any:
        """One value drawn with ``rng``."""

    @abstractmethod
    def grid(self, points: int) -> list[Any]:
        """Values of a grid: ``points`` evenly spaced in the parameter's scale (all choices for a choice)."""

    @abstractmethod
    def to_json(self) -> dict[str, Any]:
        """The parameter as written in an experiment file."""

    def extremes(self) -> list[Any]:
        """The values that take a trial furthest in each direction: both ends of a range
        (every choice, for a choice). Checked when the file is read, so that no trial the
        search can make breaks a plugin's rule or a size limit."""
        return [self.low, self.high]


@dataclass(frozen=True)
class Float(Param):
    path: str
    low: float
    high: float
    scale: Scale = "linear"

    def to_unit(self, value: float) -> float:
        """Position of ``value`` in [0, 1], measured in this parameter's scale."""
        a, b = self._warp(self.low), self._warp(self.high)
        return (self._warp(value) - a) / (b - a)

    def from_unit(self, u: float) -> float:
        """The value at position ``u`` in [0, 1] of this parameter's scale."""
        if u <= 0.0:
            return self.low
        if u >= 1.0:
            return self.high
        a, b = self._warp(self.low), self._warp(self.high)
        return float(min(max(self._unwarp(a + u * (b - a)), self.low), self.high))

    def sample(self, rng: np.random.Generator) -> float:
        return self.from_unit(float(rng.random()))

    def grid(self, points: int) -> list[float]:
        return [self.from_unit(u) for u in _unit_grid(points)]

    def to_json(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "scale": self.scale}

    def _warp(self, x: float) -> float:
        if self.scale == "log":
            return math.log(x)
        if self.scale == "log1m":
            return math.log(1.0 - x)
        return x

    def _unwarp(self, w: float) -> float:
        if self.scale == "log":
            return math.exp(w)
        if self.scale == "log1m":
            return 1.0 - math.exp(w)
        return w


@dataclass(frozen=True)
class Int(Param):
    """Integers in [low, high], both included; ``log`` makes each factor of 10 equally likely."""

    path: str
    low: int
    high: int
    scale: Literal["linear", "log"] = "linear"

    def to_unit(self, value: int) -> float:
        a, b = self._edges()
        return (self._warp(value + 0.5) - a) / (b - a)

    def unit_cell(self, value: int) -> tuple[float, float]:
        """The part of [0, 1] that ``value`` owns: ``from_unit`` maps every point of it to ``value``."""
        a, b = self._edges()
        return (self._warp(value) - a) / (b - a), (self._warp(value + 1) - a) / (b - a)

    def from_unit(self, u: float) -> int:
        a, b = self._edges()
        return int(min(max(math.floor(self._unwarp(a + u * (b - a))), self.low), self.high))

    def sample(self, rng: np.random.Generator) -> int:
        return self.from_unit(float(rng.random()))

    def grid(self, points: int) -> list[int]:
        """Evenly spaced in the scale from low to high, both ends included, rounded, unique."""
        a, b = self._warp(self.low), self._warp(self.high)
        values = [int(round(self._unwarp(a + u * (b - a)))) for u in _unit_grid(points)]  # noqa: RUF046 (NumPy 1.x rounds to a float)
        return list(dict.fromkeys(min(max(v, self.low), self.high) for v in values))

    def to_json(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "scale": self.scale, "type": "int"}

    def _edges(self) -> tuple[float, float]:
        # Each integer k owns the interval [k, k + 1) of the continuous scale.
        return self._warp(self.low), self._warp(self.high + 1)

    def _warp(self, x: float) -> float:
        return math.log(x) if self.scale == "log" else x

    def _unwarp(self, w: float) -> float:
        return math.exp(w) if self.scale == "log" else w


@dataclass(frozen=True)
class Choice(Param):
    path: str
    choices: tuple[Any, ...]

    def sample(self, rng: np.random.Generator) -> Any:
        return self.choices[int(rng.integers(len(self.choices)))]

    def grid(self, points: int) -> list[Any]:
        return list(self.choices)

    def extremes(self) -> list[Any]:
        return list(self.choices)

    def to_json(self) -> dict[str, Any]:
        return {"choices": list(self.choices)}


class Space:
    """An ordered set of parameters. Order is the experiment file's order."""

    def __init__(self, params: list[Param] | tuple[Param, ...] = ()):
        self.params: tuple[Param, ...] = tuple(params)

    def __len__(self) -> int:
        return len(self.params)

    def __iter__(self):
        return iter(self.params)

    def __getitem__(self, path: str) -> Param:
        for p in self.params:
            if p.path == path:
                return p
        raise KeyError(path)

    @classmethod
    def parse(cls, data: Any, path: str = "search.space") -> Space:
        """Build a space from its JSON object; raise SpecError naming the offending key."""
        if not isinstance(data, Mapping):
            raise SpecError(path, "must be an object mapping dotted config paths to parameters")
        return cls([parse_param(key, value, join_path(path, key)) for key, value in data.items()])

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """One point: every parameter drawn in order from the one ``rng``."""
        return {p.path: p.sample(rng) for p in self.params}

    def grid(self, points: int | Mapping[str, int] = 3) -> Grid:
        """Every combination, the first parameter varying slowest and the last fastest.

        ``points`` is the number of values per numeric parameter, or a mapping from path to
        that number; choices always contribute all their values. The grid is computed point
        by point on demand, so a huge grid costs no memory.
        """
        axes = []
        for p in self.params:
            n = points.get(p.path, 3) if isinstance(points, Mapping) else points
            axes.append(p.grid(n))
        return Grid([p.path for p in self.params], axes)

    def to_json(self) -> dict[str, Any]:
        return {p.path: p.to_json() for p in self.params}


def _json(value: Any) -> str:
    """A value as it reads in an experiment file (infinities and NaN as Python writes them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return str(value)


class Grid(Sequence):
    """The points of a grid, in order; point k is computed from k (mixed-radix digits)."""

    def __init__(self, paths: list[str], axes: list[list[Any]]):
        self.paths, self.axes = paths, axes
        self._size = math.prod(len(a) for a in axes)

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._size))]
        if index < 0:
            index += self._size
        if not 0 <= index < self._size:
            raise IndexError(f"grid point {index} out of range (the grid has {self._size})")
        values = []
        for axis in reversed(self.axes):  # the last parameter varies fastest
            index, digit = divmod(index, len(axis))
            values.append(axis[digit])
        return dict(zip(self.paths, reversed(values)))


def parse_param(key: str, value: Any, path: str) -> Param:
    """One parameter from its JSON form (see the module docstring)."""
    if not isinstance(value, Mapping):
        raise SpecError(path, 'must be an object: {"low": .., "high": .., "scale": ..} or {"choices": [..]}')
    if not key or any(not part for part in key.split(".")):
        raise SpecError(path, "the key must be a dotted path into the config, such as train.lr")
    if "choices" in value:
        extra = sorted(set(value) - {"choices"})
        if extra:
            raise SpecError(join_path(path, extra[0]), 'unknown key; a choice parameter takes only "choices"')
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            raise SpecError(join_path(path, "choices"), "must be a non-empty list")
        return Choice(key, tuple(choices))

    extra = sorted(set(value) - {"low", "high", "scale", "type"})
    if extra:
        raise SpecError(join_path(path, extra[0]), "unknown key; known keys: choices, high, low, scale, type")
    kind = value.get("type", "float")
    if kind not in ("float", "int"):
        raise SpecError(join_path(path, "type"), f'must be "float" or "int", got {_json(kind)}')
    scale = value.get("scale", "linear")
    allowed = SCALES if kind == "float" else ("linear", "log")
    if scale not in allowed:
        names = ", ".join(f'"{s}"' for s in allowed)
        raise SpecError(join_path(path, "scale"), f'must be one of {names} for type "{kind}", got {_json(scale)}')
    for bound in ("low", "high"):
        if bound not in value:
            raise SpecError(join_path(path, bound), "is required")
        v = value[bound]
        ok = isinstance(v, int) if kind == "int" else isinstance(v, (int, float)) and math.isfinite(v)
        if isinstance(v, bool) or not ok:
            raise SpecError(
                join_path(path, bound),
                f"must be {'an integer' if kind == 'int' else 'a finite number'}, got {_json(v)}",
            )
    low, high = value["low"], value["high"]
    if scale == "log" and low <= 0:
        raise SpecError(join_path(path, "low"), f'must be > 0 for scale "log", got {low}')
    if scale == "log1m" and high >= 1:
        raise SpecError(join_path(path, "high"), f'must be < 1 for scale "log1m", got {high}')
    if not low < high:
        raise SpecError(join_path(path, "high"), f"must be greater than low ({low}), got {high}")
    if kind == "int":
        return Int(key, int(low), int(high), scale)
    return Float(key, float(low), float(high), scale)


def _unit_grid(points: int) -> list[float]:
    """Evenly spaced positions in [0, 1], ends included (the middle for one point)."""
    if points < 1:
        raise ValueError("a grid needs at least one point per parameter")
    if points == 1:
        return [0.5]
    return [i / (points - 1) for i in range(points)]
