"""runner: a plugin-based experiment runner for tuning neural networks.

Plugin authors import what they need from here::

    from runner import hookimpl, Strategy, Backend, Nudge, Stop

Scripts and notebooks run experiments with ``runner.run`` (``runner.api``), which returns a
``runner.RunResult``; both load on first use, so ``import runner`` stays light.
"""

import pluggy

__version__ = "0.2.0"
"""The one place the version is written; pyproject.toml reads it from here."""

hookimpl = pluggy.HookimplMarker("runner")
"""Marks a function or method as an implementation of a ``runner_*`` hook."""

from runner.babysitter import Babysitter
from runner.backend import Backend, BackendState, NoOptions, TrainConfig
from runner.data import DataOptions, Dataset, DatasetPlugin, RawData
from runner.decisions import (
    Checkpoint,
    Decision,
    Finish,
    Note,
    Nudge,
    Pause,
    Prune,
    Rollback,
    Stop,
    Unpause,
)
from runner.errors import RunnerError, SpecError
from runner.executor import Executor
from runner.imports import import_object
from runner.limits import DataSize, ModelSize
from runner.registry import Registry
from runner.space import Space
from runner.strategy import Strategy
from runner.trial import History, Trial, TrialResult
from runner.typed import bounds

_LAZY = {"run": "runner.api", "RunResult": "runner.api"}  # name -> module, imported on first use


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'runner' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Babysitter",
    "Backend",
    "BackendState",
    "Checkpoint",
    "DataOptions",
    "DataSize",
    "Dataset",
    "DatasetPlugin",
    "Decision",
    "Executor",
    "Finish",
    "History",
    "ModelSize",
    "NoOptions",
    "Note",
    "Nudge",
    "Pause",
    "Prune",
    "RawData",
    "Registry",
    "Rollback",
    "RunResult",
    "RunnerError",
    "Space",
    "SpecError",
    "Stop",
    "Strategy",
    "TrainConfig",
    "Trial",
    "TrialResult",
    "Unpause",
    "bounds",
    "hookimpl",
    "import_object",
    "run",
]
