"""The commands that read without running: ``runner report`` (a run's leaderboard, plots and page),
``runner validate`` (an experiment file), ``runner plugins`` and ``runner schema``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
import orjson

from runner.cli.errors import damaged_if_misread, reported_errors
from runner.cli.group import main
from runner.cli.options import latest_run_option, named_run_dir, plugin_option
from runner.control.nudge import latest_run
from runner.errors import PluginError, RunnerError

if TYPE_CHECKING:
    import pluggy

    from runner.engine.plugin_manager import Plugins


@main.command()
@click.argument("run_dir", required=False, type=click.Path(path_type=Path))
@click.option("--csv", "as_csv", is_flag=True, help="Print every trial as CSV, for scripts (no plots).")
@click.option("--json", "as_json", is_flag=True, help="Print every trial as JSON, for scripts (no plots).")
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Trials in the terminal's leaderboard (0: all).",
)
@click.option(
    "--curves",
    type=click.IntRange(min=1),
    default=6,
    show_default=True,
    help="How many of the best trials get learning curves.",
)
@click.option("--open", "open_page", is_flag=True, help="Open the HTML report in a browser, where there is one.")
@plugin_option
@latest_run_option
def report(
    run_dir: Path | None,
    as_csv: bool,
    as_json: bool,
    top: int,
    curves: int,
    open_page: bool,
    plugin_refs: tuple[str, ...],
    out: Path,
) -> None:
    """Report on a run, finished, interrupted or still running: its leaderboard, plots in
    RUN_DIR/report/ and one self-contained page, RUN_DIR/report.html (images embedded).

    RUN_DIR defaults to the latest run in --out.
    """
    with reported_errors():
        from runner.report import read_run_view
        from runner.report.table import to_csv, to_json

        if as_csv and as_json:
            raise RunnerError("--csv and --json print different formats: choose one", exit_code=2)
        run_dir = named_run_dir(run_dir) or latest_run(out)
        with damaged_if_misread(run_dir / "events.jsonl"):
            run = read_run_view(run_dir)
        if as_csv or as_json:
            click.echo(to_csv(run) if as_csv else to_json(run).decode(), nl=False)
            return
        from rich.markup import escape

        from runner.engine.plugin_manager import recorded_one_offs
        from runner.report.build import FIGURE_DIR, draw_figures, write_report  # matplotlib loads only here
        from runner.views.console import terminal
        from runner.views.progress import leaderboard_table

        console = terminal()
        console.print(
            leaderboard_table(
                [t.result for t in run.trials], run.metric, rows=top or None, more="(all: --top 0; every column: --csv)"
            )
        )
        run_files = recorded_one_offs(run.events[0], str(run.run_dir / "events.jsonl"))
        manager, problems = _report_plugins(run_files, plugin_refs)
        figures, drawing_problems = draw_figures(run, manager, top=curves)
        written = write_report(run, figures, problems + drawing_problems)
        for problem in written.problems:
            console.print(f"[yellow]{escape(problem)}[/]", soft_wrap=True)
        console.print(f"{run.name}: {run.state}; {len(run.trials)} trials", soft_wrap=True, markup=False)
        names = ", ".join(p.name for p in written.images)
        console.print(
            f"plots:  {run.run_dir / FIGURE_DIR}/ ({names})" if names else "plots:  none yet (no epoch has ended)",
            soft_wrap=True,
            markup=False,
        )
        console.print(f"report: {written.html}", soft_wrap=True, markup=False)
        if open_page:
            _open_in_browser(written.html)


def _report_plugins(
    run_files: list[str], plugin_refs: tuple[str, ...]
) -> tuple[pluggy.PluginManager | None, list[str]]:
    """The plugins a report asks for figures: the installed ones and ``--plugin`` ones, never
    the one-off plugins the run names (a run directory is data). An installed plugin that no
    longer loads costs only the figures (a ``--plugin`` asked for now that fails is an error)."""
    from runner.engine.plugin_manager import load_plugins, missing_one_offs, plugin_args

    problems = []
    missing = missing_one_offs(run_files, plugin_refs)
    if missing:
        problems.append(
            "the run was started with one-off plugins, which a report never loads on its own; "
            f"for their figures, add {plugin_args(missing)}"
        )
    try:
        return load_plugins(plugin_refs).manager, problems
    except PluginError as err:
        if plugin_refs:
            raise
        return None, [*problems, f"plugins did not load, so the report has no plugin figures: {err}"]


def _open_in_browser(page: Path) -> None:
    import webbrowser

    try:
        opened = webbrowser.open(page.resolve().as_uri())
    except webbrowser.Error:
        opened = False
    if not opened:
        click.echo(f"no browser found here; open {page} where there is one", err=True)


@main.command()
@click.argument("experiment", type=click.Path(path_type=Path))
@plugin_option
def validate(experiment: Path, plugin_refs: tuple[str, ...]) -> None:
    """Check EXPERIMENT (its plugins, options, search space and data) without running it."""
    from runner.api import prepare
    from runner.engine.experiment import build_strategy

    with reported_errors():
        plugins, spec, dataset = prepare(experiment, plugin_refs)
        planned = build_strategy(spec, plugins.registry).planned_trials()
        params = ", ".join(f"{p.path} ({getattr(p, 'scale', 'choice')})" for p in spec.search.space) or "none"
        click.echo(f"ok: {experiment}")
        click.echo(
            f"  search:  {spec.search.strategy.name}, {planned if planned is not None else 'open-ended'} trials, "
            f"{spec.search.mode} {spec.search.metric}"
        )
        click.echo(f"  space:   {params}")
        click.echo(f"  backend: {spec.backend.name}, {spec.train.epochs} epochs; executor: {spec.executor.name}")
        shape = dataset.input_shape
        inputs = f"{dataset.n_features} features" if len(shape) == 1 else f"inputs of shape {shape}"
        targets = (
            f"{dataset.n_classes} classes"
            if dataset.task == "classification"
            else f"regression on {dataset.n_targets} target{'s' if dataset.n_targets > 1 else ''}"
        )
        click.echo(
            f"  data:    {spec.data.name}: {len(dataset.x_train)} train / {len(dataset.x_val)} val examples, "
            f"{inputs}, {targets}"
        )


@main.command("plugins")
@plugin_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_plugins(plugin_refs: tuple[str, ...], as_json: bool) -> None:
    """List loaded plugins, what each registers, and the hooks each implements."""
    from rich.table import Table
    from rich.text import Text

    from runner.engine.plugin_manager import TRACE_ENV, load_plugins
    from runner.views.console import terminal

    with reported_errors():
        plugins = load_plugins(plugin_refs)
        rows = _plugin_rows(plugins)
    if as_json:
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title="plugins", title_justify="left")
    for column in ("plugin", "from", "registers", "hooks"):
        table.add_column(column, overflow="fold")
    for row in rows:
        cells = (row["plugin"], row["from"], ", ".join(row["registers"]) or "-", ", ".join(row["hooks"]))
        table.add_row(*map(Text, cells))  # plugins' own words, never read as markup
    console = terminal()
    console.print(table)
    console.print(f"Trace every hook call with {TRACE_ENV}=1.")


def _plugin_rows(plugins: Plugins) -> list[dict]:
    from runner.engine.plugin_manager import hooks_of

    pm = plugins.manager
    by_plugin: dict[str, list[str]] = {}
    for entry in plugins.registry.entries():
        note = f" (unavailable: {entry.unavailable})" if entry.unavailable else ""
        by_plugin.setdefault(entry.plugin, []).append(f"{entry.kind} {entry.name}{note}")
    for declared in plugins.registry.options():
        by_plugin.setdefault(declared.plugin, []).append(f"options {declared.name}")
    rows = []
    for name, plugin in sorted(pm.list_name_plugin()):
        rows.append(
            {
                "plugin": name,
                "from": plugins.origins.get(name, "runner"),
                "registers": by_plugin.get(name, []),
                "hooks": hooks_of(pm, plugin),
            }
        )
    return rows


@main.command("schema")
@plugin_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Write it to FILE (atomically) instead of printing it.",
)
def print_schema(plugin_refs: tuple[str, ...], out: Path | None) -> None:
    """Print the JSON Schema of experiment files, with the options of every plugin loaded,
    for editors to complete and check them: name it in an experiment's "$schema"."""
    from runner.engine.plugin_manager import load_plugins
    from runner.experiment_file.schema import experiment_schema
    from runner.records.files import write_own_file

    with reported_errors():
        text = orjson.dumps(experiment_schema(load_plugins(plugin_refs).registry), option=orjson.OPT_INDENT_2) + b"\n"
        if out is None:
            click.echo(text.decode(), nl=False)
            return
        try:
            write_own_file(out, text)
        except OSError as err:
            raise RunnerError(f"--out {out}: cannot write it: {err.strerror}", exit_code=2) from None
        click.echo(f"wrote {out}")
