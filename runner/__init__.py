"""runner: a plugin-based experiment runner for tuning neural networks.

Plugin authors import what they need from here::

    from runner import hookimpl, Strategy, Backend, Nudge, Stop

The public API is the names in ``__all__`` below and the modules in ``PUBLIC_MODULES``
(each names its public names in its own ``__all__``); every other module is internal and
may change. The built-in plugins (``runner.plugins``) import nothing else, as a third
party's would (``tests/test_public_api.py`` checks them).

Scripts and notebooks run experiments with ``runner.run`` (``runner.api``), which returns a
``runner.RunResult``. Every name loads on first use, so ``import runner`` stays light (the
``runner`` command answers ``--help``, ``status`` and ``nudge`` without loading NumPy).
"""

from typing import TYPE_CHECKING

import pluggy

__version__ = "0.3.0"
"""The one place the version is written; pyproject.toml reads it from here."""

hookimpl = pluggy.HookimplMarker("runner")
"""Marks a function or method as an implementation of a ``runner_*`` hook."""

if TYPE_CHECKING:  # what the names below resolve to, for type checkers and editors
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

# name -> the module it lives in: imported on first use, so that `import runner` (and the
# `runner` command's --help, status and nudge) does not load NumPy and the engine
_LAZY = {
    "Babysitter": "runner.babysitter",
    "Backend": "runner.backend",
    "BackendState": "runner.backend",
    "bounds": "runner.experiment_file.typed",
    "check_raw": "runner.data",
    "Checkpoint": "runner.decisions",
    "Choice": "runner.experiment_file.space",
    "Continue": "runner.strategy",
    "Curves": "runner.pruner",
    "DataOptions": "runner.data",
    "Dataset": "runner.data",
    "DatasetPlugin": "runner.data",
    "DataSize": "runner.experiment_file.limits",
    "dead_fraction": "runner.backend",
    "Decision": "runner.decisions",
    "default_mode": "runner.trial",
    "Executor": "runner.executor",
    "Finish": "runner.decisions",
    "Float": "runner.experiment_file.space",
    "History": "runner.history",
    "import_object": "runner.imports",
    "Int": "runner.experiment_file.space",
    "join_path": "runner.errors",
    "ModelSize": "runner.experiment_file.limits",
    "NoOptions": "runner.backend",
    "Note": "runner.decisions",
    "Nudge": "runner.decisions",
    "Param": "runner.experiment_file.space",
    "Pause": "runner.decisions",
    "Prune": "runner.decisions",
    "Pruner": "runner.pruner",
    "RawData": "runner.data",
    "Registry": "runner.registry",
    "Rollback": "runner.decisions",
    "RunnerError": "runner.errors",
    "Space": "runner.experiment_file.space",
    "SpecError": "runner.errors",
    "Stop": "runner.decisions",
    "Strategy": "runner.strategy",
    "Suspend": "runner.decisions",
    "TrainConfig": "runner.backend",
    "Trial": "runner.trial",
    "TrialRecord": "runner.trial",
    "TrialResult": "runner.trial",
    "Unpause": "runner.decisions",
    "run": "runner.api",
    "RunResult": "runner.api",
    "read_snapshot": "runner.engine.snapshot_files",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # found once; later lookups do not come here
        return value
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
