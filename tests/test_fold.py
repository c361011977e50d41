"""The one reading of the event log (runner.records.fold): a log in, each trial's standing out.

Hand-written logs with the fields the catalogue lists: retries, rollbacks, resumes, pauses,
refused nudges and interruptions, each moving a trial where a reader of the run must see it.
"""

from runner.history import History
from runner.records.fold import RunFold

START = {"t": 0.0, "event": "experiment_start", "name": "x", "metric": "val_acc", "mode": "max", "planned_trials": 3}


def begin(trial, lr=0.1, t=1.0):
    return [
        {"t": t, "event": "trial_queued", "queued": trial, "params": {"train.lr": lr}},
        {
            "t": t,
            "event": "trial_start",
            "trial": trial,
            "params": {"train.lr": lr},
            "seed": 7,
            "config": {"train": {"epochs": 5}},
            "hyperparameters": {"lr": lr, "momentum": 0.9},
        },
    ]


def epoch(trial, n, acc, lr=0.1, step=None):
    return {
        "t": 2.0 + n,
        "event": "epoch_end",
        "trial": trial,
        "epoch": n,
        "step": step if step is not None else 10 * (n + 1),
        "train_loss": 1.0 - acc,
        "val_loss": 1.0 - acc,
        "val_acc": acc,
        "lr": lr,
        "momentum": 0.9,
        "seconds": 0.1,
    }


def complete(trial, state, score, epochs):
    return {
        "t": 9.0,
        "event": "trial_complete",
        "trial": trial,
        "state": state,
        "params": {"train.lr": 0.1},
        "score": score,
        "best": None,
        "final": None,
        "epochs": epochs,
        "seconds": 8.0,
        "reason": "",
        "ends_experiment": False,
    }


def test_a_rollback_takes_the_trial_back_and_cuts_its_lr_but_its_best_epoch_stays():
    fold = RunFold.of(
        [
            START,
            *begin(0),
            epoch(0, 0, 0.5),
            epoch(0, 1, 0.8),
            epoch(0, 2, 0.3),
            {
                "t": 6.0,
                "event": "rollback",
                "trial": 0,
                "to_epoch": 2,
                "to_step": 20,
                "from_epoch": 3,
                "from_step": 30,
                "snapshot": "best",
                "reason": "val_loss_spike",
                "source": "divergence",
                "lr_before": 0.1,
                "lr_after": 0.05,
                "reshuffled": True,
                "rollbacks": 1,
            },
        ]
    )
    trial = fold.trials[0]
    assert (trial.state, trial.epoch, trial.step, trial.rollbacks) == ("running", 2, 20, 1)
    assert trial.hyperparameters == {"lr": 0.05, "momentum": 0.9}
    assert trial.best["epoch"] == 1 and fold.score(trial) == 0.8  # the best epoch so far, on any path
    assert [e["epoch"] for e in trial.epochs] == [0, 1, 2]  # every epoch_end, undone ones too
    assert trial.metrics["epoch"] == 2 and trial.planned_epochs == 5 and trial.settings == ("lr", "momentum")


def test_a_retry_marks_the_trial_retrying_until_its_new_worker_resumes_it():
    events = [
        START,
        *begin(1),
        epoch(1, 0, 0.5),
        epoch(1, 1, 0.6),
        {
            "t": 5.0,
            "event": "trial_retry",
            "trial": 1,
            "attempt": 1,
            "retries": 2,
            "reason": "killed by SIGKILL",
            "snapshot": "trials/t001/e00001.npz",
            "epoch": 1,
            "step": 10,
            "notes": [],
        },
    ]
    fold = RunFold.of(events)
    assert (fold.trials[1].state, fold.trials[1].epoch, fold.trials[1].step) == ("retrying", 1, 10)
    fold.observe(
        {
            "t": 5.5,
            "event": "trial_resume",
            "trial": 1,
            "epoch": 1,
            "step": 10,
            "hyperparameters": {"lr": 0.1, "momentum": 0.8},
            "snapshot": "trials/t001/e00001.npz",
        }
    )
    assert fold.trials[1].state == "running" and fold.trials[1].hyperparameters["momentum"] == 0.8


def test_pauses_nudges_refusals_and_an_interruption_move_the_trial_as_they_say():
    fold = RunFold.of([START, *begin(0), epoch(0, 0, 0.5)])
    trial = fold.trials[0]
    pause = {"t": 4.0, "event": "pause", "trial": 0, "epoch": 1, "step": 13, "reason": "", "source": "control"}
    fold.observe(pause)
    assert (trial.state, trial.step) == ("paused", 13)
    fold.observe({**pause, "event": "unpause", "step": 14})
    assert trial.state == "running"
    fold.observe(
        {
            "t": 4.5,
            "event": "nudge",
            "trial": 0,
            "epoch": 1,
            "step": 15,
            "changes": {"lr": {"old": 0.1, "new": 3.0}},
            "source": "control",
            "reason": "",
        }
    )
    assert trial.hyperparameters["lr"] == 3.0 and trial.step == 15
    fold.observe(
        {
            "t": 4.6,
            "event": "nudge_refused",
            "trial": 0,
            "epoch": 1,
            "step": 17,
            "nudge_step": 15,
            "asked": {"lr": 3.0},
            "restored": {"lr": 0.1},
            "reason": "diverged",
        }
    )
    assert trial.hyperparameters["lr"] == 0.1
    fold.observe({"t": 5.0, "event": "interrupted", "trial": 0, "epoch": 1, "step": 17})
    assert trial.state == "interrupted" and not trial.ended


def test_an_ended_trial_takes_its_results_state_and_the_history_keeps_the_order_asked():
    events = [
        START,
        *begin(0),
        epoch(0, 0, 0.4),
        *begin(1, lr=0.2, t=1.5),
        {"t": 1.6, "event": "trial_queued", "queued": 2, "params": {"train.lr": 0.3}},
        complete(0, "diverged", 0.4, 1),
        {"t": 9.5, "event": "experiment_complete"},
    ]
    fold = RunFold.of(events)
    assert fold.trials[0].ended and fold.trials[0].state == "diverged" and fold.score(fold.trials[0]) == 0.4
    assert fold.unannounced() == [2] and fold.finished
    history = History.from_events(events)
    assert [(r.id, r.params["train.lr"]) for r in history] == [(0, 0.1), (1, 0.2), (2, 0.3)]
    assert [r.id for r in history.finished] == [0] and history.finished[0].result.state == "diverged"


def test_events_of_a_trial_it_never_saw_begin_are_passed_over():
    fold = RunFold.of([START, epoch(4, 0, 0.9), {"t": 3.0, "event": "trial_resume", "trial": 4, "epoch": 1}])
    assert fold.trials == {} and fold.asked == {}


def test_a_trial_that_ended_before_it_began_is_finished_not_queued():
    """A worker that died before its trial started, and was given up on: trial_complete, no trial_start."""
    events = [
        START,
        {"t": 1.0, "event": "trial_queued", "queued": 0, "params": {"train.lr": 0.1}},
        complete(0, "failed", None, 0),
    ]
    fold = RunFold.of(events)
    assert fold.results[0].state == "failed" and fold.unannounced() == [] and fold.trials == {}
    assert [r.result.state for r in History.from_events(events)] == ["failed"]


def test_a_fold_that_keeps_no_epochs_still_keeps_the_latest_and_the_best():
    fold = RunFold(keep_epochs=False)
    for event in [START, *begin(0), epoch(0, 0, 0.5), epoch(0, 1, 0.7), epoch(0, 2, 0.6)]:
        fold.observe(event)
    trial = fold.trials[0]
    assert trial.epochs == [] and trial.metrics["epoch"] == 2 and trial.best["epoch"] == 1
