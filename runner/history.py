"""The history strategies see: every trial asked for, and how those that ended ended."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
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
        before runner 0.2, ``trial_start``) asks, ``trial_suspend`` suspends,
        ``trial_continue`` continues, ``trial_complete`` ends."""
        fold = RunFold.of(events, keep_epochs=False)  # the results alone
        ended, begun = fold.results, fold.trials
        return cls(
            [
                TrialRecord(
                    trial_id,
                    params,
                    ended.get(trial_id),
                    tuple(begun[trial_id].suspensions) if trial_id in begun else (),
                    trial_id in begun and begun[trial_id].state == "suspended",
                )
                for trial_id, params in fold.asked.items()
            ]
        )

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
        """Trials asked for that have not ended and are not suspended."""
        return [r for r in self._records if r.result is None and not r.waiting]

    @property
    def waiting(self) -> list[TrialRecord]:
        """Suspended trials, waiting for their strategy to continue them."""
        return [r for r in self._records if r.waiting]

    def add(self, trial_id: int, params: dict[str, Any]) -> None:
        self._records.append(TrialRecord(trial_id, params))

    def finish(self, result: TrialResult) -> None:
        self._update(result.trial, result=result, waiting=False)

    def suspend(self, standing: TrialResult) -> None:
        """A trial was suspended (``standing.state`` is ``suspended``): it waits."""
        record = self._record(standing.trial)
        self._update(standing.trial, suspensions=(*record.suspensions, standing), waiting=True)

    def continue_trial(self, trial_id: int) -> None:
        """A suspended trial goes on."""
        self._update(trial_id, waiting=False)

    def _record(self, trial_id: int) -> TrialRecord:
        for record in self._records:
            if record.id == trial_id:
                return record
        raise KeyError(f"no trial {trial_id} in the history")

    def _update(self, trial_id: int, **changes: Any) -> None:
        record = self._record(trial_id)
        self._records[self._records.index(record)] = replace(record, **changes)
