"""Build frozen dataclasses from parsed JSON, with errors that name the JSON path.

Every section of an experiment file, the core's and each plugin's, is a frozen dataclass.
``build(cls, data, path)`` checks each field against its annotation and its ``bounds``
metadata and returns an instance; unknown keys and missing required keys are errors.
Plugin authors declare their options the same way::

    @dataclass(frozen=True)
    class Options:
        trials: int = field(default=20, metadata=bounds(ge=1))
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin

from runner.errors import SpecError, join_path

_JSON_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def bounds(*, gt=None, ge=None, lt=None, le=None, doc: str | None = None) -> dict:
    """Field metadata: numeric bounds (checked on build) and a one-line description."""
    return {"bounds": {"gt": gt, "ge": ge, "lt": lt, "le": le}, "doc": doc}


def build(cls: type, data: Any, path: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``data`` (a JSON object); raise SpecError on misfit."""
    if not isinstance(data, Mapping):
        raise SpecError(path, f"must be an object, got {describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        hint = difflib.get_close_matches(key, list(fields), n=1)
        suggestion = f' (did you mean "{hint[0]}"?)' if hint else ""
        known = ", ".join(sorted(fields)) or "none"
        raise SpecError(join_path(path, key), f"unknown key{suggestion}; known keys: {known}")
    hints = type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpecError(join_path(path, name), "is required")
            continue
        where = join_path(path, name)
        value = convert(hints[name], data[name], where)
        check_bounds(f.metadata.get("bounds"), value, where)
        values[name] = value
    try:
        instance = cls(**values)
        check = getattr(instance, "check", None)
        if callable(check):
            check(path)
    except ValueError as err:  # a plugin's own check in __post_init__ or check(): bad input, not a bug
        raise SpecError(path, str(err) or f"{cls.__qualname__} refused these options") from None
    return instance


def check_field(cls: type, name: str, value: Any, path: str) -> Any:
    """Check one value for field ``name`` of dataclass ``cls`` (type and bounds); return it converted."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            value = convert(type_hints(cls)[name], value, path)
            check_bounds(f.metadata.get("bounds"), value, path)
            return value
    raise SpecError(path, f"unknown key; known keys: {', '.join(f.name for f in dataclasses.fields(cls))}")


def convert(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against type ``tp`` and convert it (lists to tuples, ints to floats)."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            choices = ", ".join(_quote(a) for a in allowed)
            raise SpecError(path, f"must be one of {choices}, got {_quote(value)}")
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(option, value, path)
            except SpecError as err:
                errors.append(err)
        raise errors[0] if len(errors) == 1 else SpecError(path, f"must be {_type_name(tp)}, got {describe(value)}")
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, list):
            raise SpecError(path, f"must be a list, got {describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(args[0], v, join_path(path, i)) for i, v in enumerate(value))
        if len(value) != len(args):
            raise SpecError(path, f"must be a list of {len(args)} items, got {len(value)}")
        return tuple(convert(a, v, join_path(path, i)) for i, (a, v) in enumerate(zip(args, value)))
    if origin in (dict, Mapping, typing.Mapping) or tp is dict:
        if not isinstance(value, dict):
            raise SpecError(path, f"must be an object, got {describe(value)}")
        args = get_args(tp)
        value_type = args[1] if args else Any
        return {k: convert(value_type, v, join_path(path, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(path, f"must be a number, got {describe(value)}")
        if not math.isfinite(value):
            raise SpecError(path, f"must be a finite number, got {value}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(path, f"must be an integer, got {describe(value)}")
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise SpecError(path, f"must be {_JSON_NAMES[tp]}, got {describe(value)}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {path}")


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """A dataclass's resolved annotations (resolving them is slow; classes do not change)."""
    return typing.get_type_hints(cls)


def field_bounds(cls: type, name: str) -> dict[str, float]:
    """The numeric bounds dataclass ``cls`` declares for field ``name`` (``{"gt": 0}``);
    empty if it has none, or no such field."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return {k: v for k, v in (f.metadata.get("bounds") or {}).items() if v is not None}
    return {}


def check_bounds(rule: dict | None, value: Any, path: str) -> None:
    """SpecError naming ``path`` if the number ``value`` breaks ``rule`` (``field_bounds``)."""
    if not rule or not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    tests = (
        ("gt", ">", lambda v, b: v > b),
        ("ge", ">=", lambda v, b: v >= b),
        ("lt", "<", lambda v, b: v < b),
        ("le", "<=", lambda v, b: v <= b),
    )
    for key, symbol, ok in tests:
        limit = rule.get(key)
        if limit is not None and not ok(value, limit):
            raise SpecError(path, f"must be {symbol} {limit}, got {value}")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin is tuple:
        return "a list"
    if origin is Literal:
        return "one of " + ", ".join(_quote(a) for a in get_args(tp))
    return _JSON_NAMES.get(tp, "an object")


def describe(value: Any) -> str:
    """A JSON value as an error message names it: ``number -1``, ``string "adam"``, ``a list``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {_quote(value if len(value) <= 40 else value[:40] + '...')}"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _quote(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
