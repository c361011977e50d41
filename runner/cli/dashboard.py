"""``runner dashboard``: serve the local web page that watches and steers runs."""

from __future__ import annotations

import errno
import importlib.util
import webbrowser
from pathlib import Path

import click

from runner.cli.errors import reported_errors
from runner.cli.group import main
from runner.cli.options import named_run_dir
from runner.errors import RunnerError


@main.command()
@click.argument("run_dir", required=False, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("checkpoints"),
    show_default=True,
    help="Serve every run in this folder (when RUN_DIR is not given).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="The port (0: any free one)."
)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
def dashboard(run_dir: Path | None, out: Path, host: str, port: int, open_browser: bool) -> None:
    """Watch runs live in a web page and steer them: their learning curves, leaderboard and
    settings, and orders (set lr, pause, roll back, stop) sent as runner nudge sends them.

    Serves RUN_DIR alone, or every run in --out. Prints the page's address with a secret
    token: every request that reads or changes a run needs it. Ctrl-C stops it.
    """
    with reported_errors():
        if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None:
            from runner.dashboard import INSTALL

            raise RunnerError(INSTALL, exit_code=2)
        from runner.dashboard import Address, listen, serve
        from runner.dashboard.runs import EVENTS_FILE, ServedRuns

        run_dir = named_run_dir(run_dir)
        if run_dir is not None:
            if not (run_dir / EVENTS_FILE).is_file():
                raise RunnerError(f"{run_dir} is not a run directory (no {EVENTS_FILE})", exit_code=2)
            runs = ServedRuns(run_dir.parent, only=run_dir)
        else:
            runs = ServedRuns(out)
        if not Address(host, port).loopback:
            click.echo(
                f"warning: listening on {host}, not on this machine alone: anyone who can reach it and has "
                "the token can steer the runs; the page is plain HTTP",
                err=True,
            )
        try:
            sock = listen(host, port)
        except OSError as err:
            hint = "; --port 0 picks a free one" if err.errno == errno.EADDRINUSE else ""
            raise RunnerError(f"cannot listen on {host}:{port}: {err.strerror}{hint}", exit_code=2) from None

        def announce(url: str) -> None:
            served = f"{runs.only}" if runs.only is not None else f"the runs in {runs.root}/"
            click.echo(f"runner dashboard: {url}\nserving {served}; Ctrl-C stops it", nl=True)
            if open_browser:
                webbrowser.open(url)

        serve(runs, sock, announce)
