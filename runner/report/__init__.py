"""``runner report``: a run's leaderboard, plots and one self-contained HTML page.

A report is read from the run directory as it stands (``read_run_view``), so it works on a
finished run, an interrupted one and one still training, and never takes the run's lock.

This module is public (``runner.PUBLIC_MODULES``): what plugins use is here, and its
``__all__`` is all of it. ``RunView`` is what ``runner_report_figures`` receives and
``ReportFigure`` what it returns; the drawing helpers the built-in figures use
(``new_figure``, ``scale_axis``, ``param_axis``, ``mark_strip``, ``mark_handles``) make a
plugin's figures look the same, and load matplotlib on first use. The submodules are
internal: ``runner.report.figures`` draws the built-in figures, ``runner.report.build``
draws and writes a whole report, ``runner.report.table`` the CSV and JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from runner.report.run import Mark, RunView, TrialView, read_run_view

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from runner.report.figures import mark_handles, mark_strip, new_figure, param_axis, scale_axis

__all__ = [
    "Mark",
    "ReportFigure",
    "RunView",
    "TrialView",
    "mark_handles",
    "mark_strip",
    "new_figure",
    "param_axis",
    "read_run_view",
    "scale_axis",
]

_FIGURE_HELPERS = ("mark_handles", "mark_strip", "new_figure", "param_axis", "scale_axis")  # matplotlib: on first use


@dataclass(frozen=True)
class ReportFigure:
    """A figure of the report: ``name`` is its PNG's file name (without ``.png``, unique in
    a report; letters, digits, ``-`` and ``_``), ``title`` its heading in the HTML,
    ``caption`` a sentence on how to read it, ``figure`` a ``matplotlib.figure.Figure``."""

    name: str
    title: str
    figure: Figure
    caption: str = ""


def __getattr__(name: str):
    if name in _FIGURE_HELPERS:
        from runner.report import figures

        return getattr(figures, name)
    raise AttributeError(f"module 'runner.report' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FIGURE_HELPERS))
