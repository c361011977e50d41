"""The executor contract: where trials run (in this process, a pool of processes, a cluster).

The driver hands an executor jobs while it has room and collects results as trials end::

    while strategy has work:
        while executor.has_room(): executor.submit(job)
        result = executor.next_result()

``run_trial`` is the function that trains one job to its end; an in-process executor calls
it directly. An executor that runs trials elsewhere builds the same function where the
trial runs, from ``session.setup``, and carries what the trial writes (events) and reads
(orders from the control file) across.

This module is public (``runner.PUBLIC_MODULES``): it is the whole kit for writing an
executor, and its ``__all__`` is all a plugin imports for one. Besides the contract:

- the driver's end, ``RemoteExecutor`` (``runner.execution.remote``): the base of executors whose
  trials run in other processes; a subclass provides only the transport;
- the worker's end (``runner.execution.worker`` lists the messages between the two):
  ``WorkerSetup`` (what ``session.setup`` holds: picklable, sent once to each worker),
  ``WorkerLink`` (the driver as the worker's trial loop sees it), ``build_runner(setup,
  link, writer)`` (the worker's trial runner, built once), ``run_job(runner, link, job)``
  (train one job and tell the driver how it ended) and ``SnapshotWriter`` (the worker's
  background thread that writes snapshots; ``close()`` it when the worker ends).

These load on first use, so a run that keeps its trials in-process never imports them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from runner.backend import NoOptions
from runner.registry import PluginOptions
from runner.trial import TrialResult

if TYPE_CHECKING:
    from runner.control.inbox import ControlInbox
    from runner.engine.checkpoints import SnapshotWriter
    from runner.execution.remote import RemoteExecutor
    from runner.execution.worker import WorkerLink, WorkerSetup, build_runner, run_job
    from runner.records.events import EventLog

__all__ = [
    "Executor",
    "RemoteExecutor",
    "Session",
    "SnapshotWriter",
    "WorkerLink",
    "WorkerSetup",
    "build_runner",
    "run_job",
]


@dataclass
class Session:
    """The driver's side of a run, as an executor that runs trials elsewhere needs it."""

    setup: WorkerSetup  # picklable: what a worker builds its own trial runner from
    log: EventLog  # the one event log: what workers send is written here, in the order it comes
    inbox: ControlInbox  # the control file's orders, for trials wherever they run
    hook: Any  # the driver's hooks (``runner_trial_complete`` for a trial whose worker died for good)
    run_dir: Path
    metric: str
    logged: Counter  # trial id -> its events in the log so far
    plugin_options: Mapping[str, Any] = field(default_factory=PluginOptions)  # the experiment's, for a Trial made here


class Executor(ABC):
    """Base of executors. Subclass it and register it in ``runner_register``."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any, *, run_trial: Callable[[Any], TrialResult], session: Session):
        self.options = options
        self.run_trial = run_trial
        self.session = session

    @abstractmethod
    def has_room(self) -> bool:
        """True while another trial can be submitted without waiting."""

    @abstractmethod
    def submit(self, job: Any) -> None:
        """Start (or queue) one trial."""

    @abstractmethod
    def pending(self) -> int:
        """Trials submitted whose result has not been returned yet."""

    @abstractmethod
    def next_result(self) -> TrialResult:
        """Block until a submitted trial ends; return its result."""

    def close(self, *, aborting: bool = False) -> None:
        """Release workers. Called once, at the end of the run: also after Ctrl-C (trials
        still running elsewhere are let finish their snapshot first) and after an error
        or a second Ctrl-C (``aborting``: stop at once)."""


_KIT = {  # name -> the module it lives in, imported on first use
    "RemoteExecutor": "runner.execution.remote",
    "SnapshotWriter": "runner.engine.checkpoints",
    "WorkerLink": "runner.execution.worker",
    "WorkerSetup": "runner.execution.worker",
    "build_runner": "runner.execution.worker",
    "run_job": "runner.execution.worker",
}


def __getattr__(name: str):
    if name in _KIT:
        import importlib

        return getattr(importlib.import_module(_KIT[name]), name)
    raise AttributeError(f"module 'runner.executor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_KIT))
