"""Loggers: the run as TensorBoard's own reader reads it back (exact values and steps), from
the driver whatever the executor, with nudges and rollbacks, and after a SIGKILL and a
resume without a point twice; the ``loggers`` section and ``--logger``; the ``runner_event``
feed that carries them."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import numpy as np
import orjson
import pytest

import runner as runner_api
from runner.engine.plugin_manager import load_plugins
from runner.errors import SpecError
from runner.experiment_file.spec import parse, with_loggers
from runner.records.events import read_run
from tests.conftest import QUICK, deep_update
from tests.plugins.logger_plugins import (
    assert_nothing_written_through_a_link,
    curves_in_log,
    logged_experiment,
    run_file_of,
    steered_run,
)
from tests.test_resume import resume, runner, start

pytest.importorskip("tensorboardX")
pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

LOGGED = logged_experiment("tensorboard")
CURVES = ("train_loss", "val_loss", "val_acc", "lr")


def board(run_dir: Path, trial: int, sub: str = "") -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir / "tensorboard" / f"t{trial:03d}" / sub))
    accumulator.Reload()
    return accumulator


def texts(run_dir: Path, trial: int, tag: str) -> list:
    """A text tag as TensorBoard's own server reads it (its plugin reader, which applies the
    purge step to text as to curves)."""
    accumulator = plugin_event_accumulator.EventAccumulator(str(run_dir / "tensorboard" / f"t{trial:03d}"))
    accumulator.Reload()
    return accumulator.Tensors(f"{tag}/text_summary")


def assert_curves_are_the_log(run_dir: Path, trials: int) -> None:
    """Every curve of every trial holds each step once, with the log's value to float32."""
    events = read_run(run_dir)
    for trial in range(trials):
        accumulator = board(run_dir, trial)
        for name, points in curves_in_log(events, trial, CURVES).items():
            steps = [s.step for s in accumulator.Scalars(name)]
            assert steps == sorted(points), (trial, name, steps)
            assert [s.value for s in accumulator.Scalars(name)] == [np.float32(v) for v in points.values()]


def test_each_trial_is_a_tensorboard_run_of_its_curves_and_searched_values(tmp_path):
    run = run_file_of(tmp_path, LOGGED)
    assert_curves_are_the_log(run.run_dir, 3)
    for result in run.board:
        hparams = board(run.run_dir, result.trial, "hparams")
        content = hparams.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        session = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        assert session.hparams["train.lr"].number_value == result.params["train.lr"]
        assert session.hparams["state"].string_value == "completed"
        [best] = hparams.Scalars("best/val_acc")
        assert best.value == np.float32(result.score)


def test_nudges_and_rollbacks_are_text_and_a_rollback_leaves_only_the_path_taken(tmp_path):
    run = steered_run(tmp_path, LOGGED)
    assert_curves_are_the_log(run.run_dir, 1)  # epoch 3 once: as trained again after the rollback
    [nudge] = texts(run.run_dir, 0, "nudges")
    lr = run.board[0].params["train.lr"]
    assert nudge.step == 2 and nudge.tensor_proto.string_val[0].decode() == f"plugin: lr {lr:g} → 0.002 (slower)"
    [text] = texts(run.run_dir, 0, "rollbacks")
    assert text.step == 3 and b"back to epoch 2" in text.tensor_proto.string_val[0]


def test_trials_in_worker_processes_are_logged_by_the_driver(tmp_path):
    run = run_file_of(tmp_path, deep_update(LOGGED, {"executor": {"name": "process", "workers": 2}}))
    assert_curves_are_the_log(run.run_dir, 3)


@pytest.mark.parametrize("wiped", [False, True], ids=["as-left", "folder-deleted"])
def test_after_a_sigkill_and_a_resume_each_epoch_shows_once_with_the_values_it_ended_with(tmp_path, wiped):
    """Whatever the killed driver had passed on to TensorBoard (some events of the log may not
    have reached it), or with its folder deleted: the resume replays what the log keeps."""
    proc, run_dir = start(tmp_path, "killed", LOGGED, kill="step:20")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [e["trial"] for e in read_run(run_dir) if e["event"] == "trial_complete"] == [0]
    if wiped:
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    resumed, _ = resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_curves_are_the_log(run_dir, 3)
    for trial in range(3):  # one summary a trial, though the replay passed each trial_complete on again
        assert len(board(run_dir, trial, "hparams").Scalars("best/val_acc")) == 1


def test_a_trial_retried_after_its_worker_died_shows_each_epoch_once(tmp_path):
    from tests.plugins.test_executors import start as start_with_a_death

    experiment = deep_update(LOGGED, {"executor": {"name": "process", "workers": 2}})
    proc, run_dir = start_with_a_death(tmp_path, experiment, trial=1, epoch=2)
    assert proc.returncode == 0, proc.stderr
    assert [e["trial"] for e in read_run(run_dir) if e["event"] == "trial_retry"] == [1]
    assert_curves_are_the_log(run_dir, 3)


def test_the_loggers_section_and_the_logger_option(tmp_path):
    registry = load_plugins().registry
    spec = parse(deep_update(QUICK, {"loggers": [{"name": "tensorboard", "folder": "tb"}]}), registry)
    assert spec.logger("tensorboard").folder == "tb" and spec.logger("mlflow") is None
    refused = {
        '"loggers": "tensorboard"': ("loggers", 'must be a list such as ["tensorboard"]'),
        '"loggers": ["tensorbord"]': ("loggers[0].name", 'unknown logger "tensorbord" (did you mean "tensorboard"?)'),
        '"loggers": ["tensorboard", "tensorboard"]': ("loggers[1]", 'names logger "tensorboard" a second time'),
        '"loggers": [{"name": "tensorboard", "folder": "../out"}]': ("loggers[0]", "folder must be a folder inside"),
        '"loggers": [{"name": "tensorboard", "folder": "trials/tb"}]': ("loggers[0]", "folder must not be 'trials'"),
    }
    for text, (path, message) in refused.items():
        with pytest.raises(SpecError) as err:
            parse({**QUICK, **orjson.loads("{" + text + "}")}, registry)
        assert err.value.path == path and message in err.value.message, (text, err.value)
    assert with_loggers({"loggers": [{"name": "tensorboard"}]}, ("tensorboard", "x", "x"))["loggers"] == [
        {"name": "tensorboard"},
        "x",
    ]
    exp = tmp_path / "exp.json"
    exp.write_bytes(orjson.dumps(deep_update(QUICK, {"train": {"epochs": 1}})))
    typo = runner("start", exp, "--out", tmp_path / "typo", "--plain", "--logger", "tensorbord")
    assert typo.returncode == 2 and not (tmp_path / "typo").exists()
    assert '--logger: unknown logger "tensorbord" (did you mean "tensorboard"?)' in typo.stderr, typo.stderr
    proc = runner("start", exp, "--out", tmp_path / "runs", "--plain", "--logger", "tensorboard")
    assert proc.returncode == 0, proc.stderr
    [run_dir] = (tmp_path / "runs").iterdir()
    assert orjson.loads((run_dir / "experiment.json").read_bytes())["loggers"] == ["tensorboard"]
    assert [s.step for s in board(run_dir, 0).Scalars("val_acc")] == [1]
    result = runner_api.run(exp, out=tmp_path / "api", loggers=["tensorboard"])  # the Python API's --logger
    assert orjson.loads((result.run_dir / "experiment.json").read_bytes())["loggers"] == ["tensorboard"]
    assert [s.step for s in board(result.run_dir, 0).Scalars("val_acc")] == [1]


FAILING = """
from runner import hookimpl

@hookimpl
def runner_event(experiment, event):
    if event["event"] == "epoch_end":
        raise RuntimeError("the tracking server is down")
"""


def test_a_logger_that_fails_is_told_no_more_and_the_run_and_the_other_loggers_go_on(tmp_path):
    exp, plugin = tmp_path / "exp.json", tmp_path / "failing.py"
    exp.write_bytes(orjson.dumps(LOGGED))
    plugin.write_text(FAILING)
    proc = runner("start", exp, "--out", tmp_path / "runs", "--plain", "--plugin", plugin)
    assert proc.returncode == 0, proc.stderr
    said = "plugin failing: runner_event failed on event epoch_end (RuntimeError: the tracking server is down)"
    assert (proc.stdout + proc.stderr).count(said) == 1  # told once: then it gets no more events
    [run_dir] = (tmp_path / "runs").iterdir()
    assert_curves_are_the_log(run_dir, 3)


def test_a_replay_writes_each_point_text_and_summary_once(tmp_path, monkeypatch):
    """A resume passes the log's events on again: each curve's point and each text is
    written again over what was there, and a trial whose summary is written keeps it.
    (The clock moves on between writers, as it does between a run and its resume: event
    files are named by the second.)"""
    import itertools
    import time
    from types import SimpleNamespace

    seconds = itertools.count(1_800_000_000, 7)
    monkeypatch.setattr(time, "time", lambda: float(next(seconds)))

    from runner.plugins.loggers.tensorboard import Options, RunBoard

    experiment = SimpleNamespace(run_dir=tmp_path, spec=SimpleNamespace(search=SimpleNamespace(metric="val_acc")))
    events = [
        {"event": "trial_start", "trial": 0},
        {
            "event": "nudge",
            "trial": 0,
            "epoch": 0,
            "step": 1,
            "changes": {"lr": {"old": 0.1, "new": 0.05}},
            "source": "control",
        },
        {"event": "epoch_end", "trial": 0, "epoch": 0, "step": 3, "train_loss": 1.5, "val_acc": 0.5, "seconds": 0.1},
        {"event": "trial_complete", "trial": 0, "state": "completed", "params": {"train.lr": 0.01}, "score": 0.5},
    ]
    for replayed in (False, True):
        logged = RunBoard(experiment, Options())
        for event in events:
            logged.write(event, replayed)
        logged.close()
    assert len(list((tmp_path / "tensorboard" / "t000" / "hparams").iterdir())) == 1
    assert [(s.step, s.value) for s in board(tmp_path, 0).Scalars("val_acc")] == [(1, 0.5)]
    assert [t.step for t in texts(tmp_path, 0, "nudges")] == [1]  # the replay's, alone


def test_the_tensorboard_logger_writes_nothing_through_a_link_planted_in_the_run_directory(tmp_path):
    assert_nothing_written_through_a_link(tmp_path, LOGGED, "tensorboard")
