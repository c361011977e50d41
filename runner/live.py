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
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from runner.progress import STATE_STYLE, fmt, short_params
from runner.trial import better


@dataclass
class TrialRow:
    """One trial as the view shows it."""

    id: int
    params: dict[str, Any]
    epochs: int | None  # planned
    state: str = "running"
    epoch: int = 0  # epochs completed
    metrics: dict[str, float] = field(default_factory=dict)  # the last epoch's
    hyperparameters: dict[str, float] = field(default_factory=dict)
    score: float | None = None  # best value of the experiment's metric so far
    seconds: float | None = None  # when finished
    reason: str = ""


class LiveView:
    """Follows a run's events; on a terminal, draws them live (use it as a context manager)."""

    def __init__(self, console: Console | None = None, *, live: bool | None = None):
        self.console = console or Console()
        self.live = self.console.is_terminal if live is None else live
        self.metric, self.mode = "val_loss", "min"
        self.planned: int | None = None
        self.rows: dict[int, TrialRow] = {}
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
        kind, trial = event["event"], event.get("trial")
        with self._lock:
            if kind == "experiment_start":
                self.metric, self.mode, self.planned = event["metric"], event["mode"], event.get("planned_trials")
            elif kind == "trial_start":
                epochs = event["config"].get("train", {}).get("epochs")
                self.rows[trial] = TrialRow(trial, event["params"], epochs, hyperparameters=event["hyperparameters"])
            elif trial not in self.rows:
                return
            else:
                self.follow(self.rows[trial], kind, event)
        if kind == "trial_complete" and not self.live:
            self.console.print(finished_line(self.rows[trial], self.metric), highlight=False, soft_wrap=True)

    def follow(self, row: TrialRow, kind: str, event: dict[str, Any]) -> None:
        """One event of a trial the view knows."""
        if kind == "epoch_end":
            row.epoch = event["epoch"] + 1
            row.metrics = event
            row.hyperparameters = {k: event[k] for k in row.hyperparameters if k in event}
            score = event.get(self.metric)
            if score is not None and better(score, row.score, self.mode):
                row.score = score
        elif kind in ("trial_resume", "rollback"):
            row.epoch = event.get("epoch", event.get("to_epoch", row.epoch))
            row.state = "running"
        elif kind == "nudge":
            row.hyperparameters.update({k: v["new"] for k, v in event["changes"].items()})
        elif kind in ("pause", "unpause"):
            row.state = "paused" if kind == "pause" else "running"
        elif kind == "trial_retry":
            row.state = "retrying"
        elif kind == "interrupted":
            row.state = "interrupted"
        elif kind == "trial_complete":
            row.state, row.epoch, row.seconds, row.reason = (
                event["state"],
                event["epochs"],
                event["seconds"],
                event["reason"],
            )
            row.score = event["score"]

    def update_progress(self) -> None:
        """Epochs done over epochs planned: a finished trial counts its whole budget."""
        rows = list(self.rows.values())
        per_trial = next((r.epochs for r in rows if r.epochs), None)
        total = self.planned * per_trial if self.planned and per_trial else None
        done = sum((r.epochs or r.epoch) if r.seconds is not None else r.epoch for r in rows)
        finished = sum(r.seconds is not None for r in rows)
        trials = f"{finished}/{self.planned}" if self.planned else f"{finished}"
        self.progress.update(self.task, total=total, completed=done, done=f"{done}/{total or '?'} · trials {trials}")

    # -- drawing -------------------------------------------------------------------------------

    def render(self) -> Group:
        """Called on rich's refresh thread (and by tests): the table and the bar, as they stand."""
        with self._lock:
            self.update_progress()
            return Group(self.table(), self.progress)

    def table(self) -> Table:
        """Running trials by id, then finished ones best first, as many as the screen holds."""
        running = sorted((r for r in self.rows.values() if r.seconds is None), key=lambda r: r.id)
        finished = sorted((r for r in self.rows.values() if r.seconds is not None), key=self.rank)
        room = max(3, self.console.size.height - 8)
        shown = running[:room] + finished[: max(0, room - len(running))]
        hidden = len(self.rows) - len(shown)
        table = Table(
            box=box.SIMPLE_HEAD,
            title=f"trials (best: {self.metric})",
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
            style = STATE_STYLE.get(row.state, "")
            table.add_row(
                f"t{row.id:03d}",
                f"[{style}]{row.state}[/]" if style else row.state,
                f"{row.epoch}/{row.epochs}" if row.epochs else str(row.epoch),
                *(
                    fmt(row.metrics[k]) if row.metrics.get(k) is not None else "-"
                    for k in ("train_loss", "val_loss", "val_acc")
                ),
                *(fmt(row.hyperparameters[k]) if k in row.hyperparameters else "-" for k in ("lr", "momentum")),
                fmt(row.score) if row.score is not None else "-",
                escape(short_params(row.params)),
            )
        return table

    def rank(self, row: TrialRow) -> tuple:
        """Best first by the metric; trials without a score last, by id."""
        if row.score is None:
            return (1, 0.0, row.id)
        return (0, row.score if self.mode == "min" else -row.score, row.id)


def finished_line(row: TrialRow, metric: str) -> str:
    """A finished trial as one plain line (rich markup)."""
    style = STATE_STYLE.get(row.state, "")
    score = f"{metric}={fmt(row.score)}" if row.score is not None else "no score"
    reason = f" ({escape(row.reason)})" if row.reason else ""
    return (
        f"t{row.id:03d} [{style}]{row.state}[/] {score} epochs={row.epoch} {row.seconds:.1f}s  "
        f"{escape(short_params(row.params))}{reason}"
    )
