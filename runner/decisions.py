"""Decisions: what hooks, strategies and the control file ask the loop to do.

They are small frozen values. The loop is the only place that applies them, at a step
boundary or at the end of an epoch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Nudge:
    """Change live hyperparameters from the next step on: ``Nudge({"lr": 0.01})``."""

    changes: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    def __init__(self, changes: dict[str, float] | None = None, reason: str = "", **values: float):
        object.__setattr__(self, "changes", {**(changes or {}), **values})
        object.__setattr__(self, "reason", reason)


@dataclass(frozen=True)
class Stop:
    """End the trial as ``stopped``; with ``experiment=True`` end the whole run after it."""

    reason: str = ""
    experiment: bool = False


@dataclass(frozen=True)
class Prune:
    """End the trial early as ``pruned``: it is not worth finishing. A pruner names the
    ``rung`` (the epochs trained) where it judged so."""

    reason: str = ""
    rung: int | None = None


@dataclass(frozen=True)
class Rollback:
    """Go back to a snapshot: ``"last"`` (the newest), ``"best"``, ``"before_nudge"`` (the
    one taken just before the latest nudge), or the one taken after epoch ``to`` (an int);
    ``older`` skips that many newer matches (when going back to the last snapshot did not
    help, go further); ``upto_step`` keeps to snapshots taken at that training step or
    earlier (before a collapse began: the trial's first snapshot, taken before any step,
    is kept for this). ``lr_factor`` multiplies the lower of the restored learning rate and
    the one in force before the rollback (so repeated rollbacks keep cutting, and a bad
    nudge is not carried back); ``reshuffle`` draws a new data order, so the batches that
    blew up are not replayed in the same state.

    ``trial`` names another trial whose snapshot file to take instead (``"last"``,
    ``"best"`` or an epoch; population-based training's exploit): the weights, the
    optimizer's state, the data order and the live settings come from it, training goes on
    from its epoch and step, and this trial keeps its own record (its best epoch, its
    counts), as its events tell it."""

    to: str | int = "last"  # "last", "best", "before_nudge" or an epoch
    older: int = 0
    lr_factor: float | None = None
    reshuffle: bool = False
    reason: str = ""
    trial: int | None = None  # another trial, whose snapshot to take
    upto_step: int | None = None  # only snapshots taken at this step or earlier

    def __post_init__(self):
        if self.lr_factor is not None and not (
            isinstance(self.lr_factor, (int, float)) and 0 < self.lr_factor < float("inf")
        ):
            raise ValueError(f"a Rollback's lr_factor must be a positive number, got {self.lr_factor!r}")
        if self.trial is not None and self.to == "before_nudge":
            raise ValueError('a Rollback to another trial takes its "last", "best" or an epoch, not "before_nudge"')
        if self.trial is not None and self.upto_step is not None:
            raise ValueError("a Rollback to another trial takes its snapshot as it is, without upto_step")


@dataclass(frozen=True)
class Pause:
    """Hold the trial at this step boundary until an ``Unpause`` (or a ``Stop``) arrives
    through the control file; nudges, rollbacks and checkpoints are still applied meanwhile."""

    reason: str = ""


@dataclass(frozen=True)
class Unpause:
    """Let a paused trial train again."""

    reason: str = ""


@dataclass(frozen=True)
class Suspend:
    """End this run of the trial here, with a durable snapshot, and free its place in the
    executor: the trial waits, ``suspended``, until its strategy continues it (``Continue``
    from ``Strategy.ask``), from that snapshot; a run that ends first ends it ``stopped``.
    Population-based training suspends each member every few epochs, so that a population
    larger than the executor's slots trains side by side. Only a strategy that continues
    trials should suspend them (from its babysitter)."""

    reason: str = ""


@dataclass(frozen=True)
class Checkpoint:
    """Take a snapshot now and write it to disk at once (whatever ``min_interval`` says)."""

    reason: str = ""


@dataclass(frozen=True)
class Finish:
    """End the trial now as ``completed``: it has trained enough (an early stop, a spent budget)."""

    reason: str = ""


NOTE_RESERVED = frozenset({"t", "event", "trial", "epoch", "step", "kind", "reason", "source", "order"})


@dataclass(frozen=True)
class Note:
    """Write a ``note`` event, and change nothing: why a plugin or strategy did what it did
    (``Note("keep", "lr 0.02 beat the trend", {"lr": 0.02})``). ``fields`` go into the event
    beside ``kind`` and ``reason``; they must be JSON values and not shadow the event's own keys."""

    kind: str
    reason: str = ""
    fields: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        clash = sorted(NOTE_RESERVED & set(self.fields))
        if clash:
            raise ValueError(f"a Note's fields may not be named {', '.join(clash)}")


Decision = Nudge | Stop | Prune | Finish | Suspend | Rollback | Pause | Unpause | Checkpoint | Note
DECISIONS = (Nudge, Stop, Prune, Finish, Suspend, Rollback, Pause, Unpause, Checkpoint, Note)


def flatten(results: list[Any]) -> list[Decision]:
    """Hook results (None, one decision, or a list of them per plugin) as a flat list."""
    decisions: list[Decision] = []
    for result in results:
        if result is None:
            continue
        items = result if isinstance(result, (list, tuple)) else [result]
        for item in items:
            if not isinstance(item, DECISIONS):
                names = ", ".join(d.__name__ for d in DECISIONS)
                raise TypeError(f"a hook returned {item!r}; expected one of {names}, or None")
            decisions.append(item)
    return decisions


def decision_to_json(decision: Decision) -> dict[str, Any]:
    """A decision as a JSON object (``{"kind": "Nudge", "changes": {...}, "reason": ""}``)."""
    return {"kind": type(decision).__name__, **asdict(decision)}


def decision_from_json(data: dict[str, Any]) -> Decision:
    """The decision ``decision_to_json`` wrote."""
    kinds = {cls.__name__: cls for cls in DECISIONS}
    return kinds[data["kind"]](**{k: v for k, v in data.items() if k != "kind"})
