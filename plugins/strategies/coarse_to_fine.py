"""Coarse-to-fine search: random rounds, each in a region that zooms in on the best trials.

Round 0 samples the whole space at random. After each round, every numeric parameter's
range shrinks to the span of the ``keep_top`` best trials so far, measured in the
parameter's own scale (a log-scaled lr zooms in on decades, a ``log1m`` momentum on
the number of nines), widened on each side by ``margin`` times the current range and
clipped to the space's bounds; a choice keeps only the values those trials used. Each
round's region is itself a ``Space``, so sampling in it is sampling in the space.

Trial k's parameters depend only on the seed, k and the results of the rounds before its
own, so a resumed run asks for exactly the trials an uninterrupted one would. A round
starts only when the trials of the round before have all finished. Each region is written
to the log as a ``note`` of kind ``round``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from runner import Choice, History, Int, Param, Space, SpecError, Strategy, TrialRecord, bounds, hookimpl


@dataclass(frozen=True)
class CoarseToFineOptions:
    rounds: int = field(default=3, metadata=bounds(ge=1, doc="rounds of random trials, each in a smaller region"))
    trials_per_round: int = field(default=10, metadata=bounds(ge=1, doc="trials sampled in each round's region"))
    keep_top: float = field(
        default=0.3,
        metadata=bounds(
            gt=0,
            doc="the best trials the next region is fitted to: a count (3) or a fraction of a round's trials (0.3)",
        ),
    )
    margin: float = field(
        default=0.1,
        metadata=bounds(
            ge=0, doc="widening on each side, as a fraction of the current region's width in the parameter's scale"
        ),
    )

    def check(self, path: str) -> None:
        if self.keep_top >= 1 and self.keep_top != int(self.keep_top):
            raise SpecError(
                f"{path}.keep_top", f"must be a whole count (3) or a fraction below 1 (0.3), got {self.keep_top}"
            )

    def top_count(self) -> int:
        """How many of the best trials a region is fitted to (at least one)."""
        if self.keep_top >= 1:
            return int(self.keep_top)
        return max(1, math.ceil(self.keep_top * self.trials_per_round))


class CoarseToFine(Strategy):
    name = "coarse-to-fine"
    Options = CoarseToFineOptions

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.regions: list[Space] = []  # the region of each round so far; round 0's is the space

    @classmethod
    def check(cls, space: Space, options: CoarseToFineOptions, metrics: tuple[str, ...]) -> None:
        if not len(space):
            raise SpecError(
                "search.space", "coarse-to-fine needs parameters to search: it zooms in on their best values"
            )

    def planned_trials(self) -> int:
        return self.options.rounds * self.options.trials_per_round

    def ask(self, history: History) -> dict[str, Any] | None:
        index = len(history)
        if index >= self.planned_trials():
            return None
        round_ = index // self.options.trials_per_round
        while len(self.regions) <= round_:  # one round at a time (a resumed run rebuilds them all)
            if not self.regions:
                self.regions.append(self.space)
                self.note("round", "the whole space", round=0, first_trial=0, top=[], region=self.space.to_json())
                continue
            before = [r for r in history if r.id < len(self.regions) * self.options.trials_per_round]
            if any(r.result is None for r in before):
                return None  # a round before is still running: its results shape this one
            self.regions.append(self.zoom(before, len(self.regions)))
        return self.regions[round_].sample(self.rng(index))

    def zoom(self, records: list[TrialRecord], round_: int) -> Space:
        """The region of ``round_``, fitted to the best of ``records`` (the rounds before it)."""
        scored = [r.result for r in records if r.result.score is not None and math.isfinite(r.result.score)]
        sign = 1.0 if self.mode == "min" else -1.0
        top = sorted(scored, key=lambda result: (sign * result.score, result.trial))[: self.options.top_count()]
        current = self.regions[-1]
        if top:
            region = Space(
                [self.narrow(param, current[param.path], [t.params[param.path] for t in top]) for param in self.space]
            )
            reason = (
                f"fitted to the best {len(top)} of {len(scored)} scored trials "
                f"(best: t{top[0].trial:03d}, {self.metric} {top[0].score:.4g})"
            )
        else:
            region, reason = current, "no trial so far has a score: the region stays"
        self.note(
            "round",
            reason,
            round=round_,
            first_trial=round_ * self.options.trials_per_round,
            top=[t.trial for t in top],
            region=region.to_json(),
        )
        return region

    def narrow(self, param: Param, current: Param, values: list[Any]) -> Param:
        """``param``'s range in the next region: the span of ``values`` in the unit scale of
        ``param``, widened on each side by ``margin`` times ``current``'s width there,
        clipped to ``param``'s bounds."""
        if isinstance(param, Choice):
            return Choice(param.path, tuple(c for c in current.choices if c in values))
        if isinstance(param, Int):  # an integer owns a cell of the unit range
            width = param.unit_cell(current.high)[1] - param.unit_cell(current.low)[0]
            lows, highs = zip(*(param.unit_cell(v) for v in values))
        else:
            width = param.to_unit(current.high) - param.to_unit(current.low)
            lows = highs = [param.to_unit(v) for v in values]
        pad = self.options.margin * width
        a, b = max(0.0, min(lows) - pad), min(1.0, max(highs) + pad)
        if isinstance(param, Int):  # a and b may lie exactly on the edges of the extreme values' cells
            low, high = param.from_unit(a + 1e-12), param.from_unit(b - 1e-12)
        else:
            low, high = param.from_unit(a), param.from_unit(b)
        # The top values themselves always stay in (a round trip through the unit scale may round them out).
        return type(param)(param.path, min(low, min(values)), max(high, max(values)), param.scale)


@hookimpl
def runner_register(registry):
    registry.add_strategy(CoarseToFine)


@hookimpl
def runner_report_figures(run):
    """``runner report``: each round's region, one panel per parameter, with the trials
    sampled in it coloured by their score (nothing for runs of other strategies)."""
    rounds = [n for n in run.notes if n.get("kind") == "round" and isinstance(n.get("region"), dict)]
    if run.strategy != CoarseToFine.name or not rounds or not len(run.space):
        return None
    from runner.plugins.strategies.coarse_to_fine_report import regions_figure  # matplotlib loads only for reports

    return regions_figure(run, rounds)
