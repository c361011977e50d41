"""A person's nudge on trial: one that blows training up within a few steps is undone, not paid for.

A nudge from the control file (a save, or ``runner nudge``) is *on trial* for
``divergence.nudge_grace_steps`` training steps. A divergence in those steps refuses it:
the trial loop restores the snapshot taken just before it, settings included, and reports
it refused (a ``nudge_refused`` event, then a ``rollback`` with source ``control``); the
learning rate is not cut and nothing counts against ``divergence.max_rollbacks``. Once the
trial has trained through those steps the nudge is kept (a ``nudge_kept`` event). The next
nudge or rollback, anyone's, ends its trial sooner: going back to the snapshot before a
nudge undoes only the latest change, and a rollback has already moved the trial elsewhere.

The grace is counted in steps, not "until the epoch ends": a blow-up shows within a few
steps whatever an epoch's length (a non-finite loss at once, a spike after ``patience``
steps, one more for a GPU backend's lag), and epochs run from a handful of steps to tens of
thousands, so a window to the epoch's end would give a nudge made near it no time at all,
and would blame a nudge for an instability that starts thousands of steps later (what the
policy's lr cut is for). ``runner nudge`` waits for the verdict, so the window must be short
in time too. A divergence of the validation loss counts when the epoch ends within it.

Only a person's nudges are put on trial: a strategy's tries and a plugin's nudges are
automatic, so a divergence after them goes to the ``runner_divergence`` policy and counts,
or a strategy that keeps probing too high would never be stopped.

``NudgeOnTrial`` is the record the loop keeps (and stores in each snapshot, so a resumed
trial can still refuse the nudge) and the wording of its verdicts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from runner.engine.divergence import DivergenceEvent


@dataclass(frozen=True)
class NudgeOnTrial:
    """A person's nudge that a divergence would still refuse."""

    order: str  # the control-file order that asked for it
    step: int  # the step it was applied at: in force from the next one
    until: int  # the last step at which a divergence refuses it
    asked: dict[str, float]  # the settings it set, as in force after it
    before: dict[str, float]  # the same settings as in force before it: what refusing it restores
    snapshot_events: int  # the trial's event count when the snapshot just before it was taken

    @classmethod
    def of(
        cls, order: str, step: int, grace: int, change: dict[str, dict[str, float]], snapshot_events: int
    ) -> NudgeOnTrial:
        """A person's nudge just applied at ``step``; ``change`` as its ``nudge`` event has it."""
        asked = {name: values["new"] for name, values in change.items()}
        before = {name: values["old"] for name, values in change.items()}
        return cls(order, step, step + grace, asked, before, snapshot_events)

    def covers(self, event: DivergenceEvent) -> bool:
        """True if ``event`` happened in the steps trained under this nudge, within its grace."""
        return self.step < event.step <= self.until

    def served(self, step: int) -> bool:
        """True once the trial has trained through the grace steps (``step`` steps done)."""
        return step >= self.until

    def kept(self, epoch: int, step: int) -> dict[str, Any]:
        """The fields of its ``nudge_kept`` event, written at ``step`` of epoch ``epoch``."""
        return {"epoch": epoch, "step": step, "nudge_step": self.step, "asked": self.asked}

    def refused(self, event: DivergenceEvent) -> dict[str, Any]:
        """The fields of its ``nudge_refused`` event: what it asked for, what is in force
        again, what training did under it, and a reason a person can read."""
        after = event.step - self.step
        reason = (
            f"training diverged {after} step{'s' * (after != 1)} after it ({event.kind} at step {event.step}); "
            f"back to the snapshot from before it, with {settings(self.before)}"
        )
        return {
            "epoch": event.epoch,
            "step": event.step,
            "nudge_step": self.step,
            "asked": self.asked,
            "restored": self.before,
            "divergence": {"kind": event.kind, "loss": event.loss, "threshold": event.threshold},
            "reason": reason,
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> NudgeOnTrial | None:
        """The record ``to_json`` wrote (None: no nudge was on trial, or a snapshot from before this record)."""
        return None if data is None else cls(**data)


def settings(values: dict[str, float]) -> str:
    """``lr=0.01 momentum=0.9``."""
    return " ".join(f"{name}={value:g}" for name, value in values.items())
