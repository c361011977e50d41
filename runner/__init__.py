"""runner: a plugin-based experiment runner for tuning neural networks.

Plugin authors import what they need from here::

    from runner import hookimpl, Strategy, Backend, Nudge, Stop

The public API is the names in ``__all__`` below and the modules in ``PUBLIC_MODULES``
(each names its public names in its own ``__all__``); every other module is internal and
may change. The built-in plugins (``runner.plugins``) import nothing else, as a third
party's would (``tests/test_public_api.py`` checks them).

Scripts and notebooks run experiments with ``runner.run`` (``runner.api``), which returns a
``runner.RunResult``; both load on first use, so ``import runner`` stays light.
"""

import pluggy

__version__ = "0.3.0"
"""The one place the version is written; pyproject.toml reads it from here."""

hookimpl = pluggy.HookimplMarker("runner")
"""Marks a function or method as an implementation of a ``runner_*`` hook."""

from runner.babysitter import Babysitter
from runner.backend import Backend, BackendState, NoOptions, TrainConfig, dead_fraction
from runner.data import DataOptions, Dataset, DatasetPlugin, RawData, check_raw
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
    Suspend,
    Unpause,
)
from runner.errors import RunnerError, SpecError, join_path
from runner.executor import Executor
from runner.experiment_file.limits import DataSize, ModelSize
from runner.experiment_file.space import Choice, Float, Int, Param, Space
from runner.experiment_file.typed import bounds
from runner.history import History
from runner.imports import import_object
from runner.pruner import Curves, Pruner
from runner.registry import Registry
from runner.strategy import Continue, Strategy
from runner.trial import Trial, TrialRecord, TrialResult, default_mode

PUBLIC_MODULES = (
    "runner.executor",  # the executor contract, and the kit for executors that run trials elsewhere
    "runner.inputs",  # bounded regular files: how a dataset reads the files it is given
    "runner.report",  # what ``runner_report_figures`` receives and returns, and the figure helpers
    "runner.testing",  # conformance suites, for a plugin's own tests
    "runner.torch_state",  # pickle-free state of a Torch model, for a backend's ``state``/``load_state``
)
"""The modules a plugin may import from besides ``runner`` itself (and its own package):
the public names of each are its ``__all__``."""

# name -> module, imported on first use
_LAZY = {"run": "runner.api", "RunResult": "runner.api", "read_snapshot": "runner.engine.snapshot_files"}


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
    "Choice",
    "Continue",
    "Curves",
    "DataOptions",
    "DataSize",
    "Dataset",
    "DatasetPlugin",
    "Decision",
    "Executor",
    "Finish",
    "Float",
    "History",
    "Int",
    "ModelSize",
    "NoOptions",
    "Note",
    "Nudge",
    "Param",
    "Pause",
    "Prune",
    "Pruner",
    "RawData",
    "Registry",
    "Rollback",
    "RunResult",
    "RunnerError",
    "Space",
    "SpecError",
    "Stop",
    "Strategy",
    "Suspend",
    "TrainConfig",
    "Trial",
    "TrialRecord",
    "TrialResult",
    "Unpause",
    "bounds",
    "check_raw",
    "dead_fraction",
    "default_mode",
    "hookimpl",
    "import_object",
    "join_path",
    "read_snapshot",
    "run",
]
