"""Grid search: every combination of values, the first parameter varying slowest.

Numeric parameters contribute ``points`` values evenly spaced in their own scale (so a log
parameter gets 1e-4, 1e-2, 1 for three points); choices contribute all their values.
Trial k is grid point k, so a resumed run needs nothing but the count of trials asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runner import History, Strategy, bounds, hookimpl


@dataclass(frozen=True)
class GridOptions:
    points: int = field(
        default=3, metadata=bounds(ge=1, doc="values per numeric parameter, evenly spaced in its scale")
    )


class GridSearch(Strategy):
    name = "grid"
    Options = GridOptions

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.points = self.space.grid(self.options.points)

    def ask(self, history: History) -> dict | None:
        index = len(history)
        return self.points[index] if index < len(self.points) else None

    def planned_trials(self) -> int:
        return len(self.points)


@hookimpl
def runner_register(registry):
    registry.add_strategy(GridSearch)
