"""The leaderboard and ``results.json``."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from runner.trial import TrialResult


def leaderboard(results: list[TrialResult], mode: str) -> list[TrialResult]:
    """Trials best first by score under ``mode``; trials without a finite score last, by id."""
    scored = [r for r in results if r.score is not None and math.isfinite(r.score)]
    sign = 1.0 if mode == "min" else -1.0
    scored.sort(key=lambda r: (sign * r.score, r.trial))
    rest = sorted((r for r in results if r not in scored), key=lambda r: r.trial)
    return scored + rest


def results_document(name: str, metric: str, mode: str, board: list[TrialResult]) -> dict[str, Any]:
    """The content of ``results.json``: the leaderboard, the best trial and counts by state.

    ``best`` is the best trial that completed its training; only when none did, the best
    scored trial in any state.
    """
    scored = [r for r in board if r.score is not None and math.isfinite(r.score)]
    best = next((r for r in scored if r.state == "completed"), scored[0] if scored else None)
    return {
        "experiment": name,
        "metric": metric,
        "mode": mode,
        "best": best.to_json() if best else None,
        "counts": dict(Counter(r.state for r in board)),
        "trials": [r.to_json() for r in board],
    }

