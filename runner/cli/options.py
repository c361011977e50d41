"""Click options and argument helpers that several commands share."""

from __future__ import annotations

import math
from pathlib import Path

import click

from runner.errors import RunnerError, SpecError
from runner.experiment_file.typed import check_field

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


def parse_setting(arg: str, where: str) -> tuple[str, float]:
    """``lr=0.01`` as ``("lr", 0.01)``; a RunnerError (exit 2) naming ``where`` for anything
    that is not NAME=VALUE with a finite number."""
    name, sep, text = arg.partition("=")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not sep or not name.strip() or not math.isfinite(value):
        raise RunnerError(
            f"{where} {arg}: the value must be a finite number (NAME=VALUE, such as lr=0.01)", exit_code=2
        )
    return name.strip(), value


def check_settings(backend_cls: type, settings: dict[str, float], where: str) -> None:
    """Check live settings as a nudge is checked, before anything runs: each a live setting of
    the backend, within its ``train`` bounds; a SpecError (exit 2) names the first that is not."""
    for name, value in settings.items():
        if name not in backend_cls.live:
            raise SpecError(
                f"{where} {name}",
                f"not a live setting of backend {backend_cls.name!r}; live: {', '.join(backend_cls.live)}",
            )
        if name in backend_cls.Train.__dataclass_fields__:
            check_field(backend_cls.Train, name, value, f"{where} {name}")
