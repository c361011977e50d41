"""``runner report``: a run's leaderboard, plots and one self-contained HTML page.

A report is read from the run directory as it stands (``read_run_view``), so it works on a
finished run, an interrupted one and one still training, and never takes the run's lock.
``draw_figures`` draws the built-in figures and asks plugins for theirs
(``runner_report_figures``); ``write_report`` saves each as ``RUN_DIR/report/NAME.png`` and
writes ``RUN_DIR/report.html`` with every image embedded. Matplotlib is imported only here,
so runs never pay for it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import RunnerError
from runner.files import atomic_write
from runner.report.figures import ReportFigure, learning_curves, parameter_effects, settings_over_time
from runner.report.html import render
from runner.report.run import Mark, RunView, TrialView, read_run_view

__all__ = ["Mark", "Report", "ReportFigure", "RunView", "TrialView", "draw_figures", "read_run_view", "write_report"]

HTML_FILE = "report.html"
FIGURE_DIR = "report"
DPI = 110


@dataclass
class Report:
    """What ``write_report`` wrote: the HTML page, the PNG files, and problems met drawing."""

    html: Path
    images: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def draw_figures(run: RunView, hook: Any, *, top: int = 6) -> tuple[list[ReportFigure], list[str]]:
    """The built-in figures that apply to ``run`` (learning curves of the ``top`` best
    trials, parameters against the metric, live settings over time), then each plugin's.

    A plugin whose ``runner_report_figures`` raises or returns something else than figures
    is named in the returned problems; the other figures are kept."""
    figures = [f for f in (learning_curves(run, top), parameter_effects(run), settings_over_time(run)) if f]
    problems = []
    arguments = {"run": run}
    for impl in reversed(hook.runner_report_figures.get_hookimpls()):  # pluggy's call order, one at a time
        try:
            answer = impl.function(**{name: arguments[name] for name in impl.argnames})
        except Exception as err:  # noqa: BLE001  # one plugin's bug must not cost the rest of the report
            problems.append(f"plugin {impl.plugin_name!r} could not draw its figures: {type(err).__name__}: {err}")
            continue
        answer = [] if answer is None else answer if isinstance(answer, (list, tuple)) else [answer]
        taken = {f.name for f in figures}
        for item in answer:
            if not isinstance(item, ReportFigure):
                problems.append(f"plugin {impl.plugin_name!r} returned {type(item).__name__}, not a ReportFigure")
            elif item.name in taken or not item.name.replace("-", "").replace("_", "").isalnum():
                problems.append(f"plugin {impl.plugin_name!r} returned a figure named {item.name!r}: names must be "
                                f"unique and made of letters, digits, - and _")
            else:
                figures.append(item)
                taken.add(item.name)
    return figures, problems


def write_report(run: RunView, figures: list[ReportFigure], problems: list[str] = ()) -> Report:
    """Save each figure as ``report/NAME.png`` in the run directory (PNGs of an earlier
    report that no longer apply are removed) and write ``report.html`` embedding them.
    A RunnerError (exit 2) if the run directory cannot be written."""
    folder = run.run_dir / FIGURE_DIR
    report = Report(run.run_dir / HTML_FILE, problems=list(problems))
    drawn = []
    try:
        folder.mkdir(exist_ok=True)
        for figure in figures:
            buffer = io.BytesIO()
            figure.figure.savefig(buffer, format="png", dpi=DPI)
            path = folder / f"{figure.name}.png"
            atomic_write(path, buffer.getvalue(), durable=False)
            report.images.append(path)
            drawn.append((figure, buffer.getvalue()))
        for stale in set(folder.glob("*.png")) - set(report.images):
            stale.unlink()
        atomic_write(report.html, render(run, drawn, report.problems).encode(), durable=False)
    except OSError as err:
        raise RunnerError(f"cannot write the report in {run.run_dir}: {err.strerror or err}", exit_code=2) from None
    return report
