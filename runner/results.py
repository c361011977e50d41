"""The leaderboard and ``results.json``."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from runner.files import write_json
from runner.trial import TrialResult


def leaderboard(results: list[TrialResult], mode: str) -> list[TrialResult]:
    """Trials best first by score under ``mode``; trials without a finite score last, by id."""
    scored = [r for r in results if r.score is not None and math.isfinite(r.score)]
    sign = 1.0 if mode == "min" else -1.0
    scored.sort(key=lambda r: (sign * r.score, r.trial))
    rest = sorted((r for r in results if r not in scored), key=lambda r: r.trial)
    return scored + rest


def results_document(name: str, metric: str, mode: str, board: list[TrialResult]) -> dict[str, Any]:
    """The content of ``results.json``: the leaderboard, the best trial and counts by state."""
    best = board[0] if board and board[0].score is not None else None
    return {
        "experiment": name,
        "metric": metric,
        "mode": mode,
        "best": best.to_json() if best else None,
        "counts": dict(Counter(r.state for r in board)),
        "trials": [r.to_json() for r in board],
    }


def write_results(path: Path, name: str, metric: str, mode: str, board: list[TrialResult]) -> None:
    write_json(path, results_document(name, metric, mode, board))
