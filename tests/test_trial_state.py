"""What a snapshot carries of the trial loop (runner.engine.trial_state): a resume puts back
every saved field, a rollback only where training stood, and older snapshots still load."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import orjson

from runner import Babysitter
from runner.control.refusal import NudgeOnTrial
from runner.engine.collapse import CollapseDetector
from runner.engine.divergence import DivergenceOptions, SpikeDetector
from runner.engine.experiment import EndTrial
from runner.engine.trial_state import LoopState, load_state, save_state, saved_fields
from runner.trial import Trial


class Counting(Babysitter):
    def __init__(self):
        self.tries = 0

    def state(self):
        return {"tries": self.tries}

    def load_state(self, state):
        self.tries = state.get("tries", 0)


def fresh() -> tuple[Trial, LoopState]:
    trial = Trial(id=3, params={}, config={}, seed=1, folder=Path("t003"), run_folder=Path("."))
    options = DivergenceOptions()
    return trial, LoopState(
        detector=SpikeDetector(options), collapse=CollapseDetector(options, classes=10), babysitter=Counting()
    )


def trained() -> tuple[Trial, LoopState, dict]:
    """A trial and loop state with every saved field away from its default, and its snapshot meta."""
    trial, state = fresh()
    trial.epoch, trial.step = 4, 40
    trial.metrics, trial.best = {"val_acc": 0.7}, {"val_acc": 0.8}
    trial.rollbacks, trial.divergence_rollbacks, trial.recent_rollbacks = 5, 3, 1
    state.detector.average, state.detector.seen, state.detector.strikes = 0.5, 40, 1
    state.collapse.first_loss, state.collapse.strikes, state.collapse.leapt = 2.3, 2, True
    state.collapse.sick_epochs, state.collapse.calm, state.collapse.best_acc = 1, (3, 30), 0.8
    state.collapse.signs = ["dead_units"]
    state.babysitter.tries = 2
    state.furthest, state.stuck_rollbacks, state.before_nudge_events, state.events = 4, 2, 17, 21
    state.nudge_on_trial = NudgeOnTrial("2.0", 38, 45, {"lr": 0.5}, {"lr": 0.1}, 17)
    state.lowest_val_loss, state.partial = 0.25, (6, 1.5)
    state.ending = EndTrial("stopped", "asked", experiment=True)
    record = orjson.loads(orjson.dumps(save_state(trial, state)))  # as a snapshot file holds it
    return trial, state, {"epoch": trial.epoch, "step": trial.step, "loop": record}


def values(trial: Trial, state: LoopState) -> dict:
    out = {}
    for holder in (trial, state):
        for field_ in saved_fields(type(holder)):
            value = getattr(holder, field_.name)
            out[field_.name] = value.state() if field_.stateful else value
    out["ending"] = out["ending"] and out["ending"].to_json()
    return out


def test_a_resume_puts_back_every_saved_field():
    trial, state, meta = trained()
    resumed_trial, resumed_state = fresh()
    load_state(meta, resumed_trial, resumed_state, resume=True)
    assert values(resumed_trial, resumed_state) == values(trial, state)
    assert isinstance(resumed_state.partial, tuple) and isinstance(resumed_state.nudge_on_trial, NudgeOnTrial)
    saved = {f.name for h in (Trial, LoopState) for f in fields(h) if "saved" in f.metadata}
    assert set(meta["loop"]) == saved  # every saved field is in the record, and nothing else


def test_a_rollback_puts_back_where_training_stood_and_keeps_counting():
    trial, state, meta = trained()
    trial.metrics, trial.best, trial.rollbacks = {"val_acc": 0.1}, None, 6
    state.detector.average, state.lowest_val_loss, state.partial = 9.0, 0.01, None
    state.collapse.best_acc, state.collapse.signs = 0.99, []
    state.furthest, state.babysitter.tries, state.events = 5, 3, 30
    load_state(meta, trial, state, resume=False)
    assert (trial.metrics, trial.best) == ({"val_acc": 0.7}, {"val_acc": 0.8})
    assert (state.detector.average, state.lowest_val_loss, state.partial) == (0.5, 0.25, (6, 1.5))
    assert (state.collapse.best_acc, state.collapse.signs, state.collapse.leapt) == (0.8, ["dead_units"], True)
    assert (trial.rollbacks, state.furthest, state.babysitter.tries, state.events) == (6, 5, 3, 30)


def test_a_snapshot_written_before_a_field_existed_still_resumes():
    _, _, meta = trained()
    for name in ("divergence_rollbacks", "furthest", "stuck_rollbacks", "nudge_on_trial", "babysitter", "collapse"):
        del meta["loop"][name]
    trial, state = fresh()
    load_state(meta, trial, state, resume=True)
    assert trial.divergence_rollbacks == trial.rollbacks == 5  # then every rollback counted alike
    assert (state.furthest, state.stuck_rollbacks, state.nudge_on_trial, state.babysitter.tries) == (4, 0, None, 0)
    assert state.collapse.state() == fresh()[1].collapse.state(), "collapses are watched afresh"
