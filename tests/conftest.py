"""Shared fixtures: small, fast experiments on the synthetic spirals data."""

from __future__ import annotations

import os

os.environ["RUNNER_CHECK_EVENTS"] = "1"  # every event any run writes, here or in a subprocess, is checked

import copy
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from runner.engine.experiment import load_dataset
from runner.engine.loop import run_experiment
from runner.engine.plugin_manager import load_plugins
from runner.experiment_file.spec import load
from runner.records.files import create_run_dir

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


def run_file(path: Path, tmp_path: Path, extra=()) -> SimpleNamespace:
    """Run an experiment file in-process as ``runner start`` would; the outcome and the log."""
    plugins = load_plugins(extra)
    spec = load(path, plugins.registry)
    run_dir = create_run_dir(tmp_path / "runs", spec.name)
    board = run_experiment(spec, plugins, load_dataset(spec, plugins), run_dir)
    events = [orjson.loads(line) for line in (run_dir / "events.jsonl").read_bytes().splitlines()]
    return SimpleNamespace(board=board, events=events, run_dir=run_dir, plugins=plugins, spec=spec)


@pytest.fixture
def plugins():
    return load_plugins()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``torch`` skip, with the install command, where PyTorch is missing."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        skip = pytest.mark.skip(reason="needs PyTorch: pip install 'panda-caviar[torch]'")
        for item in items:
            if "torch" in item.keywords:
                item.add_marker(skip)
