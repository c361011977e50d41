"""Random search: every trial drawn independently from the space, each parameter in its scale.

Trial k's parameters depend only on the experiment's seed and k, so a resumed run asks for
exactly the trials an uninterrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runner import History, Strategy, bounds, hookimpl


@dataclass(frozen=True)
class RandomOptions:
    trials: int = field(default=20, metadata=bounds(ge=1, doc="how many trials to run"))


class RandomSearch(Strategy):
    name = "random"
    Options = RandomOptions

    def ask(self, history: History) -> dict | None:
        index = len(history)
        if index >= self.options.trials:
            return None
        return self.space.sample(self.rng(index))

    def planned_trials(self) -> int:
        return self.options.trials


@hookimpl
def runner_register(registry):
    registry.add_strategy(RandomSearch)
