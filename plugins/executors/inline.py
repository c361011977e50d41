"""The inline executor: trials run one after another in the driver's own process."""

from __future__ import annotations

from collections import deque

from runner import Executor, TrialResult, hookimpl


class InlineExecutor(Executor):
    name = "inline"

    def __init__(self, options, *, run_trial, session):
        super().__init__(options, run_trial=run_trial, session=session)
        self._queue: deque = deque()

    def has_room(self) -> bool:
        return not self._queue

    def submit(self, job) -> None:
        self._queue.append(job)

    def pending(self) -> int:
        return len(self._queue)

    def next_result(self) -> TrialResult:
        return self.run_trial(self._queue.popleft())


@hookimpl
def runner_register(registry):
    registry.add_executor(InlineExecutor)
