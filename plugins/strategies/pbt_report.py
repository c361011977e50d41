"""Population-based training's figure in ``runner report``: the population's lineage.

Imported only when a report is drawn (it needs matplotlib), by the ``runner_report_figures``
hook of ``runner.plugins.strategies.pbt``.
"""

from __future__ import annotations

import math

from matplotlib.lines import Line2D

from runner.plugins.strategies.pbt import lineage
from runner.report import ReportFigure, RunView, new_figure


def lineage_figure(run: RunView) -> ReportFigure | None:
    """One lane per member over its epochs; an arrow from the donor's lane to the member's
    at each exploit; each lane ends with the member's score, the best one bold."""
    members = sorted(run.trials, key=lambda t: t.id)
    if not members:
        return None
    copied = lineage(run.events)
    figure, (ax,) = new_figure(1, columns=1, size=(10.0, max(2.5, 0.45 * len(members) + 1.2)))
    lane = {t.id: i for i, t in enumerate(members)}
    best = run.trials[0].id  # ranked best first
    for trial in members:
        y, epochs = lane[trial.id], trial.result.epochs
        bold = trial.id == best
        ax.plot([0, epochs], [y, y], color="#1f77b4" if bold else "#7f7f7f", linewidth=2.4 if bold else 1.2)
        score = trial.result.score
        label = "-" if score is None or not math.isfinite(score) else f"{score:.4g}"
        ax.annotate(f" {label}", (epochs, y), va="center", fontsize=8, fontweight="bold" if bold else "normal")
        for epoch, donor in copied.get(trial.id, []):
            if donor in lane:
                ax.annotate(
                    "",
                    xy=(epoch, y),
                    xytext=(epoch, lane[donor]),
                    arrowprops={"arrowstyle": "->", "color": "#ff7f0e", "linewidth": 1.1},
                )
    ax.set_yticks(range(len(members)), [t.label for t in members], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("epochs completed", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.08)
    handles = [
        Line2D([], [], color="#ff7f0e", marker=">", label="exploit: the member takes the donor's snapshot"),
        Line2D([], [], color="#1f77b4", linewidth=2.4, label=f"the best member, by {run.metric}"),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    exploits = sum(len(v) for v in copied.values())
    caption = (
        f"{len(members)} members; {exploits} exploits, each an arrow from the donor to the member that took its "
        f"snapshot at that epoch (then explored its settings). The number at each lane's end is the member's "
        f"best {run.metric}."
    )
    return ReportFigure("lineage", "Population lineage: who copied whom", figure, caption)
