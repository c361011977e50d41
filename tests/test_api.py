"""``runner.run``, the Python API: the run ``runner start`` makes, from a script or a notebook."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

import runner
from runner.records.events import read_events
from tests.conftest import QUICK, ROOT, deep_update
from tests.test_cli import run_dir_of
from tests.test_cli import runner as cli
from tests.test_control_live import LONG

RANDOM = {
    "search": {
        "strategy": {"name": "random", "trials": 3},
        "space": {"train.lr": {"low": 1e-3, "high": 0.1, "scale": "log"}},
    }
}

# Runs runner.run as a person's script would, and writes what it returned as JSON.
SCRIPT = """
import json, sys
import runner

experiment = json.loads(sys.argv[1])
try:
    result = runner.run(experiment, **json.loads(sys.argv[2]))
except KeyboardInterrupt as stop:
    print(f"KeyboardInterrupt: {stop}")
    sys.exit(7)
json.dump(
    {
        "run_dir": str(result.run_dir),
        "leaderboard": [r.to_json() for r in result.leaderboard],
        "best": result.best.to_json() if result.best else None,
        "best_folder": str(result.best_folder) if result.best_folder else None,
        "metric": result.metric,
        "mode": result.mode,
    },
    open(sys.argv[3], "w"),
)
"""


def script(tmp_path: Path) -> Path:
    path = tmp_path / "script.py"
    path.write_text(SCRIPT)
    return path


def run_script(
    tmp_path: Path, experiment, cwd: Path | None = None, **arguments
) -> tuple[subprocess.CompletedProcess, dict]:
    """``python script.py``: runner.run(experiment, **arguments) in a fresh interpreter."""
    answer = tmp_path / "answer.json"
    proc = subprocess.run(
        [sys.executable, script(tmp_path), json.dumps(experiment), json.dumps(arguments), answer],
        capture_output=True,
        text=True,
        cwd=cwd or tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(answer.read_text())


def ranked(trials: list[dict]) -> list[tuple]:
    return [(t["trial"], t["params"], t["score"], t["state"]) for t in trials]


def test_a_script_gets_the_leaderboard_runner_start_gets_with_the_same_seed(write_experiment, tmp_path):
    exp = write_experiment(RANDOM)
    proc, got = run_script(tmp_path, str(exp), out=str(tmp_path / "api"), seed=3)
    assert proc.stdout == "" and proc.stderr == ""  # quiet: prints nothing

    started = cli("start", exp, "--out", tmp_path / "cli", "--seed", "3", "--plain")
    assert started.returncode == 0, started.stderr
    expected = orjson.loads((run_dir_of(started.stdout) / "results.json").read_bytes())

    assert ranked(got["leaderboard"]) == ranked(expected["trials"])  # the same trials, params, scores, order
    scores = [t["score"] for t in got["leaderboard"]]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
    assert got["best"] == got["leaderboard"][0] and got["best"]["trial"] == expected["best"]["trial"]
    assert (got["metric"], got["mode"]) == ("val_acc", "max")
    run_dir = Path(got["run_dir"])
    assert run_dir.parent == tmp_path / "api"
    assert ranked(orjson.loads((run_dir / "results.json").read_bytes())["trials"]) == ranked(got["leaderboard"])
    assert Path(got["best_folder"]) == run_dir / "trials" / f"t{got['best']['trial']:03d}"
    assert Path(got["best_folder"]).is_dir()
    default_seed = cli("start", exp, "--out", tmp_path / "cli", "--plain")  # the seed did reach the search
    assert ranked(orjson.loads((run_dir_of(default_seed.stdout) / "results.json").read_bytes())["trials"]) != ranked(
        got["leaderboard"]
    )


def test_quiet_false_prints_what_runner_start_plain_prints(write_experiment, tmp_path):
    exp = write_experiment(RANDOM)
    proc, got = run_script(tmp_path, str(exp), out="runs", quiet=False)
    started = cli("start", exp, "--out", "runs", "--plain", cwd=tmp_path)
    assert started.returncode == 0, started.stderr

    def shown(text: str, run_dir: str) -> str:
        return re.sub(r" \d+\.\ds ", " _s ", text.replace(run_dir, "RUN_DIR"))

    api_dir = str(Path(got["run_dir"]))
    assert proc.stdout.startswith(f"run directory: {api_dir}\n") and "leaderboard (val_acc)" in proc.stdout
    assert shown(proc.stdout, api_dir) == shown(started.stdout, str(run_dir_of(started.stdout)))


def test_a_dict_experiment_resolves_relative_data_paths_against_base_dir(tmp_path):
    base = tmp_path / "project"
    (base / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 4))
    np.savez(base / "data" / "points.npz", x=x, y=(x[:, 0] > 0).astype(int))
    experiment = {**QUICK, "name": "npz", "data": {"name": "npz", "path": "data/points.npz"}}

    _, given = run_script(tmp_path, experiment, out=str(tmp_path / "runs"), base_dir=str(base))
    assert [t["state"] for t in given["leaderboard"]] == ["completed", "completed"]
    run_dir = Path(given["run_dir"])
    assert orjson.loads((run_dir / "experiment.json").read_bytes()) == experiment  # as given, the seed in force
    start = next(read_events(run_dir / "events.jsonl"))
    assert start["base_dir"] == str(base.resolve())  # where `runner resume` resolves the path again

    _, from_cwd = run_script(tmp_path, experiment, cwd=base, out=str(tmp_path / "runs"))  # default: the current folder
    assert ranked(from_cwd["leaderboard"]) == ranked(given["leaderboard"])

    with pytest.raises(runner.SpecError) as missing:  # anywhere else, the relative path names no file
        runner.run(experiment, out=tmp_path / "runs", base_dir=tmp_path)
    assert missing.value.path == "data.path" and "data/points.npz" in str(missing.value)


@pytest.mark.parametrize(
    "changes, path, message",
    [
        ({"train": {"lr": -1}}, "train.lr", "train.lr: must be > 0, got -1"),
        ({"search": {"strategy": {"name": "grdi"}}}, "search.strategy.name", 'did you mean "grid"?'),
        ({"model": {"hidden": (8, {1, 2})}}, "model.hidden.1", "model.hidden.1: must be a JSON value"),
        ({"train": {"lr": float("nan")}}, "train.lr", "train.lr: must be a finite number"),
    ],
)
def test_a_bad_experiment_raises_spec_error_naming_the_path(tmp_path, changes, path, message):
    with pytest.raises(runner.SpecError) as refused:
        runner.run(deep_update(QUICK, changes), out=tmp_path / "runs")
    assert refused.value.path == path and message in str(refused.value)
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_a_bad_experiment_file_names_the_file_and_the_path(write_experiment, tmp_path):
    exp = write_experiment({"checkpoint": {"keep": 0}})
    with pytest.raises(runner.SpecError) as refused:
        runner.run(exp, out=tmp_path / "runs")
    assert str(refused.value) == f"{exp}: checkpoint.keep: must be >= 1, got 0"
    with pytest.raises(runner.SpecError, match="no such file"):
        runner.run(tmp_path / "nope.json", out=tmp_path / "runs")
    np.savez(tmp_path / "points.npz", x=np.zeros((10, 3)), labels=np.zeros(10))  # no array "y": found on loading
    no_y = tmp_path / "no_y.json"
    no_y.write_bytes(orjson.dumps({**QUICK, "data": {"name": "npz", "path": "points.npz"}}))
    with pytest.raises(runner.SpecError) as missing:
        runner.run(no_y, out=tmp_path / "runs")
    assert str(missing.value).startswith(f"{no_y}: data.y: no array") and not (tmp_path / "runs").exists()
    assert not (tmp_path / "runs").exists()


def test_arguments_of_the_wrong_type_are_a_type_error(write_experiment, tmp_path):
    with pytest.raises(TypeError, match="experiment must be the path of an experiment file or a dict"):
        runner.run(3)
    with pytest.raises(TypeError, match=r"plugins must be a list .* such as \['my_plugin.py'\]"):
        runner.run(write_experiment(), plugins="my_plugin.py")
    with pytest.raises(TypeError, match=r"loggers must be a list of logger names, such as \['tensorboard'\]"):
        runner.run(write_experiment(), out=tmp_path, loggers="tensorboard")
    with pytest.raises(TypeError, match="seed must be an integer"):
        runner.run(write_experiment(), seed="3")


class Running:
    """``python script.py`` running ``runner.run`` on an experiment that trains until stopped."""

    def __init__(self, tmp_path: Path, changes: dict | None = None):
        self.answer = tmp_path / "answer.json"
        experiment = deep_update(LONG, changes or {})
        arguments = {"out": str(tmp_path / "runs")}
        self.process = subprocess.Popen(
            [sys.executable, script(tmp_path), json.dumps(experiment), json.dumps(arguments), self.answer],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        self.run_dir = self.until(lambda: next((tmp_path / "runs").glob("*/control.json"), None)).parent
        self.until(lambda: self.find("epoch_end"))

    def find(self, event: str) -> list[dict]:
        return [e for e in read_events(self.run_dir / "events.jsonl") if e["event"] == event]

    def until(self, found, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := found():
                return value
            if self.process.poll() is not None and not found():
                pytest.fail(f"the script ended (exit {self.process.returncode}): {self.process.stderr.read()}")
            time.sleep(0.02)
        pytest.fail("timed out waiting for the run")


@pytest.fixture
def running(tmp_path):
    started = []

    def start(changes: dict | None = None) -> Running:
        started.append(Running(tmp_path, changes))
        return started[-1]

    yield start
    for run in started:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


def test_runner_nudge_changes_a_run_started_from_python(running):
    run = running()
    assert {p.name for p in run.run_dir.iterdir()} >= {"control.json", "events.jsonl", "status.json", "experiment.json"}
    nudged = cli("nudge", run.run_dir, "lr=0.002")
    assert nudged.returncode == 0 and "t000: lr=0.002 applied at step" in nudged.stdout, nudged.stderr
    [nudge] = run.find("nudge")
    assert nudge["source"] == "control" and nudge["changes"]["lr"] == {"old": 0.01, "new": 0.002}

    stopped = cli("nudge", run.run_dir, "--stop")
    assert stopped.returncode == 0 and "stop applied" in stopped.stdout
    assert run.process.wait(timeout=60) == 0, run.process.stderr.read()
    got = json.loads(run.answer.read_text())
    assert [t["state"] for t in got["leaderboard"]] == ["stopped"] and got["run_dir"] == str(run.run_dir)
    assert (run.run_dir / "results.json").is_file()


def test_ctrl_c_leaves_a_resumable_run_and_raises_keyboard_interrupt(running):
    run = running()
    run.process.send_signal(signal.SIGINT)
    assert run.process.wait(timeout=60) == 7, run.process.stderr.read()  # the script caught KeyboardInterrupt
    said = run.process.stdout.read()
    assert said.startswith("KeyboardInterrupt: interrupted at trial 0") and f"runner resume {run.run_dir}" in said
    [interrupted] = run.find("interrupted")

    resumed = subprocess.Popen(
        [sys.executable, "-m", "runner", "resume", run.run_dir, "--plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run.process = resumed
        [continued] = run.until(lambda: run.find("trial_resume"))
        assert continued["step"] == interrupted["step"]  # from the snapshot Ctrl-C saved
        stopped = cli("nudge", run.run_dir, "--stop")
        assert stopped.returncode == 0, stopped.stderr
        assert resumed.wait(timeout=60) == 0, resumed.stderr.read()
    finally:
        if resumed.poll() is None:
            resumed.kill()


PLUGIN = '''
from dataclasses import dataclass, field

from runner import Strategy, bounds, hookimpl


@dataclass(frozen=True)
class Options:
    lrs: tuple[float, ...] = field(default=(0.05, 0.01), metadata=bounds(doc="the learning rates, in order"))


class Listed(Strategy):
    """Each learning rate of its list, in order."""

    name = "listed"
    Options = Options

    def ask(self, history):
        return {"train.lr": self.options.lrs[len(history)]} if len(history) < len(self.options.lrs) else None


@hookimpl
def runner_register(registry):
    registry.add_strategy(Listed)
'''


@pytest.mark.parametrize("as_path", [False, True], ids=["str", "Path"])
def test_plugins_loads_a_one_off_plugin_file(write_experiment, tmp_path, as_path):
    plugin = tmp_path / "listed.py"
    plugin.write_text(PLUGIN)
    exp = write_experiment({"search": {"strategy": {"name": "listed", "lrs": [0.03, 0.02, 0.01]}, "space": None}})
    with pytest.raises(runner.SpecError, match='unknown strategy "listed"'):
        runner.run(exp, out=tmp_path / "runs")
    result = runner.run(exp, out=tmp_path / "runs", plugins=[plugin if as_path else str(plugin)])
    assert sorted(r.params["train.lr"] for r in result.leaderboard) == [0.01, 0.02, 0.03]
    start = next(read_events(result.run_dir / "events.jsonl"))
    assert start["plugin_files"] == [str(plugin.resolve())]  # what `runner resume` asks for again


def test_import_runner_stays_light_and_run_loads_on_first_use():
    checked = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, runner; "
            "heavy = [m for m in ('runner.api', 'runner.engine.loop', 'rich') if m in sys.modules]; "
            "assert not heavy, heavy; "
            "from runner import run, RunResult; assert run.__module__ == 'runner.api'; "
            "assert 'run' in runner.__all__ and 'RunResult' in dir(runner)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        runner.nothing  # noqa: B018


def test_the_docs_example_runs_as_written(tmp_path):
    page = (ROOT / "docs" / "python-api.md").read_text()
    [example] = re.findall(r"```python\n(.*?)```", page, re.S)
    (tmp_path / "experiments").mkdir()
    shutil.copy(ROOT / "experiments" / "spirals_quick.json", tmp_path / "experiments")
    (tmp_path / "example.py").write_text(example)
    proc = subprocess.run(
        [sys.executable, "example.py"], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )  # as from the repository's root: the same relative paths
    assert proc.returncode == 0, proc.stderr
    assert "refused: train.lr: must be > 0, got -1.0" in proc.stdout
    runs = sorted((tmp_path / "checkpoints").iterdir())
    assert len(runs) == 2 and all((run / "results.json").is_file() for run in runs)
    assert re.search(r"^1\. t\d{3} completed val_acc=", proc.stdout, re.M)
