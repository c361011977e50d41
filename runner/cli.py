"""The command line: ``runner start``, ``resume``, ``nudge``, ``status``, ``report``, ``validate``, ``schema``,
``plugins``.

Exit codes: 0 success; 1 a failure during the run; 2 bad input (a message, no traceback);
130 interrupted.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import tempfile
import traceback
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import click
import orjson
import pluggy
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from runner import __version__
from runner.api import notifier, prepare, show_results, start_run, terminal
from runner.control.file import FILE_NAME as CONTROL_FILE
from runner.control.file import ROLLBACK_TARGETS, ControlError, ControlSchema, trial_id
from runner.control.nudge import Change, latest_run, read_status, send
from runner.engine.experiment import build_strategy, load_dataset
from runner.engine.interrupt import Interrupted, graceful_interrupts
from runner.engine.loop import run_experiment
from runner.engine.plugin_manager import (
    TRACE_ENV,
    Plugins,
    hooks_of,
    load_plugins,
    missing_one_offs,
    plugin_args,
    recorded_one_offs,
)
from runner.engine.resume import check_run_dir, clean_temporary_files, plan_resume
from runner.errors import PluginError, RunnerError, SpecError
from runner.experiment_file.schema import experiment_schema
from runner.experiment_file.spec import DEFAULT_PLUGINS, load, read_json
from runner.imports import refusing_code
from runner.records.events import read_run
from runner.records.files import UnsafePath, atomic_write, run_is_held, run_lock, write_own_file
from runner.views.live import LiveView
from runner.views.progress import leaderboard_table, status_view

plugin_option = click.option(
    "--plugin",
    "-p",
    "plugin_refs",
    multiple=True,
    metavar="FILE.py|MODULE",
    help="Load a one-off plugin module (repeatable), besides the installed ones.",
)
latest_run_option = click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("checkpoints"),
    show_default=True,
    help="Where to look for the latest run when RUN_DIR is not given.",
)
poll_option = click.option(
    "--poll",
    is_flag=True,
    help="Watch the control file by polling, for file systems without inotify (network mounts, some containers).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="runner")
def main() -> None:
    """Tune neural networks: many trials side by side, or babysit one long run."""


@main.command()
@click.argument("experiment", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("checkpoints"),
    show_default=True,
    help="Folder in which the run directory is created.",
)
@plugin_option
@click.option("--seed", type=click.IntRange(min=0, max=2**63 - 1), help="Override the experiment file's seed.")
@click.option(
    "--from",
    "from_run",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="RUN_DIR",
    help="Start from the best trial of an earlier run: its model and train config (all but "
    "train.epochs) replaces this file's (panda-nudge then babysits it).",
)
@click.option("--plain", is_flag=True, help="Plain lines instead of live progress bars.")
@poll_option
def start(
    experiment: Path,
    out: Path,
    plugin_refs: tuple[str, ...],
    seed: int | None,
    from_run: Path | None,
    plain: bool,
    poll: bool,
) -> None:
    """Run the experiment described by EXPERIMENT (a JSON file)."""
    console = terminal()
    with reported_errors() as where:
        result = start_run(
            experiment,
            out=out,
            plugin_refs=plugin_refs,
            seed=seed,
            from_run=from_run,
            console=console,
            plain=plain,
            poll=poll,
            on_run_dir=lambda run_dir: setattr(where, "run_dir", run_dir),
        )
        _finished(result.leaderboard, result.run_dir)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@plugin_option
@click.option("--plain", is_flag=True, help="Plain lines instead of live progress bars.")
@poll_option
@click.option(
    "--trust-code",
    is_flag=True,
    help="Import the code the run's experiment names by import path (a model's class_path, a python "
    "data source): only for a run directory you trust.",
)
def resume(run_dir: Path, plugin_refs: tuple[str, ...], plain: bool, poll: bool, trust_code: bool) -> None:
    """Continue the run in RUN_DIR after a crash, a kill or Ctrl-C.

    Finished trials stay finished; an interrupted trial continues from its last intact
    snapshot (or starts again if it has none); the trials not yet run follow. A run started
    with one-off plugins needs the same --plugin arguments again, and a run whose experiment
    names code by import path (a model's class_path, a python data source) needs
    --trust-code: runner never loads code that a run directory names unless told to.
    """
    console = terminal()
    with reported_errors() as where, ExitStack() as held:
        run_dir = named_run_dir(run_dir)
        start = read_run(run_dir)[0]
        missing = missing_one_offs(recorded_one_offs(start, str(run_dir / "events.jsonl")), plugin_refs)
        if missing:
            raise RunnerError(
                f"{run_dir} was started with one-off plugins that runner does not load from a run directory; "
                f"give them again: runner resume {shlex.quote(str(run_dir))} {plugin_args(missing)}",
                exit_code=2,
            )
        held.enter_context(run_lock(run_dir))
        check_run_dir(run_dir)  # no link in it is written through: refused before anything changes
        plugins = load_plugins(plugin_refs)
        if not isinstance(start.get("base_dir"), str):
            raise RunnerError(f"{run_dir / 'events.jsonl'} is damaged: experiment_start has no base_dir", exit_code=2)
        again = " ".join(filter(None, ("runner resume", shlex.quote(str(run_dir)), plugin_args(plugin_refs))))
        advice = f"a run directory is data, and resuming would run that code; if it is yours, run: {again} --trust-code"
        with nullcontext() if trust_code else refusing_code(advice):
            spec = load(run_dir / "experiment.json", plugins.registry, base_dir=Path(start["base_dir"]))
            dataset = load_dataset(spec, plugins)
        where.run_dir = run_dir
        for path in clean_temporary_files(run_dir):
            console.print(f"removed a half-written file: {path}", soft_wrap=True, markup=False)
        plan = plan_resume(run_dir)
        for note in plan.notes:
            console.print(Text(note, style="yellow"), soft_wrap=True)
        for trial, snapshot in plan.continue_from.items():
            where_from = f"from {snapshot.relative_to(run_dir)}" if snapshot else "from the start (no snapshot)"
            console.print(f"t{trial:03d} continues {where_from}", soft_wrap=True, markup=False)
        console.print(
            f"control file: {run_dir / CONTROL_FILE} (its current contents are the starting point)",
            soft_wrap=True,
            markup=False,
        )
        view = LiveView(console, live=False if plain else None)
        view.replay(plan.events)
        with graceful_interrupts(), view:
            board = run_experiment(
                spec,
                plugins,
                dataset,
                run_dir,
                resume=plan,
                poll=poll,
                notify=notifier(console),
                watchers=[view.observe],
            )
        show_results(console, board, spec.search.metric, run_dir)
        _finished(board, run_dir)


@contextmanager
def damaged_if_misread(path: Path, hint: str = ""):
    """Around code that reads a run's file as data: a field it lacks, or holds of the wrong
    kind, is bad input naming ``path`` (exit 2, one line), not a bug in runner."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise RunnerError(f"{path} is damaged: {type(err).__name__} {err}{hint}", exit_code=2) from None


def named_run_dir(run_dir: Path | None) -> Path | None:
    """The run directory a person named on the command line; named through a symbolic link
    (a ``latest`` alias), the folder the link points to. The folder named is the person's
    choice; nothing inside it is followed (``runner.records.files``)."""
    return run_dir.resolve() if run_dir is not None and run_dir.is_symlink() else run_dir


@main.command()
@click.argument("args", nargs=-1, metavar="[RUN_DIR] [NAME=VALUE]...")
@click.option("--trial", "trial_ref", metavar="ID", help="Only this trial (3 or t003); default: every running trial.")
@click.option(
    "--rollback", "rollback_to", metavar="TO", help="Roll back to last, best, before_nudge or an epoch number."
)
@click.option("--pause", is_flag=True, help="Pause at the next step.")
@click.option("--resume", "unpause", is_flag=True, help="Let a paused trial go on.")
@click.option("--stop", is_flag=True, help="Stop the trial (with --trial) or the whole run.")
@click.option("--checkpoint", is_flag=True, help="Write a snapshot now.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the run to acknowledge the change.",
)
@click.option("--no-wait", is_flag=True, help="Write the change and return without waiting.")
@plugin_option
@latest_run_option
def nudge(
    args: tuple[str, ...],
    trial_ref: str | None,
    rollback_to: str | None,
    pause: bool,
    unpause: bool,
    stop: bool,
    checkpoint: bool,
    timeout: float,
    no_wait: bool,
    plugin_refs: tuple[str, ...],
    out: Path,
) -> None:
    """Change a running run: set live hyperparameters (lr=0.003 momentum=0.95), roll back,
    pause, resume, stop or checkpoint, through its control file; then wait until the run
    has applied it.

    RUN_DIR defaults to the latest run in --out.
    """
    with reported_errors():
        run_dir, change = _parse_nudge(args, trial_ref, rollback_to, pause, unpause, stop, checkpoint, out)
        schema = _control_schema(run_dir, plugin_refs)
        for name, value in change.settings.items():
            try:
                schema.check(name, value, name)
            except ControlError as err:
                raise RunnerError(f"not sent: {err}", exit_code=2) from None
        read = send(run_dir, change, schema, None if no_wait else timeout)
        if read is None:
            click.echo(f"written to {run_dir / CONTROL_FILE}")
            return
        failed = False
        for order in read["orders"]:
            who = f"t{order['trial']:03d}" if order["trial"] is not None else "run"
            if order["state"] == "applied":
                where = f" at step {order['step']}" if order.get("step") is not None else ""
                click.echo(f"{who}: {order['what']} applied{where}")
            else:
                click.echo(f"{who}: {order['state']}: {order.get('detail') or order['what']}", err=True)
                failed = True
        if not read["orders"]:
            click.echo("nothing to change")
        if failed:
            sys.exit(1)


def _parse_nudge(args, trial_ref, rollback_to, pause, unpause, stop, checkpoint, out) -> tuple[Path, Change]:
    run_dirs = [a for a in args if "=" not in a]
    if len(run_dirs) > 1:
        raise RunnerError(f"one run directory at most, got {', '.join(run_dirs)}; settings are NAME=VALUE", exit_code=2)
    run_dir = named_run_dir(Path(run_dirs[0])) if run_dirs else latest_run(out)
    settings = {}
    for arg in args:
        if "=" in arg:
            name, _, text = arg.partition("=")
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise RunnerError(f"{arg}: the value must be a finite number", exit_code=2)
            settings[name.strip()] = value
    actions: list[dict] = []
    if rollback_to is not None:
        if not rollback_to.isdigit() and rollback_to not in ROLLBACK_TARGETS:
            raise RunnerError(
                f"--rollback {rollback_to}: roll back to {', '.join(ROLLBACK_TARGETS)} or an epoch number", exit_code=2
            )
        actions.append({"do": "rollback", "to": int(rollback_to) if rollback_to.isdigit() else rollback_to})
    actions += [
        {"do": do}
        for do, asked in (("pause", pause), ("resume", unpause), ("checkpoint", checkpoint), ("stop", stop))
        if asked
    ]
    if not settings and not actions:
        raise RunnerError(
            "nothing to change: give NAME=VALUE settings or an action (--rollback, --pause, "
            "--resume, --stop, --checkpoint)",
            exit_code=2,
        )
    try:
        trial = None if trial_ref is None else trial_id(trial_ref, "--trial")
    except SpecError as err:
        raise RunnerError(str(err), exit_code=2) from None
    return run_dir, Change(settings, actions, trial)


def _control_schema(run_dir: Path, plugin_refs: tuple[str, ...]) -> ControlSchema:
    """What the run's backend lets a person change, checked before anything is written.

    The backend's class comes from the installed plugins and ``--plugin`` alone, never from
    code the run directory names. A backend they lack (a one-off the run was started with)
    is checked by the settings the run recorded in ``status.json``, as finite numbers; the
    run checks the rest when it reads the file, and ``runner nudge`` reports its refusal."""
    experiment = read_json(run_dir / "experiment.json")
    backend = experiment.get("backend", DEFAULT_PLUGINS["backend"]) if isinstance(experiment, dict) else None
    name = backend.get("name") if isinstance(backend, dict) else backend
    try:
        backend_cls = load_plugins(plugin_refs).registry.get("backend", str(name))
        model = experiment.get("model", {}) if isinstance(experiment, dict) else {}
        return ControlSchema.for_backend(backend_cls.for_model(model if isinstance(model, dict) else {}))
    except SpecError:
        pass  # not installed here, or unavailable
    live = read_status(run_dir)["control"].get("settings")
    if not (isinstance(live, list) and all(isinstance(setting, str) for setting in live)):
        raise RunnerError(
            f"cannot tell which settings the run's backend {name!r} takes: it is not installed here and "
            f"{run_dir / 'status.json'} does not list them; give the backend's --plugin",
            exit_code=2,
        )
    return ControlSchema(tuple(live))


@main.command()
@click.argument("run_dir", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help='The whole status.json, plus "alive".')
@latest_run_option
def status(run_dir: Path | None, as_json: bool, out: Path) -> None:
    """Show a run as it is now: its trials, their epoch, losses, lr and momentum, and what
    the control file did last. RUN_DIR defaults to the latest run in --out."""
    with reported_errors():
        run_dir = named_run_dir(run_dir) or latest_run(out)
        doc = read_status(run_dir)
        doc["alive"] = run_is_held(run_dir)
        if as_json:
            click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
            return
        with damaged_if_misread(run_dir / "status.json", "; runner status --json shows it all"):
            view = status_view(doc)
        terminal().print(view)


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
        from runner.report.build import FIGURE_DIR, draw_figures, write_report  # matplotlib loads only here

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


def _finished(board, run_dir: Path) -> None:
    """The end of ``start`` and ``resume``, once the leaderboard is shown: exit code 1 if
    every trial failed."""
    if board and all(r.state == "failed" for r in board):
        raise RunnerError(f"every trial failed; the reasons are in {run_dir / 'events.jsonl'} (trial_complete)")


@main.command()
@click.argument("experiment", type=click.Path(path_type=Path))
@plugin_option
def validate(experiment: Path, plugin_refs: tuple[str, ...]) -> None:
    """Check EXPERIMENT (its plugins, options, search space and data) without running it."""
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


def _plugin_rows(plugins: Plugins) -> list[dict]:
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


class _Where:
    run_dir: Path | None = None


@contextmanager
def reported_errors():
    """Turn errors into a message and an exit code, never a traceback on the screen.

    The runner's own errors (bad input) are one line. Anything else is a bug in a plugin or
    in the runner: one line naming it, and the traceback in ``error.log`` of the run
    directory (or a temporary file when no run directory exists yet).
    """
    where = _Where()
    try:
        yield where
    except Interrupted as err:
        click.echo(str(err), err=True)
        sys.exit(err.exit_code)
    except RunnerError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as err:
        log, refused = _saved_traceback(where.run_dir)
        bug = f"unexpected {type(err).__name__} (a bug in a plugin or in runner): {err}"
        if isinstance(refused, UnsafePath):
            click.echo(f"error: {refused}; the traceback is in {log} ({bug})", err=True)
            sys.exit(refused.exit_code)
        click.echo(f"error: {bug}\nthe traceback is in {log}", err=True)
        sys.exit(1)


def _saved_traceback(run_dir: Path | None) -> tuple[Path, OSError | None]:
    """Called by ``reported_errors`` for an unexpected error: save its traceback in the run
    directory's ``error.log``, or in a temporary file where there is no run directory yet or
    ``error.log`` cannot be written (it is never written through a link). Returns where it
    went, and why ``error.log`` was not written (None if it was, or there is none)."""
    text = traceback.format_exc().encode()
    refused = None
    if run_dir is not None:
        try:
            atomic_write(run_dir / "error.log", text)
            return run_dir / "error.log", None
        except OSError as problem:  # a link planted there, a full disk
            refused = problem
    fd, name = tempfile.mkstemp(prefix="runner-error-", suffix=".log")
    os.write(fd, text)
    os.close(fd)
    return Path(name), refused
