"""The command line in real subprocesses: a whole run, validation, plugin listing, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import orjson
import pytest

from tests.conftest import ROOT


def runner(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "runner", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def run_dir_of(stdout: str):
    line = next(line for line in stdout.splitlines() if line.startswith("run directory: "))
    from pathlib import Path

    return Path(line.removeprefix("run directory: "))


def test_start_runs_a_search_to_the_end(write_experiment, tmp_path):
    exp = write_experiment(
        {
            "search": {
                "strategy": {"name": "random", "trials": 3},
                "space": {"train.lr": {"low": 1e-3, "high": 0.1, "scale": "log"}},
            }
        }
    )
    proc = runner("start", exp, "--out", tmp_path / "runs", "--plain")
    assert proc.returncode == 0, proc.stderr
    run_dir = run_dir_of(proc.stdout)
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("quick-")
    assert "leaderboard (val_acc)" in proc.stdout
    events = [orjson.loads(line) for line in (run_dir / "events.jsonl").read_bytes().splitlines()]
    assert [e["event"] for e in events].count("trial_complete") == 3
    assert all(e["t"] > 0 for e in events)
    results = orjson.loads((run_dir / "results.json").read_bytes())
    assert results["counts"] == {"completed": 3} and len(results["trials"]) == 3
    scores = [t["score"] for t in results["trials"]]
    assert scores == sorted(scores, reverse=True) and results["best"]["score"] == scores[0]
    assert orjson.loads((run_dir / "experiment.json").read_bytes())["name"] == "quick"


def test_start_never_overwrites_a_run_and_keeps_names_inside_the_output_folder(write_experiment, tmp_path):
    exp = write_experiment({"name": "../../escape/..", "search": {"space": None, "strategy": {"name": "grid"}}})
    first = runner("start", exp, "--out", tmp_path / "runs", "--plain")
    second = runner("start", exp, "--out", tmp_path / "runs", "--plain")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    dirs = {run_dir_of(first.stdout), run_dir_of(second.stdout)}
    assert len(dirs) == 2
    for d in dirs:
        assert d.resolve().parent == (tmp_path / "runs").resolve() and d.name.startswith("escape-")
    assert not (tmp_path / "escape").exists()


def test_seed_override_changes_the_sampled_trials(write_experiment, tmp_path):
    exp = write_experiment(
        {
            "search": {
                "strategy": {"name": "random", "trials": 1},
                "space": {"train.lr": {"low": 1e-3, "high": 0.1, "scale": "log"}},
            }
        }
    )
    lrs = []
    for seed in (1, 1, 2):
        proc = runner("start", exp, "--out", tmp_path / "runs", "--plain", "--seed", seed)
        assert proc.returncode == 0, proc.stderr
        lrs.append(
            orjson.loads((run_dir_of(proc.stdout) / "results.json").read_bytes())["trials"][0]["params"]["train.lr"]
        )
    assert lrs[0] == lrs[1] != lrs[2]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"name": "x", "train": {"epochs": 2,}}', "not valid JSON"),
        (None, "train.epochs: must be an integer"),
        (None, 'search.space.train.lr.low: must be > 0 for scale "log", got -0.001'),
        (None, 'backend.name: unknown backend "tensorflow"'),
        (None, "data.path: no such file"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_no_traceback(write_experiment, tmp_path, content, message):
    changes = {
        "train.epochs": {"train": {"epochs": "2"}},
        "search.space": {"search": {"space": {"train.lr": {"low": -0.001, "high": 0.1, "scale": "log"}}}},
        "backend.name": {"backend": {"name": "tensorflow"}},
        "data.path": {"data": {"name": "csv", "path": "missing.csv", "classes": None, "points_per_class": None}},
    }
    if content is None:
        key = next(k for k in changes if message.startswith(k))
        exp = write_experiment(changes[key])
    else:
        exp = tmp_path / "broken.json"
        exp.write_text(content)
    for command in ("start", "validate"):
        proc = runner(command, exp, "--out", tmp_path / "runs") if command == "start" else runner(command, exp)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and str(exp) in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists(), "bad input creates no run directory"


def test_unknown_plugin_module_exits_2(write_experiment, tmp_path):
    proc = runner("start", write_experiment(), "--plugin", tmp_path / "nope.py")
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr
    proc = runner("plugins", "--plugin", "no_such_module_anywhere")
    assert proc.returncode == 2 and "'no_such_module_anywhere' failed to load" in proc.stderr


def test_validate_summarises_the_experiment():
    proc = runner("validate", ROOT / "experiments" / "digits_random.json")
    assert proc.returncode == 0, proc.stderr
    assert "random, 20 trials, max val_acc" in proc.stdout
    assert "train.lr (log)" in proc.stdout and "train.momentum (log1m)" in proc.stdout
    assert "digits: 1438 train / 359 val examples, 64 features, 10 classes" in proc.stdout


def test_plugins_lists_built_ins_and_a_one_off_plugin(tmp_path):
    plugin = tmp_path / "shout.py"
    plugin.write_text(
        textwrap.dedent("""
        from runner import hookimpl

        @hookimpl
        def runner_trial_complete(trial, result):
            print("done", trial.id)
    """)
    )
    proc = runner("plugins", "--json", "--plugin", plugin)
    assert proc.returncode == 0, proc.stderr
    rows = {row["plugin"]: row for row in orjson.loads(proc.stdout)}
    assert rows["numpy"]["registers"] == ["backend numpy"] and rows["numpy"]["from"].startswith("panda-caviar ")
    assert rows["random"]["registers"] == ["strategy random"]
    assert rows["shout"]["hooks"] == ["runner_trial_complete"] and rows["shout"]["from"] == str(plugin)


def test_trace_env_prints_hook_calls(write_experiment, tmp_path):
    proc = runner("start", write_experiment(), "--out", tmp_path / "runs", "--plain", env={"RUNNER_TRACE_PLUGINS": "1"})
    assert proc.returncode == 0
    assert "runner_trial_start" in proc.stderr and "runner_epoch_end" in proc.stderr


def test_a_strategy_from_a_plugin_file_drives_a_cli_run(write_experiment, tmp_path):
    plugin = tmp_path / "two_rates.py"
    plugin.write_text(
        textwrap.dedent("""
        from runner import Strategy, hookimpl

        class TwoRates(Strategy):
            name = "two-rates"

            def ask(self, history):
                return [{"train.lr": 0.3}, {"train.lr": 0.003}, None][min(len(history), 2)]

        @hookimpl
        def runner_register(registry):
            registry.add_strategy(TwoRates)
    """)
    )
    exp = write_experiment({"search": {"strategy": {"name": "two-rates"}, "space": None}})
    proc = runner("start", exp, "--out", tmp_path / "runs", "--plain", "--plugin", plugin)
    assert proc.returncode == 0, proc.stderr
    results = orjson.loads((run_dir_of(proc.stdout) / "results.json").read_bytes())
    assert sorted(t["params"]["train.lr"] for t in results["trials"]) == [0.003, 0.3]
    proc = runner("start", exp, "--out", tmp_path / "runs", "--plain")
    assert proc.returncode == 2 and 'unknown strategy "two-rates"' in proc.stderr


def test_a_bug_in_a_plugin_is_one_line_and_a_traceback_file(write_experiment, tmp_path):
    plugin = tmp_path / "buggy.py"
    plugin.write_text(
        textwrap.dedent("""
        from runner import hookimpl

        @hookimpl
        def runner_trial_complete(trial, result):
            raise ZeroDivisionError("oops in a plugin")
    """)
    )
    proc = runner("start", write_experiment(), "--out", tmp_path / "runs", "--plain", "--plugin", plugin)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "unexpected ZeroDivisionError (a bug in a plugin or in runner): oops in a plugin" in proc.stderr
    log = run_dir_of(proc.stdout) / "error.log"
    assert f"the traceback is in {log}" in proc.stderr
    assert "buggy.py" in log.read_text() and "Traceback" in log.read_text()


def test_an_unusable_output_folder_is_bad_input(write_experiment, tmp_path):
    (tmp_path / "file").write_text("")
    proc = runner("start", write_experiment(), "--out", tmp_path / "file" / "runs")
    assert proc.returncode == 2 and "cannot create the output folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_version_and_help():
    assert runner("--version").stdout.startswith("runner, version ")
    for command in ("start", "validate", "plugins"):
        proc = runner(command, "--help")
        assert proc.returncode == 0 and "Usage:" in proc.stdout


def test_start_from_an_earlier_run_trains_its_best_config(write_experiment, tmp_path):
    search = write_experiment(
        {
            "search": {
                "strategy": {"name": "grid", "points": 3},
                "space": {
                    "train.lr": {"low": 1e-3, "high": 0.1, "scale": "log"},
                    "model.hidden": {"choices": [[4], [16]]},
                },
            }
        },
        name="search.json",
    )
    first = runner("start", search, "--out", tmp_path / "runs", "--plain")
    assert first.returncode == 0, first.stderr
    earlier = run_dir_of(first.stdout)
    best = orjson.loads((earlier / "results.json").read_bytes())["best"]
    babysit = write_experiment(
        {"train": {"epochs": 3}, "search": {"strategy": {"name": "panda-nudge"}, "space": None}}, name="panda.json"
    )
    proc = runner("start", babysit, "--out", tmp_path / "runs", "--plain", "--from", earlier)
    assert proc.returncode == 0, proc.stderr
    assert f"starting from t{best['trial']:03d}" in proc.stdout
    run_dir = run_dir_of(proc.stdout)
    written = orjson.loads((run_dir / "experiment.json").read_bytes())
    assert (
        written["train"]["lr"] == best["params"]["train.lr"]
        and written["model"]["hidden"] == best["params"]["model.hidden"]
    )
    config = next(
        e
        for e in (orjson.loads(x) for x in (earlier / "events.jsonl").read_bytes().splitlines())
        if e["event"] == "trial_start" and e["trial"] == best["trial"]
    )["config"]
    assert written["model"] == config["model"], "the whole model config, not only what was searched"
    assert written["train"] == {**config["train"], "epochs": 3}, "the whole train config but the budget"
    events = [orjson.loads(line) for line in (run_dir / "events.jsonl").read_bytes().splitlines()]
    assert events[0]["started_from"] == {
        "run_dir": str(earlier.resolve()),
        "trial": best["trial"],
        "params": best["params"],
        "score": best["score"],
    }
    trial = next(e for e in events if e["event"] == "trial_start")
    assert trial["config"]["train"]["lr"] == best["params"]["train.lr"] and trial["params"] == {}

    missing = runner("start", babysit, "--out", tmp_path / "runs", "--plain", "--from", tmp_path / "nowhere")
    assert missing.returncode == 2 and "is not a run directory" in missing.stderr and "Traceback" not in missing.stderr
