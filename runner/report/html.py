"""The HTML report: one self-contained file (styles inline, images as data URIs) that opens
anywhere and can be attached to a message."""

from __future__ import annotations

import base64
import html
import time
from typing import Any

from runner import __version__
from runner.report import ReportFigure
from runner.report.run import RunView
from runner.views.progress import leaderboard_cells

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1.5em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.meta { color: #555; } .meta td { padding: 0.1em 1.2em 0.1em 0; }
table.board { border-collapse: collapse; font-size: 0.9em; font-variant-numeric: tabular-nums; }
table.board th, table.board td { padding: 0.25em 0.7em; text-align: right; border-bottom: 1px solid #eee; }
table.board th { background: #f5f5f5; position: sticky; top: 0; }
td.state { text-align: left; }
.completed { color: #1a7f37; } .diverged, .failed { color: #c62828; } .pruned, .stopped { color: #b26a00; }
.running, .paused { color: #0b6bcb; } .interrupted { color: #7b3fa0; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; max-width: 70em; }
.problem { color: #c62828; }
"""
NOTES = 500  # notes listed at most


def render(run: RunView, figures: list[tuple[ReportFigure, bytes]], problems: list[str], rows: int = 100) -> str:
    """The report page: the run's summary, the leaderboard (``rows`` best trials), each
    figure with its PNG bytes embedded, the notes, and any problem drawing."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(run.name)}: runner report</title>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{_e(run.name)}</h1>",
        _summary(run),
        "<h2>Leaderboard</h2>",
        _board(run, rows),
    ]
    for problem in problems:
        parts.append(f'<p class="problem">{_e(problem)}</p>')
    for figure, png in figures:
        data = base64.b64encode(png).decode("ascii")
        parts += [
            f'<h2 id="{_e(figure.name)}">{_e(figure.title)}</h2>',
            "<figure>",
            f'<img src="data:image/png;base64,{data}" alt="{_e(figure.title)}">',
            f"<figcaption>{_e(figure.caption)}</figcaption></figure>",
        ]
    if run.notes:
        parts += ["<h2>Notes</h2>", "<p>Why the strategy and plugins did what they did, in order.</p>", "<ul>"]
        parts += [_note(n) for n in run.notes[:NOTES]]
        parts.append("</ul>")
        if len(run.notes) > NOTES:
            parts.append(f"<p>{len(run.notes) - NOTES} more notes in events.jsonl.</p>")
    parts.append(
        f'<p class="meta">Written by runner {_e(__version__)} on {_when(time.time())} from '
        f"{_e(str(run.run_dir / 'events.jsonl'))}.</p></body></html>"
    )
    return "\n".join(parts) + "\n"


def _note(note: dict[str, Any]) -> str:
    where = "" if note.get("trial") is None else f"t{note['trial']:03d} epoch {note.get('epoch', '?')} "
    return f"<li>{_e(where)}<b>{_e(note.get('kind', ''))}</b>: {_e(note.get('reason', ''))}</li>"


def _summary(run: RunView) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(run.counts().items())) or "none yet"
    planned = f" of {run.planned_trials} planned" if run.planned_trials is not None else ""
    rows = [
        ("state", run.state),
        ("run directory", str(run.run_dir)),
        ("strategy", run.strategy),
        ("metric", f"{run.metric} ({run.mode})"),
        ("trials", f"{len(run.trials)}{planned}: {counts}"),
        ("started", _when(run.started)),
        ("last event", f"{_when(run.updated)} ({_duration(run.updated - run.started)} after the start)"),
    ]
    return '<table class="meta">' + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"


def _board(run: RunView, rows: int) -> str:
    if not run.trials:
        return "<p>No trial has started yet.</p>"
    shown = run.trials[:rows]
    headings, cells = leaderboard_cells([t.result for t in shown], run.metric, seconds=True)
    lines = ['<table class="board"><tr>' + "".join(f"<th>{_e(h)}</th>" for h in headings) + "</tr>"]
    for trial, row in zip(shown, cells):
        state = _e(trial.state)
        tds = "".join(
            f'<td class="state {state}">{state}</td>' if i == 2 else f"<td>{_e(c)}</td>" for i, c in enumerate(row)
        )
        lines.append(f'<tr title="{_e(trial.result.reason)}">{tds}</tr>')
    lines.append("</table>")
    if len(run.trials) > rows:
        lines.append(f"<p>{len(run.trials) - rows} more trials: runner report --csv</p>")
    return "\n".join(lines)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
