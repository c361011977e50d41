#!/usr/bin/env python
"""Caviar at scale, measured in one command: worker processes against inline, and the
runner on Ray against Ray Tune on the same local cluster.

    python benchmarks/bench_executors.py                      # both parts, about 3 minutes on 2 cores
    python benchmarks/bench_executors.py --part process --rounds 5
    python benchmarks/bench_executors.py --part ray --trials 30 --epochs 20   # needs pip install "ray[tune]"

Every side trains the same trials: a fixed random search over lr and beta1 on
scikit-learn's digits (``experiments/digits_random.json``'s data and model, ``--epochs``
epochs, ``--trials`` trials; trial k has the same parameters and seed on every side).

**process**: ``run_experiment`` with ``inline``, with ``process`` (``--workers`` workers,
forked from the warm forkserver) and with ``process`` started with ``spawn`` (a fresh
interpreter per worker, as before issue 20), taking turns round by round (the order
rotates). The first round of a process pays for starting the forkserver, as every
``runner start`` does. Reported: wall time per side,
the throughput ratio inline / process, the workers' start-up (from ``experiment_start``
to the first trial's first event) and the ratio once they are up. Every round checks that
both sides end every trial with bit-identical metrics.

**ray**: one local Ray cluster (``ray.init(num_cpus=--workers)``), then, taking turns, four
sides. The runner with the ``ray`` executor (``--workers`` actors), its snapshot files kept
by the actors on the shared disk (``"storage": "shared"``) and kept by the driver
(``"storage": "driver"``: what a cluster without a shared disk uses); both with the default
``checkpoint`` section (each trial's best snapshot written when it ends). Ray Tune running a
function trainable that trains the same backend for the same trials (``tune.grid_search``
over the runner's own trial list, one CPU a trial, ``--workers`` at once, ``tune.report``
each epoch; it saves no checkpoint), at its fastest (actors reused, its default result
loggers off) and with its defaults (only ``verbose=0``, its progress table, differs).
Reported: wall time, the speed-up of each runner side over each Tune side (Tune's wall /
the runner's, paired round by round), and per-trial overhead: (slots x wall - the seconds
trials spent training) / trials, where training seconds are measured inside each trial on
every side (the runner's ``epoch_end.seconds``, the trainable's own clock around the same
calls). Every round checks that all sides end every trial with the same metrics.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_overhead import (  # noqa: E402 (after the path set-up above)
    COMPARED,
    add_blas_threads_option,
    apply_blas_threads,
    bare_configs,
    bench_experiment,
    machine,
    median_min_max,
    planned_jobs,
    rotated,
)

SOURCE = ROOT / "experiments" / "digits_random.json"
NO_SNAPSHOTS = {"every_epochs": 0, "best": False}


def experiment(trials: int, epochs: int, executor: dict, checkpoint: dict | None = NO_SNAPSHOTS) -> dict:
    raw = bench_experiment(SOURCE, trials, epochs, checkpoint=checkpoint)
    raw["model"]["hidden"] = [128]
    raw["executor"] = executor
    return raw


def run(raw: dict, plugins, dataset, work: Path) -> dict:
    """One ``run_experiment`` in this process: wall time, each trial's final metrics, and
    from its event log the workers' start-up, the seconds trials spent training, and the
    seconds per trial between its start and its end spent outside training."""
    from runner.engine.loop import run_experiment
    from runner.experiment_file.spec import parse
    from runner.records.events import read_events
    from runner.records.files import create_run_dir

    spec = parse(raw, plugins.registry, base_dir=SOURCE.parent)
    run_dir = create_run_dir(work, spec.name)
    start = time.perf_counter()
    board = run_experiment(spec, plugins, dataset, run_dir)
    wall = time.perf_counter() - start
    bad = [(r.trial, r.state) for r in board if r.state != "completed"]
    assert not bad, f"trials did not complete: {bad}"
    events = list(read_events(run_dir / "events.jsonl"))
    first_trial = next(e["t"] for e in events if "trial" in e)
    training = sum(e["seconds"] for e in events if e["event"] == "epoch_end")
    started = sum(e["t"] for e in events if e["event"] == "trial_start")
    ended = sum(e["t"] for e in events if e["event"] == "trial_complete")
    return {
        "wall": wall,
        "startup": first_trial - events[0]["t"],
        "after_startup": events[-1]["t"] - first_trial,
        "training": training,
        "in_trial": (ended - started - training) / len(board),
        "finals": {r.trial: {k: r.final[k] for k in COMPARED} for r in board},
    }


def part_process(args, plugins, dataset, work: Path) -> dict:
    sides = {
        "inline": {"name": "inline"},
        "process": {"name": "process", "workers": args.workers},  # workers forked from the warm forkserver
        "spawn": {"name": "process", "workers": args.workers, "start": "spawn"},  # each a fresh interpreter
    }
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    mismatches = 0
    for i in range(args.rounds):
        for name in rotated(list(sides), i):
            runs[name].append(run(experiment(args.trials, args.epochs, sides[name]), plugins, dataset, work))
        mismatches += any(runs["inline"][-1]["finals"] != runs[name][-1]["finals"] for name in ("process", "spawn"))
        print(f"  round {i + 1}: " + ", ".join(f"{n} {runs[n][-1]['wall']:.2f} s" for n in sides), flush=True)
    walls = {name: [r["wall"] for r in rs] for name, rs in runs.items()}
    return {
        "walls": walls,
        "ratios": {n: [a / b for a, b in zip(walls["inline"], walls[n])] for n in ("process", "spawn")},
        "steady": {
            n: [a["after_startup"] / b["after_startup"] for a, b in zip(runs["inline"], runs[n])]
            for n in ("process", "spawn")
        },
        "startup": {n: [r["startup"] for r in runs[n]] for n in ("process", "spawn")},
        "mismatched_rounds": mismatches,
    }


def tune_side(ray, jobs: list, raw: dict, dataset_ref, workers: int, storage: Path, *, fastest: bool) -> dict:
    """Ray Tune running the bare training loop over the runner's own trials: ``fastest``
    with actors reused and without its default JSON, CSV and TensorBoard loggers of every
    result (the runner writes one events.jsonl), else with its defaults."""
    import os

    from ray import tune

    if fastest:
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # read when ``fit`` sets up its callbacks
    else:
        os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", None)

    def trainable(config):
        from runner.plugins.backends.numpy_mlp.backend import Model, NumpyBackend, Train

        trial, params, seed = config["job"]
        cfg = bare_configs(config["raw"], params)
        data = ray.get(config["data"][0])
        training = 0.0
        started = time.perf_counter()
        model = Model(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["model"].items()})
        train = Train(**cfg["train"])
        backend = NumpyBackend(model=model, train=train, options=NumpyBackend.Options(), data=data, seed=seed)
        training += time.perf_counter() - started
        for epoch in range(train.epochs):
            started = time.perf_counter()
            backend.begin_epoch(epoch)
            total = sum(backend.train_step() for _ in range(backend.steps_per_epoch))
            val = backend.evaluate("val")
            training += time.perf_counter() - started
            tune.report(
                {
                    "trial": trial,
                    "epoch": epoch,
                    "train_loss": total / backend.steps_per_epoch,
                    "val_loss": val["loss"],
                    "val_acc": val["acc"],
                    "training": training,
                }
            )

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"job": tune.grid_search(jobs), "raw": raw, "data": [dataset_ref]},
        tune_config=tune.TuneConfig(max_concurrent_trials=workers, **({"reuse_actors": True} if fastest else {})),
        run_config=tune.RunConfig(storage_path=str(storage), verbose=0, name=f"tune-{time.time_ns()}"),
    )
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        grid = tuner.fit()  # (its progress table, and with loggers off a warning per trial that it has no result file)
    wall = time.perf_counter() - start
    finals = {}
    training = 0.0
    for result in grid:
        assert result.error is None, result.error
        finals[result.metrics["trial"]] = {k: result.metrics[k] for k in COMPARED}
        training += result.metrics["training"]
    return {"wall": wall, "training": training, "finals": finals}


RUNNER_SIDES = ("runner, storage shared", "runner, storage driver")
TUNE_SIDES = ("Tune at its fastest", "Tune with its defaults")


def part_ray(args, plugins, dataset, work: Path) -> dict:
    import ray

    from runner.experiment_file.spec import parse

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    try:
        raws = {
            side: experiment(
                args.trials, args.epochs, {"name": "ray", "workers": args.workers, "storage": storage}, checkpoint=None
            )
            for side, storage in zip(RUNNER_SIDES, ("shared", "driver"))
        }
        raw = raws[RUNNER_SIDES[0]]
        jobs = [list(job) for job in planned_jobs(parse(raw, plugins.registry, base_dir=SOURCE.parent), plugins)]
        dataset_ref = ray.put(dataset)
        sides = {side: (lambda side=side: run(raws[side], plugins, dataset, work)) for side in RUNNER_SIDES}
        for side, fastest in zip(TUNE_SIDES, (True, False)):
            sides[side] = lambda fastest=fastest: tune_side(
                ray, jobs, raw, dataset_ref, args.workers, work, fastest=fastest
            )
        runs: dict[str, list[dict]] = {name: [] for name in sides}
        for side in sides.values():  # warm-up: workers' imports, Tune's first actor
            side()
        mismatches = 0
        for i in range(args.rounds):
            for name in rotated(list(sides), i):
                runs[name].append(sides[name]())
            mismatches += len({json.dumps(runs[n][-1]["finals"], sort_keys=True) for n in sides}) > 1
            print(f"  round {i + 1}: " + ", ".join(f"{n} {runs[n][-1]['wall']:.2f} s" for n in sides), flush=True)
    finally:
        ray.shutdown()
    walls = {n: [r["wall"] for r in rs] for n, rs in runs.items()}
    return {
        "walls": walls,
        "speedup": {
            f"{mine} vs {theirs}": [t / m for t, m in zip(walls[theirs], walls[mine])]
            for mine in RUNNER_SIDES
            for theirs in TUNE_SIDES
        },
        "overhead": {
            name: [(args.workers * r["wall"] - r["training"]) / args.trials for r in rs] for name, rs in runs.items()
        },
        "training": {n: [r["training"] / args.trials for r in rs] for n, rs in runs.items()},
        "startup": {n: [r["startup"] for r in runs[n]] for n in RUNNER_SIDES},
        "in_trial": {n: [r["in_trial"] for r in runs[n]] for n in RUNNER_SIDES},
        "mismatched_rounds": mismatches,
    }


def line(values: list[float], unit: str = "s", digits: int = 2) -> str:
    median, low, high = median_min_max(values)
    return f"{median:.{digits}f} {unit} (min {low:.{digits}f}, max {high:.{digits}f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("process", "ray", "both"), default="both")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    add_blas_threads_option(
        parser
    )  # the inline side's; a worker takes its share of the cores (the executor's ``threads``)
    args = parser.parse_args(argv)
    apply_blas_threads(parser, args)

    from runner.engine.experiment import load_dataset
    from runner.engine.plugin_manager import load_plugins
    from runner.experiment_file.spec import parse

    plugins = load_plugins()
    dataset = load_dataset(
        parse(experiment(1, 1, {"name": "inline"}), plugins.registry, base_dir=SOURCE.parent), plugins
    )
    print(json.dumps(machine(), indent=2))
    print(
        f"{args.trials} trials x {args.epochs} epochs (digits, hidden [128], adam), {args.workers} workers, "
        f"{args.rounds} rounds\n"
    )
    figures: dict = {"args": vars(args) | {"json": None}}
    status = 0
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("process", "both"):
            print("process executor against inline:")
            p = figures["process"] = part_process(args, plugins, dataset, Path(tmp))
            for name, walls in p["walls"].items():
                print(f"  {name:8} {line(walls)}")
            for n, label in (("process", "warm workers (forkserver)"), ("spawn", "fresh interpreters (spawn)")):
                print(f"  {label}:")
                print(f"    throughput inline/process: {line(p['ratios'][n], 'x')}")
                print(f"    workers' start-up:         {line(p['startup'][n])}")
                print(f"    ratio once workers are up: {line(p['steady'][n], 'x')}")
            print(f"  rounds whose metrics differ: {p['mismatched_rounds']}\n")
            status |= p["mismatched_rounds"] > 0
        if args.part in ("ray", "both"):
            print("runner's ray executor against Ray Tune, same local cluster:")
            r = figures["ray"] = part_ray(args, plugins, dataset, Path(tmp))
            for name in r["walls"]:
                print(
                    f"  {name:23} wall {line(r['walls'][name])}; training per trial "
                    f"{statistics.median(r['training'][name]):.3f} s; overhead per trial {line(r['overhead'][name], 's', 3)}"
                )
            for name in RUNNER_SIDES:
                print(
                    f"  {name}: actors' start-up {line(r['startup'][name])}; per trial, from its start to its end, "
                    f"outside training {line([1000 * v for v in r['in_trial'][name]], 'ms', 1)}"
                )
            for pair, ratios in r["speedup"].items():
                print(f"  {pair + ':':47} {line(ratios, 'x')}")
            print(f"  rounds whose metrics differ: {r['mismatched_rounds']}")
            status |= r["mismatched_rounds"] > 0
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
