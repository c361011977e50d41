"""Population-based training (Jaderberg et al., 2017), built from runner's own parts.

``population`` members, drawn from the space as ``random`` draws trials, train side by side.
Every ``interval`` epochs each member is suspended (``Suspend``: a durable snapshot, its
place in the executor freed), and once every member has reached that epoch the strategy
ranks them by the experiment's metric at it. Each member in the bottom ``quantile``
**exploits** one of the top ``quantile``, drawn at random: a rollback to that member's
snapshot of the same epoch (``Rollback(epoch, trial=donor)``: its weights, optimizer state,
data order and settings). Then it **explores**: each live setting the space searches is
multiplied, in its scale, by one of ``factors`` (a log1m momentum by its distance to 1), or,
with probability ``resample``, drawn afresh from the space; either way it stays within the
space's bounds. Both reach the member as orders with source ``strategy`` when it is continued
(``Continue``), exploiting members first, so every donor's snapshot is still there. Every
member is then continued to the next interval, and after the last one to its end.

Because members wait for each other at every interval, the decisions depend only on the
members' standings there: the same population comes out inline, in worker processes or on
Ray, and after a ``kill -9`` and ``runner resume``, bit for bit. Each interval's ranking and
exploits are a ``note`` of kind ``generation``; each exploit is a ``rollback`` event with
its ``donor``, each explore a ``nudge`` event; ``runner report`` draws the lineage.

A person's nudge or rollback through the control file wins: from then on that member is never
made to exploit or explore (it still ranks, and may be copied).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runner import (
    Babysitter,
    Choice,
    Continue,
    Float,
    History,
    Int,
    Nudge,
    Param,
    Rollback,
    SpecError,
    Strategy,
    Suspend,
    TrialResult,
    bounds,
    hookimpl,
    join_path,
)

STEERED = "a person steered it"  # how a member's babysitter tells the strategy to leave it alone


@dataclass(frozen=True)
class PbtOptions:
    population: int = field(default=8, metadata=bounds(ge=2, doc="members: trials that train side by side"))
    interval: int = field(default=4, metadata=bounds(ge=1, doc="epochs between two exploit-and-explore steps"))
    quantile: float = field(
        default=0.25,
        metadata=bounds(gt=0, le=0.5, doc="the bottom fraction of members exploits the top one (at least one each)"),
    )
    factors: tuple[float, ...] = field(
        default=(0.8, 1.2),
        metadata=bounds(doc="explore multiplies each setting by one of these, drawn at random, in its scale"),
    )
    resample: float = field(
        default=0.25,
        metadata=bounds(ge=0, le=1, doc="the chance that explore draws a setting afresh from the space instead"),
    )


class Interval(Babysitter):
    """A member's babysitter: suspends it every ``interval`` epochs before its last, and
    remembers whether a person steered it (then its suspensions say so)."""

    def __init__(self, interval: int, epochs: int):
        self.interval, self.epochs, self.steered = interval, epochs, False

    def epoch_end(self, trial, epoch, metrics):
        done = epoch + 1
        if done % self.interval == 0 and done < self.epochs:
            return Suspend(STEERED if self.steered else f"every {self.interval} epochs")
        return None

    def nudge_applied(self, trial, change, source):
        self.steered = self.steered or source in ("control", "resume")

    def rolled_back(self, trial, rollback):
        self.steered = self.steered or rollback["source"] in ("control", "resume")
        return None

    def state(self) -> dict[str, Any]:
        return {"steered": self.steered}

    def load_state(self, state: dict[str, Any]) -> None:
        self.steered = bool(state.get("steered", False))


class Pbt(Strategy):
    """Population-based training: members exploit the best and explore around them."""

    name = "pbt"
    Options = PbtOptions

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.noted: set[int] = set()  # the epochs whose generation note is written

    @classmethod
    def check(cls, space, options, metrics) -> None:
        if not len(space):
            raise SpecError("search.space", "population-based training needs the live settings it explores")
        for param in space:
            if not param.path.startswith("train."):
                raise SpecError(
                    join_path("search.space", param.path),
                    "population-based training searches live settings only (train.lr, train.momentum): members "
                    "take each other's weights, so they must share everything else",
                )
        if not options.factors or any(not (f > 0 and math.isfinite(f)) for f in options.factors):
            raise SpecError("search.strategy.factors", "must be a list of positive numbers, such as [0.8, 1.2]")

    def planned_trials(self) -> int:
        return self.options.population

    def babysitter(self, trial) -> Babysitter:
        """Where the trial runs, before it trains: a searched setting the backend cannot change
        while training fails it, naming the setting (exploring it could never work)."""
        for param in self.space:
            if param.path.removeprefix("train.") not in trial.hyperparameters:
                raise SpecError(
                    join_path("search.space", param.path),
                    f"population-based training explores live settings only; live: {', '.join(trial.hyperparameters)}",
                )
        return Interval(self.options.interval, trial.config["train"]["epochs"])

    def ask(self, history: History) -> dict[str, Any] | Continue | None:
        population = self.options.population
        if len(history) < population:
            return self.space.sample(self.rng(len(history)))
        waiting = history.waiting
        if not waiting:
            return None
        epoch = min(r.suspensions[-1].epochs for r in waiting)
        if any(r.result is None and not r.waiting and _last_epoch(r) < epoch for r in history):
            return None  # a member has not reached this interval yet
        standings = {r.id: s for r in history if (s := _standing_at(r, epoch)) is not None}
        plan = self.plan(epoch, standings)
        first = min(waiting, key=lambda r: (r.suspensions[-1].epochs, r.id not in plan, r.id))
        return Continue(first.id, plan.get(first.id, ()), reason=f"interval at epoch {epoch}")

    def plan(self, epoch: int, standings: dict[int, TrialResult]) -> dict[int, tuple]:
        """What each member that exploits does at ``epoch``: the rollback to its donor's
        snapshot of that epoch, then the nudge that explores; a function of the standings."""
        ranked = sorted(standings, key=lambda t: (*self._rank(standings[t]), t))  # best first
        count = max(1, int(len(ranked) * self.options.quantile)) if len(ranked) > 1 else 0
        top, bottom = ranked[:count], ranked[len(ranked) - count :]
        generation = epoch // self.options.interval
        plan = {}
        for member in bottom:
            if standings[member].reason == STEERED:
                continue
            rng = self.rng(self.options.population * generation + member)
            donor = top[int(rng.integers(len(top)))]
            settings = self.explore(standings[donor].final or {}, rng)
            value, donor_value = _value(standings[member], self.metric), _value(standings[donor], self.metric)
            plan[member] = (
                Rollback(
                    epoch,
                    trial=donor,
                    reason=f"exploit: t{member:03d} ({self.metric} {_shown(value)}) is in the bottom {count} of "
                    f"{len(ranked)}; t{donor:03d} ({_shown(donor_value)}) in the top",
                ),
                Nudge(settings, reason="explore: " + ", ".join(f"{k}={_shown(v)}" for k, v in settings.items())),
            )
        if epoch not in self.noted:
            self.noted.add(epoch)
            self.note(
                "generation",
                f"epoch {epoch}: {len(plan)} of {len(ranked)} members exploit the top {count}",
                generation=generation,
                at_epoch=epoch,
                ranking=[[t, _value(standings[t], self.metric)] for t in ranked],
                exploits=[[member, steps[0].trial] for member, steps in sorted(plan.items())],
            )
        return plan

    def explore(self, settings: dict[str, float], rng: np.random.Generator) -> dict[str, Any]:
        """New values of the live settings the space searches, from ``settings`` (the donor's):
        each perturbed by a factor in its scale or, with probability ``resample``, drawn
        afresh; always within the space's bounds."""
        explored = {}
        for param in self.space:
            name = param.path.removeprefix("train.")
            if rng.random() < self.options.resample or name not in settings:
                explored[name] = param.sample(rng)
            else:
                explored[name] = perturb(param, settings[name], float(rng.choice(self.options.factors)))
        return explored

    def _rank(self, standing: TrialResult) -> tuple[bool, float]:
        """Sort key, best first: members without a finite value last."""
        value = _value(standing, self.metric)
        if value is None or not math.isfinite(value):
            return True, 0.0
        return False, -value if self.mode == "max" else value


def perturb(param: Param, value: Any, factor: float) -> Any:
    """``value`` moved by ``factor`` in ``param``'s scale, kept within its bounds: a log1m
    value's distance to 1 is scaled (0.9 by 1.2 gives 0.88), a choice moves to the next value
    up (factor above 1) or down."""
    if isinstance(param, Choice):
        values = list(param.choices)
        at = values.index(value) if value in values else 0
        return values[min(max(at + (1 if factor > 1 else -1), 0), len(values) - 1)]
    if isinstance(param, Float) and param.scale == "log1m":
        moved = 1 - (1 - value) * factor
    else:
        moved = value * factor
    clipped = min(max(moved, param.low), param.high)
    return round(clipped) if isinstance(param, Int) else float(clipped)


def lineage(events: list[dict[str, Any]]) -> dict[int, list[tuple[int, int]]]:
    """Who copied whom, from a run's events: each member's exploits, ``(epoch, donor)`` in
    the order they happened (the ``rollback`` events that name a donor)."""
    found: dict[int, list[tuple[int, int]]] = {}
    for event in events:
        if event.get("event") == "rollback" and event.get("donor") is not None:
            found.setdefault(event["trial"], []).append((event["to_epoch"], event["donor"]))
    return found


def _standing_at(record, epoch: int) -> TrialResult | None:
    """Its standing when it was (last) suspended at ``epoch``."""
    return next((s for s in reversed(record.suspensions) if s.epochs == epoch), None)


def _last_epoch(record) -> int:
    return record.suspensions[-1].epochs if record.suspensions else -1


def _value(standing: TrialResult, metric: str) -> float | None:
    return (standing.final or {}).get(metric)


def _shown(value: Any) -> str:
    """A value in a reason: numbers to 4 significant digits."""
    if value is None:
        return "no value"
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


@hookimpl
def runner_register(registry):
    registry.add_strategy(Pbt)


@hookimpl
def runner_report_figures(run):
    """``runner report``: the population's lineage (nothing for runs of other strategies)."""
    if run.strategy != Pbt.name:
        return None
    from runner.plugins.strategies.pbt_report import lineage_figure  # matplotlib loads only for reports

    return lineage_figure(run)
