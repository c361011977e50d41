"""``runner report``: real runs' leaderboards, plots and HTML, finished, interrupted and running."""

from __future__ import annotations

import base64
import csv
import io
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import orjson
import pytest
from PIL import Image

from runner.records.files import run_lock
from runner.report import read_run_view
from runner.report.build import draw_figures, write_report
from runner.report.figures import _branches, learning_curves, new_figure, parameter_effects, scale_axis
from tests.conftest import QUICK, deep_update, run_file
from tests.test_control_live import LiveRun

SEARCH = deep_update(
    QUICK,
    {
        "name": "search",
        "train": {"epochs": 3, "optimizer": "momentum"},
        "search": {
            "strategy": {"name": "random", "trials": 6},
            "metric": "val_loss",
            "space": {
                "train.lr": {"low": 1e-3, "high": 3.0, "scale": "log"},
                "train.momentum": {"low": 0.5, "high": 0.999, "scale": "log1m"},
                "model.hidden": {"choices": [[8], [16, 8]]},
            },
        },
    },
)

NUDGE_THEN_BLOW_UP = textwrap.dedent("""
    from runner import Nudge, hookimpl

    @hookimpl
    def runner_epoch_end(trial, epoch):
        if epoch == 1 and trial.rollbacks == 0:
            return Nudge(lr=1e4, reason="a typo")
""")


def runner(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "runner", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def write(tmp_path: Path, spec: dict, name: str = "exp.json") -> Path:
    path = tmp_path / name
    path.write_bytes(orjson.dumps(spec))
    return path


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    """A finished random search (6 trials, lr on a log scale, momentum on log1m, a choice),
    and the output of ``runner report`` on it."""
    tmp_path = tmp_path_factory.mktemp("search")
    run_dir = run_file(write(tmp_path, SEARCH), tmp_path).run_dir
    proc = runner("report", run_dir)
    assert proc.returncode == 0, proc.stderr
    return run_dir, proc


def png_pixels(path: Path) -> np.ndarray:
    """The image's pixels, after checking that the file is a whole, valid PNG."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def assert_drawn(path: Path) -> None:
    """A valid PNG of a real plot: not one flat colour, and not a nearly empty canvas."""
    pixels = png_pixels(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, f"{path.name} is (nearly) blank"
    assert (pixels.min(axis=2) < 200).mean() > 0.01, f"{path.name} has almost nothing drawn"


def test_a_finished_search_gets_valid_plots_embedded_in_one_html_page(search_run):
    run_dir, proc = search_run
    images = sorted((run_dir / "report").glob("*.png"))
    assert [p.name for p in images] == ["curves.png", "parameters.png"]
    for path in images:
        assert_drawn(path)
    page = (run_dir / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert sorted(base64.b64decode(data) for data in embedded) == sorted(p.read_bytes() for p in images)
    assert not re.search(r'(src|href)="(?!data:)', page), "self-contained: no file or link it depends on"
    results = orjson.loads((run_dir / "results.json").read_bytes())
    board = page[page.index('<table class="board">') :]
    rows = re.findall(r"<tr title=\"[^\"]*\"><td>(\d+)</td><td>(t\d{3})</td>", board[: board.index("</table>")])
    assert rows[0] == ("1", f"t{results['best']['trial']:03d}"), "the first row is the best trial"
    assert rows == [(str(rank), f"t{t['trial']:03d}") for rank, t in enumerate(results["trials"], 1)], "best first"
    assert "report.html" in proc.stdout and "leaderboard (val_loss)" in proc.stdout


def test_csv_has_one_row_per_trial_with_the_right_columns(search_run):
    run_dir, _ = search_run
    proc = runner("report", run_dir, "--csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    results = orjson.loads((run_dir / "results.json").read_bytes())
    metrics = ["train_loss", "val_loss", "val_acc", "lr", "momentum", "beta2", "seconds"]
    assert list(rows[0]) == [
        "rank",
        "trial",
        "state",
        "score",
        "epochs",
        "seconds",
        "model.hidden",
        "train.lr",
        "train.momentum",  # the space's order
        *(f"best_{m}" for m in metrics),
        *(f"final_{m}" for m in metrics),
        "reason",
    ]
    assert len(rows) == len(results["trials"]) == 6
    for rank, (row, trial) in enumerate(zip(rows, results["trials"]), 1):  # both best first
        assert (int(row["rank"]), int(row["trial"]), row["state"]) == (rank, trial["trial"], trial["state"])
        assert float(row["score"]) == trial["score"] and float(row["best_val_loss"]) == trial["best"]["val_loss"]
        assert float(row["train.lr"]) == trial["params"]["train.lr"]
        assert orjson.loads(row["model.hidden"]) == trial["params"]["model.hidden"]
        assert float(row["final_val_acc"]) == trial["final"]["val_acc"] and int(row["epochs"]) == 3


def test_json_is_results_json_plus_the_runs_state(search_run):
    run_dir, _ = search_run
    proc = runner("report", run_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    document = orjson.loads(proc.stdout)
    results = orjson.loads((run_dir / "results.json").read_bytes())
    assert document["state"] == "finished" and document["run_dir"] == str(run_dir)
    assert {k: document[k] for k in results} == results


def test_each_parameter_is_plotted_on_the_scale_it_was_searched_in(search_run):
    run = read_run_view(search_run[0])
    figure = parameter_effects(run).figure
    hidden, lr, momentum = figure.axes[:3]  # the space's order
    assert lr.get_xscale() == "log" and momentum.get_xscale() == "function"

    def screen_x(ax, values):
        return ax.transData.transform([(v, 1.0) for v in values])[:, 0]

    # Equal steps on the search scale are equal steps on the page: decades, and nines.
    assert np.diff(screen_x(lr, [1e-3, 1e-2, 1e-1, 1.0])) == pytest.approx([np.diff(screen_x(lr, [1e-3, 1e-2]))[0]] * 3)
    steps = np.diff(screen_x(momentum, [0.5, 0.95, 0.995, 0.9995]))
    assert steps == pytest.approx([steps[0]] * 3)
    assert lr.get_xlim()[0] < 1e-3 and lr.get_xlim()[1] > 3.0, "the whole searched range shows"
    assert [t.get_text() for t in hidden.get_xticklabels()] == ["[8]", "[16,8]"]
    # Every trial is a point at its own value and score (the best also gets a star).
    points = sorted((line.get_xdata()[0], line.get_ydata()[0]) for line in lr.get_lines() if line.get_marker() == "o")
    assert points == sorted((t.params["train.lr"], t.result.score) for t in run.trials)


def test_scale_axis_spaces_log1m_by_nines():
    _, (ax,) = new_figure(1)
    scale_axis(ax, "log1m", "y", [0.9, 0.999])
    ys = ax.transData.transform([(0, v) for v in (0.9, 0.99, 0.999)])[:, 1]
    assert ys[1] - ys[0] == pytest.approx(ys[2] - ys[1])
    assert {0.9, 0.99, 0.999} <= {round(t, 6) for t in ax.get_yticks()}


def test_rollbacks_split_a_curve_into_the_kept_line_and_undone_branches():
    def epochs(*indices):
        return [{"epoch": e, "val_loss": float(10 * i + e)} for i, e in indices]

    # epochs 0-3, a rollback to 2 epochs completed, then epochs 2-4
    log = epochs((0, 0), (0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (1, 4))
    assert _branches(log, "val_loss") == [
        ([1, 2], [0.0, 1.0], True),  # kept: later work went on from epoch 2
        ([2, 3, 4], [1.0, 2.0, 3.0], False),  # undone, joined to where it left the kept line
        ([2, 3, 4, 5], [1.0, 12.0, 13.0, 14.0], True),  # the model as it stands
    ]


def test_nudges_rollbacks_and_divergences_are_marked_on_the_curves_and_settings(write_experiment, tmp_path):
    plugin = tmp_path / "typo.py"
    plugin.write_text(NUDGE_THEN_BLOW_UP)
    changes = {
        "model": {"hidden": [16], "batch_norm": False},
        "train": {"epochs": 5, "optimizer": "momentum", "lr": 0.1},
        "search": {"strategy": {"name": "grid"}, "space": None},
    }
    outcome = run_file(write_experiment(changes), tmp_path, [str(plugin)])
    run = read_run_view(outcome.run_dir)
    (trial,) = run.trials
    assert {m.kind for m in trial.marks} >= {"nudge", "divergence", "rollback"}
    curves = learning_curves(run)
    labels = {t.get_text() for t in curves.figure.legends[0].get_texts()}
    assert {"nudge", "rollback", "divergence"} <= labels
    figures, problems = draw_figures(run, outcome.plugins.manager)
    assert [f.name for f in figures] == ["curves", "settings"] and problems == []
    settings = figures[1].figure.axes[0]
    drawn_lr = next(line for line in settings.get_lines() if len(line.get_xdata()) == len(trial.epochs)).get_ydata()
    assert list(drawn_lr) == [e["lr"] for e in trial.epochs], "lr per epoch trained, in log order"
    report = write_report(run, figures, problems)
    for path in report.images:
        assert_drawn(path)


def test_coarse_to_fine_adds_its_regions_through_the_plugin_hook(write_experiment, tmp_path):
    changes = {
        "train": {"epochs": 2},
        "search": {
            "strategy": {"name": "coarse-to-fine", "rounds": 2, "trials_per_round": 3, "keep_top": 1},
            "space": {"train.lr": {"low": 1e-3, "high": 1.0, "scale": "log"}, "model.hidden": {"choices": [[8], [16]]}},
        },
    }
    outcome = run_file(write_experiment(changes), tmp_path)
    run = read_run_view(outcome.run_dir)
    figures, problems = draw_figures(run, outcome.plugins.manager)
    assert [f.name for f in figures] == ["curves", "parameters", "regions"] and problems == []
    lr_axes = next(ax for ax in figures[-1].figure.axes if ax.get_xlabel() == "train.lr (log)")
    round_1 = next(n["region"]["train.lr"] for n in run.notes if n["kind"] == "round" and n["round"] == 1)
    bands = [c.get_paths()[0].vertices[:, 0] for c in lr_axes.collections]
    assert [min(b) for b in bands] == pytest.approx([1e-3, round_1["low"]])
    assert [max(b) for b in bands] == pytest.approx([1.0, round_1["high"]]), "one band per round, its region"
    for path in write_report(run, figures).images:
        assert_drawn(path)


FIGURE_PLUGIN = textwrap.dedent("""
    from matplotlib.figure import Figure
    from runner import hookimpl
    from runner.report import ReportFigure

    @hookimpl
    def runner_report_figures(run):
        figure = Figure(figsize=(4, 3))
        ax = figure.add_subplot()
        ax.bar([t.label for t in run.trials], [t.result.epochs for t in run.trials])
        return ReportFigure("epochs", "Epochs per trial", figure, "a third party's figure")
""")

BROKEN_PLUGIN = textwrap.dedent("""
    from runner import hookimpl

    @hookimpl
    def runner_report_figures(run):
        raise ValueError("no such column")
""")

UNRENDERABLE_PLUGIN = textwrap.dedent("""
    from matplotlib.figure import Figure
    from runner import hookimpl
    from runner.report import ReportFigure

    @hookimpl
    def runner_report_figures(run):  # fails only when matplotlib renders it
        figure = Figure()
        figure.add_subplot().set_title(r"$\\notacommand{x}$")
        return ReportFigure("bad", "Bad", figure)
""")


def write_log(run_dir: Path, trial_events: list[dict]) -> Path:
    """A run directory by hand: experiment.json, experiment_start, then ``trial_events`` for trial 0."""
    run_dir.mkdir()
    (run_dir / "experiment.json").write_bytes(orjson.dumps(QUICK))
    start = {"event": "experiment_start", "name": "hand", "metric": "val_acc", "mode": "max", "planned_trials": 1}
    begun = {"event": "trial_start", "params": {}, "hyperparameters": {"lr": 0.1}}
    lines = [start, begun, *trial_events]
    (run_dir / "events.jsonl").write_bytes(
        b"".join(orjson.dumps({"t": float(i), "trial": 0, **e}) + b"\n" for i, e in enumerate(lines))
    )
    return run_dir


def epoch(index: int, acc: float) -> dict:
    return {
        "event": "epoch_end",
        "epoch": index,
        "step": 10 * (index + 1),
        "val_acc": acc,
        "val_loss": 1 - acc,
        "train_loss": 1 - acc,
        "lr": 0.1,
    }


def test_a_trial_still_going_stands_on_the_epochs_a_rollback_kept(tmp_path):
    run_dir = write_log(
        tmp_path / "run",
        [
            epoch(0, 0.5),
            epoch(1, 0.4),
            epoch(2, 0.99),  # the 0.99 is undone below
            {"event": "rollback", "to_epoch": 1, "from_epoch": 3, "lr_before": 0.1, "lr_after": 0.05},
            epoch(1, 0.6),
        ],
    )
    (trial,) = read_run_view(run_dir).trials
    result = trial.result
    assert (result.state, result.score, result.epochs, result.final["val_acc"]) == ("interrupted", 0.6, 2, 0.6)
    assert result.best["val_acc"] == 0.6 and len(trial.epochs) == 4, "every epoch is still plotted"


def test_a_paused_trial_that_was_resumed_runs_again(tmp_path):
    run_dir = write_log(
        tmp_path / "run",
        [
            epoch(0, 0.5),
            {"event": "pause", "epoch": 1, "step": 10},
            {"event": "interrupted", "epoch": 1, "step": 10},
            {"event": "trial_resume", "epoch": 1, "step": 10},
            epoch(1, 0.6),
        ],
    )
    assert read_run_view(run_dir).state == "interrupted"
    with run_lock(run_dir):  # as the resumed run's process holds it
        run = read_run_view(run_dir)
    assert run.state == "running" and run.trials[0].state == "running"


def test_a_plugins_figure_joins_the_report_and_a_broken_one_costs_only_its_own(search_run, tmp_path):
    run_dir, _ = search_run
    plugins = {"figure": FIGURE_PLUGIN, "broken": BROKEN_PLUGIN, "unrenderable": UNRENDERABLE_PLUGIN}
    for name, code in plugins.items():
        (tmp_path / f"{name}.py").write_text(code)
    proc = runner("report", run_dir, *(arg for name in plugins for arg in ("--plugin", tmp_path / f"{name}.py")))
    assert proc.returncode == 0, proc.stderr
    assert "plugin 'broken' could not draw its figures: ValueError: no such column" in proc.stdout
    assert "the figure 'bad' could not be rendered: ValueError" in proc.stdout
    assert_drawn(run_dir / "report" / "epochs.png")
    assert not (run_dir / "report" / "bad.png").exists()
    page = (run_dir / "report.html").read_text()
    assert "Epochs per trial" in page and "no such column" in page and page.count("data:image/png") == 3
    runner("report", run_dir)  # without the plugin its figure goes, from the folder too
    assert sorted(p.name for p in (run_dir / "report").glob("*.png")) == ["curves.png", "parameters.png"]


def test_an_interrupted_run_and_a_running_one_are_reported_as_they_stand(tmp_path):
    run = LiveRun(tmp_path)
    try:
        run.act(1, "pause")
        running = orjson.loads(runner("report", run.run_dir, "--json").stdout)
        assert running["state"] == "running" and running["trials"][0]["state"] == "paused"
        assert running["trials"][0]["epochs"] == run.find("epoch_end")[-1]["epoch"] + 1
        run.act(2, "resume")
        run.until(lambda: len(run.find("epoch_end")) >= 4)
        run.process.send_signal(signal.SIGINT)
        assert run.process.wait(timeout=60) == 130
    finally:
        run.kill()
    proc = runner("report", run.run_dir)
    assert proc.returncode == 0, proc.stderr
    assert "interrupted" in proc.stdout
    document = orjson.loads(runner("report", run.run_dir, "--json").stdout)
    assert document["state"] == "interrupted" and document["trials"][0]["state"] == "interrupted"
    assert_drawn(run.run_dir / "report" / "curves.png")


@pytest.mark.torch
def test_a_report_does_not_import_torch(search_run):
    """Matplotlib looks in sys.modules for torch with every array it plots; the Torch
    backend's lazy import must not be set off by that (it costs seconds)."""
    code = (
        "import sys; from runner.cli import main; "
        f"main(['report', {str(search_run[0])!r}], standalone_mode=False); print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "False"


def test_open_hands_the_page_to_the_browser(search_run, tmp_path):
    seen = tmp_path / "opened.txt"
    browser = tmp_path / "browser.py"
    browser.write_text(f"import sys, pathlib\npathlib.Path({str(seen)!r}).write_text(sys.argv[1])\n")
    proc = runner("report", search_run[0], "--open", env={"BROWSER": f"{sys.executable} {browser} %s"})
    assert proc.returncode == 0, proc.stderr
    assert seen.read_text() == (search_run[0] / "report.html").resolve().as_uri()


def test_bad_input_is_one_message_not_a_traceback(tmp_path, search_run):
    proc = runner("report", tmp_path / "nowhere")
    assert proc.returncode == 2 and "is not a run directory" in proc.stderr and "Traceback" not in proc.stderr
    proc = runner("report", search_run[0], "--csv", "--json")
    assert proc.returncode == 2 and "choose one" in proc.stderr
    empty = tmp_path / "runs"
    empty.mkdir()
    proc = runner("report", "--out", empty)
    assert proc.returncode == 2 and "no run directory" in proc.stderr
