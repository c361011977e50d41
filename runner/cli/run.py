"""The commands that run an experiment: ``runner start``, ``runner resume`` and ``runner replay``."""

from __future__ import annotations

import shlex
from contextlib import ExitStack, nullcontext
from pathlib import Path

import click

from runner.cli.errors import reported_errors
from runner.cli.group import main
from runner.cli.options import check_settings, named_run_dir, parse_setting, plugin_option, poll_option
from runner.errors import RunnerError


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
@click.option(
    "--weights",
    is_flag=True,
    help="With --from: start every trial from that trial's weights and optimizer state too (its best "
    "snapshot), not only its config. The model must be the same.",
)
@click.option(
    "--logger",
    "loggers",
    multiple=True,
    metavar="NAME",
    help="Also write the run to this logger (tensorboard, mlflow, ...: see runner plugins), with its "
    'default options; the experiment file\'s "loggers" takes options. Repeat for more.',
)
@click.option("--plain", is_flag=True, help="Plain lines instead of live progress bars.")
@poll_option
def start(
    experiment: Path,
    out: Path,
    plugin_refs: tuple[str, ...],
    seed: int | None,
    from_run: Path | None,
    weights: bool,
    loggers: tuple[str, ...],
    plain: bool,
    poll: bool,
) -> None:
    """Run the experiment described by EXPERIMENT (a JSON file)."""
    from runner.api import start_run
    from runner.views.console import terminal

    console = terminal()
    with reported_errors() as where:
        result = start_run(
            experiment,
            out=out,
            plugin_refs=plugin_refs,
            seed=seed,
            from_run=from_run,
            weights=weights,
            loggers=loggers,
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
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="NAME=VALUE",
    help="A live setting (lr, momentum, ...) in force from the first step of every trial that goes on, "
    "checked like a nudge and logged as one with source resume. Repeat for more.",
)
def resume(
    run_dir: Path, plugin_refs: tuple[str, ...], plain: bool, poll: bool, trust_code: bool, overrides: tuple[str, ...]
) -> None:
    """Continue the run in RUN_DIR after a crash, a kill or Ctrl-C.

    Finished trials stay finished; an interrupted trial continues from its last intact
    snapshot (or starts again if it has none); the trials not yet run follow. A run started
    with one-off plugins needs the same --plugin arguments again, and a run whose experiment
    names code by import path (a model's class_path, a python data source) needs
    --trust-code: runner never loads code that a run directory names unless told to.
    """
    from rich.text import Text

    from runner.api import show_results
    from runner.control.file import FILE_NAME as CONTROL_FILE
    from runner.engine.interrupt import graceful_interrupts
    from runner.engine.loop import run_experiment
    from runner.engine.resume import check_run_dir, clean_temporary_files, plan_resume
    from runner.records.events import read_run
    from runner.records.files import run_lock
    from runner.views.console import notifier, terminal
    from runner.views.live import LiveView

    console = terminal()
    with reported_errors() as where, ExitStack() as held:
        run_dir = named_run_dir(run_dir)
        settings = dict(parse_setting(arg, "--set") for arg in overrides)
        start = read_run(run_dir)[0]
        check_one_offs(start, run_dir, plugin_refs, "runner resume")
        held.enter_context(run_lock(run_dir))
        check_run_dir(run_dir)  # no link in it is written through: refused before anything changes
        plugins, spec, dataset = recorded_experiment(start, run_dir, plugin_refs, trust_code, "runner resume")
        check_settings(spec.backend_class, settings, "--set")
        where.run_dir = run_dir
        for path in clean_temporary_files(run_dir):
            console.print(f"removed a half-written file: {path}", soft_wrap=True, markup=False)
        plan = plan_resume(run_dir)
        plan.settings = settings
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


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--trial", "trial", type=click.IntRange(min=0), required=True, help="The trial to replay (its id).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder in which the replay's run directory is created.  [default: the run directory's folder]",
)
@plugin_option
@click.option(
    "--trust-code",
    is_flag=True,
    help="Import the code the run's experiment names by import path: only for a run directory you trust.",
)
def replay(run_dir: Path, trial: int, out: Path | None, plugin_refs: tuple[str, ...], trust_code: bool) -> None:
    """Train trial N of the run in RUN_DIR again, from its seed, with every order it was
    given at the step where it carried it out, and check the result against the original.

    A person's nudges, pauses, rollbacks and stops, the pruner's verdicts and runner resume
    --set are delivered from the log; the strategy, the divergence policy and plugins decide
    again, as they did. The replay is a new run directory; its events and its snapshot files
    are compared with the original's, bit for bit (on the same machine and library
    versions). Exit 0 when they are identical; 1, naming the epoch and step where they
    first part, when they are not.
    """
    from runner.engine.replay import ReplayScript, replay_trial
    from runner.records.events import read_run
    from runner.views.console import terminal

    console = terminal()
    with reported_errors():
        run_dir = named_run_dir(run_dir)
        events = read_run(run_dir)
        script = ReplayScript.from_events(events, trial, str(run_dir / "events.jsonl"), run_dir)
        command = f"runner replay --trial {trial}"
        check_one_offs(script.start, run_dir, plugin_refs, command)
        plugins, spec, dataset = recorded_experiment(script.start, run_dir, plugin_refs, trust_code, command)
        replayed = replay_trial(run_dir, script, out or run_dir.parent, plugins, spec, dataset)
        check = replayed.comparison
        console.print(f"replay: {replayed.run_dir}", soft_wrap=True, markup=False)
        if check.parted is None and not check.undelivered:
            console.print(
                f"t{trial:03d}: identical to the original, bit for bit: {check.events} events, "
                f"{check.snapshots} snapshot files, {replayed.result.epochs} epochs",
                soft_wrap=True,
                markup=False,
            )
            return
        if check.parted is not None:
            parted = check.parted
            message = (
                f"t{trial:03d} parts from the original at epoch {parted['epoch']}, step {parted['step']} "
                f"({parted['event']}: {parted['what']})"
            )
            if parted.get("matched_step") is not None:
                message += f"; they still matched at step {parted['matched_step']}"
        else:
            message = f"t{trial:03d}: the replay never reached orders {', '.join(check.undelivered)}"
        raise RunnerError(message, exit_code=1)


def check_one_offs(start: dict, run_dir: Path, plugin_refs: tuple[str, ...], command: str) -> None:
    """Refuse (exit 2) a run started with one-off plugins not given again, naming them."""
    from runner.engine.plugin_manager import missing_one_offs, plugin_args, recorded_one_offs

    missing = missing_one_offs(recorded_one_offs(start, str(run_dir / "events.jsonl")), plugin_refs)
    if missing:
        raise RunnerError(
            f"{run_dir} was started with one-off plugins that runner does not load from a run directory; "
            f"give them again: {command} {shlex.quote(str(run_dir))} {plugin_args(missing)}",
            exit_code=2,
        )


def recorded_experiment(start: dict, run_dir: Path, plugin_refs: tuple[str, ...], trust_code: bool, command: str):
    """The plugins, the experiment as it ran and its data, for ``command`` (``runner
    resume``, ``runner replay``) on the run in ``run_dir``, whose ``experiment_start`` is
    ``start``. Code the run directory names by import path is refused without ``trust_code``."""
    from runner.engine.experiment import load_dataset
    from runner.engine.plugin_manager import load_plugins, plugin_args
    from runner.experiment_file.spec import load
    from runner.imports import refusing_code

    plugins = load_plugins(plugin_refs)
    if not isinstance(start.get("base_dir"), str):
        raise RunnerError(f"{run_dir / 'events.jsonl'} is damaged: experiment_start has no base_dir", exit_code=2)
    again = " ".join(filter(None, (command, shlex.quote(str(run_dir)), plugin_args(plugin_refs))))
    advice = f"a run directory is data, and {command} would run that code; if it is yours, run: {again} --trust-code"
    with nullcontext() if trust_code else refusing_code(advice):
        spec = load(run_dir / "experiment.json", plugins.registry, base_dir=Path(start["base_dir"]))
        dataset = load_dataset(spec, plugins)
    return plugins, spec, dataset


def _finished(board, run_dir: Path) -> None:
    """The end of ``start`` and ``resume``, once the leaderboard is shown: exit code 1 if
    every trial failed."""
    if board and all(r.state == "failed" for r in board):
        raise RunnerError(f"every trial failed; the reasons are in {run_dir / 'events.jsonl'} (trial_complete)")
