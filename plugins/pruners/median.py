"""The median pruner: end a trial whose best so far is worse than the median of the
completed trials at the same epoch, as Optuna's ``MedianPruner`` does.

A trial is judged after ``warmup_epochs`` epochs and then every ``interval`` epochs, once
``startup_trials`` trials have completed. At ``e`` epochs its best value of the metric so
far is compared with the median of the completed trials' best values over their first ``e``
epochs (trials that were pruned or failed do not count); worse than that median, it is
pruned. Only prunes are written to the log: a verdict that lets a trial go on is silent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median

from runner import Curves, Prune, Pruner, bounds, hookimpl


@dataclass(frozen=True)
class MedianOptions:
    startup_trials: int = field(
        default=5, metadata=bounds(ge=0, doc="trials that must have completed before any trial is pruned")
    )
    warmup_epochs: int = field(default=0, metadata=bounds(ge=0, doc="epochs every trial trains before it is judged"))
    interval: int = field(default=1, metadata=bounds(ge=1, doc="after the warm-up, judge every this many epochs"))
    min_trials: int = field(
        default=1, metadata=bounds(ge=1, doc="completed trials that must have reached an epoch to judge there")
    )


class MedianPruner(Pruner):
    """Prunes a trial whose best so far is worse than the median of the completed trials."""

    name = "median"
    Options = MedianOptions

    def judge(self, curves: Curves, trial: int, epoch: int) -> Prune | None:
        options, epochs = self.options, epoch + 1
        if epochs <= options.warmup_epochs or (epochs - options.warmup_epochs) % options.interval:
            return None
        completed = [t for t in curves.trials() if t != trial and curves.state(t) == "completed"]
        if len(completed) < options.startup_trials:
            return None
        there = [v for t in completed if curves.epochs(t) >= epochs and (v := curves.best(t, epochs)) is not None]
        if len(there) < max(options.min_trials, 1):
            return None
        middle, best = median(there), curves.best(trial, epochs)
        if best is None:
            return Prune(f"no finite {self.metric} in {epochs} epochs", rung=epochs)
        if not curves.is_better(middle, best):
            return None
        return Prune(
            f"{self.metric} {best:.4g} after {epochs} epochs is worse than the median {middle:.4g} "
            f"of the {len(there)} completed trials there",
            rung=epochs,
        )


@hookimpl
def runner_register(registry):
    registry.add_pruner(MedianPruner)
