"""Panda-nudge against the same run with a fixed learning rate, from rates far off.

For each case (SGD with momentum from a learning rate far too high: it diverges; far too
low: it crawls; about right, to see what babysitting costs where nothing needs mending; and
Adam with batch norm from a rate far too high, which never gives a NaN: the network
collapses) and each seed, the same experiment file runs twice at an equal budget of epochs trained: once
with one fixed-lr trial (the ``grid`` strategy over no space, so only the divergence
policy acts), once babysat by ``panda-nudge`` (every epoch trained counts against its
budget, those a revert undid too). The table gives each run's best validation accuracy,
its end state, and for panda the learning rate it ended with and the epochs reverts undid.

    python benchmarks/bench_panda.py                 # 4 cases x 6 seeds x 2 runs (+2 for the collapse), ~2 min
    python benchmarks/bench_panda.py --seeds 2 --json panda.json

The collapse case also runs both sides with ``divergence.collapse`` off, to show what
collapse detection (issue 19) changes.

The experiment is ``experiments/digits_panda.json`` (scikit-learn's digits; a 64-unit ReLU
MLP without batch norm trained by SGD with momentum, whose learning rate matters most)
with its rate and budget replaced (for the collapse case: batch norm, Adam, lr 3). Results
are in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from runner.engine.experiment import load_dataset
from runner.engine.loop import run_experiment
from runner.engine.plugin_manager import load_plugins
from runner.experiment_file.spec import load
from runner.records.files import create_run_dir

EXPERIMENT = orjson.loads((Path(__file__).resolve().parent.parent / "experiments" / "digits_panda.json").read_bytes())


def run_once(experiment: dict, work: Path) -> dict:
    """One run in this process; the figures the table shows."""
    path = work / "exp.json"
    path.write_bytes(orjson.dumps(experiment))
    plugins = load_plugins()
    spec = load(path, plugins.registry)
    run_dir = create_run_dir(work / "runs", spec.name)
    started = time.perf_counter()
    [result] = run_experiment(spec, plugins, load_dataset(spec, plugins), run_dir)
    events = [orjson.loads(line) for line in (run_dir / "events.jsonl").read_bytes().splitlines()]
    epochs = [e for e in events if e["event"] == "epoch_end"]
    return {
        "state": result.state,
        "best_acc": max(e["val_acc"] for e in epochs),
        "final_acc": result.final["val_acc"] if result.final else float("nan"),
        "trained": len(epochs),
        "undone": len(epochs) - result.epochs,
        "final_lr": epochs[-1]["lr"],
        "seconds": time.perf_counter() - started,
    }


CASES = {  # name -> (changes to the experiment, starting lr)
    "sgd lr 30": ({}, 30.0),
    "sgd lr 1e-4": ({}, 1e-4),
    "sgd lr 0.2": ({}, 0.2),
    "adam+bn lr 3": ({"model": {"batch_norm": True}, "train": {"optimizer": "adam"}}, 3.0),
}
COLLAPSE_CASES = ("adam+bn lr 3",)  # also run with collapse detection off


def experiment_for(case: str, seed: int, epochs: int, strategy: str, collapse: bool) -> dict:
    changes, lr = CASES[case]
    experiment = copy.deepcopy(EXPERIMENT)
    experiment.update(seed=seed)
    for section, values in changes.items():
        experiment[section].update(values)
    experiment["train"].update(lr=lr, epochs=epochs)
    experiment["search"]["strategy"] = {"name": strategy}
    experiment["divergence"] = {"collapse": collapse}
    return experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=6, help="seeds 0..N-1 (default 6)")
    parser.add_argument("--epochs", type=int, default=40, help="the budget of epochs trained (default 40)")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES), help="default: all")
    parser.add_argument("--json", type=Path, help="save every figure here")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            for collapse in (True, False) if case in COLLAPSE_CASES else (True,):
                for seed in range(args.seeds):
                    for strategy in ("grid", "panda-nudge"):
                        work = Path(tmp) / f"{len(rows)}"
                        work.mkdir()
                        experiment = experiment_for(case, seed, args.epochs, strategy, collapse)
                        figures = run_once(experiment, work)
                        rows.append({"case": case, "collapse": collapse, "seed": seed, "strategy": strategy, **figures})

    def side(case, collapse, seed, strategy):
        return next(
            r for r in rows if (r["case"], r["collapse"], r["seed"], r["strategy"]) == (case, collapse, seed, strategy)
        )

    print(f"## Panda-nudge against a fixed learning rate, digits, {args.epochs} epochs trained each\n")
    print(
        "| case | collapse detection | seed | fixed: best val_acc | fixed: final val_acc | fixed: state | "
        "panda: best val_acc | panda: final val_acc | panda: state | panda: final lr | epochs undone by reverts |"
    )
    print("|---|---|---:|---:|---:|---|---:|---:|---|---:|---:|")
    groups = [(c, on) for c in args.cases for on in ((True, False) if c in COLLAPSE_CASES else (True,))]
    for case, collapse in groups:
        for seed in range(args.seeds):
            fixed, panda = side(case, collapse, seed, "grid"), side(case, collapse, seed, "panda-nudge")
            print(
                f"| {case} | {'on' if collapse else 'off'} | {seed} | {fixed['best_acc']:.4f} | "
                f"{fixed['final_acc']:.4f} | {fixed['state']} | {panda['best_acc']:.4f} | {panda['final_acc']:.4f} | "
                f"{panda['state']} | {panda['final_lr']:.4g} | {panda['undone']} |"
            )
    print()
    for case, collapse in groups:
        for strategy in ("grid", "panda-nudge"):
            mine = [r for r in rows if (r["case"], r["collapse"], r["strategy"]) == (case, collapse, strategy)]
            best, final = [r["best_acc"] for r in mine], [r["final_acc"] for r in mine]
            reached = sum(a >= 0.95 for a in best)
            print(
                f"- {case}, collapse detection {'on' if collapse else 'off'}, "
                f"{'fixed' if strategy == 'grid' else 'panda'}: median best val_acc {statistics.median(best):.4f} "
                f"(min {min(best):.4f}), median final {statistics.median(final):.4f}, "
                f"{reached} of {len(best)} runs reach 0.95"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
