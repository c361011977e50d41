"""What the logger tests share: the experiment they log, the log's curves to hold against
what a logger wrote, one-off plugins that steer a run, and the planted-link check."""

from __future__ import annotations

from pathlib import Path

import orjson

from runner.records.events import read_run
from tests.conftest import QUICK, deep_update, run_file
from tests.test_resume import runner


def logged_experiment(logger: str) -> dict:
    """Three random-search trials of four epochs each, written to ``logger``."""
    return deep_update(
        QUICK,
        {
            "name": "logged",
            "train": {"epochs": 4},
            "loggers": [logger],
            "search": {
                "strategy": {"name": "random", "trials": 3},
                "space": {"train.lr": {"low": 0.003, "high": 0.03}},
            },
        },
    )


def curves_in_log(events: list[dict], trial: int, names: tuple[str, ...]) -> dict[str, dict[int, float]]:
    """Each curve's value per step (epochs completed) as the log has it now: the last
    ``epoch_end`` of each epoch (a rollback trains an epoch again)."""
    curves: dict[str, dict[int, float]] = {name: {} for name in names}
    for e in events:
        if e["event"] == "epoch_end" and e["trial"] == trial:
            for name in names:
                curves[name][e["epoch"] + 1] = e[name]
    return curves


# A nudge at the end of the first epoch, and a rollback to the snapshot after two epochs at the
# end of the fourth, once each.
STEERED = """
from runner import Nudge, Rollback, hookimpl

done = set()

@hookimpl
def runner_epoch_end(trial, epoch, metrics):
    if trial.id == 0 and epoch == 0 and "nudge" not in done:
        done.add("nudge")
        return Nudge(lr=0.002, reason="slower")
    if trial.id == 0 and epoch == 3 and "rollback" not in done:
        done.add("rollback")
        return Rollback(to=2, reason="back to before epoch 3")
"""


def run_file_of(tmp_path: Path, experiment: dict, plugins=()):
    """``experiment`` written to a file and run in this process (``conftest.run_file``)."""
    path = tmp_path / "exp.json"
    path.write_bytes(orjson.dumps(experiment))
    return run_file(path, tmp_path, plugins)


def steered_run(tmp_path: Path, experiment: dict):
    """One trial of ``experiment`` steered by ``STEERED``; its log holds the one rollback (to
    epoch 2) and six epochs, two of them trained again."""
    plugin = tmp_path / "steer.py"
    plugin.write_text(STEERED)
    run = run_file_of(tmp_path, deep_update(experiment, {"search": {"strategy": {"trials": 1}}}), [str(plugin)])
    events = read_run(run.run_dir)
    [rollback] = [e for e in events if e["event"] == "rollback"]
    assert rollback["to_epoch"] == 2 and len([e for e in events if e["event"] == "epoch_end"]) == 6
    return run


LINK = """
import os
from pathlib import Path
from runner import hookimpl

@hookimpl
def runner_experiment_start(experiment):  # before the first trial: the logger has written nothing yet
    os.symlink(Path(__file__).with_name("elsewhere"), Path(experiment.run_dir) / FOLDER)
"""


def assert_nothing_written_through_a_link(tmp_path: Path, experiment: dict, logger: str) -> None:
    """A run whose logger's folder (named as the logger) is a link planted to a folder
    elsewhere: it goes on, says so, and writes nothing there."""
    exp, plugin = tmp_path / "exp.json", tmp_path / "link.py"
    (tmp_path / "elsewhere").mkdir()
    exp.write_bytes(orjson.dumps(experiment))
    plugin.write_text(LINK.replace("FOLDER", repr(logger)))
    proc = runner("start", exp, "--out", tmp_path / "runs", "--plain", "--plugin", plugin)
    assert proc.returncode == 0, proc.stderr
    assert f"{logger} is a symbolic link: the {logger} logger writes nothing through it" in proc.stdout
    assert list((tmp_path / "elsewhere").iterdir()) == []
