"""Click options and argument helpers that several commands share."""

from __future__ import annotations

from pathlib import Path

import click

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


def named_run_dir(run_dir: Path | None) -> Path | None:
    """The run directory a person named on the command line; named through a symbolic link
    (a ``latest`` alias), the folder the link points to. The folder named is the person's
    choice; nothing inside it is followed (``runner.records.files``)."""
    return run_dir.resolve() if run_dir is not None and run_dir.is_symlink() else run_dir
