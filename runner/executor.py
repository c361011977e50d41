"""The executor contract: where trials run (in this process, a pool of processes, a cluster).

The driver hands an executor jobs while it has room and collects results as trials end::

    while strategy has work:
        while executor.has_room(): executor.submit(job)
        result = executor.next_result()

``run_trial`` is the function that trains one job to its end; an in-process executor calls
it directly, others call it where the trial runs. It writes events and takes the control
file's orders through objects of the driver's process (the event log, the control inbox),
so an executor that runs trials elsewhere must carry those across.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from runner.backend import NoOptions
from runner.trial import TrialResult


class Executor(ABC):
    """Base of executors. Subclass it and register it in ``runner_register``."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any, *, run_trial: Callable[[Any], TrialResult]):
        self.options = options
        self.run_trial = run_trial

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

    def close(self) -> None:
        """Release workers. Called once, at the end of the run, also after an error."""
