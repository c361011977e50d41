"""Panda-nudge against the same run with a fixed learning rate, from rates far off.

For each starting learning rate (far too high: it diverges; far too low: it crawls; about
right, to see what babysitting costs where nothing needs mending) and
each seed, the same experiment file runs twice at an equal budget of epochs trained: once
with one fixed-lr trial (the ``grid`` strategy over no space, so only the divergence
policy acts), once babysat by ``panda-nudge`` (every epoch trained counts against its
budget, those a revert undid too). The table gives each run's best validation accuracy,
its end state, and for panda the learning rate it ended with and the epochs reverts undid.

    python benchmarks/bench_panda.py                 # 3 rates x 6 seeds x 2 runs, under a minute on 2 cores
    python benchmarks/bench_panda.py --seeds 2 --json panda.json

The experiment is ``experiments/digits_panda.json`` (scikit-learn's digits; a 64-unit ReLU
MLP without batch norm trained by SGD with momentum, whose learning rate matters most)
with its rate and budget replaced. Results are in BENCHMARKS.md.
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
        "trained": len(epochs),
        "undone": len(epochs) - result.epochs,
        "final_lr": epochs[-1]["lr"],
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=6, help="seeds 0..N-1 (default 6)")
    parser.add_argument("--epochs", type=int, default=40, help="the budget of epochs trained (default 40)")
    parser.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=[30.0, 1e-4, 0.2],
        help="starting learning rates (default: far too high, far too low, about right)",
    )
    parser.add_argument("--json", type=Path, help="save every figure here")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for lr in args.rates:
            for seed in range(args.seeds):
                for strategy in ("grid", "panda-nudge"):
                    experiment = copy.deepcopy(EXPERIMENT)
                    experiment.update(seed=seed)
                    experiment["train"].update(lr=lr, epochs=args.epochs)
                    experiment["search"]["strategy"] = {"name": strategy}
                    work = Path(tmp) / f"{lr}-{seed}-{strategy}"
                    work.mkdir()
                    rows.append({"lr": lr, "seed": seed, "strategy": strategy, **run_once(experiment, work)})

    print(f"## Panda-nudge against a fixed learning rate, digits, {args.epochs} epochs trained each\n")
    print(
        "| start lr | seed | fixed: best val_acc | fixed: state | panda: best val_acc | panda: state | panda: final lr | epochs undone by reverts |"
    )
    print("|---:|---:|---:|---|---:|---|---:|---:|")
    for lr in args.rates:
        for seed in range(args.seeds):
            fixed, panda = (
                next(r for r in rows if r["lr"] == lr and r["seed"] == seed and r["strategy"] == s)
                for s in ("grid", "panda-nudge")
            )
            print(
                f"| {lr:g} | {seed} | {fixed['best_acc']:.4f} | {fixed['state']} | {panda['best_acc']:.4f} | "
                f"{panda['state']} | {panda['final_lr']:.4g} | {panda['undone']} |"
            )
    print()
    for lr in args.rates:
        for strategy in ("grid", "panda-nudge"):
            accs = [r["best_acc"] for r in rows if r["lr"] == lr and r["strategy"] == strategy]
            reached = sum(a >= 0.95 for a in accs)
            print(
                f"- start lr {lr:g}, {'fixed' if strategy == 'grid' else 'panda'}: median best val_acc "
                f"{statistics.median(accs):.4f} (min {min(accs):.4f}), {reached} of {len(accs)} runs reach 0.95"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
