"""What the logger tests share: one-off plugins that steer a run, and the planted-link check."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.test_resume import runner

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
