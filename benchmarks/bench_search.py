#!/usr/bin/env python
"""Search strategies at an equal budget: the best validation loss each one finds.

    python benchmarks/bench_search.py [--trials 27 48 75] [--seeds 5] [--datasets digits spirals]
                                      [--epochs digits=10 spirals=50] [--noise 12] [--jobs 2] [--json FILE]
    python benchmarks/bench_search.py --quick      # smoke run: 1 seed, 12 trials, 2 epochs (about 10 s)
    python benchmarks/bench_search.py --from-json FILE   # print the tables again from a --json file

Needs Optuna for the ``tpe`` side (``pip install 'panda-caviar[optuna]'``).
The defaults (every strategy) take about 15 minutes on 2 slow cores.

Compared, on the same training code (the NumPy backend run by ``run_experiment``, in process):

* ``grid`` (built in): ``points`` values per numeric parameter, all values of a choice. Its
  trial count is a product, so it gets the point count whose grid is closest to the budget
  (3 numeric points x 3 x 3 widths = 27, 4 -> 48, 5 -> 75: exactly the default budgets).
* ``random`` (built in): ``trials`` = the budget.
* ``coarse-to-fine`` (built in): ``rounds`` (3) x ``trials_per_round`` (budget / rounds),
  ``keep_top`` 0.3, ``margin`` 0.1 (the plugin's defaults).
* ``random+asha``: ``random`` with the ``asha`` pruner (``search.pruner``): rungs from
  ``grace_epochs`` = a fifth of the epochs (2 on digits, 10 on spirals), ``reduction_factor``
  3. The same trials as ``random`` (trial k has the same parameters and seed), fewer epochs:
  its table sets the best it finds against random's, seed by seed, and the epochs each trains.
* ``pbt``: population-based training with ``population`` = the budget, ``interval`` = a fifth
  of the epochs, the other options at their defaults; it searches lr and beta1 only (members
  take each other's weights, so the width stays the base config's [64]). Its baseline is
  ``random-live``: random over the same two settings, the same trials, so both train
  ``trials x epochs`` epochs.
* ``tpe``: the shipped ``optuna`` strategy with ``sampler: "tpe"`` and Optuna's defaults
  (``plugins/strategies/optuna_search.py``). Its trials go through the same
  ``run_experiment`` as the others', and trial k gets the same per-trial seed
  (``trial_seed(seed, k)``: initial weights, batch order) as trial k of every other strategy.
  Same parameters on the same scales: lr log-uniform, momentum as a log-uniform ``1 - x``,
  the width a categorical over the choices' positions. A trial without a finite score is
  told to Optuna as failed (what Optuna does when an objective returns NaN).

Every strategy but ``random+asha`` runs ``trials x epochs`` epochs (no early stopping), metric ``val_loss``
(mode min), checkpoints off. The search space is the same for all::

    train.lr        log   1e-4 .. 1
    train.momentum  log1m 0.8 .. 0.999   (Adam's beta1)
    model.hidden    choices [32], [64], [128]

Base config: MLP with batch norm and ReLU, Adam, batches of 64. Datasets: scikit-learn's
digits (val 20 %) and synthetic spirals (5 arms, 200 points each, angle noise 0.3: 800
train / 200 val points of 2-D inputs, not linearly separable). The experiment ``seed``
(0 .. seeds-1) seeds the split (and the spirals' points), the trials and the strategies'
random streams (Optuna's sampler included), so within one seed all strategies see the
same data.

Reported per dataset and budget: the best finite ``val_loss`` over a run's trials (its
"best"), median (min..max) over the seeds; the ``val_acc`` of the epoch where that best
``val_loss`` was reached (median); the number of seeds each strategy won (lowest best
loss; a tie counts for all tied); trials that ended without a finite score or in a state
other than completed; the median paired difference with random on the same seed;
seconds per run (rough: two runs share the 2 cores). Also a per-seed table, for paired
comparisons, and a condensed table per dataset.

Trial-seed noise (``--noise N``): afterwards, for each dataset and seed, the parameters
with the lowest best loss any strategy found are trained again with trial seeds 0..N-1
(a random search over a space of one value per parameter): how much of a "best
val_loss" is the trial's seed rather than its parameters.

Runs are spread over ``--jobs`` worker processes (default 2), each with BLAS on one thread
(``--blas-threads``, set before NumPy is imported). Work folders are temporary and
removed. No timed assertions: this benchmark reports, it does not judge.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # ``python benchmarks/bench_search.py`` from anywhere
    sys.path.insert(0, str(ROOT))

STRATEGIES = ("grid", "random", "coarse-to-fine", "tpe", "random+asha", "random-live", "pbt")
LIVE_ONLY = ("random-live", "pbt")  # sides that search the live settings only: hidden stays [64]
METRIC = "val_loss"

SPACE = {
    "train.lr": {"low": 1e-4, "high": 1.0, "scale": "log"},
    "train.momentum": {"low": 0.8, "high": 0.999, "scale": "log1m"},
    "model.hidden": {"choices": [[32], [64], [128]]},
}
BASE = {
    "backend": {"name": "numpy"},
    "model": {"hidden": [64], "activation": "relu", "batch_norm": True},
    "train": {"epochs": 10, "batch_size": 64, "optimizer": "adam", "lr": 0.001, "momentum": 0.9},
    "checkpoint": {"every_epochs": 0, "best": False},
    "executor": {"name": "inline"},
}
#: name -> (data section, default epochs per trial)
DATASETS = {
    "digits": ({"name": "digits", "val_fraction": 0.2}, 10),
    "spirals": ({"name": "spirals", "classes": 5, "points_per_class": 200, "noise": 0.3}, 50),
}
C2F_DEFAULTS = {"rounds": 3, "keep_top": 0.3, "margin": 0.1}


# -- the plan -------------------------------------------------------------------------------


def grid_points(trials: int) -> tuple[int, int]:
    """The points per numeric parameter whose grid size is closest to ``trials`` (the
    smaller grid on a tie), and that size."""
    numeric = sum(1 for v in SPACE.values() if "choices" not in v)
    choices = math.prod(len(v["choices"]) for v in SPACE.values() if "choices" in v)
    best = min(range(1, 50), key=lambda p: (abs(p**numeric * choices - trials), p))
    return best, best**numeric * choices


def asha_section(epochs: int) -> dict:
    """The ``random+asha`` side's ``search.pruner``: rungs from a fifth of the epochs, eta 3."""
    return {"name": "asha", "grace_epochs": max(1, epochs // 5), "reduction_factor": 3}


def strategy_section(name: str, trials: int, rounds: int) -> tuple[dict, int]:
    """The ``search.strategy`` section for a budget of ``trials``, and the trials it will run."""
    if name == "grid":
        points, size = grid_points(trials)
        return {"name": "grid", "points": points}, size
    if name in ("random", "random+asha", "random-live"):
        return {"name": "random", "trials": trials}, trials
    if name == "pbt":
        return {"name": "pbt", "population": trials}, trials
    if name == "coarse-to-fine":
        per_round = max(1, trials // rounds)
        return {
            "name": "coarse-to-fine",
            "rounds": rounds,
            "trials_per_round": per_round,
            "keep_top": C2F_DEFAULTS["keep_top"],
            "margin": C2F_DEFAULTS["margin"],
        }, rounds * per_round
    if name == "tpe":
        return {"name": "optuna", "trials": trials, "sampler": "tpe"}, trials
    raise ValueError(name)


def experiment(
    dataset: str,
    seed: int,
    strategy: dict,
    epochs: int,
    fixed: dict | None = None,
    pruner: dict | None = None,
    live_only: bool = False,
) -> dict:
    """The experiment dict of one run. With ``fixed`` (path -> value), the space holds one
    value per parameter instead: every trial trains those parameters, only the trial seed varies.
    ``pruner``: the ``search.pruner`` section, if any; ``live_only``: the space without the width."""
    data, _ = DATASETS[dataset]
    raw = json.loads(json.dumps(BASE))
    raw["train"]["epochs"] = epochs
    space = {k: v for k, v in SPACE.items() if k.startswith("train.") or not live_only}
    if fixed is not None:
        space = {path: {"choices": [value]} for path, value in fixed.items()}
    if strategy["name"] == "pbt":
        strategy = {**strategy, "interval": max(1, epochs // 5)}
    return {
        "name": f"search-{dataset}-{strategy['name']}{'-' + pruner['name'] if pruner else ''}-s{seed}",
        "seed": seed,
        "data": data,
        **raw,
        "search": {
            "strategy": strategy,
            "metric": METRIC,
            "mode": "min",
            "space": space,
            **({"pruner": pruner} if pruner else {}),
        },
    }


# -- one run (in a worker process) ----------------------------------------------------------


def run_one(job: dict) -> dict:
    """Run one experiment (dataset, seed, strategy, budget) in process; its summary."""
    import orjson

    from runner.engine.experiment import load_dataset
    from runner.engine.loop import run_experiment
    from runner.engine.plugin_manager import load_plugins
    from runner.experiment_file.spec import load
    from runner.records.files import create_run_dir

    work = Path(tempfile.mkdtemp(prefix="bench-search-", dir=job["tmp"]))
    try:
        raw = experiment(
            job["dataset"],
            job["seed"],
            job["section"],
            job["epochs"],
            job.get("fixed"),
            job.get("pruner"),
            job["strategy"] in LIVE_ONLY,
        )
        path = work / f"{raw['name']}.json"
        path.write_bytes(orjson.dumps(raw))
        plugins = load_plugins()
        spec = load(path, plugins.registry)
        dataset = load_dataset(spec, plugins)
        run_dir = create_run_dir(work / "runs", spec.name)
        start = time.perf_counter()  # the trials only: not the imports or the data's loading
        board = run_experiment(spec, plugins, dataset, run_dir)
        seconds = time.perf_counter() - start
        rounds = []
        with open(run_dir / "events.jsonl", "rb") as events:
            for line in events:
                event = orjson.loads(line)
                if event.get("event") == "note" and event.get("kind") == "round":
                    rounds.append({k: event.get(k) for k in ("round", "reason", "top", "region")})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    scored = [r for r in board if r.score is not None and math.isfinite(r.score)]
    best = min(scored, key=lambda r: (r.score, r.trial)) if scored else None
    return {
        **{k: job[k] for k in ("dataset", "seed", "strategy", "budget", "epochs", "section")},
        **{k: job[k] for k in ("fixed", "found") if k in job},
        "trials": len(board),
        "epochs_run": sum(r.epochs for r in board),
        "best_val_loss": best.score if best else None,
        "val_acc": best.best.get("val_acc") if best and best.best else None,
        "best_trial": best.trial if best else None,
        "best_params": best.params if best else None,
        "unscored": sum(1 for r in board if r.score is None or not math.isfinite(r.score)),
        "not_completed": sum(1 for r in board if r.state != "completed"),
        "states": sorted({r.state for r in board}),
        "seconds": seconds,
        "rounds": rounds,
        "trial_scores": sorted([[r.trial, r.score] for r in board]),
    }


# -- report ---------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def short_params(params: dict | None) -> str:
    if not params:
        return "-"
    lr, mom, hidden = params.get("train.lr"), params.get("train.momentum"), params.get("model.hidden")
    return f"lr {lr:.3g}, beta1 {mom:.4g}, hidden {hidden}"


def report(records: list[dict], strategies: list[str], seeds: list[int]) -> dict:
    """Print the tables; return the summary per (dataset, budget, strategy)."""
    summary = {}
    groups = sorted({(r["dataset"], r["budget"]) for r in records}, key=lambda g: (list(DATASETS).index(g[0]), g[1]))
    for dataset, budget in groups:
        rows = {
            s: sorted(
                (r for r in records if (r["dataset"], r["budget"], r["strategy"]) == (dataset, budget, s)),
                key=lambda r: r["seed"],
            )
            for s in strategies
        }
        epochs = next(r["epochs"] for r in records if (r["dataset"], r["budget"]) == (dataset, budget))
        wins = {s: 0 for s in strategies}
        for seed in seeds:
            losses = {
                s: r["best_val_loss"]
                for s in strategies
                for r in rows[s]
                if r["seed"] == seed and r["best_val_loss"] is not None
            }
            if losses:
                low = min(losses.values())
                for s, v in losses.items():
                    wins[s] += v == low
        print(f"### {dataset}: budget {budget} trials x {epochs} epochs, {len(seeds)} seeds")
        print()
        print(
            "| strategy | trials x epochs | best val_loss: median (min..max) | val_acc at that epoch: median "
            "(min..max) | seeds won | paired with random: median difference (seeds better / worse) "
            "| trials without a score / not completed | s per run (median) |"
        )
        print("|---|---|---|---|---:|---|---|---:|")
        for s in strategies:
            rs = rows[s]
            if not rs:
                continue
            losses = [r["best_val_loss"] for r in rs if r["best_val_loss"] is not None]
            accs = [r["val_acc"] for r in rs if r["val_acc"] is not None]
            trials = sorted({r["trials"] for r in rs})

            def cell(v, d):
                return f"{statistics.median(v):.{d}f} ({min(v):.{d}f}..{max(v):.{d}f})" if v else "-"

            diffs = paired(rs, rows.get("random", []))
            vs_random = (
                "-"
                if s == "random" or not diffs
                else f"{statistics.median(diffs):+.4f} ({sum(d < 0 for d in diffs)} / {sum(d > 0 for d in diffs)})"
            )
            print(
                f"| {s} | {'/'.join(map(str, trials))} x {epochs} | {cell(losses, 4)} | {cell(accs, 3)} | "
                f"{wins[s]} | {vs_random} | {sum(r['unscored'] for r in rs)} / {sum(r['not_completed'] for r in rs)} | "
                f"{statistics.median(r['seconds'] for r in rs):.1f} |"
            )
            summary[f"{dataset}/{budget}/{s}"] = {
                "median_best_val_loss": statistics.median(losses) if losses else None,
                "min": min(losses) if losses else None,
                "max": max(losses) if losses else None,
                "median_val_acc": statistics.median(accs) if accs else None,
                "wins": wins[s],
                "trials": trials,
                "paired_minus_random": diffs,
            }
        print()
        print("Best val_loss per seed (the same data and trial seeds in a column):")
        print()
        print("| strategy | " + " | ".join(f"seed {seed}" for seed in seeds) + " |")
        print("|---|" + "---:|" * len(seeds))
        for s in strategies:
            by_seed = {r["seed"]: r for r in rows[s]}
            print(
                f"| {s} | "
                + " | ".join(fmt(by_seed[seed]["best_val_loss"]) if seed in by_seed else "-" for seed in seeds)
                + " |"
            )
        print()
        print("Best trial's parameters, seed 0:")
        print()
        for s in strategies:
            r = next((r for r in rows[s] if r["seed"] == seeds[0]), None)
            if r:
                print(f"- {s}: {short_params(r['best_params'])} (trial {r['best_trial']})")
        c2f = next((r for r in rows.get("coarse-to-fine", []) if r["seed"] == seeds[0]), None)
        if c2f and c2f["rounds"]:
            last = c2f["rounds"][-1]
            region = last.get("region") or {}
            print(
                f"- coarse-to-fine's last region, seed 0 (round {last['round']}: {last['reason']}): "
                + "; ".join(f"{k} {v.get('choices', [v.get('low'), v.get('high')])}" for k, v in region.items())
            )
        print()
    return summary


def noise_jobs(records: list[dict], trials: int, tmp: Path) -> list[dict]:
    """Per dataset and seed: the best parameters any strategy found (pbt aside: its members'
    settings change as they train), trained again with the trial seeds 0..trials-1 of the same
    experiment seed (the same data)."""
    jobs = []
    for dataset in DATASETS:
        for seed in sorted({r["seed"] for r in records if r["dataset"] == dataset}):
            mine = [
                r
                for r in records
                if r["dataset"] == dataset
                and r["seed"] == seed
                and r["best_val_loss"] is not None
                and r["strategy"] != "pbt"  # a member's params are where it started, not how it was trained
            ]
            if not mine:
                continue
            best = min(mine, key=lambda r: r["best_val_loss"])
            jobs.append(
                {
                    "dataset": dataset,
                    "seed": seed,
                    "strategy": "noise",
                    "budget": None,
                    "epochs": best["epochs"],
                    "section": {"name": "random", "trials": trials},
                    "fixed": best["best_params"],
                    "planned": trials,
                    "tmp": str(tmp),
                    "found": {k: best[k] for k in ("strategy", "budget", "best_trial", "best_val_loss")},
                }
            )
    return jobs


def noise_table(noise: list[dict]) -> None:
    """How much the trial seed alone moves the best val_loss of the best parameters found."""
    if not noise:
        return
    n = max(r["trials"] for r in noise)
    print(f"### Trial-seed noise: the best parameters found, trained with trial seeds 0..{n - 1}")
    print()
    print(
        "| dataset | seed | best val_loss found (strategy, trials, trial) | parameters | same parameters, "
        f"{n} trial seeds: min / median / max | sd |"
    )
    print("|---|---:|---|---|---|---:|")
    for r in sorted(noise, key=lambda r: (list(DATASETS).index(r["dataset"]), r["seed"])):
        scores = [s for _, s in r["trial_scores"] if s is not None and math.isfinite(s)]
        found = r["found"]
        sd = f"{statistics.stdev(scores):.4f}" if len(scores) > 1 else "-"
        print(
            f"| {r['dataset']} | {r['seed']} | {found['best_val_loss']:.4f} ({found['strategy']}, {found['budget']}, "
            f"t{found['best_trial']}) | {short_params(r['fixed'])} | "
            + (f"{min(scores):.4f} / {statistics.median(scores):.4f} / {max(scores):.4f}" if scores else "-")
            + f" | {sd} |"
        )
    print()


def summary_tables(records: list[dict], strategies: list[str], seeds: list[int]) -> None:
    """One condensed table per dataset: a row per (budget, strategy)."""
    for dataset in [d for d in DATASETS if any(r["dataset"] == d for r in records)]:
        mine = [r for r in records if r["dataset"] == dataset]
        epochs = mine[0]["epochs"]
        print(f"### Summary, {dataset} ({epochs} epochs per trial, {len(seeds)} seeds)")
        print()
        print(
            "| trials | strategy | best val_loss: median (min..max) | val_acc at that epoch: median | seeds won "
            "| paired with random: median difference (seeds better / worse) |"
        )
        print("|---:|---|---|---:|---:|---|")
        for budget in sorted({r["budget"] for r in mine}):
            rows = {s: [r for r in mine if r["budget"] == budget and r["strategy"] == s] for s in strategies}
            wins = {s: 0 for s in strategies}
            for seed in seeds:
                losses = {
                    s: r["best_val_loss"]
                    for s in strategies
                    for r in rows[s]
                    if r["seed"] == seed and r["best_val_loss"] is not None
                }
                for s, v in losses.items():
                    wins[s] += v == min(losses.values())
            best_median = min(
                (
                    statistics.median(v)
                    for v in (
                        [r["best_val_loss"] for r in rows[s] if r["best_val_loss"] is not None] for s in strategies
                    )
                    if v
                ),
                default=None,
            )
            for s in strategies:
                losses = [r["best_val_loss"] for r in rows[s] if r["best_val_loss"] is not None]
                accs = [r["val_acc"] for r in rows[s] if r["val_acc"] is not None]
                if not losses:
                    continue
                median = statistics.median(losses)
                mark = "**" if round(median, 4) == round(best_median, 4) else ""
                diffs = paired(rows[s], rows.get("random", []))
                vs_random = (
                    "-"
                    if s == "random" or not diffs
                    else f"{statistics.median(diffs):+.4f} ({sum(d < 0 for d in diffs)} / {sum(d > 0 for d in diffs)})"
                )
                trials = "/".join(str(t) for t in sorted({r["trials"] for r in rows[s]}))
                acc = f"{statistics.median(accs):.3f}" if accs else "-"
                print(
                    f"| {trials} | {s} | {mark}{median:.4f}{mark} ({min(losses):.4f}..{max(losses):.4f}) | "
                    f"{acc} | {wins[s]} | {vs_random} |"
                )
        print()


def pruning_table(records: list[dict], noise: list[dict]) -> None:
    """random+asha against random: the best each finds, seed by seed, and the epochs each trains."""
    paired_table(records, noise, "random", "random+asha", "Pruning: random with ASHA against random, the same trials")


def pbt_table(records: list[dict], noise: list[dict]) -> None:
    """pbt against random over the same two settings, at the same epochs trained."""
    paired_table(
        records, noise, "random-live", "pbt", "Population-based training against random, lr and beta1, equal epochs"
    )


def paired_table(records: list[dict], noise: list[dict], base: str, other: str, title: str) -> None:
    """``other`` against ``base``: the best each finds, seed by seed, and the epochs each trains."""
    if not any(r["strategy"] == other for r in records):
        return
    print(f"### {title}")
    print()
    print(
        f"| dataset | trials | {base}: best val_loss, median (min..max) | {other} | paired difference: median "
        f"(seeds better / worse) | epochs trained: {base} / {other} (median) | share | trial-seed sd (median) |"
    )
    print("|---|---:|---|---|---|---|---:|---:|")
    for dataset in DATASETS:
        sd = [
            statistics.stdev(scores)
            for r in noise
            if r["dataset"] == dataset
            for scores in [[s for _, s in r["trial_scores"] if s is not None and math.isfinite(s)]]
            if len(scores) > 1
        ]
        for budget in sorted({r["budget"] for r in records if r["dataset"] == dataset}):
            sides = {
                s: [r for r in records if (r["dataset"], r["budget"], r["strategy"]) == (dataset, budget, s)]
                for s in (base, other)
            }
            if not all(sides.values()):
                continue
            losses = {s: [r["best_val_loss"] for r in rs if r["best_val_loss"] is not None] for s, rs in sides.items()}
            diffs = paired(sides[other], sides[base])
            epochs = {s: statistics.median(r["epochs_run"] for r in rs) for s, rs in sides.items()}
            share = statistics.median(
                a["epochs_run"] / b["epochs_run"] for a in sides[other] for b in sides[base] if a["seed"] == b["seed"]
            )

            def cell(v):
                return f"{statistics.median(v):.4f} ({min(v):.4f}..{max(v):.4f})" if v else "-"

            print(
                f"| {dataset} | {budget} | {cell(losses[base])} | {cell(losses[other])} | "
                f"{statistics.median(diffs):+.4f} ({sum(d < 0 for d in diffs)} / {sum(d > 0 for d in diffs)}) | "
                f"{epochs[base]:.0f} / {epochs[other]:.0f} | {share:.0%} | "
                + (f"{statistics.median(sd):.4f}" if sd else "-")
                + " |"
            )
    print()


def paired(rows: list[dict], reference: list[dict]) -> list[float]:
    """Best val_loss minus the reference's, seed by seed (seeds where both have one)."""
    ref = {r["seed"]: r["best_val_loss"] for r in reference}
    return [
        r["best_val_loss"] - ref[r["seed"]]
        for r in rows
        if r["best_val_loss"] is not None and ref.get(r["seed"]) is not None
    ]


def grid_axes(points: int) -> str:
    """The grid's values per parameter, for the report."""
    from runner.experiment_file.space import Space

    space = Space.parse(SPACE)
    return "; ".join(
        f"{p.path} " + ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in p.grid(points)) for p in space
    )


def parse_epochs(values: list[str] | None, parser: argparse.ArgumentParser) -> dict[str, int]:
    """``--epochs 10`` (every dataset) or ``--epochs digits=10 spirals=50``."""
    epochs = {name: default for name, (_, default) in DATASETS.items()}
    for value in values or []:
        name, sep, number = value.rpartition("=")
        try:
            n = int(number)
        except ValueError:
            parser.error(f"--epochs: expected N or DATASET=N, got {value!r}")
        if n < 1:
            parser.error(f"--epochs: must be at least 1, got {value!r}")
        if sep:
            if name not in DATASETS:
                parser.error(f"--epochs: unknown dataset {name!r}; known: {', '.join(DATASETS)}")
            epochs[name] = n
        else:
            epochs = {k: n for k in epochs}
    return epochs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--trials",
        type=int,
        nargs="+",
        default=[27, 48, 75],
        help="budgets in trials per run (default: 27 48 75, the grid sizes of 3, 4 and 5 points)",
    )
    parser.add_argument("--seeds", type=int, default=5, help="experiment seeds 0..N-1 (default 5)")
    parser.add_argument(
        "--epochs",
        nargs="+",
        metavar="[DATASET=]N",
        help="epochs per trial: N for every dataset or DATASET=N (default: digits=10 spirals=50)",
    )
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--rounds", type=int, default=C2F_DEFAULTS["rounds"], help="coarse-to-fine rounds (default 3)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--blas-threads", type=int, default=1, help="OPENBLAS/OMP/MKL_NUM_THREADS (default 1)")
    parser.add_argument(
        "--noise",
        type=int,
        default=12,
        help="then train each seed's best parameters with this many trial seeds (default 12; 0: skip)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 12 trials, 2 epochs, noise 3")
    parser.add_argument("--json", type=Path, help="also write every run's summary to this file")
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="FILE",
        help="run nothing: print the tables again from a file written by --json",
    )
    args = parser.parse_args(argv)

    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        strategies = [s for s in STRATEGIES if any(r["strategy"] == s for r in saved["runs"])]
        print(f"# Search strategies at an equal budget (metric {METRIC}, mode min), from {args.from_json}")
        print(f"command: {saved['command']}")
        print(f"wall time: {saved['wall_s'] / 60:.1f} min")
        print()
        print("## Machine")
        for key, value in saved["machine"].items():
            print(f"- {key}: {value}")
        print()
        report(saved["runs"], strategies, saved["seeds"])
        summary_tables(saved["runs"], strategies, saved["seeds"])
        noise_table(saved.get("noise", []))
        pruning_table(saved["runs"], saved.get("noise", []))
        pbt_table(saved["runs"], saved.get("noise", []))
        return 0

    if "numpy" in sys.modules:
        parser.error("--blas-threads must be set before NumPy is imported; run this file as a script")
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.blas_threads)
    if args.quick:
        args.seeds, args.trials, args.epochs, args.noise = 1, [12], ["2"], 3
    epochs = parse_epochs(args.epochs, parser)
    seeds = list(range(args.seeds))
    try:
        import optuna
    except ImportError:
        optuna = None
        if "tpe" in args.strategies:
            parser.error("the tpe strategy needs Optuna: pip install 'panda-caviar[optuna]'")

    from benchmarks.bench_overhead import machine

    info = machine()
    if optuna is not None:
        info["optuna"] = optuna.__version__
    tmp = Path(tempfile.mkdtemp(prefix="bench-search-"))
    jobs = []
    for dataset in args.datasets:
        for budget in args.trials:
            for seed in seeds:
                for strategy in args.strategies:
                    section, trials = strategy_section(strategy, budget, args.rounds)
                    jobs.append(
                        {
                            "dataset": dataset,
                            "seed": seed,
                            "strategy": strategy,
                            "budget": budget,
                            "epochs": epochs[dataset],
                            "section": section,
                            "planned": trials,
                            "tmp": str(tmp),
                            **({"pruner": asha_section(epochs[dataset])} if strategy == "random+asha" else {}),
                        }
                    )
    jobs.sort(key=lambda j: -j["planned"] * j["epochs"] * (4 if j["dataset"] == "digits" else 1))  # longest first

    command = "python benchmarks/bench_search.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    print(
        f"search benchmark: {len(jobs)} runs ({', '.join(args.strategies)}) x budgets {args.trials} on "
        f"{', '.join(f'{d} ({epochs[d]} epochs)' for d in args.datasets)}, seeds {seeds}, {args.jobs} processes",
        flush=True,
    )
    for budget in args.trials:
        print(
            f"  budget {budget}: "
            + ", ".join(f"{s} {strategy_section(s, budget, args.rounds)[1]} trials" for s in args.strategies),
            flush=True,
        )
        if "grid" in args.strategies:
            print(f"    grid, {grid_points(budget)[0]} points: {grid_axes(grid_points(budget)[0])}", flush=True)
    start = time.perf_counter()
    try:
        records = run_jobs(jobs, args.jobs, start)
        noise = []
        if args.noise > 0:
            print(f"trial-seed noise: each seed's best parameters with {args.noise} trial seeds...", flush=True)
            noise = run_jobs(noise_jobs(records, args.noise, tmp), args.jobs, start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - start

    print()
    print(f"# Search strategies at an equal budget (metric {METRIC}, mode min)")
    print(f"command: {command}")
    print(f"wall time: {wall / 60:.1f} min ({args.jobs} processes)")
    print()
    print("## Machine")
    for key, value in info.items():
        print(f"- {key}: {value}")
    print(f"- BLAS threads per process: {args.blas_threads}")
    print()
    summary = report(records, args.strategies, seeds)
    summary_tables(records, args.strategies, seeds)
    noise_table(noise)
    pruning_table(records, noise)
    pbt_table(records, noise)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": command,
                    "machine": info,
                    "wall_s": wall,
                    "space": SPACE,
                    "base": BASE,
                    "datasets": {d: DATASETS[d][0] for d in args.datasets},
                    "epochs": epochs,
                    "seeds": seeds,
                    "budgets": args.trials,
                    "summary": summary,
                    "runs": sorted(records, key=lambda r: (r["dataset"], r["budget"], r["strategy"], r["seed"])),
                    "noise": sorted(noise, key=lambda r: (r["dataset"], r["seed"])),
                },
                indent=2,
            )
        )
    return 0


def run_jobs(jobs: list[dict], processes: int, start: float) -> list[dict]:
    """Run the jobs in ``processes`` worker processes (in this one if 1); their summaries."""
    records = []
    if processes > 1:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            for i, record in enumerate(pool.imap_unordered(run_one, jobs), 1):
                records.append(record)
                progress(i, len(jobs), record, start)
    else:
        for i, job in enumerate(jobs, 1):
            records.append(run_one(job))
            progress(i, len(jobs), records[-1], start)
    return records


def progress(i: int, n: int, record: dict, start: float) -> None:
    print(
        f"  [{i}/{n}] {time.perf_counter() - start:6.0f} s  {record['dataset']} budget {record['budget']} "
        f"seed {record['seed']} {record['strategy']}: best {METRIC} {fmt(record['best_val_loss'])} "
        f"({record['trials']} trials, {record['seconds']:.1f} s)",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
