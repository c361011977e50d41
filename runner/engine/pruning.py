"""The experiment's pruner at work in the driver: every trial's curve, a verdict as each
epoch ends, and the verdict on its way to the trial as an order.

``PruneJudge`` observes the event log, where every trial's events arrive wherever it runs.
At each ``epoch_end`` of a running trial it asks the pruner (``runner.pruner``), and sends
what it answers (``Prune``, or a ``Note`` of a verdict that lets the trial go on) into the
trial's mailbox in the control inbox, as a ``Delivery`` with source ``pruner``: the trial
carries it out at its next step boundary, by the path a person's ``stop`` takes, and every
event it writes doing so names the order (``pruner.<trial>.<n>``: the verdict on the trial's
n-th event). A resumed run replays the log it keeps through the same judge: the verdicts come
out the same, and those a continuing trial had not carried out yet are sent again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from runner.control.inbox import ControlInbox, Delivery, describe
from runner.decisions import Note, Prune
from runner.errors import RunnerError
from runner.pruner import Curves, Pruner


class PruneJudge:
    """The pruner's view of the run and its verdicts; ``observe`` is an event-log observer."""

    def __init__(self, pruner: Pruner, inbox: ControlInbox):
        self.pruner, self.inbox = pruner, inbox
        self.curves = Curves(pruner.metric, pruner.mode)
        self.events: Counter = Counter()  # trial -> its events in the log so far
        self.failure: str | None = None  # what the pruner raised; the driver ends the run with it

    def observe(self, event: dict[str, Any]) -> None:
        """Called under the log's lock for every event written (on the thread that wrote
        it): a verdict goes to its trial's mailbox at once, so an inline trial finds it at
        the step right after the epoch it judged."""
        found = self.verdict(event)
        if found is not None:
            self.inbox.send(*found)

    def replay(self, events: Iterable[dict[str, Any]], continuing: set[int]) -> None:
        """Called by a resumed run's driver before any trial runs, with the events it keeps:
        the curves as they stood, and the verdicts on ``continuing`` trials that no later
        event of theirs acknowledges, held for them (the work that carried them out was lost)."""
        owed: dict[str, tuple[int, Delivery]] = {}
        for event in events:
            owed.pop(event.get("order"), None)
            found = self.verdict(event)
            if found is not None and found[0] in continuing:
                owed[found[1].order] = found
        for trial, delivery in owed.values():
            self.inbox.owe(trial, delivery)

    def verdict(self, event: dict[str, Any]) -> tuple[int, Delivery] | None:
        """Fold one event into the curves; at an epoch's end, the pruner's verdict on it as
        an order for its trial, if it gives one."""
        trial = event.get("trial")
        if trial is None or self.failure is not None:
            return None
        self.events[trial] += 1
        kind = event["event"]
        if kind == "trial_complete":
            self.curves.end(trial, event.get("state", "failed"))
            return None
        if kind != "epoch_end" or not isinstance(event.get("epoch"), int) or self.curves.state(trial) != "running":
            return None
        epoch = event["epoch"]
        self.curves.record(trial, epoch, event)
        try:
            decision = self.pruner.judge(self.curves, trial, epoch)
            if decision is not None and not isinstance(decision, (Prune, Note)):
                raise TypeError(f"it answered {decision!r}; a pruner may answer Prune, Note or None")
        except Exception as err:  # a bug in the pruner: the run ends with it, once the trial in hand ends
            self.failure = (
                f"pruner {self.pruner.name!r} failed on trial {trial}, epoch {epoch}: {type(err).__name__}: {err}"
            )
            return None
        if decision is None:
            return None
        return trial, Delivery(f"pruner.{trial}.{self.events[trial]}", decision, describe(decision), source="pruner")

    def check(self) -> None:
        """Called by the driver as each trial ends: a RunnerError if the pruner failed."""
        if self.failure is not None:
            raise RunnerError(self.failure)
