"""``runner report``: a run's leaderboard, plots and one self-contained HTML page.

A report is read from the run directory as it stands (``read_run_view``), so it works on a
finished run, an interrupted one and one still training, and never takes the run's lock.
What plugins use is here: ``RunView`` (what ``runner_report_figures`` receives) and
``ReportFigure`` (what it returns); ``runner.report.figures`` has the drawing helpers,
``runner.report.build`` draws and writes a whole report, ``runner.report.table`` the CSV
and JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from runner.report.run import Mark, RunView, TrialView, read_run_view

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Mark", "ReportFigure", "RunView", "TrialView", "read_run_view"]


@dataclass(frozen=True)
class ReportFigure:
    """A figure of the report: ``name`` is its PNG's file name (without ``.png``, unique in
    a report; letters, digits, ``-`` and ``_``), ``title`` its heading in the HTML,
    ``caption`` a sentence on how to read it, ``figure`` a ``matplotlib.figure.Figure``."""

    name: str
    title: str
    figure: Figure
    caption: str = ""
