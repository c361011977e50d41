"""The default divergence policy: roll back, cut the learning rate, change the data order.

This is how large training runs recover from a loss that blows up: go back to the last
healthy snapshot, lower the learning rate, and move past the batches that blew up by
drawing a new data order. When that does not help, the next rollback goes one snapshot
further back (before a bad nudge, say). A collapse (the divergence kind ``collapse``: a
network that stopped learning without blowing up) goes back to a snapshot taken before it
began, the trial's first one if need be, and cuts the learning rate by
``divergence.collapse_lr_cut`` instead. After ``divergence.max_rollbacks`` rollbacks answering a
divergence (a person's or a strategy's rollbacks do not count) the trial ends as ``diverged``
and the search goes on. It answers last, so any plugin that answers
``runner_divergence`` replaces it. A divergence right after a person's nudge never reaches
it: the loop refuses that nudge itself (``runner.control.refusal``); a strategy's or a plugin's
nudge is answered here like any other divergence.
"""

from __future__ import annotations

from runner import Rollback, hookimpl


@hookimpl(trylast=True)
def runner_divergence(trial, event, experiment):
    options = experiment.spec.divergence
    if trial.divergence_rollbacks >= options.max_rollbacks:
        return None  # the trial ends as diverged
    if event.kind == "collapse":
        # The newest snapshots are dead: go back to before the collapse began (as far as the
        # trial's first snapshot), and cut the learning rate harder.
        return Rollback(
            "last",
            older=trial.recent_rollbacks,
            upto_step=event.since_step,
            lr_factor=options.collapse_lr_cut,
            reshuffle=True,
            reason=f"collapse ({', '.join(event.seen or ())}) since epoch {event.since_epoch}",
        )
    # Each rollback in a row goes one snapshot further back: if the last snapshot did not
    # help (a bad nudge was already in force there), an older one may.
    return Rollback(
        "last",
        older=trial.recent_rollbacks,
        lr_factor=options.lr_cut,
        reshuffle=True,
        reason=f"{event.kind} at step {event.step}",
    )
