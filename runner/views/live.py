"""The live view of a run in the terminal, built from its events as they are written.

It reads only events (the driver writes every one, wherever its trial runs: this process,
a worker process, a Ray actor), so it shows the same run whatever the executor. On a
terminal: a table of the running trials, then the finished ones best first (id, state,
epoch, train and validation loss, accuracy, lr, momentum, best score), under it a bar of
epochs done over the planned epochs with the time left. Otherwise (piped, ``--plain``) a
line per finished trial.

``observe`` is called with each event under the event log's lock: it only updates the
view's own state. The drawing happens on rich's refresh thread (four times a second).
"""

from __future__ import annotations

import threading
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from runner.records.fold import RunFold, TrialStanding
from runner.views.progress import STATE_STYLE, fmt, short_params

LOSSES = ("train_loss", "val_loss", "val_acc")  # the columns of an epoch's metrics


class LiveView:
    """Follows a run's events; on a terminal, draws them live (use it as a context manager)."""

    def __init__(self, console: Console | None = None, *, live: bool | None = None):
        self.console = console or Console()
        self.live = self.console.is_terminal if live is None else live
        self.fold = RunFold(keep_epochs=False)  # each trial's standing, from the events
        self._lock = threading.Lock()
        self._display: Live | None = None
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[done]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
        )
        self.task = self.progress.add_task("epochs", total=None, done="")

    def __enter__(self) -> LiveView:
        if self.live:
            self._display = Live(
                console=self.console,
                get_renderable=self.render,
                refresh_per_second=4,
                transient=False,
                redirect_stderr=False,
            )
            self._display.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._display is not None:
            self._display.stop()
            self._display = None

    def replay(self, events: list[dict[str, Any]]) -> None:
        """What a resumed run had done before: shown, but not printed again as lines."""
        live, self.live = self.live, True  # no plain lines for past trials
        for event in events:
            self.observe(event)
        self.live = live

    # -- events --------------------------------------------------------------------------------

    def observe(self, event: dict[str, Any]) -> None:
        with self._lock:
            trial = self.fold.observe(event)
        if trial is not None and event["event"] == "trial_complete" and not self.live:
            self.console.print(finished_line(trial, self.fold), highlight=False, soft_wrap=True)

    def update_progress(self) -> None:
        """Epochs done over epochs planned: a finished trial counts its whole budget."""
        rows = list(self.fold.trials.values())
        planned = (self.fold.start or {}).get("planned_trials")
        per_trial = next((r.planned_epochs for r in rows if r.planned_epochs), None)
        total = planned * per_trial if planned and per_trial else None
        done = sum((r.planned_epochs or r.epoch) if r.ended else r.epoch for r in rows)
        finished = sum(r.ended for r in rows)
        trials = f"{finished}/{planned}" if planned else f"{finished}"
        self.progress.update(self.task, total=total, completed=done, done=f"{done}/{total or '?'} · trials {trials}")

    # -- drawing -------------------------------------------------------------------------------

    def render(self) -> Group:
        """Called on rich's refresh thread (and by tests): the table and the bar, as they stand."""
        with self._lock:
            self.update_progress()
            return Group(self.table(), self.progress)

    def table(self) -> Table:
        """Running trials by id, then finished ones best first, as many as the screen holds."""
        trials, score = self.fold.trials, self.fold.score
        running = sorted((r for r in trials.values() if not r.ended), key=lambda r: r.id)
        finished = sorted((r for r in trials.values() if r.ended), key=self.rank)
        room = max(3, self.console.size.height - 8)
        shown = running[:room] + finished[: max(0, room - len(running))]
        hidden = len(trials) - len(shown)
        table = Table(
            box=box.SIMPLE_HEAD,
            title=f"trials (best: {self.fold.metric})",
            title_justify="left",
            caption=f"{hidden} more finished trials in the log" if hidden else None,
        )
        for column, width in (
            ("trial", 4),
            ("state", 9),
            ("epoch", 5),
            ("train_loss", 6),
            ("val_loss", 6),
            ("val_acc", 6),
            ("lr", 6),
            ("momentum", 6),
            ("best", 6),
            ("params", None),
        ):
            table.add_column(
                column,
                justify="left" if column in ("state", "params") else "right",
                no_wrap=True,
                min_width=width,
                overflow="ellipsis",
            )
        for row in shown:
            style, metrics, settings = STATE_STYLE.get(row.state, ""), row.metrics or {}, row.hyperparameters
            table.add_row(
                f"t{row.id:03d}",
                f"[{style}]{row.state}[/]" if style else row.state,
                f"{row.epoch}/{row.planned_epochs}" if row.planned_epochs else str(row.epoch),
                *(
                    fmt(metrics[k]) if metrics.get(k) is not None else "-"
                    for k in ("train_loss", "val_loss", "val_acc")
                ),
                *(fmt(settings[k]) if k in settings else "-" for k in ("lr", "momentum")),
                "-" if (best := score(row)) is None else fmt(best),
                escape(short_params(row.params)),
            )
        return table

    def rank(self, row: TrialStanding) -> tuple:
        """Best first by the metric; trials without a score last, by id."""
        score = self.fold.score(row)
        if score is None:
            return (1, 0.0, row.id)
        return (0, score if self.fold.mode == "min" else -score, row.id)


def finished_line(row: TrialStanding, fold: RunFold) -> str:
    """A finished trial as one plain line (rich markup)."""
    result, style = row.result, STATE_STYLE.get(row.state, "")
    score = f"{fold.metric}={fmt(result.score)}" if result.score is not None else "no score"
    reason = f" ({escape(result.reason)})" if result.reason else ""
    return (
        f"t{row.id:03d} [{style}]{row.state}[/] {score} epochs={row.epoch} {result.seconds:.1f}s  "
        f"{escape(short_params(row.params))}{reason}"
    )
