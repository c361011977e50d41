"""What a person sees in the terminal: a run going on, and ``runner status``.

``ProgressReporter`` is an ordinary plugin object the CLI registers: on a terminal it
shows a live bar per running trial and an overall bar (rich); otherwise, plain lines,
one per finished trial. Both end with the leaderboard. ``status_view`` renders
``status.json``.
"""

from __future__ import annotations

import math
import time
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from runner import hookimpl
from runner.trial import Trial, TrialResult

STATE_STYLE = {"completed": "green", "diverged": "red", "failed": "bold red", "pruned": "yellow", "stopped": "yellow"}


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


class ProgressReporter:
    def __init__(self, console: Console | None = None, *, live: bool | None = None, leaderboard_rows: int = 10):
        self.console = console or Console()
        self.live = self.console.is_terminal if live is None else live
        self.rows = leaderboard_rows
        self.progress: Progress | None = None
        self.tasks: dict[int, Any] = {}

    @hookimpl
    def runner_experiment_start(self, experiment) -> None:
        self.metric = experiment.spec.search.metric
        if not self.live:
            return
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=self.console, transient=False,
        )
        self.progress.start()
        self.overall = self.progress.add_task("[bold]trials", total=experiment.planned_trials, info="")

    @hookimpl
    def runner_trial_start(self, trial: Trial) -> None:
        if self.progress:
            epochs = trial.config.get("train", {}).get("epochs")
            label = f"{trial.label} {short_params(trial.params)}"[:60]
            self.tasks[trial.id] = self.progress.add_task(label, total=epochs, info="")

    @hookimpl
    def runner_epoch_end(self, trial: Trial, epoch: int, metrics: dict[str, float]) -> None:
        if self.progress and trial.id in self.tasks:
            info = f"{self.metric}={fmt(metrics.get(self.metric))} train_loss={fmt(metrics['train_loss'])}"
            self.progress.update(self.tasks[trial.id], completed=epoch + 1, info=info)

    @hookimpl
    def runner_trial_complete(self, trial: Trial, result: TrialResult) -> None:
        style = STATE_STYLE.get(result.state, "")
        score = f"{self.metric}={fmt(result.score)}" if result.score is not None else "no score"
        reason = f" ({escape(result.reason)})" if result.reason else ""
        line = (f"{trial.label} [{style}]{result.state}[/] {score} epochs={result.epochs} "
                f"{result.seconds:.1f}s  {short_params(result.params)}{reason}")
        if self.progress:
            task = self.tasks.pop(trial.id, None)
            if task is not None:
                self.progress.remove_task(task)
            self.progress.advance(self.overall)
            self.progress.console.print(line, highlight=False)
        else:
            self.console.print(line, highlight=False, soft_wrap=True)

    @hookimpl
    def runner_experiment_complete(self, experiment, results: list[TrialResult]) -> None:
        if self.progress:
            self.progress.stop()
        self.console.print(leaderboard_table(results, self.metric, self.rows))
        self.console.print(f"results: {experiment.run_dir / 'results.json'}", highlight=False, soft_wrap=True)


def leaderboard_table(results: list[TrialResult], metric: str, rows: int = 10) -> Table:
    """The best ``rows`` trials with their score, state and parameters."""
    params = list(dict.fromkeys(p for r in results for p in r.params))
    headings = short_names(params)
    extra = [] if metric == "val_loss" else ["val_loss"]
    table = Table(title=f"leaderboard ({metric})", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ["#", "trial", "state", metric, *extra, "epochs", *headings]:
        table.add_column(column, justify="left" if column == "state" else "right", no_wrap=True)
    for rank, r in enumerate(results[:rows], 1):
        best = r.best or {}
        table.add_row(
            str(rank), f"t{r.trial:03d}", f"[{STATE_STYLE.get(r.state, '')}]{r.state}[/]",
            fmt(r.score) if r.score is not None else "-", *(fmt(best.get(m, "-")) for m in extra), str(r.epochs),
            *(fmt(r.params.get(p, "-")) for p in params),
        )
    if len(results) > rows:
        table.caption = f"{len(results) - rows} more trials in results.json"
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
    lines = [f"[bold]{escape(run['name'])}[/] {state}", f"run directory: {escape(run['run_dir'])}",
             f"control file:  {escape(control['path'])} ({control['watching']}; {control['reads']} versions read)"]
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
            f"t{int(trial_id):03d}", f"[{style}]{trial['state']}[/]" if style else trial["state"],
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
