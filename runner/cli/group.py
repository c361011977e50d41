"""The ``runner`` click group, which every command module registers its commands with."""

from __future__ import annotations

import click

from runner import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="runner")
def main() -> None:
    """Tune neural networks: many trials side by side, or babysit one long run."""
