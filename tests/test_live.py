"""The live view: what a person sees of a run, built from its events alone."""

from __future__ import annotations

import io

from rich.console import Console

from runner.views.live import LiveView
from tests.conftest import run_file


def start_events(planned: int = 3) -> list[dict]:
    events = [{"t": 0, "event": "experiment_start", "metric": "val_acc", "mode": "max", "planned_trials": planned}]
    for trial, lr in enumerate([0.1, 0.01]):
        events.append(
            {
                "t": 1,
                "event": "trial_start",
                "trial": trial,
                "params": {"train.lr": lr},
                "config": {"train": {"epochs": 10}},
                "hyperparameters": {"lr": lr, "momentum": 0.9},
            }
        )
    return events


def epoch(trial: int, index: int, acc: float, lr: float) -> dict:
    return {
        "t": 2,
        "event": "epoch_end",
        "trial": trial,
        "epoch": index,
        "step": 10 * (index + 1),
        "train_loss": 1.5,
        "val_loss": 1.25,
        "val_acc": acc,
        "lr": lr,
        "momentum": 0.9,
        "seconds": 0.1,
    }


def rendered(view: LiveView, width: int = 160) -> str:
    console = Console(file=io.StringIO(), width=width, height=40, record=True, color_system=None)
    console.print(view.render())
    return console.export_text()


def rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in text.splitlines() if line.strip().startswith("t0")}


def test_running_trials_show_their_epoch_metrics_and_live_settings():
    view = LiveView(Console(file=io.StringIO()), live=True)
    for event in [
        *start_events(),
        epoch(0, 0, 0.5, 0.1),
        epoch(0, 1, 0.75, 0.1),
        epoch(1, 0, 0.25, 0.01),
        {"t": 3, "event": "nudge", "trial": 1, "changes": {"lr": {"old": 0.01, "new": 0.003}}},
        {"t": 3, "event": "pause", "trial": 1},
    ]:
        view.observe(event)
    table = rows(rendered(view))
    assert table["t000"][:10] == ["t000", "running", "2/10", "1.5", "1.25", "0.75", "0.1", "0.9", "0.75", "lr=0.1"]
    assert table["t001"][:10] == ["t001", "paused", "1/10", "1.5", "1.25", "0.25", "0.003", "0.9", "0.25", "lr=0.01"]
    assert "3/30 · trials 0/3" in rendered(view)  # epochs done of planned, trials finished of planned


def test_finished_trials_follow_the_running_ones_best_first_and_count_their_whole_budget():
    view = LiveView(Console(file=io.StringIO()), live=True)
    for event in [*start_events(), epoch(0, 0, 0.5, 0.1), epoch(1, 0, 0.9, 0.01)]:
        view.observe(event)
    view.observe(
        {
            "t": 4,
            "event": "trial_complete",
            "trial": 0,
            "state": "diverged",
            "epochs": 1,
            "seconds": 1.0,
            "score": 0.5,
            "reason": "non_finite_loss",
        }
    )
    view.observe(
        {
            "t": 5,
            "event": "trial_start",
            "trial": 2,
            "params": {"train.lr": 1.0},
            "config": {"train": {"epochs": 10}},
            "hyperparameters": {"lr": 1.0, "momentum": 0.9},
        }
    )
    view.observe({"t": 6, "event": "trial_retry", "trial": 1})
    text = rendered(view)
    assert [line.split()[:2] for line in text.splitlines() if line.strip().startswith("t0")] == [
        ["t001", "retrying"],
        ["t002", "running"],
        ["t000", "diverged"],
    ]
    assert "11/30 · trials 1/3" in text  # the diverged trial counts its 10 planned epochs as done


def test_on_a_terminal_it_draws_live_and_otherwise_prints_a_line_per_finished_trial():
    out = io.StringIO()
    view = LiveView(Console(file=out, width=200), live=False)
    with view:
        for event in [*start_events(), epoch(0, 0, 0.5, 0.1)]:
            view.observe(event)
        assert out.getvalue() == ""
        view.observe(
            {
                "t": 4,
                "event": "trial_complete",
                "trial": 0,
                "state": "completed",
                "epochs": 10,
                "seconds": 2.5,
                "score": 0.875,
                "reason": "",
            }
        )
    assert out.getvalue() == "t000 completed val_acc=0.875 epochs=10 2.5s  lr=0.1\n"

    terminal = io.StringIO()
    view = LiveView(Console(file=terminal, width=120, force_terminal=True, color_system=None), live=None)
    with view:
        for event in [*start_events(), epoch(0, 0, 0.5, 0.1)]:
            view.observe(event)
    drawn = terminal.getvalue()
    assert "trials (best: val_acc)" in drawn and "t000" in drawn and "1/10" in drawn and " completed " not in drawn


def test_a_real_run_replayed_shows_every_trial_finished(tmp_path, write_experiment):
    run = run_file(write_experiment({"train": {"epochs": 3}}), tmp_path)
    view = LiveView(Console(file=io.StringIO()), live=False)
    view.replay(run.events)  # as ``runner resume`` shows what came before: drawn, not printed
    table = rows(rendered(view))
    best_first = [f"t{r.trial:03d}" for r in run.board]
    assert list(table) == best_first
    assert all(row[1:3] == ["completed", "3/3"] for row in table.values())
    assert "6/6 · trials 2/2" in rendered(view)
