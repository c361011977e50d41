"""Asynchronous successive halving (ASHA, Li et al. 2018) on epochs: at each rung, a trial
goes on only if it is in the top 1/η of the trials that have reached that rung so far.

The rungs are at ``grace_epochs`` * η^k epochs (1, 4, 16, ... for the defaults), below
``train.epochs``; ``rungs`` keeps only the first few. When a trial has trained a rung's
epochs, its best value of the metric so far joins that rung's record, and it is compared with
every value recorded there, its own included: of ``n`` values, the best ``max(1, n // η)`` go
on (a tie with the last of them goes on too), the others are pruned. The first trials to reach
a rung are judged against few others, so early in a search most trials go on; a trial run
alone (the inline executor) must beat the trials before it.

This is the stopping variant, as in Ray Tune's ``ASHAScheduler`` and Optuna's
``SuccessiveHalvingPruner``: a pruned trial stays pruned. The promoting variant, which would
resume a paused trial when a later rung has room, is not implemented.

Every verdict is logged: a trial that goes on writes a ``note`` of kind ``rung`` (``rung``,
``value``, ``cutoff``, ``kept``, ``reached``); one that does not ends ``pruned`` with the
rung and the reason in its ``prune`` event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runner import Curves, Note, Prune, Pruner, SpecError, bounds, hookimpl


@dataclass(frozen=True)
class AshaOptions:
    grace_epochs: int = field(default=1, metadata=bounds(ge=1, doc="epochs every trial trains before its first rung"))
    reduction_factor: int = field(
        default=4, metadata=bounds(ge=2, doc="η: at each rung, the top 1/η of the trials that reached it go on")
    )
    rungs: int | None = field(
        default=None, metadata=bounds(ge=1, doc="how many rungs at most; default: every one below train.epochs")
    )


class Asha(Pruner):
    """Asynchronous successive halving: at each rung, the top 1/η of the trials go on."""

    name = "asha"
    Options = AshaOptions

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rung_epochs = rung_epochs(self.options, self.epochs)

    @classmethod
    def check(cls, options: AshaOptions, epochs: int) -> None:
        if options.grace_epochs >= epochs:
            raise SpecError(
                "search.pruner.grace_epochs",
                f"must be below train.epochs ({epochs}): the first rung would be a trial's last epoch, "
                "and no trial could be pruned",
            )

    def judge(self, curves: Curves, trial: int, epoch: int) -> Note | Prune | None:
        epochs = epoch + 1
        if epochs not in self.rung_epochs:
            return None
        reached = [curves.best(t, epochs) for t in curves.trials() if curves.epochs(t) >= epochs]
        finite = [v for v in reached if v is not None]
        value = curves.best(trial, epochs)
        kept = max(1, len(reached) // self.options.reduction_factor)
        ranked = sorted(finite, reverse=self.mode == "max")
        cutoff = ranked[kept - 1] if kept <= len(ranked) else None
        if value is None:
            return Prune(f"rung {epochs}: no finite {self.metric}", rung=epochs)
        if cutoff is not None and curves.is_better(cutoff, value):
            return Prune(
                f"rung {epochs}: {self.metric} {value:.4g} is worse than {cutoff:.4g}, "
                f"the cutoff for the best {kept} of {len(reached)}",
                rung=epochs,
            )
        return Note(
            "rung",
            f"rung {epochs}: {self.metric} {value:.4g} is among the best {kept} of {len(reached)}",
            {"rung": epochs, "value": value, "cutoff": cutoff, "kept": kept, "reached": len(reached)},
        )


def rung_epochs(options: AshaOptions, epochs: int) -> tuple[int, ...]:
    """The epochs at which trials are judged: grace * η^k below ``epochs``, the first ``rungs``."""
    found, at = [], options.grace_epochs
    while at < epochs and (options.rungs is None or len(found) < options.rungs):
        found.append(at)
        at *= options.reduction_factor
    return tuple(found)


@hookimpl
def runner_register(registry):
    registry.add_pruner(Asha)
