"""Panda-nudge: babysit one long run the way a person would, automatically.

One trial trains the experiment's base config (``runner start exp.json --from RUN_DIR``
starts from the best config of an earlier search). Its babysitter, called at the end of
every epoch, keeps a notebook of the validation metric and, every few epochs, *tries* a
nudge: the learning rate up or down by ``lr_factor``, or a momentum up or down (``1 -
momentum`` divided or multiplied by ``momentum_factor``). After ``probe_epochs`` it judges:

- the change is **kept** if the metric gained more over those epochs than the trend
  promised: the slowest one-epoch gain of the ``probe_epochs`` epochs before the nudge,
  continued for as many epochs (what leaving things alone could be counted on to give,
  since learning curves flatten);
- otherwise it is **reverted** (a rollback to the snapshot the loop took just before the
  nudge) and the other direction is tried from that same point; when neither beats
  the trend, the setting stays and the next try waits twice as long.

A kept change is tried again in the same direction at once, with a factor that grows
(2, 4, 8, 16 for ``lr_factor`` 2) while it keeps helping, so a learning rate that is off by
orders of magnitude is mended in a few tries. When
the best metric has not improved for ``patience`` epochs (a plateau), the learning rate
is cut by ``plateau_factor``. Divergence is left to the divergence policy (roll back, cut
the learning rate); a try that diverged counts as failed. A person's nudge or rollback
through the control file always wins: a try in progress is dropped, not reverted, and the
automatic nudges wait ``cooldown`` epochs.

It watches for a collapse as the loop does (``trial.collapse_signs``, from
``runner.engine.collapse``): no try starts while the network shows a sign of one, so the
snapshot a revert returns to never shows one, and a try that brings a sign on is reverted
whatever the metric says. A collapse itself is the divergence policy's: back to before it
began, the learning rate cut by ``divergence.collapse_lr_cut``.

The budget is ``train.epochs`` epochs *trained*, counting those a revert undid, so a
panda-nudge run costs what a fixed run of the same file costs; when it is spent the trial
finishes as completed. Every try, keep, revert and cut is an event with its reason.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from runner import (
    Babysitter,
    Decision,
    Finish,
    Note,
    Nudge,
    Rollback,
    SpecError,
    Strategy,
    Trial,
    bounds,
    default_mode,
    hookimpl,
)


@dataclass(frozen=True)
class PandaOptions:
    every: int = field(
        default=3,
        metadata=bounds(ge=1, doc="epochs of watching before a try (and after one that neither kept nor reverted)"),
    )
    probe_epochs: int = field(default=2, metadata=bounds(ge=1, doc="epochs a tried nudge trains before it is judged"))
    lr_factor: float = field(
        default=2.0, metadata=bounds(gt=1, doc="a try multiplies or divides the learning rate by this")
    )
    momentum_factor: float = field(
        default=2.0,
        metadata=bounds(
            gt=1, doc="a try divides (up) or multiplies (down) 1 - momentum by this: 0.9 becomes 0.95 or 0.8"
        ),
    )
    moves: tuple[str, ...] = field(
        default=("lr", "momentum"),
        metadata={
            "doc": "live settings to try, in turn; lr is scaled, any other (a momentum, beta2) moves in 1 - value"
        },
    )
    patience: int = field(
        default=6, metadata=bounds(ge=1, doc="epochs without a new best metric before the learning rate is cut")
    )
    plateau_factor: float = field(
        default=0.5, metadata=bounds(gt=0, lt=1, doc="a plateau multiplies the learning rate by this")
    )
    min_lr: float = field(
        default=1e-8,
        metadata=bounds(
            gt=0, doc="no plateau cut or try takes the learning rate below this (a long plateau would drive it to 0)"
        ),
    )
    cooldown: int = field(
        default=5, metadata=bounds(ge=0, doc="epochs without automatic nudges after a person's nudge or rollback")
    )
    judge: str = field(
        default="val_loss",
        metadata={
            "doc": "the metric tries are judged by; the validation loss moves smoothly, "
            "where accuracy moves in steps and stalls at first"
        },
    )
    min_delta: float = field(
        default=0.0,
        metadata=bounds(ge=0, doc="by how much (in the metric's units) a try must beat the trend to be kept"),
    )

    def check(self, path: str) -> None:
        if not self.moves:
            raise SpecError(f"{path}.moves", 'must name at least one live setting, such as ["lr"]')
        for i, name in enumerate(self.moves):
            if not name:
                raise SpecError(f"{path}.moves.{i}", "must be the name of a live setting, such as lr or momentum")


class PandaNudge(Strategy):
    name = "panda-nudge"
    Options = PandaOptions

    @classmethod
    def check(cls, space, options, metrics) -> None:
        if options.judge not in metrics:
            raise SpecError(
                "search.strategy.judge",
                f"the backend does not report {options.judge!r}; it reports {', '.join(metrics)}",
            )
        if len(space):
            raise SpecError(
                "search.space",
                "panda-nudge trains one model, so it searches no space: set the values "
                "in the model and train sections, or start from an earlier search's "
                "best with: runner start EXPERIMENT --from RUN_DIR",
            )

    def ask(self, history):
        return {} if len(history) == 0 else None

    def planned_trials(self) -> int:
        return 1

    def babysitter(self, trial: Trial) -> PandaBabysitter:
        judge = self.options.judge
        mode = self.mode if judge == self.metric else default_mode(judge)
        return PandaBabysitter(
            self.options, judge, mode, budget=trial.config["train"]["epochs"], live=tuple(trial.hyperparameters)
        )


@dataclass
class Try:
    """A nudge on trial: which setting, which way, from what, and what it must beat."""

    setting: str
    direction: str  # "up" or "down"
    old: float
    new: float
    epoch: int  # epochs completed when it was made
    score: float  # the metric then
    gain: float  # what the trend promises over probe_epochs (>= 0)


@dataclass
class Notebook:
    """The babysitter's state: JSON values only (it travels in snapshots)."""

    trained: int = 0  # epochs trained, on every path
    scores: list = field(default_factory=list)  # the metric after each epoch of the current path (None: not finite)
    wait: int = 0  # epochs until the next try
    cooling: int = 0  # epochs left without automatic nudges (a person acted)
    trying: dict | None = None  # the Try in progress
    failed: list = field(default_factory=list)  # directions of the current setting that failed from this point
    move: int = 0  # index into options.moves of the setting to try next
    prefer: dict = field(default_factory=dict)  # setting -> the direction that last helped
    backoff: int = 1  # multiplies `every` after tries that failed both ways
    streak: int = 0  # tries kept in a row in the same direction: the next one goes further
    ceiling: float | None = None  # the lowest learning rate that diverged: tries stay below it
    plateau_from: int = 0  # epochs completed when the last plateau cut (or a person) reset the count
    notes: list = field(default_factory=list)  # notes to write at the next epoch end: (kind, reason)
    first: int = 0  # the epoch whose score is scores[0]: older ones are dropped, so snapshots stay small

    def drop_try(self) -> dict | None:
        """End the try in progress without a verdict (someone else acted, or it diverged); return it."""
        trying = self.trying
        self.trying, self.failed, self.streak = None, [], 0
        return trying

    def record(self, epoch: int, score: float | None) -> None:
        """The score after ``epoch`` (from 0) of the current path; keeps the last ``KEPT_SCORES``."""
        self.cut(epoch)
        self.scores.append(score)
        if len(self.scores) > 2 * KEPT_SCORES:
            drop = len(self.scores) - KEPT_SCORES
            del self.scores[:drop]
            self.first += drop

    def cut(self, epochs: int) -> None:
        """Forget the scores of epoch ``epochs`` on: the path goes on from there (a rollback)."""
        if epochs < self.first:
            self.scores.clear()
            self.first = epochs
        else:
            del self.scores[epochs - self.first :]

    def since(self, epochs: int) -> list:
        """The kept scores of epoch ``epochs`` on."""
        return self.scores[max(0, epochs - self.first) :]

    @property
    def epochs(self) -> int:
        """Epochs of the current path, scored."""
        return self.first + len(self.scores)


class PandaBabysitter(Babysitter):
    """The trial's babysitter: decides at each epoch's end; hears of every nudge and rollback."""

    def __init__(self, options: PandaOptions, metric: str, mode: str, *, budget: int, live: tuple[str, ...]):
        self.options, self.metric, self.mode, self.budget = options, metric, mode, budget
        self.moves = [m for m in options.moves if m in live]
        self.book = Notebook(wait=options.every)
        skipped = [m for m in options.moves if m not in live]
        if skipped:
            self.book.notes.append(["skip", f"not live settings of this backend, never tried: {', '.join(skipped)}"])

    # -- the contract ---------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return asdict(self.book)

    def load_state(self, state: dict[str, Any]) -> None:
        if state:
            self.book = Notebook(**state)

    def nudge_applied(self, trial: Trial, change: dict[str, Any], source: str) -> None:
        if source != "strategy":
            self.interrupted_by(source, "nudged " + ", ".join(f"{k} to {v['new']:.4g}" for k, v in change.items()))

    def rolled_back(self, trial: Trial, rollback: dict[str, Any]) -> list[Decision]:
        book, source = self.book, rollback["source"]
        book.cut(trial.epoch)  # the path now continues from the restored epoch
        book.plateau_from = min(book.plateau_from, trial.epoch)
        if source == "divergence":
            return self.diverged(trial, rollback["lr_before"])
        if source != "strategy":
            self.interrupted_by(source, f"rolled back to epoch {trial.epoch}")
        return []

    def diverged(self, trial: Trial, lr: float | None) -> list[Decision]:
        """The divergence policy rolled back and cut the learning rate. A try in progress
        failed, and the learning rate stays below the one that diverged from now on. Unless
        a try of a higher rate diverged (that was the edge being probed), the learning rate
        is cut once more at once, as a person would after a blow-up."""
        book = self.book
        if lr is not None:
            book.ceiling = lr if book.ceiling is None else min(book.ceiling, lr)
        trying = book.drop_try()
        tried = Try(**trying) if trying is not None else None
        book.prefer["lr"] = "down"
        book.wait = self.options.every
        what = f"{tried.setting} {tried.direction} to {tried.new:.4g}" if tried else "training"
        decisions: list[Decision] = [
            Note(
                "diverged",
                f"{what} diverged at lr {fmt(lr)}; the divergence policy "
                f"rolled it back. The learning rate stays below {fmt(book.ceiling)}",
            )
        ]
        probing_up = tried is not None and tried.setting == "lr" and tried.direction == "up"
        if not probing_up and not book.cooling and "lr" in trial.hyperparameters:
            now = trial.hyperparameters["lr"]
            decisions.append(
                Nudge(
                    lr=now / self.options.lr_factor,
                    reason=f"diverged: lr {now:.4g} / {self.options.lr_factor:g} on top of the policy's cut",
                )
            )
        return decisions

    def epoch_end(self, trial: Trial, epoch: int, metrics: dict[str, float]) -> list[Decision]:
        book = self.book
        book.trained += 1
        score = metrics.get(self.metric)
        book.record(epoch, score if score is not None and math.isfinite(score) else None)
        decisions: list[Decision] = [Note(kind, reason) for kind, reason in book.notes]
        book.notes.clear()
        if book.trained >= self.budget and trial.epoch < self.budget:
            undone = book.trained - trial.epoch
            return decisions + [Finish(f"budget of {self.budget} epochs trained ({undone} of them undone by reverts)")]
        if book.cooling:
            book.cooling -= 1
            return decisions
        if book.trying is not None:
            return decisions + self.judge(trial, Try(**book.trying))
        if (cut := self.plateau(trial)) is not None:
            return decisions + [cut]
        book.wait -= 1
        if book.wait <= 0:
            decisions += self.start_next(trial)
        return decisions

    # -- deciding -------------------------------------------------------------------------

    def judge(self, trial: Trial, tried: Try) -> list[Decision]:
        """The try has trained ``probe_epochs`` (or not yet): keep it, or revert and try the other way."""
        book, options = self.book, self.options
        if trial.epoch - tried.epoch < options.probe_epochs:
            return []
        book.trying = None
        now = book.scores[-1]
        sick = trial.collapse_signs  # the try is wrecking the network, whatever the metric says
        got = None if now is None or sick else self.gain(tried.score, now)
        what = f"{tried.setting} {tried.direction} to {tried.new:.4g}"
        promised = self.ahead(tried.score, tried.gain)
        verdict = f"{self.metric} {fmt(now)} after {options.probe_epochs} epochs; the trend promised {fmt(promised)}"
        if sick:
            verdict += f"; signs of a collapse: {', '.join(sick)}"
        record = {
            "setting": tried.setting,
            "direction": tried.direction,
            "old": tried.old,
            "new": tried.new,
            "metric": self.metric,
            "before": tried.score,
            "after": now,
            "promised": promised,
        }
        if got is not None and got > tried.gain + options.min_delta:
            book.prefer[tried.setting], book.failed, book.backoff = tried.direction, [], 1
            book.streak = min(book.streak + 1, MAX_STREAK)
            keep = Note("keep", f"keep {what}: {verdict}", record)
            return [keep] + self.start(trial, tried.setting, tried.direction, chained=True)
        book.failed.append(tried.direction)
        book.streak = 0
        decisions: list[Decision] = [
            Note("revert", f"revert {what}: {verdict}", record),
            Rollback("before_nudge", reason=f"revert {what}"),
        ]
        if flip(tried.direction) not in book.failed and book.trained + options.probe_epochs < self.budget:
            retry = self.nudge_for(tried.setting, flip(tried.direction), tried.old)
            if retry is not None:
                book.trying = asdict(
                    Try(tried.setting, flip(tried.direction), tried.old, retry, tried.epoch, tried.score, tried.gain)
                )
                return decisions + [Nudge({tried.setting: retry}, reason=self.why(book.trying))]
        return decisions + self.give_up(tried.setting)

    def give_up(self, setting: str) -> list[Decision]:
        """No direction beat the trend: leave the setting, and wait longer before the next try."""
        book = self.book
        verdict = (
            f"neither {' nor '.join(book.failed)} beat the trend"
            if len(book.failed) > 1
            else f"{book.failed[0]} did not beat the trend"
        )
        book.failed, book.backoff = [], min(book.backoff * 2, 8)
        book.wait = self.options.every * book.backoff
        book.move += 1
        return [Note("hold", f"{setting}: {verdict}; next try in {book.wait} epochs")]

    def start_next(self, trial: Trial) -> list[Decision]:
        """Try the next setting in turn, in the direction that last helped it (up at first)."""
        if not self.moves:
            return []
        setting = self.moves[self.book.move % len(self.moves)]
        self.book.streak = 0
        return self.start(trial, setting, self.book.prefer.get(setting, "up"), chained=False)

    def start(self, trial: Trial, setting: str, direction: str, *, chained: bool) -> list[Decision]:
        """A nudge to try, if there is budget to judge it and a trend to judge it against."""
        book, options = self.book, self.options
        k = options.probe_epochs
        epoch, now = trial.epoch, book.scores[-1]
        if book.trained + k >= self.budget or now is None:
            book.wait = options.every
            return []
        if trial.collapse_signs:  # a try from here would leave a snapshot no revert should return to
            book.wait = options.every
            signs = ", ".join(trial.collapse_signs)
            return [Note("wait", f"no try while the network shows signs of a collapse ({signs})")]
        trend = k * self.pace(book.scores[-1 - k :])
        old = trial.hyperparameters[setting]
        new = self.nudge_for(setting, direction, old)
        if new is None and not chained:
            direction = flip(direction)
            new = self.nudge_for(setting, direction, old)
        if new is None:
            book.move += 1
            book.wait = options.every
            return []
        book.trying = asdict(Try(setting, direction, old, new, epoch, now, trend))
        return [Nudge({setting: new}, reason=self.why(book.trying))]

    def plateau(self, trial: Trial) -> Nudge | None:
        """A learning-rate cut when the best metric of the path is ``patience`` epochs old."""
        book = self.book
        scores = book.since(book.plateau_from)
        finite = [(i, s) for i, s in enumerate(scores) if s is not None]
        if "lr" not in trial.hyperparameters or not finite:
            return None
        best_at = min(finite, key=lambda x: x[1])[0] if self.mode == "min" else max(finite, key=lambda x: x[1])[0]
        if len(scores) - 1 - best_at < self.options.patience:
            return None
        book.plateau_from = book.epochs
        lr = trial.hyperparameters["lr"]
        if lr * self.options.plateau_factor < self.options.min_lr:
            return None
        return Nudge(
            lr=lr * self.options.plateau_factor,
            reason=f"plateau: no better {self.metric} for {self.options.patience} epochs; "
            f"lr {lr:.4g} x {self.options.plateau_factor:g}",
        )

    def interrupted_by(self, source: str, what: str) -> None:
        """Someone else changed the trial: drop the try in progress (it is no longer what is
        being measured); a person's change also pauses the automatic nudges."""
        book = self.book
        book.drop_try()
        book.plateau_from = book.epochs
        book.wait = self.options.every
        if source in ("control", "resume"):  # a person's: the control file, or runner resume --set
            book.cooling = self.options.cooldown
            book.notes.append(["yield", f"a person {what}: automatic nudges wait {self.options.cooldown} epochs"])
        else:
            book.notes.append(["yield", f"a {source} {what}: the try in progress is dropped"])

    # -- arithmetic -----------------------------------------------------------------------

    def nudge_for(self, setting: str, direction: str, value: float) -> float | None:
        """The value a try sets, or None where that direction cannot move (momentum 0 down)."""
        reach = 1 + self.book.streak  # a streak of kept tries takes longer strides
        if setting == "lr":
            factor = self.options.lr_factor**reach
            if direction == "down":
                return value / factor if value / factor >= self.options.min_lr else None
            ceiling = self.book.ceiling
            new = value * factor if ceiling is None else min(value * factor, ceiling / self.options.lr_factor)
            return new if new > value else None
        factor = self.options.momentum_factor**reach
        rest = (1.0 - value) / factor if direction == "up" else min(1.0, (1.0 - value) * factor)
        new = 1.0 - rest
        return None if new == value else new

    def pace(self, scores: list[float | None]) -> float:
        """The slowest gain per epoch over ``scores`` (at least 0): what the metric may be
        counted on to gain per epoch if nothing changes. The slowest, because curves flatten
        and a noisy epoch must not promise what the next will not keep."""
        gains = [self.gain(a, b) for a, b in itertools.pairwise(scores) if a is not None and b is not None]
        return max(0.0, min(gains)) if gains else 0.0

    def gain(self, before: float, after: float) -> float:
        """How much the metric improved from ``before`` to ``after`` (negative: it got worse)."""
        return before - after if self.mode == "min" else after - before

    def ahead(self, score: float, gain: float) -> float:
        return score - gain if self.mode == "min" else score + gain

    def why(self, trying: dict) -> str:
        t = Try(**trying)
        return (
            f"try {t.setting} {t.direction}: {t.old:.4g} -> {t.new:.4g} for {self.options.probe_epochs} epochs "
            f"({self.metric} {fmt(t.score)}; the trend promises {fmt(self.ahead(t.score, t.gain))})"
        )


MAX_STREAK = 3  # the longest stride is factor ** 4
KEPT_SCORES = 256  # epochs of scores the notebook keeps: many times what the trend and a plateau look at


def flip(direction: str) -> str:
    return "down" if direction == "up" else "up"


def fmt(value: float | None) -> str:
    return "not finite" if value is None else f"{value:.4g}"


@hookimpl
def runner_register(registry):
    registry.add_strategy(PandaNudge)
