"""A run's leaderboard for scripts: ``runner report --csv`` and ``--json``.

Both hold every trial, best first. The CSV has one row per trial with the columns
``rank, trial, state, score, epochs, seconds``, then each searched parameter by its
dotted path (numbers and strings as they are, lists and booleans as JSON), then
``best_<metric>`` for the metrics of the trial's best epoch and ``final_<metric>`` for
those of its last (``train_loss``, ``val_loss``, ``val_acc``, the live settings such as
``lr``...), then ``reason``. The JSON is ``results.json``'s document with the run's
``state`` and ``run_dir``, and running trials included.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson

from runner.records.results import results_document
from runner.report.run import RunView


def csv_columns(run: RunView) -> list[str]:
    """The CSV's header: fixed columns, parameters, best and final metrics, reason."""
    params = list(dict.fromkeys([*(p.path for p in run.space), *(k for t in run.trials for k in t.params)]))
    metrics = list(
        dict.fromkeys(k for t in run.trials for part in (t.result.best, t.result.final) if part for k in part)
    )
    return [
        "rank",
        "trial",
        "state",
        "score",
        "epochs",
        "seconds",
        *params,
        *(f"best_{m}" for m in metrics),
        *(f"final_{m}" for m in metrics),
        "reason",
    ]


def to_csv(run: RunView) -> str:
    """The leaderboard as CSV text, one row per trial."""
    columns = csv_columns(run)
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for rank, trial in enumerate(run.trials, 1):
        result = trial.result
        row: dict[str, Any] = {
            "rank": rank,
            "trial": trial.id,
            "state": result.state,
            "score": result.score,
            "epochs": result.epochs,
            "seconds": round(result.seconds, 4),
            "reason": result.reason,
        }
        row.update({path: _cell(value) for path, value in result.params.items()})
        for prefix, part in (("best_", result.best), ("final_", result.final)):
            row.update({prefix + k: v for k, v in (part or {}).items()})
        writer.writerow(row)
    return out.getvalue()


def to_json(run: RunView) -> bytes:
    """The leaderboard as JSON: ``results.json``'s fields plus ``state`` and ``run_dir``."""
    document = results_document(run.name, run.metric, run.mode, [t.result for t in run.trials])
    document = {
        "experiment": document.pop("experiment"),
        "run_dir": str(run.run_dir),
        "state": run.state,
        "planned_trials": run.planned_trials,
        **document,
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def _cell(value: Any) -> Any:
    """A parameter value in a CSV cell: numbers and strings as they are, anything else
    (lists, booleans, null) as JSON."""
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return value
    return orjson.dumps(value).decode()
