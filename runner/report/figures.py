"""The report's plots, drawn headless with matplotlib's object API (no pyplot, no display).

Every run gets learning curves of its best trials; a search gets each searched
hyperparameter against the best metric, on the scale it was searched in; a trial whose
live settings changed (nudges, a babysitter's tries, divergence cuts) gets those settings
over time. Plugins add their own through the ``runner_report_figures`` hook, with the
helpers here (``new_figure``, ``scale_axis``, ``mark_strip``) so theirs look the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

from runner.experiment_file.space import Choice, Param
from runner.records.results import best_of
from runner.report import ReportFigure
from runner.report.run import RunView, TrialView

STATE_COLORS = {
    "completed": "#1f77b4",
    "diverged": "#d62728",
    "pruned": "#ff7f0e",
    "stopped": "#7f7f7f",
    "failed": "#000000",
    "running": "#2ca02c",
    "paused": "#bcbd22",
    "interrupted": "#9467bd",
}
# How a trial's marks (events between epochs) are drawn: marker, color, legend label.
MARK_STYLES = {
    "nudge": ("v", "#2ca02c", "nudge"),
    "rollback": ("<", "#9467bd", "rollback"),
    "divergence": ("X", "#d62728", "divergence"),
    "trial_retry": ("s", "#8c564b", "worker died, retried"),
    "pause": ("|", "#7f7f7f", "pause"),
    "prune": ("x", "#ff7f0e", "pruned"),
}
TRAIN_COLOR, VAL_COLOR = "#1f77b4", "#ff7f0e"


def new_figure(panels: int, *, columns: int = 3, size: tuple[float, float] = (4.6, 3.3)) -> tuple[Figure, list[Axes]]:
    """A figure with ``panels`` axes in a grid of at most ``columns`` columns, each ``size``
    inches; the unused cells of the last row are removed."""
    columns = max(1, min(columns, panels))
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(size[0] * columns, size[1] * rows + 0.6), layout="constrained")
    axes = list(np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel())
    for extra in axes[panels:]:
        extra.remove()
    return figure, axes[:panels]


def scale_axis(
    ax: Axes, scale: str, axis: str = "x", values: Sequence[float] = (), limits: tuple[float, float] | None = None
) -> None:
    """Give ``ax``'s ``axis`` a search scale: ``linear``, ``log``, or ``log1m`` (log of
    1 - x, for momentum: 0.9, 0.99, 0.999 evenly spaced). ``values`` are the data drawn
    (they place log1m's ticks); ``limits`` (a searched range) are shown whole, padded."""
    set_scale, target = (ax.set_xscale, ax.xaxis) if axis == "x" else (ax.set_yscale, ax.yaxis)
    if scale == "log1m":
        set_scale("function", functions=(_nines, _from_nines))
        shown = [v for v in [*values, *(limits or ())] if v is not None and math.isfinite(v) and v < 1]
        low, high = (float(_nines(min(shown))), float(_nines(max(shown)))) if shown else (1.0, 3.0)
        steps = (1, 2, 5) if high - low <= 2.5 else (1,)
        ticks = [1 - m * 10.0**-k for k in range(math.floor(low) - 1, math.ceil(high) + 2) for m in steps]
        target.set_major_locator(FixedLocator(sorted(t for t in ticks if 0 <= t < 1)))
        target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.10g}"))
        target.set_minor_locator(NullLocator())
    else:
        set_scale("log" if scale == "log" else "linear")
    if limits is not None:
        forward, inverse = {"log": (np.log10, lambda y: 10.0**y), "log1m": (_nines, _from_nines)}.get(
            scale, (np.asarray, np.asarray)
        )
        a, b = float(forward(limits[0])), float(forward(limits[1]))
        pad = 0.04 * (b - a)
        (ax.set_xlim if axis == "x" else ax.set_ylim)(float(inverse(a - pad)), float(inverse(b + pad)))


def _nines(x):
    """How many nines ``x`` has: -log10(1 - x) (0.9 -> 1, 0.99 -> 2)."""
    return -np.log10(np.clip(1 - np.asarray(x, dtype=float), 1e-15, None))


def _from_nines(y):
    return 1 - 10.0 ** -np.asarray(y, dtype=float)


def mark_strip(ax: Axes, marks: Sequence[tuple[float, str]]) -> set[str]:
    """Draw marks, ``(x, kind)`` pairs (``kind`` an event name in ``MARK_STYLES``: ``nudge``,
    ``rollback``, ...), along the top of ``ax`` whatever its y scale, stacked downwards where
    several share an x, each with a faint line down the plot; return the kinds drawn (for
    ``mark_handles``)."""
    drawn = set()
    stacked: dict[float, int] = {}
    transform = ax.get_xaxis_transform()  # x in data, y in axes fractions
    for x, kind in marks:
        if kind not in MARK_STYLES:
            continue
        marker, color, _ = MARK_STYLES[kind]
        level = stacked[x] = stacked.get(x, -1) + 1
        if level == 0:
            ax.axvline(x, color=color, alpha=0.25, linewidth=0.8, zorder=0)
        ax.plot(
            [x],
            [0.97 - 0.045 * min(level, 8)],
            marker=marker,
            color=color,
            markersize=6,
            transform=transform,
            clip_on=False,
            linestyle="none",
            zorder=5,
            scalex=False,
            scaley=False,
        )
        drawn.add(kind)
    return drawn


def mark_handles(kinds: set[str]) -> list[Line2D]:
    """Legend entries for the mark kinds drawn, in a fixed order."""
    return [
        Line2D([], [], marker=MARK_STYLES[k][0], color=MARK_STYLES[k][1], linestyle="none", label=MARK_STYLES[k][2])
        for k in MARK_STYLES
        if k in kinds
    ]


def trial_title(run: RunView, trial: TrialView) -> str:
    score = "-" if trial.result.score is None else f"{trial.result.score:.4g}"
    return f"{trial.label}  {run.metric} {score}  ({trial.state})"


# --------------------------------------------------------------------------------------
# Learning curves
# --------------------------------------------------------------------------------------


def learning_curves(run: RunView, top: int = 6) -> ReportFigure | None:
    """Train and validation loss per epoch of the ``top`` best trials that trained, with
    their nudges, rollbacks and divergences; epochs a rollback undid are dashed."""
    trials = [t for t in run.trials if t.epochs][:top]
    if not trials:
        return None
    figure, axes = new_figure(
        len(trials), columns=1 if len(trials) == 1 else 3, size=(10.0, 4.2) if len(trials) == 1 else (4.6, 3.3)
    )
    kinds: set[str] = set()
    undone = False
    for ax, trial in zip(axes, trials):
        shown: dict[bool, list[float]] = {True: [], False: []}  # kept and undone values
        for metric, color in (("train_loss", TRAIN_COLOR), ("val_loss", VAL_COLOR)):
            for xs, ys, kept in _branches(trial.epochs, metric):
                shown[kept] += ys
                ax.plot(
                    xs,
                    ys,
                    color=color,
                    linewidth=1.4 if kept else 1.0,
                    alpha=1.0 if kept else 0.45,
                    linestyle="-" if kept else "--",
                    marker="." if len(xs) == 1 or len(trial.epochs) <= 40 else None,
                    markersize=3,
                )
        undone |= bool(shown[False])
        kinds |= mark_strip(ax, [(_mark_x(m.event), m.kind) for m in trial.marks])
        if _positive(trial.epochs, ("train_loss", "val_loss")):
            ax.set_yscale("log")
            if shown[True] and max(shown[False], default=0) > 10 * max(shown[True]):
                # an undone epoch that blew up would flatten the rest: it runs off the top instead
                ax.set_ylim(min(shown[True]) / 1.5, max(shown[True]) * 3)
        ax.set_title(trial_title(run, trial), fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epochs completed", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles = [
        Line2D([], [], color=TRAIN_COLOR, label="train loss"),
        Line2D([], [], color=VAL_COLOR, label="validation loss"),
    ]
    if undone:
        handles.append(Line2D([], [], color="#555555", linestyle="--", alpha=0.6, label="undone by a rollback"))
    figure.legend(
        handles=handles + mark_handles(kinds),
        loc="outside lower center",
        ncols=min(7, len(handles) + len(kinds)),
        fontsize=8,
        frameon=False,
    )
    caption = (
        f"The {len(trials)} best trials by {run.metric}. Marks along the top: when a nudge, rollback or "
        f"divergence happened. Dashed: epochs a rollback undid (the solid line is the model as it stands)."
    )
    return ReportFigure("curves", "Learning curves", figure, caption)


def _branches(epochs: list[dict[str, Any]], metric: str) -> list[tuple[list[int], list[float], bool]]:
    """The epochs of one trial as line pieces ``(x, y, kept)``, x in epochs completed.

    Epochs run in order until a rollback (or a retry) starts again from an earlier one: each
    such run is a branch, joined to the epoch it went on from. A point is kept when no later
    branch starts at or before it, so the kept pieces trace the model as it stands."""
    runs: list[list[dict[str, Any]]] = []
    for epoch in epochs:
        if runs and epoch["epoch"] == runs[-1][-1]["epoch"] + 1:
            runs[-1].append(epoch)
        else:
            runs.append([epoch])
    starts = [r[0]["epoch"] for r in runs]
    pieces = []
    for i, branch in enumerate(runs):
        cut = min(starts[i + 1 :], default=math.inf)  # epochs from here on were redone later
        joined = _joint(runs[:i], branch[0]["epoch"]) + branch
        points = [(e["epoch"] + 1, e.get(metric)) for e in joined]
        kept = [p for p in points if p[0] - 1 < cut]
        undone = [p for p in points if p[0] - 1 >= cut]
        if kept and undone:
            undone.insert(0, kept[-1])
        for part, is_kept in ((kept, True), (undone, False)):
            xs = [x for x, y in part if y is not None]
            ys = [y for x, y in part if y is not None]
            if xs:
                pieces.append((xs, ys, is_kept))
    return pieces


def _joint(earlier: list[list[dict[str, Any]]], start: int) -> list[dict[str, Any]]:
    """The epoch a branch starting at ``start`` went on from: the last one before it."""
    for branch in reversed(earlier):
        for epoch in reversed(branch):
            if epoch["epoch"] == start - 1:
                return [epoch]
    return []


def _mark_x(event: dict[str, Any]) -> float:
    """Where on an epochs-completed axis an event between epochs happened."""
    return event.get("from_epoch", event.get("epoch", 0))


def _positive(epochs: list[dict[str, Any]], metrics: Sequence[str]) -> bool:
    values = [e.get(m) for e in epochs for m in metrics]
    return any(v is not None for v in values) and all(v is None or v > 0 for v in values)


# --------------------------------------------------------------------------------------
# Pruning: every trial's curve, and where it ended
# --------------------------------------------------------------------------------------


def pruned_curves(run: RunView) -> ReportFigure | None:
    """The metric per epoch of every trial, when some were pruned: pruned curves end in a
    cross at the rung that ended them, the best trial is drawn bold, and the rungs where a
    pruner judged are dotted lines. The caption counts the epochs trained against those
    the trials would have trained without pruning."""
    pruned = [t for t in run.trials if t.state == "pruned"]
    if not pruned:
        return None
    figure, (ax,) = new_figure(1, columns=1, size=(10.0, 4.6))
    best = best_of([t.result for t in run.trials])
    for trial in reversed(run.trials):  # the best drawn last, on top
        is_best = best is not None and trial.id == best.trial
        color = STATE_COLORS.get(trial.state, "#333333")
        for xs, ys, kept in _branches(trial.epochs, run.metric):
            if not kept:
                continue
            ax.plot(xs, ys, color=color, linewidth=2.2 if is_best else 0.9, alpha=1.0 if is_best else 0.55)
            if trial.state == "pruned":
                ax.plot([xs[-1]], [ys[-1]], marker="x", color=color, markersize=6, linestyle="none")
    rungs = sorted(
        {
            e["rung"]
            for e in run.events
            if isinstance(e.get("rung"), int) and (e["event"] == "prune" or e.get("kind") == "rung")
        }
    )
    for rung in rungs:
        ax.axvline(rung, color="#999999", linestyle=":", linewidth=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epochs completed", fontsize=8)
    ax.set_ylabel(f"{run.metric} ({'higher' if run.mode == 'max' else 'lower'} is better)", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    states = [s for s in STATE_COLORS if any(t.state == s for t in run.trials)]
    handles = [Line2D([], [], color=STATE_COLORS[s], label=s) for s in states]
    handles.append(Line2D([], [], marker="x", color=STATE_COLORS["pruned"], linestyle="none", label="pruned here"))
    if rungs:
        handles.append(Line2D([], [], color="#999999", linestyle=":", label="rung"))
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    trained = sum(t.result.epochs for t in run.trials)
    planned = sum(_planned_epochs(t) for t in run.trials)
    share = f" ({trained / planned:.0%})" if planned else ""
    caption = (
        f"{len(pruned)} of {len(run.trials)} trials were pruned; the trials trained {trained} epochs in all, "
        f"of the {planned} they would have trained without pruning{share}."
    )
    return ReportFigure("pruning", "Every trial's curve, and where pruning ended it", figure, caption)


def _planned_epochs(trial: TrialView) -> int:
    """The epochs a trial was set to train (its config's ``train.epochs``), or those it trained."""
    return trial.planned_epochs or trial.result.epochs


# --------------------------------------------------------------------------------------
# Hyperparameters against the metric
# --------------------------------------------------------------------------------------


def parameter_effects(run: RunView) -> ReportFigure | None:
    """Each searched parameter against each trial's best metric, on the parameter's search
    scale; trials without a score sit on the bottom edge as crosses; the best is a star."""
    params = list(run.space)
    if not params or not run.trials:
        return None
    figure, axes = new_figure(len(params))
    scores = [t.result.score for t in run.trials]
    finite = [s for s in scores if s is not None and math.isfinite(s)]
    best_result = best_of([t.result for t in run.trials])
    best = next((t for t in run.trials if best_result is not None and t.id == best_result.trial), None)
    states = set()
    for ax, param in zip(axes, params):
        place = param_axis(ax, param, [t.params.get(param.path) for t in run.trials])
        edge = ax.get_xaxis_transform()
        for trial in run.trials:
            if param.path not in trial.params:
                continue
            x, score = place(trial.params[param.path], trial.id), trial.result.score
            color = STATE_COLORS.get(trial.state, "#333333")
            states.add(trial.state)
            if score is None or not math.isfinite(score):
                ax.plot(
                    [x],
                    [0.03],
                    marker="x",
                    color=color,
                    transform=edge,
                    clip_on=False,
                    linestyle="none",
                    scalex=False,
                    scaley=False,
                )
            else:
                ax.plot([x], [score], marker="o", color=color, alpha=0.75, markersize=5, linestyle="none")
        if best is not None and param.path in best.params:
            ax.plot(
                [place(best.params[param.path], best.id)],
                [best.result.score],
                marker="*",
                color="gold",
                markeredgecolor="black",
                markersize=14,
                linestyle="none",
                zorder=6,
            )
        if finite and min(finite) > 0 and max(finite) / min(finite) > 20:
            ax.set_yscale("log")
        ax.set_xlabel(f"{param.path} ({getattr(param, 'scale', 'choice')})", fontsize=8)
        ax.set_ylabel(f"best {run.metric} ({'higher' if run.mode == 'max' else 'lower'} is better)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles = [
        Line2D([], [], marker="o", color=STATE_COLORS.get(s, "#333333"), linestyle="none", label=s)
        for s in STATE_COLORS
        if s in states
    ]
    handles.append(
        Line2D(
            [],
            [],
            marker="*",
            color="gold",
            markeredgecolor="black",
            markersize=12,
            linestyle="none",
            label="best trial",
        )
    )
    if len(finite) < len(scores):
        handles.append(Line2D([], [], marker="x", color="#555555", linestyle="none", label="no score"))
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    caption = (
        f"Each trial's best {run.metric} against the value it tried, one panel per searched parameter, on the "
        f"axis scale it was searched in (log for log, log of 1 - x for log1m: 0.9, 0.99, 0.999 evenly apart)."
    )
    return ReportFigure("parameters", "Hyperparameters against the metric", figure, caption)


def param_axis(ax: Axes, param: Param, values: Sequence[Any] = ()) -> Callable[[Any, int | None], float]:
    """Set ``ax``'s x axis up for searched ``param`` (its scale and whole range, or one
    tick per choice); return where a value sits on it: ``place(value, trial_id)``, where a
    trial's choice gets a small fixed jitter, so equal values do not hide each other
    (``trial_id`` None: the choice's tick itself)."""
    if isinstance(param, Choice):
        labels = [_short(c) for c in param.choices]
        ax.set_xticks(range(len(labels)), labels, rotation=20 if max(map(len, labels)) > 6 else 0)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        index = {label: i for i, label in enumerate(labels)}

        def place(value: Any, trial_id: int | None) -> float:
            jitter = 0.0 if trial_id is None else ((trial_id * 0.7548776662) % 1 - 0.5) * 0.3
            return index.get(_short(value), -1) + jitter

        return place
    scale_axis(ax, param.scale, "x", [v for v in values if isinstance(v, (int, float))], (param.low, param.high))
    return lambda value, trial_id: value


def _short(value: Any) -> str:
    """A choice as its tick reads: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


# --------------------------------------------------------------------------------------
# Live settings over time
# --------------------------------------------------------------------------------------


def settings_over_time(run: RunView, top: int = 3) -> ReportFigure | None:
    """The live settings (lr, momentum, ...) of the ``top`` best trials that nudges or
    rollbacks moved, epoch by epoch in the order they trained, undone epochs included, with
    the nudges and rollbacks marked."""
    trials = [t for t in run.trials if t.was_moved() and t.changed_settings()][:top]
    if not trials:
        return None
    rows = [(trial, name) for trial in trials for name in trial.changed_settings()]
    figure, axes = new_figure(
        len(rows),
        columns=1 if len(trials) == 1 and len(rows) <= 3 else 2,
        size=(10.0, 2.6) if len(trials) == 1 and len(rows) <= 3 else (5.6, 2.8),
    )
    kinds: set[str] = set()
    for ax, (trial, name) in zip(axes, rows):
        xs = [i + 1 for i, e in enumerate(trial.epochs) if e.get(name) is not None]
        ys = [e[name] for e in trial.epochs if e.get(name) is not None]
        ax.step(xs, ys, where="post", color="#333333", linewidth=1.3)
        ax.plot(xs, ys, ".", color="#333333", markersize=3)
        scale_axis(ax, _value_scale(ys), "y", ys)
        kinds |= mark_strip(ax, [(m.trained + 0.5, m.kind) for m in trial.marks])
        ax.set_title(f"{trial.label}: {name}", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epochs trained (undone ones included)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    figure.legend(
        handles=mark_handles(kinds), loc="outside lower center", ncols=max(1, len(kinds)), fontsize=8, frameon=False
    )
    caption = (
        "Live settings in force at each epoch, in the order the epochs were trained. Scales: log for values "
        "below 0.5 or above 1 (learning rates), log of 1 - x for values from 0.5 to 1 (momentum, betas)."
    )
    return ReportFigure("settings", "Live settings over time", figure, caption)


def _value_scale(values: Sequence[float]) -> str:
    """The scale that shows a setting's moves: log of 1 - x for momentum-like values in
    [0.5, 1), log for other positive values, linear otherwise."""
    if values and all(0.5 <= v < 1 for v in values):
        return "log1m"
    if values and all(v > 0 for v in values):
        return "log"
    return "linear"
