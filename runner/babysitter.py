"""The babysitter contract: a strategy's hands inside one running trial.

Most strategies act between trials (``ask``, ``tell``). One that tunes a trial while it
trains (``panda-nudge``: try a nudge, keep it or roll it back) also gives each trial a
``Babysitter`` from ``Strategy.babysitter(trial)``. The trial loop calls it where the trial
runs, next to the matching hooks, and applies the decisions it returns exactly as it
applies a plugin's, with ``source`` ``"strategy"`` in the events they cause.

Its state travels in the trial's snapshots: ``runner resume`` restores it with the model,
so a resumed trial is babysat as if it had never stopped. A rollback does *not* restore
it (the babysitter must remember what it tried, above all what failed); it is told with
``rolled_back`` instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.decisions import Decision
    from runner.trial import Trial


class Babysitter:
    """Watches one trial for its strategy. Every method has a default that does nothing."""

    def epoch_end(self, trial: Trial, epoch: int, metrics: dict[str, float]) -> Decision | list[Decision] | None:
        """Called after each epoch, after the ``runner_epoch_end`` hook (and only if no plugin
        ended the trial). ``metrics`` are the epoch's, as in that hook. May return decisions:
        ``Nudge``, ``Rollback`` (decisions after a rollback apply to the restored state, so
        ``[Rollback("before_nudge"), Nudge(lr=...)]`` undoes a nudge and tries another),
        ``Note``, ``Finish``, ``Stop``, ``Prune``."""
        return None

    def nudge_applied(self, trial: Trial, change: dict[str, Any], source: str) -> None:
        """Called after any nudge took effect, this babysitter's own (``source`` "strategy"),
        a person's ("control") or a plugin's. (The divergence policy's learning-rate cut is
        part of its rollback: see ``rolled_back``.) Must not change the trial."""

    def rolled_back(self, trial: Trial, rollback: dict[str, Any]) -> Decision | list[Decision] | None:
        """Called after any rollback, with ``trial`` as restored (``trial.epoch``, ``trial.step``,
        ``trial.hyperparameters``) and ``rollback`` the fields of its ``rollback`` event:
        ``source`` says who asked ("strategy", "control" for a person, also when training
        refused a person's nudge, "divergence", "plugin"), ``lr_before`` the learning rate in
        force when it was asked for. Decisions it returns (a ``Nudge``, a ``Note``) apply at
        once to the restored state."""
        return None

    def state(self) -> dict[str, Any]:
        """What to store in each snapshot of the trial: JSON values only."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Called when ``runner resume`` continues the trial, with what ``state`` returned
        when the snapshot was taken."""
