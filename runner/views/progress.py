"""Tables for people: the leaderboard a run ends with, and ``runner status``.

``status_view`` renders ``status.json``; ``fmt`` and ``short_params`` are how values and
parameters read everywhere in the terminal (``runner.views.live`` draws a run as it goes).
"""

from __future__ import annotations

import math
import time
from typing import Any

from rich import box
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from runner.trial import TrialResult

STATE_STYLE = {
    "completed": "green",
    "diverged": "red",
    "failed": "bold red",
    "pruned": "yellow",
    "stopped": "yellow",
    "running": "cyan",
    "paused": "yellow",
    "retrying": "magenta",
    "interrupted": "magenta",
}


def fmt(value: Any) -> str:
    """A short, readable rendering of a parameter or metric value."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.2e}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(fmt(v) for v in value) + "]"
    return str(value)


def short_params(params: dict[str, Any]) -> str:
    return " ".join(f"{name}={fmt(v)}" for name, v in zip(short_names(list(params)), params.values()))


def leaderboard_cells(
    results: list[TrialResult], metric: str, *, seconds: bool = False
) -> tuple[list[str], list[list[str]]]:
    """A leaderboard as text, for any renderer: the headings (``#``, ``trial``, ``state``,
    the metric, ``val_loss`` too when the metric is another, ``epochs``, ``seconds`` if
    asked, each parameter by its short name) and one row of cells per trial. The state is
    the third cell, for a renderer to style."""
    params = list(dict.fromkeys(p for r in results for p in r.params))
    extra = [] if metric == "val_loss" else ["val_loss"]
    headings = [
        "#",
        "trial",
        "state",
        metric,
        *extra,
        "epochs",
        *(["seconds"] if seconds else []),
        *short_names(params),
    ]
    rows = []
    for rank, r in enumerate(results, 1):
        best = r.best or {}
        rows.append(
            [
                str(rank),
                f"t{r.trial:03d}",
                r.state,
                fmt(r.score) if r.score is not None else "-",
                *(fmt(best.get(m, "-")) for m in extra),
                str(r.epochs),
                *([f"{r.seconds:.1f}"] if seconds else []),
                *(fmt(r.params.get(p, "-")) for p in params),
            ]
        )
    return headings, rows


def leaderboard_table(
    results: list[TrialResult], metric: str, rows: int | None = 10, more: str = "in results.json"
) -> Table:
    """The best ``rows`` trials (all of them for None) with their score, state and
    parameters; a caption saying where the ``more`` trials not shown are."""
    shown = results if rows is None else results[:rows]
    headings, cells = leaderboard_cells(shown, metric)
    table = Table(title=f"leaderboard ({metric})", title_justify="left", box=box.SIMPLE_HEAD)
    for column in headings:
        table.add_column(column, justify="left" if column == "state" else "right", no_wrap=True)
    for row in cells:
        state = row[2]
        table.add_row(*row[:2], Text(state, style=STATE_STYLE.get(state, "")), *map(Text, row[3:]))
    if len(results) > len(shown):
        table.caption = f"{len(results) - len(shown)} more trials {more}"
    return table


def short_names(paths: list[str]) -> list[str]:
    """Last part of each dotted path, or the whole path where two would read the same."""
    last = [p.rsplit(".", 1)[-1] for p in paths]
    return [name if last.count(name) == 1 else path for name, path in zip(last, paths)]


def status_view(doc: dict[str, Any]) -> Group:
    """``runner status``: a run's ``status.json`` for people."""
    run, control, finished = doc["run"], doc["control"], doc["finished"]
    state = run["state"]
    if state in ("running", "starting") and not doc.get("alive", True):
        state = f"[red]not running[/] (its process is gone; continue it with: runner resume {run['run_dir']})"
    elif state == "running":
        state = f"[green]running[/] (pid {run['pid']})"
    lines = [
        f"[bold]{escape(run['name'])}[/] {state}",
        f"run directory: {escape(run['run_dir'])}",
        f"control file:  {escape(control['path'])} ({control['watching']}; {control['reads']} versions read)",
    ]
    if control["last_change"]:
        lines.append(f"last change:   {escape(_change(control['last_change']))}")
    if control["last_error"]:
        error = control["last_error"]
        lines.append(f"last error:    [red]{escape(error['message'])}[/] ({_ago(error['t'])})")
    table = Table(box=box.SIMPLE_HEAD, title="running trials", title_justify="left")
    settings = control["settings"]
    columns = ["trial", "state", "epoch", "step", "train_loss", "val_loss", "val_acc", *settings, "best", "last change"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("state", "last change") else "right", no_wrap=True)
    for trial_id, trial in sorted(doc["trials"].items(), key=lambda item: int(item[0])):
        style = "yellow" if trial["state"] == "paused" else ""
        best = trial.get("best") or {}
        best_text = " ".join(f"{k}={fmt(v)}" for k, v in best.items() if k != "epoch")
        table.add_row(
            f"t{int(trial_id):03d}",
            Text(str(trial["state"]), style=style),
            *(fmt(trial.get(k, "-")) for k in ("epoch", "step", "train_loss", "val_loss", "val_acc")),
            *(fmt(trial["hyperparameters"].get(k, "-")) for k in settings),
            f"{best_text} (epoch {best['epoch']})" if best else "-",
            escape(_change(trial["last_change"])) if trial.get("last_change") else "-",
        )
    parts: list[Any] = ["\n".join(lines)]
    if doc["trials"]:
        parts.append(table)
    states = ", ".join(f"{n} {s}" for s, n in sorted(finished["states"].items()))
    done = f"finished trials: {finished['count']}" + (f" ({states})" if states else "")
    if finished["best"]:
        done += f"; best t{finished['best']['trial']:03d} {run['metric']}={fmt(finished['best']['score'])}"
    parts.append(done)
    return Group(*parts)


def _change(change: dict[str, Any]) -> str:
    if change["what"] == "nudge":
        what = " ".join(f"{k} {fmt(v['old'])}→{fmt(v['new'])}" for k, v in change["changes"].items())
    else:
        what = change["what"]
    return f"t{change['trial']:03d} {what} at step {change['step']} ({change['source']}, {_ago(change['t'])})"


def _ago(t: float) -> str:
    seconds = max(0.0, time.time() - t)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))
