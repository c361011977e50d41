"""Collapse: a network that has stopped learning without blowing up.

A learning rate far too high can wreck a network without a single non-finite value: the
loss leaps far above where it started, the ReLUs die, and accuracy sinks to chance and
stays there. No spike is seen if it happens in the first steps (the running average
learns the leap), and a rollback to the last snapshot lands on a network that is already
dead. ``CollapseDetector`` watches for three signs, cheaply:

- ``loss_jump`` (each step): a training loss above ``jump_factor`` times the trial's first
  one (its loss before any update; ``spike_floor`` if that is lower) for ``patience`` steps
  in a row. A healthy run stays near or below its first loss; this catches the leap that
  the spike detector's warm-up hides.
- ``dead_units`` (each epoch, for backends that report ``Backend.dead_units``): a hidden
  layer with at least ``dead_fraction`` of its units giving the same output for every
  validation example: nothing that passes through it depends on the input any more.
- ``chance`` (each epoch, classification with an ``acc`` metric): the validation accuracy
  and loss back at chance, within ``chance_margin`` (an accuracy at most 1/C + margin and a
  loss at least (1 - margin) ln C, for C classes: what guessing gives), in a trial whose
  accuracy had been above chance by four times that margin and by three standard errors of
  a guess's accuracy on the validation split. A slow run a little above chance has a loss
  well below ln C (it is learning), and on a small split a lucky epoch is not "better": neither
  is flagged.

A sign seen at the end of ``collapse_epochs`` epochs in a row (a loss jump at once) is a
collapse: a divergence of kind ``collapse``, whose ``seen`` says what was seen and whose
``since_epoch``/``since_step`` say where it began: the newest point known healthy, the end
of the last epoch with no sign (the start of the trial, if none), or for a loss jump the
weights from before the first step whose loss was above the jump limit (``LAG`` steps
before the step that reported it). A leap that does not last ``patience`` steps
is no collapse yet, but it wrecks more than it shows at once (the ReLUs it kills stay
dead): no later point counts as healthy until a rollback returns to before it. The rollback policy goes
back to a snapshot taken there or earlier. A run that sits at chance from its first epoch,
with no jump and no dead units, is a slow start, not a collapse: it is never flagged.

The detector's state travels in the trial's snapshots, so a rollback or a resume puts back
what it had seen.
"""

from __future__ import annotations

import math
from typing import Any

from runner.engine.divergence import DivergenceEvent, DivergenceOptions

# A trial is "better than chance" once its validation accuracy has been this many
# chance_margins above chance, and this many standard errors of a guess's accuracy on its
# validation split: only one that was can fall back to it.
BETTER = 4
NOISE = 3
# The first leap is seen in the loss reported at step k, measured on the weights after k - 1
# updates; a GPU backend reports it a step later still. The weights after k - LAG updates
# are the newest known to be healthy.
LAG = 3
# The detector's state at the start of a trial (``CollapseDetector`` says what each is).
SEEN: dict[str, Any] = {
    "first_loss": None,
    "strikes": 0,
    "leapt": False,
    "sick_epochs": 0,
    "calm": (0, 0),
    "epoch_began": 0,
    "best_acc": None,
    "signs": (),
}


class CollapseDetector:
    """Watches one trial; the loop calls ``stepped`` after each finite step loss and
    ``epoch_end`` after each evaluation. Either returns the collapse, or None."""

    # What it has seen along the trial's path (its ``state``; a fresh trial's values in SEEN):
    first_loss: float | None  # the loss of the trial's first step (before any update)
    strikes: int  # steps in a row above the jump limit
    leapt: bool  # a step of this path went above the jump limit
    sick_epochs: int  # epoch ends in a row that showed a sign
    # (epochs, step) of the newest point known healthy: the end of the last epoch without a
    # sign, or the step before the path's first leap; it never moves past a leap
    calm: tuple[int, int]
    epoch_began: int  # the step at which the current epoch began
    best_acc: float | None  # the highest validation accuracy of this path
    signs: list[str]  # the signs seen at the last epoch end

    def __init__(self, options: DivergenceOptions, classes: int, val_examples: int = 0):
        self.options = options
        self.chance = 1.0 / classes if classes >= 2 else None
        # how far above chance "better" is: BETTER margins, and NOISE standard errors of a
        # guess's accuracy on the validation split (on 20 examples, 0.75 is luck for a coin)
        noise = NOISE * math.sqrt(self.chance * (1 - self.chance) / val_examples) if self.chance and val_examples else 0
        self.better = None if self.chance is None else self.chance + max(BETTER * options.chance_margin, noise)
        self.load_state({})  # what it has seen: nothing yet

    def limit(self) -> float:
        return self.options.jump_factor * max(self.first_loss or 0.0, self.options.spike_floor)

    def stepped(self, loss: float, epoch: int, step: int) -> DivergenceEvent | None:
        """Called after step ``step`` (from 1) of epoch ``epoch`` with its finite loss."""
        if not self.options.collapse:
            return None
        if self.first_loss is None:
            self.first_loss = loss
            return None
        limit = self.limit()
        if loss <= limit:
            self.strikes = 0
            return None
        if not self.leapt:  # the first leap: what came before it was healthy, unless epochs showed signs
            self.leapt = True
            if not self.sick_epochs:
                healthy = max(step - LAG, 0)
                self.calm = (epoch if healthy >= self.epoch_began else max(epoch - 1, 0), healthy)
        self.strikes += 1
        if self.strikes < self.options.patience:
            return None
        seen = {"loss_jump": {"first_loss": self.first_loss, "steps": self.strikes}}
        return DivergenceEvent("collapse", epoch, step, loss, limit, seen, *self.calm)

    def epoch_end(
        self, epoch: int, step: int, train_loss: float, metrics: dict[str, float], dead: dict[str, float] | None
    ) -> DivergenceEvent | None:
        """Called after epoch ``epoch`` (from 0) is evaluated: ``metrics`` as the epoch logs
        them (``val_acc``...), ``dead`` as ``Backend.dead_units`` reported it (None: not known)."""
        if not self.options.collapse:
            return None
        options, seen = self.options, {}
        dying = {layer: fraction for layer, fraction in (dead or {}).items() if fraction >= options.dead_fraction}
        if dying:
            seen["dead_units"] = dying
        acc, loss = metrics.get("val_acc"), metrics.get("val_loss")
        if self.chance is not None and acc is not None and math.isfinite(acc):
            margin = options.chance_margin
            been_better = self.best_acc is not None and self.best_acc >= self.better
            chance_loss = -math.log(self.chance)
            at_chance = acc <= self.chance + margin and loss is not None and loss >= (1 - margin) * chance_loss
            if been_better and at_chance:
                seen["chance"] = {
                    "val_acc": acc,
                    "val_loss": loss,
                    "chance": self.chance,
                    "chance_loss": chance_loss,
                    "best_val_acc": self.best_acc,
                }
            self.best_acc = acc if self.best_acc is None else max(self.best_acc, acc)
        self.epoch_began = step
        self.signs = sorted(seen) + (["loss_jump"] if self.strikes else [])
        if not seen:
            self.sick_epochs = 0
            if not self.leapt:  # a leap wrecks more than it shows at once: no later point is known healthy
                self.calm = (epoch + 1, step)
            return None
        self.sick_epochs += 1
        if self.sick_epochs < options.collapse_epochs:
            return None
        return DivergenceEvent("collapse", epoch, step, train_loss, None, seen, *self.calm)

    def state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SEEN}

    def load_state(self, state: dict[str, Any]) -> None:
        """Put back a saved state; what a snapshot written before collapses were watched for
        lacks starts afresh."""
        for name, fresh in SEEN.items():
            setattr(self, name, state.get(name, fresh))
        self.calm, self.signs = tuple(self.calm), list(self.signs)  # (JSON gives lists)
