"""Drawing and writing a report (this module imports matplotlib; ``runner report`` loads it
only when it draws, so ``--csv``, ``--json`` and runs never pay for it).

``draw_figures`` draws the built-in figures and asks plugins for theirs
(``runner_report_figures``); ``write_report`` saves each as ``RUN_DIR/report/NAME.png`` and
writes ``RUN_DIR/report.html`` with every image embedded.
"""

from __future__ import annotations

import io
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pluggy

from runner.engine.plugin_manager import each_plugin
from runner.errors import RunnerError
from runner.inputs import InputError, Limit, read_bytes
from runner.records.files import atomic_write, check_real, remove_file
from runner.report import ReportFigure
from runner.report.figures import learning_curves, parameter_effects, pruned_curves, settings_over_time
from runner.report.html import render
from runner.report.run import RunView

HTML_FILE = "report.html"
FIGURE_DIR = "report"
FIGURES_FILE = ".figures.json"  # in FIGURE_DIR: the PNGs runner's reports wrote there, the only ones ever removed
FIGURE_FILE = re.compile(r"[A-Za-z0-9_-]+\.png")  # a figure's file: its name (see ``_checked``) and .png
FIGURE_LIST = Limit("a list of report figures", 1 << 16)
DPI = 110


@dataclass
class Report:
    """What ``write_report`` wrote: the HTML page, the PNG files, and problems met drawing."""

    html: Path
    images: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def draw_figures(
    run: RunView, manager: pluggy.PluginManager | None, *, top: int = 6
) -> tuple[list[ReportFigure], list[str]]:
    """The built-in figures that apply to ``run`` (learning curves of the ``top`` best
    trials, every trial's curve when some were pruned, parameters against the metric, live
    settings over time), then those of each
    plugin of ``manager`` (None: no plugin figures).

    Each figure is drawn on its own: one that fails (a plugin's bug, a ``runner_report_figures``
    answer that is not figures) is named in the returned problems, and the others are kept."""
    figures: list[ReportFigure] = []
    problems: list[str] = []
    for draw in (
        lambda: learning_curves(run, top),
        lambda: pruned_curves(run),
        lambda: parameter_effects(run),
        lambda: settings_over_time(run),
    ):
        with _noted(problems, "a built-in figure could not be drawn"):
            figures += [f for f in [draw()] if f]
    for name, call in each_plugin(manager, "runner_report_figures") if manager else []:
        with _noted(problems, f"plugin {name!r} could not draw its figures"):
            for answer in call(run=run):
                for item in answer if isinstance(answer, (list, tuple)) else [answer]:
                    figures += [_checked(item, name, {f.name for f in figures})]
    return figures, problems


def _checked(item: Any, plugin: str, taken: set[str]) -> ReportFigure:
    if not isinstance(item, ReportFigure):
        raise TypeError(f"it returned {type(item).__name__}, not a runner.report.ReportFigure")
    if item.name in taken or not re.fullmatch(r"[A-Za-z0-9_-]+", item.name):
        raise ValueError(f"its figure is named {item.name!r}: names must be unique, made of letters, digits, - and _")
    return item


@contextmanager
def _noted(problems: list[str], what: str):
    """Run the block; an exception in it becomes a line in ``problems`` (a report is still
    written without that figure)."""
    try:
        yield
    except Exception as err:  # one figure's bug must not cost the rest of the report
        problems.append(f"{what}: {type(err).__name__}: {err}")


def write_report(run: RunView, figures: list[ReportFigure], problems: list[str] = ()) -> Report:
    """Save each figure as ``report/NAME.png`` in the run directory and write ``report.html``
    embedding them. The PNGs an earlier report wrote that no longer apply are removed: only
    those, as ``report/.figures.json`` lists them, never a file a person put there. Nothing
    is written through a link: ``report/`` and ``report.html`` must be a real folder and a
    regular file. A RunnerError (exit 2) if the run directory cannot be written."""
    run_dir = run.run_dir
    folder = run_dir / FIGURE_DIR
    report = Report(run_dir / HTML_FILE, problems=list(problems))
    try:
        check_real(report.html, folder=False)  # refused before anything is written
        rendered = [(figure, png) for figure in figures if (png := _rendered(figure, report.problems)) is not None]
        names = {f"{figure.name}.png" for figure, _ in rendered}
        earlier = _figures_written(folder, run_dir)
        _record_figures(folder, run_dir, earlier | names)  # first, so that a crash leaves none of them unlisted
        for figure, png in rendered:
            path = folder / f"{figure.name}.png"
            atomic_write(path, png, durable=False, within=run_dir)
            report.images.append(path)
        for stale in sorted(earlier - names):
            remove_file(folder / stale, within=run_dir)
        _record_figures(folder, run_dir, names)
        atomic_write(report.html, render(run, rendered, report.problems).encode(), durable=False)
    except OSError as err:
        raise RunnerError(f"cannot write the report in {run_dir}: {err.strerror or err}", exit_code=2) from None
    return report


def _figures_written(folder: Path, run_dir: Path) -> set[str]:
    """The PNG files runner's earlier reports wrote in ``folder`` (``FIGURES_FILE``); none
    if it lists none or is damaged (then nothing is removed). An InputError (exit 2) if it
    is a link or not a regular file."""
    try:
        data = read_bytes(folder / FIGURES_FILE, FIGURE_LIST, follow_symlinks=False)
        listed = orjson.loads(data)["written"]
        return {name for name in listed if isinstance(name, str) and FIGURE_FILE.fullmatch(name)}
    except InputError as err:
        if err.kind in ("missing", "too_big"):
            return set()
        raise
    except (ValueError, KeyError, TypeError):
        return set()


def _record_figures(folder: Path, run_dir: Path, names: set[str]) -> None:
    """Write ``FIGURES_FILE``: the PNG files that runner's reports may have left in ``folder``."""
    atomic_write(folder / FIGURES_FILE, orjson.dumps({"written": sorted(names)}) + b"\n", durable=False, within=run_dir)


def _rendered(figure: ReportFigure, problems: list[str]) -> bytes | None:
    """The figure as PNG bytes; None, with a line in ``problems``, if matplotlib cannot
    render it (a plugin's bad label, say)."""
    buffer = io.BytesIO()
    try:
        figure.figure.savefig(buffer, format="png", dpi=DPI)
    except OSError:
        raise
    except Exception as err:
        problems.append(f"the figure {figure.name!r} could not be rendered: {type(err).__name__}: {err}")
        return None
    return buffer.getvalue()
