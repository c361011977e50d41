"""Grid search: every combination of values, the first parameter varying slowest.

Numeric parameters contribute ``points`` values evenly spaced in their own scale (so a log
parameter gets 1e-4, 1e-2, 1 for three points), or the count ``per_parameter`` gives for
their path; choices contribute all their values. Trial k is grid point k, so a resumed run
needs nothing but the count of trials asked.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from runner import Choice, History, Space, SpecError, Strategy, bounds, hookimpl, join_path


@dataclass(frozen=True)
class GridOptions:
    points: int = field(
        default=3, metadata=bounds(ge=1, doc="values per numeric parameter, evenly spaced in its scale")
    )
    per_parameter: dict[str, int] = field(
        default_factory=dict,
        metadata=bounds(
            doc="values for the numeric parameters it names (dotted path -> count), instead of `points`: "
            '`{"train.lr": 5, "train.momentum": 2}`'
        ),
    )


class GridSearch(Strategy):
    name = "grid"
    Options = GridOptions

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.points = self.space.grid({p.path: self.values(p.path) for p in self.space.params})

    def values(self, path: str) -> int:
        """How many values the numeric parameter at ``path`` gets."""
        return self.options.per_parameter.get(path, self.options.points)

    @classmethod
    def check(cls, space: Space, options: GridOptions, metrics: tuple[str, ...]) -> None:
        """Each path ``per_parameter`` names is a numeric parameter of the space, with a count of at least 1."""
        params = {p.path: p for p in space.params}
        for path, count in options.per_parameter.items():
            where = join_path("search.strategy.per_parameter", path)
            if path not in params:
                hint = difflib.get_close_matches(path, list(params), n=1)
                known = f"did you mean {hint[0]!r}?" if hint else f"the space has: {', '.join(params) or 'nothing'}"
                raise SpecError(where, f"not a parameter of search.space; {known}")
            if isinstance(params[path], Choice):
                raise SpecError(where, "is a choice: a grid always takes all its values")
            if count < 1:
                raise SpecError(where, f"must be >= 1, got {count}")

    def ask(self, history: History) -> dict | None:
        index = len(history)
        return self.points[index] if index < len(self.points) else None

    def planned_trials(self) -> int:
        return len(self.points)


@hookimpl
def runner_register(registry):
    registry.add_strategy(GridSearch)
