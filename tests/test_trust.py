"""Trust rules: runner loads code only from installed entry points and ``--plugin`` on the
command line, never from a run directory or a project's own ``plugins`` package; bad input
of every kind is exit 2 with one line."""

from __future__ import annotations

import shutil
import signal
import textwrap
from pathlib import Path

import orjson

from tests.conftest import QUICK, deep_update
from tests.test_cli import run_dir_of, runner

BUILT_INS = {"numpy", "torch", "grid", "random", "coarse-to-fine", "panda-nudge", "digits", "spirals", "files"}
BUILT_INS |= {"python", "inline", "process", "ray", "rollback", "optuna", "median", "asha", "pbt", "tensorboard"}
BUILT_INS |= {"mlflow"}


def marker_plugin(path: Path, marker: Path, body: str = "") -> Path:
    """A one-off plugin module that leaves ``marker`` behind whenever it is imported."""
    path.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n" + textwrap.dedent(body))
    return path


TWO_RATES = """
    import os, signal
    from runner import Strategy, hookimpl

    class TwoRates(Strategy):
        name = "two-rates"

        def ask(self, history):
            return [{"train.lr": 0.3}, {"train.lr": 0.003}, None][min(len(history), 2)]

    @hookimpl
    def runner_trial_start(trial):
        if trial.id == 1 and os.environ.get("KILL_AT_SECOND_TRIAL"):
            os.kill(os.getpid(), signal.SIGKILL)

    @hookimpl
    def runner_register(registry):
        registry.add_strategy(TwoRates)
"""


def two_rates_experiment(tmp_path: Path) -> Path:
    exp = tmp_path / "exp.json"
    exp.write_bytes(orjson.dumps(deep_update(QUICK, {"search": {"strategy": {"name": "two-rates"}, "space": None}})))
    return exp


def test_a_projects_own_plugins_package_is_never_imported_nor_shadows_the_built_ins(tmp_path):
    project = tmp_path / "project"
    marker = tmp_path / "their-plugins-ran"
    for package in ("plugins", "plugins/strategies", "plugins/backends"):
        (project / package).mkdir(parents=True)
        marker_plugin(project / package / "__init__.py", marker)
    exp = project / "exp.json"
    exp.write_bytes(orjson.dumps(QUICK))

    listed = runner("plugins", "--json", cwd=project)  # python -m runner: the project folder is on sys.path
    assert listed.returncode == 0, listed.stderr
    assert {row["plugin"] for row in orjson.loads(listed.stdout)} == BUILT_INS
    validated = runner("validate", "exp.json", cwd=project)
    assert validated.returncode == 0, validated.stderr
    started = runner("start", "exp.json", "--plain", "--out", "runs", cwd=project)
    assert started.returncode == 0, started.stderr
    assert orjson.loads((project / run_dir_of(started.stdout) / "results.json").read_bytes())["trials"]
    assert not marker.exists()


def test_commands_that_read_a_run_never_import_the_code_it_names(tmp_path):
    marker = tmp_path / "run-dir-code-ran"
    plugin = marker_plugin(tmp_path / "two_rates.py", tmp_path / "legit.marker", TWO_RATES)
    started = runner("start", two_rates_experiment(tmp_path), "--plain", "--out", tmp_path / "runs", "--plugin", plugin)
    assert started.returncode == 0, started.stderr
    run_dir = run_dir_of(started.stdout)
    # Someone edits the run before sending it: its log now names a module of theirs.
    evil = marker_plugin(tmp_path / "evil.py", marker)
    log = run_dir / "events.jsonl"
    lines = log.read_bytes().splitlines()
    first = orjson.loads(lines[0])
    assert first["event"] == "experiment_start" and first["plugin_files"] == [str(plugin)]
    first["plugin_files"] = [str(evil), "evil"]
    log.write_bytes(b"\n".join([orjson.dumps(first), *lines[1:]]) + b"\n")

    reported = runner("report", run_dir, cwd=tmp_path)
    assert reported.returncode == 0, reported.stderr
    assert f"for their figures, add --plugin {evil} --plugin evil" in reported.stdout
    for args in (("report", run_dir, "--csv"), ("report", run_dir, "--json"), ("status", run_dir)):
        proc = runner(*args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    nudged = runner("nudge", run_dir, "lr=0.1", cwd=tmp_path)
    assert nudged.returncode == 1 and "no runner process is running" in nudged.stderr
    refused = runner("nudge", run_dir, "lr=-1", cwd=tmp_path)
    assert (
        refused.returncode == 2 and refused.stderr.strip() == "error: not sent: control.json: lr: must be > 0, got -1.0"
    )
    resumed = runner("resume", run_dir, cwd=tmp_path)
    assert resumed.returncode == 2 and f"--plugin {evil} --plugin evil" in resumed.stderr
    assert not marker.exists()


def test_code_a_run_names_by_import_path_is_imported_only_by_resume_with_trust_code(tmp_path):
    """A run's experiment.json may name a module beside the experiment (a python data source,
    a model's class_path). Reading the run never imports it; resuming does only when told."""
    project = tmp_path / "project"
    project.mkdir()
    marker = tmp_path / "their-data-code-ran"
    marker_plugin(project / "their_data.py", marker, "def load():\n    raise AssertionError('never called')\n")
    exp = project / "exp.json"
    exp.write_bytes(orjson.dumps(deep_update(QUICK, {"search": {"space": None}})))
    started = runner("start", exp, "--plain", "--out", project / "runs")
    assert started.returncode == 0, started.stderr
    run_dir = run_dir_of(started.stdout)
    # Someone edits the run before sending it: its experiment now loads data with code of theirs.
    experiment = orjson.loads((run_dir / "experiment.json").read_bytes())
    experiment["data"] = {"name": "python", "path": "their_data:load"}
    (run_dir / "experiment.json").write_bytes(orjson.dumps(experiment))
    events = (run_dir / "events.jsonl").read_bytes().splitlines()
    (run_dir / "events.jsonl").write_bytes(b"\n".join(events[:-1]) + b"\n")  # as if it had been killed

    for args in (("report", run_dir), ("report", run_dir, "--json"), ("status", run_dir)):
        proc = runner(*args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    refused = runner("resume", run_dir, cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert 'data.path: names code to import, "their_data:load"' in refused.stderr
    assert f"runner resume {run_dir} --trust-code" in refused.stderr
    assert not marker.exists()
    trusted = runner("resume", run_dir, "--trust-code", cwd=tmp_path)
    assert marker.exists(), "with --trust-code, resume imports what the run names"
    assert trusted.returncode == 2 and "their_data:load raised AssertionError: never called" in trusted.stderr


def test_resume_asks_again_for_the_one_off_plugins_the_run_started_with_and_goes_on_with_them(tmp_path):
    marker = tmp_path / "imported.marker"
    plugin = marker_plugin(tmp_path / "two_rates.py", marker, TWO_RATES)
    killed = runner(
        "start", two_rates_experiment(tmp_path), "--plain", "--out", tmp_path / "runs", "--plugin", plugin,
        env={"KILL_AT_SECOND_TRIAL": "1"},
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    run_dir = run_dir_of(killed.stdout)
    marker.unlink()

    refused = runner("resume", run_dir)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip() == (
        f"error: {run_dir} was started with one-off plugins that runner does not load from a run directory; "
        f"give them again: runner resume {run_dir} --plugin {plugin}"
    )
    assert not marker.exists()

    moved = Path(plugin.parent / "moved")  # the same plugin from wherever it is now
    moved.mkdir()
    resumed = runner("resume", run_dir, "--plain", "--plugin", plugin.rename(moved / plugin.name))
    assert resumed.returncode == 0, resumed.stderr
    results = orjson.loads((run_dir / "results.json").read_bytes())
    assert sorted(t["params"]["train.lr"] for t in results["trials"]) == [0.003, 0.3]


def test_a_plugin_file_that_is_not_python_is_bad_input(tmp_path):
    proc = runner("plugins", "--plugin", "/etc/passwd")
    assert proc.returncode == 2
    assert proc.stderr == "error: --plugin /etc/passwd: a plugin file is a Python file whose name ends in .py\n"


def test_a_plugins_own_value_error_in_its_options_is_bad_input_at_that_section(tmp_path):
    plugin = tmp_path / "even.py"
    plugin.write_text(
        textwrap.dedent("""
        from dataclasses import dataclass
        from runner import Strategy, hookimpl

        class Even(Strategy):
            name = "even"

            @dataclass
            class Options:
                width: int = 2

                def __post_init__(self):
                    if self.width % 2:
                        raise ValueError(f"width must be even, got {self.width}")

            def ask(self, history):
                return None

        @hookimpl
        def runner_register(registry):
            registry.add_strategy(Even)
    """)
    )
    exp = tmp_path / "exp.json"
    exp.write_bytes(orjson.dumps(deep_update(QUICK, {"search": {"strategy": {"name": "even", "width": 3}}})))
    proc = runner("validate", exp, "--plugin", plugin)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {exp}: search.strategy: width must be even, got 3\n"


def test_a_plugins_words_are_printed_as_they_are_never_read_as_markup(tmp_path):
    plugin = tmp_path / "needs_extra.py"
    plugin.write_text(
        textwrap.dedent("""
        from runner import hookimpl

        @hookimpl
        def runner_register(registry):
            registry.add_unavailable("backend", "fancy", "needs Fancy: pip install 'fancy[gpu]' [bold]now[/bold]")
    """)
    )
    proc = runner("plugins", "--plugin", plugin.name, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'fancy[gpu]' [bold]now[/bold]" in proc.stdout


def hand_made_run(tmp_path: Path, *, events: list, status: object, experiment: object) -> Path:
    """A run directory as someone could send it: whatever its files hold."""
    run_dir = tmp_path / "sent-run"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    (run_dir / "status.json").write_bytes(orjson.dumps(status))
    (run_dir / "experiment.json").write_bytes(orjson.dumps(experiment))
    return run_dir


START = {"event": "experiment_start", "name": "sent", "metric": "val_acc", "mode": "max", "base_dir": "/tmp"}
STATUS = {"run": {"state": "finished"}, "control": {"settings": ["lr"]}, "trials": {}}


def assert_bad_input(proc, message: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr


def test_a_damaged_status_file_is_bad_input(tmp_path):
    for status in ({}, {"run": 5}, [], "x"):
        run_dir = hand_made_run(tmp_path, events=[START], status=status, experiment={})
        for args in (("status", run_dir), ("status", run_dir, "--json")):
            assert_bad_input(runner(*args), f"{run_dir / 'status.json'} is damaged: not the status of a run")
        shutil.rmtree(run_dir)
    run_dir = hand_made_run(tmp_path, events=[START], status={"run": {}, "control": {}, "trials": {}}, experiment={})
    assert_bad_input(runner("status", run_dir), f"{run_dir / 'status.json'} is damaged: KeyError")
    assert runner("status", run_dir, "--json").returncode == 0  # shown as it is


def test_a_damaged_event_log_is_bad_input(tmp_path):
    cases = {
        "line 1 is not an event": [[]],
        "line 2 is not an event": [START, {"trial": 0}],
        "experiment_start has no metric, mode": [{"event": "experiment_start", "name": "x"}],
    }
    for message, events in cases.items():
        run_dir = hand_made_run(tmp_path, events=events, status=STATUS, experiment={})
        for command in ("report", "resume"):
            assert_bad_input(runner(command, run_dir), f"is damaged: {message}")
        shutil.rmtree(run_dir)
    run_dir = hand_made_run(tmp_path, events=[START, {"event": "trial_start"}], status=STATUS, experiment={})
    assert_bad_input(runner("report", run_dir), f"{run_dir / 'events.jsonl'} is damaged: KeyError")
    shutil.rmtree(run_dir)
    no_base = {key: value for key, value in START.items() if key != "base_dir"}
    run_dir = hand_made_run(tmp_path, events=[no_base], status=STATUS, experiment={})
    assert_bad_input(runner("resume", run_dir), "is damaged: experiment_start has no base_dir")


def test_nudge_for_a_backend_not_installed_here_needs_the_settings_the_run_recorded(tmp_path):
    experiment = {"backend": {"name": "their-own"}}
    run_dir = hand_made_run(tmp_path, events=[START], status={**STATUS, "control": {}}, experiment=experiment)
    assert_bad_input(
        runner("nudge", run_dir, "lr=0.1"),
        "cannot tell which settings the run's backend 'their-own' takes: it is not installed here",
    )
    (run_dir / "status.json").write_bytes(orjson.dumps(STATUS))
    refused = runner("nudge", run_dir, "momentum=0.5")
    assert_bad_input(refused, "momentum: not a setting this run's backend can change; settings: lr")


def test_a_rollback_target_that_does_not_exist_is_bad_input_before_anything_is_looked_at(tmp_path):
    proc = runner("nudge", tmp_path, "--rollback", "yesterday")
    assert proc.returncode == 2
    assert proc.stderr == "error: --rollback yesterday: roll back to last, best, before_nudge or an epoch number\n"
