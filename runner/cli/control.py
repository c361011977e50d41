"""The commands for a run in progress: ``runner nudge`` (change it through its control file) and
``runner status`` (show it as it is now)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson

from runner.cli.errors import damaged_if_misread, reported_errors
from runner.cli.group import main
from runner.cli.options import latest_run_option, named_run_dir, parse_setting, plugin_option
from runner.control.file import FILE_NAME as CONTROL_FILE
from runner.control.file import ROLLBACK_TARGETS, trial_id
from runner.control.nudge import Change, check_change, control_schema, latest_run, read_status, send
from runner.errors import RunnerError, SpecError


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
        schema = control_schema(run_dir, plugin_refs)
        check_change(schema, change)
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
    settings = dict(parse_setting(arg, "runner nudge") for arg in args if "=" in arg)
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


@main.command()
@click.argument("run_dir", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help='The whole status.json, plus "alive".')
@latest_run_option
def status(run_dir: Path | None, as_json: bool, out: Path) -> None:
    """Show a run as it is now: its trials, their epoch, losses, lr and momentum, and what
    the control file did last. RUN_DIR defaults to the latest run in --out."""
    from runner.records.files import run_is_held
    from runner.views.console import terminal
    from runner.views.progress import status_view

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
