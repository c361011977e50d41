"""The README's promises: its plugin example works as written, every hook and option is documented."""

from __future__ import annotations

import dataclasses
import re

import pytest

from runner.backend import NoOptions
from runner.errors import SpecError
from runner.files import create_run_dir
from runner.loop import load_dataset, run_experiment
from runner.plugin_manager import load_plugins
from runner.spec import load
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def python_block_after(marker: str) -> str:
    start = README.index(marker)
    match = re.search(r"```python\n(.*?)```", README[start:], re.S)
    return match.group(1)


def test_the_strategy_example_runs_as_written(write_experiment, tmp_path):
    plugin = tmp_path / "my_strategy.py"
    plugin.write_text(python_block_after("### A strategy, from scratch"))
    plugins = load_plugins([str(plugin)])
    changes = {"search": {"strategy": {"name": "halving", "trials": 3}, "space": None, "metric": "val_loss"}}
    spec = load(write_experiment(changes), plugins.registry)
    board = run_experiment(spec, plugins, load_dataset(spec, plugins), create_run_dir(tmp_path, "x"))
    lrs = sorted(r.params["train.lr"] for r in board)
    assert lrs == [0.025, 0.05, 0.1]


def test_the_report_figure_example_draws_its_figure(write_experiment, tmp_path):
    from runner.report import read_run_view
    from runner.report.build import draw_figures, write_report

    plugin = tmp_path / "seconds_plot.py"
    plugin.write_text(python_block_after("### A figure for the report"))
    plugins = load_plugins([str(plugin)])
    spec = load(write_experiment(), plugins.registry)
    run_dir = create_run_dir(tmp_path, "x")
    run_experiment(spec, plugins, load_dataset(spec, plugins), run_dir)
    figures, problems = draw_figures(read_run_view(run_dir), plugins.manager)
    assert problems == [] and figures[-1].name == "seconds"
    assert (run_dir / "report" / "seconds.png") in write_report(read_run_view(run_dir), figures).images


def test_every_option_of_every_built_in_is_documented():
    for entry in load_plugins().registry.entries():
        if entry.unavailable:  # its options are documented all the same; checked where it is installed
            continue
        classes = [getattr(entry.obj, "Options", NoOptions)]
        if entry.kind == "backend":
            classes += [entry.obj.Model, entry.obj.Train]
        for cls in classes:
            for field in dataclasses.fields(cls):
                assert f"`{field.name}`" in README, (
                    f"{entry.kind} {entry.name}: option {field.name} is not in README.md"
                )
                assert field.metadata.get("doc"), f"{entry.kind} {entry.name}: option {field.name} has no doc"


def test_the_ci_script_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci
    block = README.split("<!-- test-command -->", 1)[1]
    assert "pytest" in block.split("```")[1]


def test_every_event_the_code_writes_is_in_the_events_table():
    written = set()
    for path in (ROOT / "runner").glob("*.py"):
        written |= set(re.findall(r'emit\(\s*"([a-z_]+)"', path.read_text()))
    table = README.split("### `events.jsonl`", 1)[1].split("###", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)`(?:, `([a-z_]+)`)?", table, re.M))
    documented = {name for pair in documented for name in pair if name}
    assert written and written <= documented, f"undocumented events: {sorted(written - documented)}"


def test_the_bad_options_example_refuses_with_its_path(write_experiment, tmp_path):
    plugin = tmp_path / "pairs.py"
    plugin.write_text(python_block_after("### Refusing bad options"))
    plugins = load_plugins([str(plugin)])
    exp = write_experiment({"search": {"strategy": {"name": "pairs", "trials": 3}, "space": None}})
    with pytest.raises(SpecError) as refused:
        load(exp, plugins.registry)
    assert refused.value.path == "search.strategy.trials" and refused.value.message == "must be even, got 3"
    spec = load(
        write_experiment({"search": {"strategy": {"name": "pairs", "trials": 2}, "space": None}}), plugins.registry
    )
    board = run_experiment(spec, plugins, load_dataset(spec, plugins), create_run_dir(tmp_path, "x"))
    assert len(board) == 2
