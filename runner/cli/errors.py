"""How a command's errors become a message and an exit code: ``reported_errors`` (every command
runs inside it) and ``damaged_if_misread`` (a run's file that does not read as expected)."""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from contextlib import contextmanager
from pathlib import Path

import click

from runner.engine.interrupt import Interrupted
from runner.errors import RunnerError
from runner.records.files import UnsafePath, atomic_write


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


@contextmanager
def damaged_if_misread(path: Path, hint: str = ""):
    """Around code that reads a run's file as data: a field it lacks, or holds of the wrong
    kind, is bad input naming ``path`` (exit 2, one line), not a bug in runner."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise RunnerError(f"{path} is damaged: {type(err).__name__} {err}{hint}", exit_code=2) from None
