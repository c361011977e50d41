"""The console a command prints to, and the line a run prints when its control file acts."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console


def terminal() -> Console:
    """The console for output: the terminal's width, or wide lines when piped to a file."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200)
    return console


def notifier(console: Console) -> Callable[[str], None]:
    """How the run tells a person what the control file did: a line above the progress bars."""

    def notify(message: str) -> None:
        console.print(message, soft_wrap=True, highlight=False)

    return notify
