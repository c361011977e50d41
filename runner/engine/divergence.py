"""Divergence: what counts as training blowing up, cheaply, and the event that reports it.

Per step the loop checks the training loss: a non-finite loss diverges at once; a loss
above ``spike_factor`` times its running average (an exponentially weighted average, after
``warmup_steps``) for ``patience`` steps in a row is a spike. Per epoch it checks the
validation loss the same way against the best one so far. Each check is a few float
operations. Parameters are scanned only when a snapshot is taken: a state with a
non-finite value is never saved, and counts as divergence. A divergence within
``nudge_grace_steps`` steps of a person's nudge refuses that nudge (``runner.control.refusal``);
any other goes to the ``runner_divergence`` policy. A network that stopped learning without
blowing up (a collapse) is the kind ``collapse``: ``runner.engine.collapse`` watches for it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from runner.experiment_file.typed import bounds

Kind = Literal[
    "non_finite_loss", "loss_spike", "non_finite_val_loss", "val_loss_spike", "non_finite_parameters", "collapse"
]


@dataclass(frozen=True)
class DivergenceOptions:
    """The ``divergence`` section of an experiment file."""

    spike_factor: float = field(
        default=4.0, metadata=bounds(gt=1, doc="a loss above this many times its running average is a spike")
    )
    spike_floor: float = field(
        default=0.1,
        metadata=bounds(
            ge=0, doc="running averages below this count as this much: near zero, ratios of losses are noise"
        ),
    )
    patience: int = field(
        default=5, metadata=bounds(ge=1, doc="consecutive spiking steps before a spike counts as divergence")
    )
    warmup_steps: int = field(default=20, metadata=bounds(ge=0, doc="steps of each trial before spikes are looked for"))
    smoothing: float = field(
        default=0.9, metadata=bounds(ge=0, lt=1, doc="weight of the past in the running average of the loss")
    )
    val_spike_factor: float = field(
        default=10.0,
        metadata=bounds(
            gt=1,
            doc="a validation loss above this many times its lowest so far is exploding "
            "(overfitting alone rarely gets there)",
        ),
    )
    lr_cut: float = field(
        default=0.5, metadata=bounds(gt=0, le=1, doc="the rollback policy multiplies the learning rate by this")
    )
    max_rollbacks: int = field(default=3, metadata=bounds(ge=0, doc="rollbacks per trial before it ends as diverged"))
    nudge_grace_steps: int = field(
        default=20,
        metadata=bounds(
            ge=0,
            doc="a divergence within this many training steps of a person's nudge refuses the nudge: "
            "back to before it, no lr cut, not counted; 0 turns this off",
        ),
    )
    collapse: bool = field(
        default=True,
        metadata=bounds(
            doc="watch for a collapse, a network that stopped learning without blowing up "
            "(a loss jump, dead units, accuracy back at chance), and report it as the divergence kind collapse"
        ),
    )
    jump_factor: float = field(
        default=10.0,
        metadata=bounds(
            gt=1,
            doc="collapse: training losses above this many times the trial's first one (or spike_floor, if "
            "higher) for patience steps in a row",
        ),
    )
    dead_fraction: float = field(
        default=0.95,
        metadata=bounds(
            gt=0,
            le=1,
            doc="collapse: a hidden layer with at least this fraction of its units dead (the same output for "
            "every validation example), for backends that report it",
        ),
    )
    chance_margin: float = field(
        default=0.05,
        metadata=bounds(
            ge=0,
            lt=1,
            doc="collapse: a validation accuracy within this of chance (1 / C for C classes) and a loss within "
            "this fraction of ln C are at chance; a trial that had been four times this above chance (and three "
            "standard errors of a guess's accuracy on the validation split) and falls back there collapses",
        ),
    )
    collapse_epochs: int = field(
        default=2, metadata=bounds(ge=1, doc="collapse: epochs in a row with dead units or at chance before it counts")
    )
    collapse_lr_cut: float = field(
        default=0.1,
        metadata=bounds(gt=0, le=1, doc="the rollback policy multiplies the learning rate by this after a collapse"),
    )


@dataclass(frozen=True)
class DivergenceEvent:
    """What the loop saw. ``step`` counts training steps of the trial, from 1."""

    kind: Kind
    epoch: int
    step: int
    loss: float
    threshold: float | None = None  # what a spike (or a loss jump) exceeded
    # a collapse: what was seen, and where it began (the end of the last epoch without a sign of it)
    seen: dict[str, Any] | None = None
    since_epoch: int | None = None
    since_step: int | None = None

    def to_json(self) -> dict[str, Any]:
        """As the ``divergence`` event reports it: ``seen`` and ``since_*`` only for a collapse."""
        fields = asdict(self)
        if self.kind != "collapse":
            for name in ("seen", "since_epoch", "since_step"):
                del fields[name]
        return fields


class SpikeDetector:
    """The per-step check. Its state travels in snapshots, so a rollback or a resume
    restores it exactly."""

    def __init__(self, options: DivergenceOptions):
        self.factor, self.floor = options.spike_factor, options.spike_floor
        self.patience, self.warmup, self.smoothing = options.patience, options.warmup_steps, options.smoothing
        self.average: float | None = None
        self.seen = 0
        self.strikes = 0

    def threshold(self) -> float:
        return self.factor * max(self.average, self.floor)

    def spiked(self, loss: float) -> bool:
        """Called after each step with a finite loss; True once a spike has lasted ``patience`` steps."""
        self.seen += 1
        if self.average is None:
            self.average = loss
            return False
        if self.seen > self.warmup and loss > self.factor * max(self.average, self.floor):
            self.strikes += 1  # spikes stay out of the average
            return self.strikes >= self.patience
        self.strikes = 0
        self.average = self.smoothing * self.average + (1.0 - self.smoothing) * loss
        return False

    def state(self) -> dict[str, Any]:
        return {"average": self.average, "seen": self.seen, "strikes": self.strikes}

    def load_state(self, state: dict[str, Any]) -> None:
        self.average, self.seen, self.strikes = state["average"], state["seen"], state["strikes"]


def val_divergence(
    val_loss: float, lowest_val_loss: float | None, options: DivergenceOptions
) -> tuple[Kind, float | None] | None:
    """The per-epoch check: a non-finite validation loss, or one exploding past the lowest so far."""
    if not math.isfinite(val_loss):
        return "non_finite_val_loss", None
    if lowest_val_loss is not None:
        threshold = options.val_spike_factor * max(lowest_val_loss, options.spike_floor)
        if val_loss > threshold:
            return "val_loss_spike", threshold
    return None
