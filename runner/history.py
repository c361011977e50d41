"""The history strategies see: every trial asked for, and how those that ended ended."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from runner.records.fold import RunFold
from runner.trial import TrialRecord, TrialResult


class History:
    """Every trial of the experiment so far, in the order they were asked for.

    Strategies derive their progress from it, so a resumed run (whose history is rebuilt
    from the event log) needs no saved strategy state.
    """

    def __init__(self, records: list[TrialRecord] | None = None):
        self._records: list[TrialRecord] = list(records or [])

    @classmethod
    def from_events(cls, events: Iterable[dict[str, Any]]) -> History:
        """Rebuild the history from an event log: ``trial_queued`` (or, in a log written
        before runner 0.2, ``trial_start``) asks, ``trial_complete`` ends."""
        fold = RunFold.of(events, keep_epochs=False)  # the results alone
        ended = fold.results
        return cls([TrialRecord(trial_id, params, ended.get(trial_id)) for trial_id, params in fold.asked.items()])

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self):
        return iter(self._records)

    def __getitem__(self, index: int) -> TrialRecord:
        return self._records[index]

    @property
    def finished(self) -> list[TrialRecord]:
        return [r for r in self._records if r.result is not None]

    @property
    def running(self) -> list[TrialRecord]:
        return [r for r in self._records if r.result is None]

    def add(self, trial_id: int, params: dict[str, Any]) -> None:
        self._records.append(TrialRecord(trial_id, params))

    def finish(self, result: TrialResult) -> None:
        for i, record in enumerate(self._records):
            if record.id == result.trial:
                self._records[i] = TrialRecord(record.id, record.params, result)
                return
        raise KeyError(f"no trial {result.trial} in the history")
