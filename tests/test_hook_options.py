"""A plugin that only implements hooks takes options from the experiment file's ``plugins``
section (``registry.add_options``), checked before anything runs, in every hook, wherever
its trials run."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import orjson
import pytest
from jsonschema import Draft7Validator

from runner import SpecError
from runner.engine.plugin_manager import load_plugins
from runner.errors import PluginError
from runner.experiment_file.schema import experiment_schema
from runner.experiment_file.spec import load
from runner.records.events import read_events
from tests.conftest import QUICK, ROOT, deep_update, run_file
from tests.test_cli import run_dir_of, runner
from tests.test_control_live import LiveRun

# Every hook that receives the experiment or a trial reports the options it reads: trial
# hooks as note events (they reach the driver's log from any executor), the experiment's
# hooks in a file of the run directory.
TAGGER = """
import json
from dataclasses import dataclass, field

from runner import Note, bounds, hookimpl


@dataclass(frozen=True)
class Options:
    every: int = field(default=1, metadata=bounds(ge=1, doc="note every this many epochs"))
    tag: str = field(default="plain", metadata=bounds(doc="what the notes say"))


@hookimpl
def runner_register(registry):
    registry.add_options("tagger", Options)


def seen(hook, options):
    return {"hook": hook, "every": options.every, "tag": options.tag}


@hookimpl
def runner_experiment_start(experiment):
    (experiment.run_dir / "tagger-start.json").write_text(json.dumps(seen("start", experiment.options("tagger"))))


@hookimpl
def runner_experiment_complete(experiment, results):
    (experiment.run_dir / "tagger-end.json").write_text(json.dumps(seen("end", experiment.options("tagger"))))


started = {}  # trial id -> what runner_trial_start saw, noted at the trial's first epoch end


@hookimpl
def runner_trial_start(trial):
    started[trial.id] = seen("trial_start", trial.options("tagger"))


@hookimpl
def runner_epoch_end(trial, epoch, metrics):
    options = trial.options("tagger")
    notes = [Note("tagger", options.tag, seen("epoch_end", options))] if (epoch + 1) % options.every == 0 else []
    if trial.id in started:
        notes.append(Note("tagger", options.tag, started.pop(trial.id)))
    return notes
"""


@pytest.fixture
def tagger(tmp_path):
    path = tmp_path / "tagger.py"
    path.write_text(TAGGER)
    return path


def notes(events: list[dict]) -> list[dict]:
    return [
        {k: e[k] for k in ("trial", "epoch", "hook", "every", "tag")}
        for e in events
        if e["event"] == "note" and e.get("kind") == "tagger"
    ]


@pytest.mark.parametrize("executor", ["inline", {"name": "process", "workers": 2}], ids=["inline", "process"])
def test_the_options_reach_every_hook_inline_and_in_worker_processes(write_experiment, tmp_path, tagger, executor):
    exp = write_experiment(
        {"train": {"epochs": 4}, "executor": executor, "plugins": {"tagger": {"every": 2, "tag": "hello"}}}
    )
    run = run_file(exp, tmp_path, [str(tagger)])
    assert [r.state for r in run.board] == ["completed", "completed"]
    seen = notes(run.events)
    for trial in (0, 1):
        mine = [n for n in seen if n["trial"] == trial]
        # a note's epoch counts the epochs done: notes at the ends of the 2nd and 4th epochs, and the 1st
        assert sorted((n["hook"], n["epoch"]) for n in mine) == [("epoch_end", 2), ("epoch_end", 4), ("trial_start", 1)]
        assert {(n["every"], n["tag"]) for n in mine} == {(2, "hello")}
    for name, hook in (("tagger-start.json", "start"), ("tagger-end.json", "end")):
        assert orjson.loads((run.run_dir / name).read_bytes()) == {"hook": hook, "every": 2, "tag": "hello"}
    assert run.spec.options("tagger").every == 2


def test_a_loaded_plugin_the_file_does_not_name_gets_its_defaults(write_experiment, tmp_path, tagger):
    run = run_file(write_experiment({"train": {"epochs": 2}}), tmp_path, [str(tagger)])
    seen = notes(run.events)
    assert len(seen) == 6 and {(n["every"], n["tag"]) for n in seen} == {(1, "plain")}
    assert orjson.loads((run.run_dir / "tagger-start.json").read_bytes())["tag"] == "plain"


def test_the_options_come_back_when_a_run_is_resumed(tmp_path, tagger):
    run = LiveRun(tmp_path, {"plugins": {"tagger": {"tag": "again"}}}, "--plugin", str(tagger))
    try:
        resumed_with_the_options(run, tagger)
    finally:
        run.kill()


def resumed_with_the_options(run: LiveRun, tagger) -> None:
    run.process.send_signal(signal.SIGTERM)  # snapshot, exit 130: resumable
    assert run.process.wait(timeout=60) == 130
    (run.run_dir / "tagger-start.json").unlink()
    resumed = subprocess.Popen(
        [sys.executable, "-m", "runner", "resume", run.run_dir, "--plugin", tagger, "--plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run.process = resumed
    [continued] = run.until(lambda: run.find("trial_resume"))
    run.until(
        lambda: [n for n in notes(run.events()) if n["hook"] == "trial_start" and n["epoch"] > continued["epoch"]]
    )
    assert {n["tag"] for n in notes(run.events())} == {"again"}  # before and after: read again from experiment.json
    assert orjson.loads((run.run_dir / "tagger-start.json").read_bytes())["tag"] == "again"
    assert run.stop() == 0


@pytest.mark.parametrize(
    "section, message",
    [
        ({"tagger": {"every": 0}}, "plugins.tagger.every: must be >= 1, got 0"),
        ({"tagger": {"every": "2"}}, 'plugins.tagger.every: must be an integer, got string "2"'),
        ({"tagger": {"evry": 2}}, 'plugins.tagger.evry: unknown key (did you mean "every"?); known keys: every, tag'),
        ({"tagger": 3}, "plugins.tagger: must be an object, got number 3"),
        (
            {"taggr": {}},
            'plugins.taggr: no plugin loaded declares options "taggr" (did you mean "tagger"?); declared: tagger',
        ),
        ([], "plugins: must be an object"),
    ],
)
def test_bad_options_exit_2_naming_the_path(write_experiment, tagger, section, message):
    exp = write_experiment({"plugins": section})
    proc = runner("start", exp, "--plugin", tagger, "--plain", "--out", exp.parent / "runs")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {exp}: {message}") and proc.stderr.count("\n") == 1  # no traceback
    assert not (exp.parent / "runs").exists()


def test_options_for_a_plugin_that_is_not_loaded_are_refused(write_experiment):
    exp = write_experiment({"plugins": {"tagger": {}}})
    proc = runner("validate", exp)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f'error: {exp}: plugins.tagger: no plugin loaded declares options "tagger"')
    assert "--plugin" in proc.stderr


def test_a_required_option_is_required_where_the_file_leaves_it_out(write_experiment, tmp_path):
    plugin = tmp_path / "needy.py"
    plugin.write_text(
        "from dataclasses import dataclass\nfrom runner import hookimpl\n\n\n"
        "@dataclass(frozen=True)\nclass Options:\n    uri: str\n\n\n"
        "@hookimpl\ndef runner_register(registry):\n    registry.add_options('needy', Options)\n"
    )
    registry = load_plugins([str(plugin)]).registry
    with pytest.raises(SpecError) as missing:
        load(write_experiment(), registry)
    assert str(missing.value).endswith("plugins.needy.uri: is required")
    assert load(write_experiment({"plugins": {"needy": {"uri": "x"}}}), registry).options("needy").uri == "x"


@pytest.mark.parametrize(
    "declaration, message",
    [
        ("registry.add_options('tagger', Options)", "options \"tagger\" are declared twice: by plugin 'tagger'"),
        ("registry.add_options('other', dict)", "plugin 'clash' declared options 'other': they must be a dataclass"),
        ("registry.add_options('other', Loose)", "they must be frozen: @dataclass(frozen=True)"),
        ("registry.add_options('', Options)", "plugin 'clash' declared options without a name"),
    ],
)
def test_a_bad_declaration_names_the_plugin(tmp_path, tagger, declaration, message):
    plugin = tmp_path / "clash.py"
    plugin.write_text(
        "from dataclasses import dataclass\nfrom runner import hookimpl\n\n\n"
        "@dataclass(frozen=True)\nclass Options:\n    level: int = 1\n\n\n"
        "@dataclass\nclass Loose:\n    level: int = 1\n\n\n"
        f"@hookimpl\ndef runner_register(registry):\n    {declaration}\n"
    )
    with pytest.raises(PluginError) as refused:
        load_plugins([str(tagger), str(plugin)])
    assert message in str(refused.value)


def test_a_hook_asking_for_options_nobody_declared_gets_a_key_error_listing_them(write_experiment, tmp_path, tagger):
    asker = tmp_path / "asker.py"
    asker.write_text(
        "from runner import hookimpl\n\n\n@hookimpl\ndef runner_trial_start(trial):\n    trial.options('tagr')\n"
    )
    run = run_file(write_experiment(), tmp_path, [str(tagger), str(asker)])
    reasons = {r.reason for r in run.board}
    assert reasons == {
        "UnknownOptions: no options named 'tagr' (declared: tagger); a plugin declares its options with "
        "registry.add_options(name, Options) in runner_register"
    }


def test_runner_plugins_and_runner_schema_show_them(tmp_path, tagger):
    listed = runner("plugins", "--plugin", tagger, "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = [r for r in orjson.loads(listed.stdout) if r["plugin"] == "tagger"]
    assert row["registers"] == ["options tagger"]

    validator = Draft7Validator(experiment_schema(load_plugins([str(tagger)]).registry))
    assert validator.is_valid(deep_update(QUICK, {"plugins": {"tagger": {"every": 3, "tag": "x"}}}))
    for bad in ({"tagger": {"every": 0}}, {"tagger": {"evry": 1}}, {"taggr": {}}, []):
        assert not validator.is_valid(deep_update(QUICK, {"plugins": bad})), bad
    plain = Draft7Validator(experiment_schema(load_plugins().registry))
    assert plain.is_valid(QUICK) and not plain.is_valid(deep_update(QUICK, {"plugins": {"tagger": {}}}))


def test_the_docs_example_runs_as_written(tmp_path):
    page = (ROOT / "docs" / "hook-plugins.md").read_text()
    [plugin] = re.findall(r"```python\n(.*?)```", page, re.S)
    [experiment] = re.findall(r"```json\n(.*?)```", page, re.S)
    (tmp_path / "plateau.py").write_text(plugin)
    (tmp_path / "plateau.json").write_text(experiment)
    proc = runner("start", "plateau.json", "--plugin", "plateau.py", "--plain", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "plateau: patience 5, min_delta 0.0" in proc.stdout  # the file's, not the default 3
    events = list(read_events(tmp_path / run_dir_of(proc.stdout) / "events.jsonl"))
    finished = [e for e in events if e["event"] == "finish"]
    assert finished and all(e["source"] == "plugin" and "for 5 epochs" in e["reason"] for e in finished)
    assert any(e["event"] == "note" and e["kind"] == "plateau" for e in events)
    ended = [e for e in events if e["event"] == "trial_complete"]
    assert min(e["epochs"] for e in ended) < 50 and all(e["state"] == "completed" for e in ended)
