"""Coarse-to-fine's figure in ``runner report``: the region of each round.

Imported only when a report is drawn (it needs matplotlib), by the ``runner_report_figures``
hook of ``runner.plugins.strategies.coarse_to_fine``.
"""

from __future__ import annotations

import math
from typing import Any

from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.lines import Line2D

from runner import Choice, Space
from runner.report import ReportFigure, RunView, new_figure, param_axis


def regions_figure(run: RunView, rounds: list[dict[str, Any]]) -> ReportFigure:
    """One panel per searched parameter: a band per round spanning its region (on the
    parameter's search scale; the kept values of a choice), and the trials sampled in that
    round as dots coloured by their score."""
    regions = [Space.parse(note["region"], f"round {note.get('round', i)}") for i, note in enumerate(rounds)]
    firsts = [note.get("first_trial", 0) for note in rounds]
    scores = [t.result.score for t in run.trials if t.result.score is not None and math.isfinite(t.result.score)]
    low, high = min(scores, default=0.0), max(scores, default=1.0)
    norm = LogNorm(low, high) if low > 0 and high > 20 * low else Normalize(low, high)  # losses span decades
    colors = colormaps["viridis" if run.mode == "max" else "viridis_r"]  # better is brighter either way
    figure, axes = new_figure(len(run.space))
    for ax, param in zip(axes, run.space):
        place = param_axis(ax, param, [t.params.get(param.path) for t in run.trials])
        for row, region in enumerate(regions):
            if param.path not in [p.path for p in region]:
                continue
            part = region[param.path]
            spans = (
                [(place(c, None) - 0.4, place(c, None) + 0.4) for c in part.choices]
                if isinstance(part, Choice)
                else [(part.low, part.high)]
            )
            for low, high in spans:
                ax.fill_betweenx([row - 0.38, row + 0.38], low, high, color="#1f77b4", alpha=0.15, linewidth=0)
        for trial in run.trials:
            if param.path not in trial.params:
                continue
            row = max((i for i, first in enumerate(firsts) if trial.id >= first), default=0)
            x = place(trial.params[param.path], trial.id)
            y = row + ((trial.id * 0.5698402910) % 1 - 0.5) * 0.5  # with x's jitter, a low-discrepancy (R2) spread
            score = trial.result.score
            if score is None or not math.isfinite(score):
                ax.plot([x], [y], marker="x", color="#d62728", linestyle="none")
            else:
                ax.plot(
                    [x],
                    [y],
                    marker="o",
                    color=colors(norm(score)),
                    markeredgecolor="#333333",
                    markeredgewidth=0.4,
                    markersize=6,
                    linestyle="none",
                )
        ax.set_yticks(range(len(regions)), [f"round {i}" for i in range(len(regions))])
        ax.set_ylim(len(regions) - 0.5, -0.5)  # round 0 on top: the search narrows downwards
        ax.set_xlabel(f"{param.path} ({getattr(param, 'scale', 'choice')})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    figure.colorbar(ScalarMappable(norm=norm, cmap=colors), ax=axes, label=f"best {run.metric}", shrink=0.9)
    handles = [Line2D([], [], color="#1f77b4", alpha=0.3, linewidth=8, label="region of the round")]
    if len(scores) < len(run.trials):
        handles.append(Line2D([], [], marker="x", color="#d62728", linestyle="none", label="no score"))
    figure.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    caption = (
        "Where each round of coarse-to-fine searched: the band is the round's region (fitted to the best trials "
        "of the rounds before it), the dots its trials, brighter for a better "
        f"{run.metric}."
    )
    return ReportFigure("regions", "Coarse-to-fine: the region of each round", figure, caption)
