"""runner: a plugin-based experiment runner for tuning neural networks.

Plugin authors import what they need from here::

    from runner import hookimpl, Strategy, Backend, Nudge, Stop
"""

from importlib.metadata import PackageNotFoundError, version

import pluggy

hookimpl = pluggy.HookimplMarker("runner")
"""Marks a function or method as an implementation of a ``runner_*`` hook."""

from runner.babysitter import Babysitter  # noqa: E402
from runner.backend import Backend, BackendState, NoOptions, TrainConfig  # noqa: E402
from runner.data import DataOptions, Dataset, DatasetPlugin, RawData  # noqa: E402
from runner.decisions import (  # noqa: E402
    Checkpoint, Decision, Finish, Note, Nudge, Pause, Prune, Rollback, Stop, Unpause,
)
from runner.errors import RunnerError, SpecError  # noqa: E402
from runner.executor import Executor  # noqa: E402
from runner.registry import Registry  # noqa: E402
from runner.space import Space  # noqa: E402
from runner.strategy import Strategy  # noqa: E402
from runner.trial import History, Trial, TrialResult  # noqa: E402
from runner.typed import bounds  # noqa: E402

try:
    __version__ = version("runner")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Babysitter", "Backend", "BackendState", "Checkpoint", "DataOptions", "Dataset", "DatasetPlugin", "Decision",
    "Executor", "Finish", "History", "NoOptions", "Note", "Nudge", "Pause", "Prune", "RawData", "Registry", "Rollback", "RunnerError", "Space",
    "SpecError", "Stop", "Strategy", "TrainConfig", "Trial", "TrialResult", "Unpause", "bounds", "hookimpl",
]
