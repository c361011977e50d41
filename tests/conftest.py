"""Shared fixtures: small, fast experiments on the synthetic spirals data."""

from __future__ import annotations

import copy
from pathlib import Path

import orjson
import pytest

from runner.plugins import load_plugins

ROOT = Path(__file__).resolve().parent.parent

QUICK = {
    "name": "quick",
    "seed": 0,
    "data": {"name": "spirals", "classes": 3, "points_per_class": 40},
    "model": {"hidden": [16], "batch_norm": True},
    "train": {"epochs": 2, "batch_size": 32, "optimizer": "adam", "lr": 0.01},
    "checkpoint": {"min_interval": 0},  # every due snapshot becomes a file: deterministic events
    "search": {
        "strategy": {"name": "grid"},
        "metric": "val_acc",
        "space": {"model.hidden": {"choices": [[8], [16]]}},
    },
}


def deep_update(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` merged in; a value of None deletes the key."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def write_experiment(tmp_path):
    """Write the quick experiment, with changes merged in, to a file; return its path."""

    def write(changes: dict | None = None, name: str = "exp.json") -> Path:
        path = tmp_path / name
        path.write_bytes(orjson.dumps(deep_update(QUICK, changes or {})))
        return path

    return write


@pytest.fixture
def plugins():
    return load_plugins()
