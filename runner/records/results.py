"""The leaderboard and ``results.json``."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from runner.errors import RunnerError
from runner.records.events import read_run
from runner.records.fold import RunFold
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

    ``best`` is ``best_of(board)``.
    """
    best = best_of(board)
    return {
        "experiment": name,
        "metric": metric,
        "mode": mode,
        "best": best.to_json() if best else None,
        "counts": dict(Counter(r.state for r in board)),
        "trials": [r.to_json() for r in board],
    }


def best_of(board: list[TrialResult]) -> TrialResult | None:
    """The best trial of a leaderboard that completed its training; only when none did, the
    best scored trial in any state; None when no trial has a score."""
    scored = [r for r in board if r.score is not None and math.isfinite(r.score)]
    return next((r for r in scored if r.state == "completed"), scored[0] if scored else None)


def best_of_run(run_dir: Path) -> dict[str, Any]:
    """The best trial of an earlier run (finished, stopped or still going), from its event
    log: as in ``results.json`` (``trial``, ``params``, ``score``, ...), plus ``config``, its
    full ``model``/``train``/``backend`` config. A RunnerError (exit 2) when ``run_dir`` is no
    run or no trial of it has a score."""
    events = read_run(Path(run_dir))
    start, fold = events[0], RunFold.of(events, keep_epochs=False)
    board = leaderboard([trial.result for trial in fold.trials.values() if trial.result is not None], start["mode"])
    best = results_document(start["name"], start["metric"], start["mode"], board)["best"]
    if best is None:
        raise RunnerError(f"no trial of the run in {run_dir} has a score yet to start from", exit_code=2)
    begun = fold.trials[best["trial"]].begun
    if not isinstance(begun.get("config"), dict):
        raise RunnerError(f"{run_dir}/events.jsonl has no config for trial {best['trial']}", exit_code=2)
    return {**best, "config": begun["config"]}
