"""The commands a person types while a run trains answer without loading the engine:
``runner --help``, ``runner status`` and ``runner nudge`` import neither NumPy nor any
plugin (timings are in BENCHMARKS.md; here, what each loads)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.conftest import QUICK

OLD_RUN = Path(__file__).parent / "fixtures" / "runner-0.2-run"

# Runs the CLI in a fresh interpreter, then prints which heavy modules it loaded.
LOADED = """
import sys
from runner.cli import main
try:
    main(sys.argv[1:], prog_name="runner")
except SystemExit as stop:
    code = stop.code
heavy = sorted(m for m in ("numpy", "runner.engine.plugin_manager", "runner.engine.loop") if m in sys.modules)
print("LOADED=" + ",".join(heavy) + "|EXIT=" + str(code))
"""


def cli(*args) -> tuple[str, str, str]:
    """What the command printed, what it loaded (comma-separated) and its exit code."""
    proc = subprocess.run([sys.executable, "-c", LOADED, *map(str, args)], capture_output=True, text=True, timeout=120)
    out, _, tail = proc.stdout.rpartition("LOADED=")
    loaded, _, code = tail.strip().partition("|EXIT=")
    return out + proc.stderr, loaded, code


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("quick")
    experiment = folder / "exp.json"
    experiment.write_bytes(orjson.dumps(QUICK))
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "start", experiment, "--out", folder / "runs", "--plain"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    [run_dir] = (folder / "runs").iterdir()
    return run_dir


def test_help_and_status_load_no_numpy_and_no_plugin(finished_run):
    text, loaded, code = cli("--help")
    assert code in ("0", "None") and "nudge" in text and loaded == ""
    text, loaded, code = cli("status", finished_run)
    assert code in ("0", "None") and "finished" in text and loaded == "", text


def test_nudge_checks_a_change_by_the_bounds_the_run_recorded_without_loading_a_plugin(finished_run):
    status = orjson.loads((finished_run / "status.json").read_bytes())
    assert status["control"]["bounds"]["momentum"] == {"ge": 0, "lt": 1}
    text, loaded, code = cli("nudge", finished_run, "momentum=1.5", "--no-wait")
    assert code == "2" and "momentum: must be < 1, got 1.5" in text and loaded == "", text
    text, loaded, code = cli("nudge", finished_run, "dropout=0.5", "--no-wait")
    assert code == "2" and "not a setting this run's backend can change" in text and loaded == "", text
    text, loaded, code = cli("nudge", finished_run, "lr=0.02", "--no-wait")  # checked, then: not running
    assert code == "1" and "no runner process is running" in text and loaded == "", text


def test_bounds_that_are_not_what_a_run_writes_send_nudge_to_the_backend_class(finished_run, tmp_path):
    run_dir = tmp_path / "edited"
    shutil.copytree(finished_run, run_dir)
    status = orjson.loads((run_dir / "status.json").read_bytes())
    status["control"]["bounds"]["momentum"] = {"lt": "x"}
    (run_dir / "status.json").write_bytes(orjson.dumps(status))
    text, loaded, code = cli("nudge", run_dir, "momentum=1.5", "--no-wait")
    assert code == "2" and "momentum: must be < 1, got 1.5" in text and "runner.engine.plugin_manager" in loaded, text


def test_a_run_that_recorded_no_bounds_is_checked_by_its_backend_class(tmp_path):
    run_dir = tmp_path / "old"
    shutil.copytree(OLD_RUN, run_dir)
    assert "bounds" not in orjson.loads((run_dir / "status.json").read_bytes())["control"]
    text, loaded, code = cli("nudge", run_dir, "momentum=1.5", "--no-wait")
    assert code == "2" and "momentum: must be < 1, got 1.5" in text, text
    assert "runner.engine.plugin_manager" in loaded
