#!/usr/bin/env python
"""Overhead of the runner against a bare hand-written NumPy loop, in one command.

    python benchmarks/bench_overhead.py [--trials 20] [--epochs 15] [--repeats 7]

Every side trains the same ``NumpyBackend`` on the same prepared data, for the same trials
(same parameters, same per-trial seeds from ``runner.engine.experiment.trial_seed``):

* bare loop: build ``NumpyBackend`` directly and run ``for epoch: begin_epoch; for steps:
  train_step; evaluate("val")``. No runner code besides the backend and the data.
* runner: ``run_experiment(spec, plugins, dataset, run_dir)`` with the real plugin manager
  (entry points loaded), writing the real event log, results and snapshots in a temporary
  folder, with the experiment file's ``checkpoint`` section (default: a snapshot every
  epoch and at every new best). No terminal reporter (only the CLI registers one).
* runner, checkpoints off: the same with ``"checkpoint": {"every_epochs": 0, "best": false}``,
  to separate the cost of snapshots from that of the loop itself (spec, events, hooks).
* runner, collapse watch off: the runner side with ``"divergence": {"collapse": false}``, to
  show what watching for a collapse costs (a comparison each step, ``dead_units`` each epoch).

The sides take turns in every round (the order rotates from round to round) so that machine
drift and position effects cancel. Reported:

1. wall time per side (median, min, max), runner/bare and overhead %, from the medians and
   round by round;
2. time per trial outside training: (runner - bare) / trials, and a direct measurement with
   the backend's training methods wrapped in timers (everything else is outside training),
   broken down by place (trial runner, snapshots, run level);
3. the fixed costs a ``runner start`` pays once per run (imports, ``load_plugins``,
   ``spec.load``, ``load_dataset``, ``create_run_dir``), cold (fresh interpreter) and warm;
4. a cProfile of one run per runner side, paused inside the backend's training calls, so it
   lists only the runner's own work.

Every round checks that all sides end every trial with bit-identical metrics; the exit
status is 1 if any differ.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import dataclasses
import datetime
import functools
import gc
import inspect
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # ``python benchmarks/bench_overhead.py`` from anywhere
    sys.path.insert(0, str(ROOT))

DEFAULT_EXPERIMENT = ROOT / "experiments" / "digits_random.json"
#: The searched parameters: optimizer settings only, so that every trial trains the
#: experiment file's model (digits: hidden [64], batch norm, adam, batch 64) and none diverges.
SPACE = {
    "train.lr": {"low": 1e-4, "high": 1e-1, "scale": "log"},
    "train.momentum": {"low": 0.9, "high": 0.999, "scale": "log1m"},
}
#: The backend methods the bare loop calls: "training". Everything else is "outside training".
TRAINING = ("__init__", "begin_epoch", "train_step", "evaluate")
#: Also timed, but counted as runner overhead: the bare loop never calls it.
OTHER_BACKEND = ("hyperparameters",)
#: Final metrics compared between the two sides (exact float equality).
COMPARED = ("train_loss", "val_loss", "val_acc")


def rotated(names: list, i: int) -> list:
    """``names`` started at the ``i``-th (mod its length): each timed round runs the sides in a new order."""
    k = i % len(names)
    return names[k:] + names[:k]


#: What a fresh ``runner start`` process does before its first trial, stage by stage.
COLD_CHILD = r"""
import json, sys, time
from pathlib import Path
t = [time.perf_counter()]
import runner.cli  # what the `runner` console script imports (click, rich, the core)
from runner.records.files import create_run_dir
from runner.engine.experiment import load_dataset
from runner.engine.plugin_manager import load_plugins
from runner.experiment_file.spec import load
t.append(time.perf_counter())
plugins = load_plugins()
t.append(time.perf_counter())
spec = load(sys.argv[1], plugins.registry)
t.append(time.perf_counter())
dataset = load_dataset(spec, plugins)
t.append(time.perf_counter())
create_run_dir(Path(sys.argv[2]), spec.name)
t.append(time.perf_counter())
names = ["import runner.cli", "load_plugins", "spec.load", "load_dataset", "create_run_dir"]
print(json.dumps({n: b - a for n, a, b in zip(names, t, t[1:])}))
"""


# -- measuring tools ------------------------------------------------------------------------


class MethodTimer:
    """Wraps methods of a class with time accumulators (and optionally pauses a profiler
    inside them) for the duration of a ``with`` block; restores them on exit."""

    def __init__(self, cls: type, methods: tuple[str, ...], profiler: cProfile.Profile | None = None):
        self.cls, self.methods, self.profiler = cls, methods, profiler
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def __enter__(self) -> MethodTimer:
        # Methods the class defines or inherits (NumpyBackend inherits begin_epoch and
        # hyperparameters from MiniBatchBackend); a method it lacks (the runner changed) is not timed.
        self._own = {name for name in self.methods if name in self.cls.__dict__}
        self._saved = {
            name: inspect.getattr_static(self.cls, name)
            for name in self.methods
            if inspect.getattr_static(self.cls, name, None) is not None
        }
        for name, method in self._saved.items():
            setattr(self.cls, name, self._wrap(name, method))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, method in self._saved.items():
            if name in self._own:
                setattr(self.cls, name, method)
            else:  # inherited: remove the wrapper, the base class's method shows through again
                delattr(self.cls, name)

    def _wrap(self, name, method):
        seconds, calls, profiler = self.seconds, self.calls, self.profiler
        clock = time.perf_counter

        @functools.wraps(method)
        def timed(*args, **kwargs):
            if profiler is not None:  # training calls are left out of the profile
                profiler.disable()
            start = clock()
            try:
                return method(*args, **kwargs)
            finally:
                seconds[name] += clock() - start
                calls[name] += 1
                if profiler is not None:
                    profiler.enable()

        return timed

    def total(self, names: tuple[str, ...]) -> float:
        return sum(self.seconds[n] for n in names)


def add_blas_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--blas-threads",
        type=int,
        help="set OPENBLAS/OMP/MKL_NUM_THREADS for this run (default: leave them as they are)",
    )


def apply_blas_threads(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Set the BLAS thread count asked for; only possible before NumPy is imported."""
    if args.blas_threads is not None:
        if "numpy" in sys.modules:
            parser.error("--blas-threads must be set before NumPy is imported; run this file as a script")
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(args.blas_threads)


def median_min_max(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


# -- the two sides --------------------------------------------------------------------------


def bare_configs(raw: dict, params: dict) -> dict[str, dict]:
    """The model, train and backend sections of the experiment file with ``params`` applied."""
    sections = {s: copy.deepcopy(raw.get(s, {})) for s in ("model", "train", "backend")}
    for path, value in params.items():
        section, *keys = path.split(".")
        node = sections[section]
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return sections


def bare_run(
    jobs: list[tuple[int, dict, int]], raw: dict, dataset, backend_cls: type | None = None
) -> dict[int, dict[str, float]]:
    """The hand-written loop: NumpyBackend (or ``backend_cls``, of the same MLP family) built
    directly, epochs of steps, evaluate("val")."""
    from runner.plugins.backends.numpy_mlp.backend import Model, NumpyBackend, Train

    backend_cls = backend_cls or NumpyBackend
    Options = backend_cls.Options
    finals = {}
    for trial, params, seed in jobs:
        cfg = bare_configs(raw, params)
        model = Model(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["model"].items()})
        train = Train(**cfg["train"])
        options = Options(**{k: v for k, v in cfg["backend"].items() if k != "name"})
        backend = backend_cls(model=model, train=train, options=options, data=dataset, seed=seed)
        for epoch in range(train.epochs):
            backend.begin_epoch(epoch)
            total = 0.0
            steps = backend.steps_per_epoch
            for _ in range(steps):
                total += backend.train_step()
            val = backend.evaluate("val")
        finals[trial] = {"train_loss": total / steps, "val_loss": val["loss"], "val_acc": val["acc"]}
    return finals


def runner_run(
    spec, plugins, dataset, root: Path, profiler: cProfile.Profile | None = None
) -> tuple[float, dict[int, dict[str, float]]]:
    """One ``run_experiment``, timed; the run directory is made before and removed after."""
    from runner.engine.loop import run_experiment
    from runner.records.files import create_run_dir

    run_dir = create_run_dir(root, spec.name)
    gc.collect()
    if profiler is not None:
        profiler.enable()
    start = time.perf_counter()
    board = run_experiment(spec, plugins, dataset, run_dir)
    seconds = time.perf_counter() - start
    if profiler is not None:
        profiler.disable()
    for name in ("events.jsonl", "results.json", "experiment.json"):
        assert (run_dir / name).is_file(), f"the runner wrote no {name}"
    bad = [(r.trial, r.state, r.reason) for r in board if r.state != "completed"]
    assert not bad, f"trials did not complete: {bad}"
    shutil.rmtree(run_dir)
    return seconds, {r.trial: {k: r.final[k] for k in COMPARED} for r in board}


def planned_jobs(spec, plugins) -> list[tuple[int, dict, int]]:
    """The trials, exactly as the runner's (random) strategy will ask for them: (id, params, seed)."""
    from runner import History
    from runner.engine.experiment import build_strategy, trial_seed

    strategy = build_strategy(spec, plugins.registry)
    history, jobs = History(), []
    while (params := strategy.ask(history)) is not None:
        trial = len(history)
        history.add(trial, params)
        jobs.append((trial, params, trial_seed(spec.seed, trial)))
    return jobs


def print_metric_check(problems: list[str], trials: int, rounds: int) -> None:
    """Whether every side ended every trial with bit-identical metrics (the first 20 misfits)."""
    if problems:
        print(f"FAILED: {len(problems)} mismatches")
        for problem in problems[:20]:
            print("  " + problem)
    else:
        print(
            f"ok: all {trials} trials end with bit-identical {', '.join(COMPARED)} on every side, "
            f"in all {rounds} rounds (warm-up included)"
        )
    print()


def print_direct_rows(direct: dict[str, dict[str, list[float]]], names: list[str]) -> None:
    """The direct-measurement table: a row per place, ms per trial, a column per side."""
    keys = list(dict.fromkeys(k for name in names for k in direct[name]))
    print("| where | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for key in keys:
        cells = []
        for name in names:
            values = direct[name].get(key)
            if values:
                m, lo, hi = median_min_max([v * 1e3 for v in values])
                cells.append(f"{m:.3f} ({lo:.2f}..{hi:.2f})")
            else:
                cells.append("-")
        print(f"| {key} | " + " | ".join(cells) + " |")


def timed_bare(jobs, raw, dataset, backend_cls: type | None = None) -> tuple[float, dict]:
    gc.collect()
    start = time.perf_counter()
    finals = bare_run(jobs, raw, dataset, backend_cls)
    return time.perf_counter() - start, finals


def compare(bare: dict, runner: dict) -> list[str]:
    """Trials whose final metrics differ (exact equality), as readable lines."""
    problems = []
    for trial in sorted(set(bare) | set(runner)):
        b, r = bare.get(trial), runner.get(trial)
        if b != r:
            problems.append(f"trial {trial}: bare {b} != runner {r}")
    return problems


# -- the machine ----------------------------------------------------------------------------


def machine() -> dict[str, str]:
    import numpy as np

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    blas = "?"
    try:
        from threadpoolctl import threadpool_info

        blas = (
            ", ".join(
                f"{p.get('internal_api')} {p.get('version')} {p.get('num_threads')} threads" for p in threadpool_info()
            )
            or "none found"
        )
    except ImportError:
        blas = "threadpoolctl not installed; env " + ", ".join(
            f"{k}={os.environ[k]}"
            for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
            if k in os.environ
        )
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "?"
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpus": f"{os.cpu_count()} (usable: {affinity})",
        "cpu": cpu,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "numpy": np.__version__,
        "blas": blas,
        "load average at start": load,
    }


# -- fixed costs ----------------------------------------------------------------------------


def cold_fixed_costs(experiment: Path, work: Path, times: int) -> dict[str, list[float]]:
    """Each stage of a fresh process's preparation, ``times`` fresh processes; plus the
    interpreter's own start (``python -c pass``) for scale."""
    stages: dict[str, list[float]] = defaultdict(list)
    for i in range(times):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, cwd=ROOT)
        stages["python start (-c pass)"].append(time.perf_counter() - start)
        out = subprocess.run(
            [sys.executable, "-c", COLD_CHILD, str(experiment), str(work / f"cold{i}")],
            check=True,
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout
        for name, seconds in json.loads(out.strip().splitlines()[-1]).items():
            stages[name].append(seconds)
        stages["runner start: launch to the first trial_start event"].append(
            first_trial_start(experiment, work / f"first{i}")
        )
    return stages


def first_trial_start(experiment: Path, out: Path) -> float:
    """Seconds from launching ``runner start`` (a fresh interpreter, as a person runs it) to
    its first ``trial_start`` event, which comes just before the first training step."""
    launched = time.time()
    subprocess.run(
        [sys.executable, "-m", "runner", "start", str(experiment), "--out", str(out), "--plain"],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    [run_dir] = out.iterdir()
    with open(run_dir / "events.jsonl", "rb") as events:
        first = next(e for e in map(json.loads, events) if e["event"] == "trial_start")
    return first["t"] - launched


def warm_fixed_costs(experiment: Path, work: Path, times: int) -> dict[str, list[float]]:
    """The same stages repeated in this (warm) process: modules and files already loaded."""
    from runner.engine.experiment import load_dataset
    from runner.engine.plugin_manager import load_plugins
    from runner.experiment_file.spec import load
    from runner.records.files import create_run_dir

    stages: dict[str, list[float]] = defaultdict(list)
    for i in range(times):
        t0 = time.perf_counter()
        plugins = load_plugins()
        t1 = time.perf_counter()
        spec = load(experiment, plugins.registry)
        t2 = time.perf_counter()
        load_dataset(spec, plugins)
        t3 = time.perf_counter()
        create_run_dir(work / f"warm{i}", spec.name)
        t4 = time.perf_counter()
        for name, seconds in (
            ("load_plugins", t1 - t0),
            ("spec.load", t2 - t1),
            ("load_dataset", t3 - t2),
            ("create_run_dir", t4 - t3),
        ):
            stages[name].append(seconds)
    return stages


# -- the benchmark --------------------------------------------------------------------------

BARE, RUNNER, NO_CKPT = "bare loop", "runner", "runner, checkpoints off"
NO_COLLAPSE = "runner, collapse watch off"
#: The ``checkpoint`` section of the third side: no periodic and no best-so-far snapshots.
CHECKPOINTS_OFF = {"every_epochs": 0, "best": False}


def bench_experiment(
    source: Path, trials: int, epochs: int, checkpoint: dict | None = None, divergence: dict | None = None
) -> dict:
    """The benchmark's experiment: the file's data, model and train sections (epochs set),
    a fixed random search over ``SPACE``, the inline executor; ``checkpoint`` and
    ``divergence`` replace those sections if given."""
    raw = json.loads(source.read_text())
    raw["train"]["epochs"] = epochs
    search = raw.get("search", {})
    raw["search"] = {
        "strategy": {"name": "random", "trials": trials},
        "metric": search.get("metric", "val_acc"),
        "mode": search.get("mode", "max"),
        "space": SPACE,
    }
    raw["executor"] = {"name": "inline"}
    if checkpoint is not None:
        raw["checkpoint"] = checkpoint
    if divergence is not None:
        raw["divergence"] = divergence
    return raw


def instrumented_runner(
    spec, plugins, dataset, root: Path, n: int, backend_cls: type | None = None
) -> dict[str, float]:
    """One runner run with the backend's methods, the trial runner and the checkpoint store
    timed; seconds per trial by place."""
    from runner.engine.trial_loop import TrialRunner
    from runner.plugins.backends.numpy_mlp.backend import NumpyBackend

    backend_cls = backend_cls or NumpyBackend
    try:
        from runner.engine.checkpoints import CheckpointStore
    except ImportError:  # a runner without snapshots
        CheckpointStore = None
    backend_methods = TRAINING + OTHER_BACKEND + (("state",) if "state" in backend_cls.__dict__ else ())
    with contextlib.ExitStack() as stack:
        backend = stack.enter_context(MethodTimer(backend_cls, backend_methods))
        trials = stack.enter_context(MethodTimer(TrialRunner, ("__call__",)))
        store = stack.enter_context(MethodTimer(CheckpointStore, ("save", "collect"))) if CheckpointStore else None
        seconds, _ = runner_run(spec, plugins, dataset, root)
    training, in_trials = backend.total(TRAINING), trials.seconds["__call__"]
    out = {
        "outside training, all": seconds - training,
        "  inside TrialRunner.__call__": in_trials - training,
        "    backend.hyperparameters()": backend.seconds["hyperparameters"],
    }
    if store is not None:
        out["    snapshot: backend.state() copies"] = backend.seconds["state"]
        out["    snapshot: CheckpointStore.save (queue)"] = store.seconds["save"]
        out["    snapshot: CheckpointStore.collect (waits for writes)"] = store.seconds["collect"]
    out["  run level: ask, seeds, files, per trial"] = seconds - in_trials
    out["training (backend calls)"] = training
    return {k: v / n for k, v in out.items()}


def instrumented_bare(jobs, raw, dataset, n: int, backend_cls: type | None = None) -> dict[str, float]:
    from runner.plugins.backends.numpy_mlp.backend import NumpyBackend

    backend_cls = backend_cls or NumpyBackend
    with MethodTimer(backend_cls, TRAINING) as backend:
        seconds, _ = timed_bare(jobs, raw, dataset, backend_cls)
    training = backend.total(TRAINING)
    return {"outside training, all": (seconds - training) / n, "training (backend calls)": training / n}


def profile_runner(spec, plugins, dataset, root: Path) -> pstats.Stats:
    """cProfile of one ``run_experiment``, paused inside the backend's training calls."""
    from runner.plugins.backends.numpy_mlp.backend import NumpyBackend

    profiler = cProfile.Profile()
    with MethodTimer(NumpyBackend, TRAINING, profiler=profiler):
        runner_run(spec, plugins, dataset, root, profiler=profiler)
    return pstats.Stats(profiler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--experiment",
        type=Path,
        default=DEFAULT_EXPERIMENT,
        help="experiment file whose data, model, train and checkpoint sections are used "
        "(default: experiments/digits_random.json); its search is replaced by a "
        "random search over train.lr and train.momentum, its executor by inline",
    )
    parser.add_argument("--trials", type=int, default=20, help="trials per run (default 20)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per trial (default 15)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds of every side (default 7)")
    parser.add_argument(
        "--instrumented", type=int, default=3, help="rounds with methods timed, for the direct measurement (default 3)"
    )
    parser.add_argument("--cold", type=int, default=3, help="fresh processes for the cold fixed costs (default 3)")
    parser.add_argument("--top", type=int, default=12, help="rows of each profile table (default 12)")
    add_blas_threads_option(parser)
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    if min(args.trials, args.epochs, args.repeats, args.instrumented, args.cold) < 1:
        parser.error("--trials, --epochs, --repeats, --instrumented and --cold must be >= 1")
    apply_blas_threads(parser, args)

    from runner.engine.experiment import load_dataset
    from runner.engine.plugin_manager import load_plugins
    from runner.experiment_file.spec import TOP_LEVEL, load

    info = machine()
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    runs = work / "runs"
    try:
        raw = bench_experiment(args.experiment, args.trials, args.epochs)
        experiment = work / "bench-experiment.json"
        experiment.write_text(json.dumps(raw, indent=2))
        raw_off = bench_experiment(args.experiment, args.trials, args.epochs, CHECKPOINTS_OFF)
        experiment_off = work / "bench-experiment-checkpoints-off.json"
        experiment_off.write_text(json.dumps(raw_off, indent=2))
        raw_watchless = bench_experiment(args.experiment, args.trials, args.epochs, divergence={"collapse": False})
        experiment_watchless = work / "bench-experiment-collapse-off.json"
        experiment_watchless.write_text(json.dumps(raw_watchless, indent=2))
        has_checkpoints = "checkpoint" in TOP_LEVEL

        print(
            f"runner overhead benchmark: {args.trials} trials x {args.epochs} epochs, "
            f"{args.repeats} rounds; experiment {args.experiment} (search replaced)",
            flush=True,
        )
        print("fixed costs (fresh processes)...", flush=True)
        cold = cold_fixed_costs(experiment, work, args.cold)

        plugins = load_plugins()
        base_dir = args.experiment.resolve().parent  # relative data paths resolve as with the CLI
        spec = dataclasses.replace(load(experiment, plugins.registry), base_dir=base_dir)
        if spec.backend.name != "numpy":
            parser.error(f"the bare loop builds NumpyBackend; the experiment uses backend {spec.backend.name!r}")
        specs = {RUNNER: spec}
        if has_checkpoints:
            specs[NO_CKPT] = dataclasses.replace(load(experiment_off, plugins.registry), base_dir=base_dir)
        if hasattr(spec.divergence, "collapse"):  # the cost of watching for a collapse (issue 19)
            specs[NO_COLLAPSE] = dataclasses.replace(load(experiment_watchless, plugins.registry), base_dir=base_dir)
        checkpoint_config = dataclasses.asdict(spec.checkpoint) if has_checkpoints else None
        dataset = load_dataset(spec, plugins)
        warm = warm_fixed_costs(experiment, work, 5)

        # The trials, exactly as the runner's strategy will ask for them (setup, not timed).
        jobs = planned_jobs(spec, plugins)
        n = len(jobs)

        sides = {BARE: lambda: timed_bare(jobs, raw, dataset)}
        for name, s in specs.items():
            sides[name] = functools.partial(runner_run, s, plugins, dataset, runs)

        # Warm-up (not timed): first calls, allocator, BLAS threads; the reference metrics.
        reference = bare_run(jobs, raw, dataset)
        problems = []
        for name in specs:
            problems += [f"warm-up {name}: {p}" for p in compare(reference, sides[name]()[1])]

        print(f"timed rounds ({args.repeats} x {len(sides)} sides, order rotated each round)...", flush=True)
        wall: dict[str, list[float]] = {name: [] for name in sides}
        names = list(sides)
        for i in range(args.repeats):
            for name in rotated(names, i):
                seconds, finals = sides[name]()
                wall[name].append(seconds)
                problems += [f"round {i + 1} {name}: {p}" for p in compare(reference, finals)]
            print(f"  round {i + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in wall.items()), flush=True)

        print(f"instrumented rounds ({args.instrumented})...", flush=True)
        direct: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in sides}
        for _ in range(args.instrumented):
            for name in names:
                figures = (
                    instrumented_bare(jobs, raw, dataset, n)
                    if name == BARE
                    else instrumented_runner(specs[name], plugins, dataset, runs, n)
                )
                for key, value in figures.items():
                    direct[name][key].append(value)

        print("profiles (training calls excluded)...", flush=True)
        profiles = {name: profile_runner(s, plugins, dataset, runs) for name, s in specs.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # -- report -------------------------------------------------------------------------------
    command = "python benchmarks/bench_overhead.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    b_med = statistics.median(wall[BARE])
    print()
    print(f"# Runner overhead: {n} trials x {args.epochs} epochs, {args.repeats} rounds")
    print(f"command: {command}")
    print()
    print("## Machine")
    for key, value in info.items():
        print(f"- {key}: {value}")
    print(f"- runner side's checkpoint section: {checkpoint_config}")
    print()
    print("## Wall time of the whole run (seconds)")
    print("| side | median | min | max |")
    print("|---|---:|---:|---:|")
    for name, values in wall.items():
        m, lo, hi = median_min_max(values)
        print(f"| {name} | {m:.3f} | {lo:.3f} | {hi:.3f} |")
    print()
    print("## Overhead against the bare loop")
    print(
        "| side | runner / bare (medians) | overhead % (medians) | overhead %, paired rounds: median (min .. max) "
        "| (runner - bare) / trials, ms: medians; paired (min .. max) |"
    )
    print("|---|---:|---:|---|---|")
    summary = {}
    for name in specs:
        r_med = statistics.median(wall[name])
        paired = [(r - b) / b for r, b in zip(wall[name], wall[BARE])]
        p_med, p_min, p_max = median_min_max(paired)
        diff_ms = [(r - b) / n * 1e3 for r, b in zip(wall[name], wall[BARE])]
        _, d_min, d_max = median_min_max(diff_ms)
        overhead, per_trial = (r_med - b_med) / b_med, (r_med - b_med) / n * 1e3
        best = min(wall[name]) / min(wall[BARE]) - 1
        summary[name] = {
            "ratio": r_med / b_med,
            "overhead": overhead,
            "paired": paired,
            "overhead_of_minima": best,
            "per_trial_ms": per_trial,
        }
        print(
            f"| {name} | {r_med / b_med:.4f} | {overhead * 100:+.2f} % | {p_med * 100:+.2f} % "
            f"({p_min * 100:+.2f} .. {p_max * 100:+.2f}) | {per_trial:+.2f}; ({d_min:+.2f} .. {d_max:+.2f}) |"
        )
    print(
        "Fastest rounds only (noise on a shared machine only ever adds time): "
        + "; ".join(f"{name} {v['overhead_of_minima'] * 100:+.2f} %" for name, v in summary.items())
    )
    print(f"bare loop: {b_med / n * 1e3:.1f} ms per trial, {b_med / n / args.epochs * 1e3:.2f} ms per epoch")
    print()
    print(f"## Direct measurement: ms per trial (median (min..max) of {args.instrumented} instrumented rounds)")
    print_direct_rows(direct, names)
    floor = statistics.median(direct[BARE]["outside training, all"]) * 1e3
    print(
        "| outside training minus the bare column (runner's own, timers' cost removed) | - | "
        + " | ".join(
            f"{statistics.median(direct[name]['outside training, all']) * 1e3 - floor:.3f}" for name in names[1:]
        )
        + " |"
    )
    print(
        "Outside training = run_experiment's wall time minus the time inside the backend's __init__, "
        "begin_epoch, train_step and evaluate. The bare column is the bare loop's own bookkeeping plus "
        "the timers' cost: a floor. A longer 'training' row on a runner side means training itself "
        "ran slower there (e.g. the snapshot writer thread competing for the 2 cores)."
    )
    print()
    print("## Fixed costs once per run (ms), not included above")
    print("| stage | cold: fresh process, median (min..max) | warm: repeated in process, median (min..max) |")
    print("|---|---|---|")
    for name in cold:
        cm, clo, chi = median_min_max([s * 1e3 for s in cold[name]])
        w = warm.get(name)
        if w:
            wm, wlo, whi = median_min_max([s * 1e3 for s in w])
            warm_text = f"{wm:.1f} ({wlo:.1f}..{whi:.1f})"
        else:
            warm_text = "-"
        print(f"| {name} | {cm:.1f} ({clo:.1f}..{chi:.1f}) | {warm_text} |")
    print()
    for name, stats in profiles.items():
        print_profile(name, stats, n, args.top)

    print("## Check: same final metrics on every side")
    print_metric_check(problems, n, args.repeats + 1)
    direct_runner = statistics.median(direct[RUNNER]["outside training, all"]) * 1e3
    overhead = summary[RUNNER]["overhead"]
    print(
        f"## Targets ({RUNNER}): overhead <= 3 %: {'met' if overhead <= 0.03 else 'MISSED'} "
        f"({overhead * 100:+.2f} % from medians, {summary[RUNNER]['overhead_of_minima'] * 100:+.2f} % from the "
        f"fastest rounds); outside training < 5 ms/trial: {'met' if direct_runner < 5.0 else 'MISSED'} "
        f"(direct {direct_runner:.2f} ms, by difference {summary[RUNNER]['per_trial_ms']:+.2f} ms)"
    )
    if NO_CKPT in summary:
        d = statistics.median(direct[NO_CKPT]["outside training, all"]) * 1e3
        print(
            f"   ({NO_CKPT}: overhead {summary[NO_CKPT]['overhead'] * 100:+.2f} % from medians, "
            f"{summary[NO_CKPT]['overhead_of_minima'] * 100:+.2f} % from the fastest rounds, "
            f"outside training {d:.2f} ms/trial direct, {summary[NO_CKPT]['per_trial_ms']:+.2f} ms by difference)"
        )

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": command,
                    "machine": info,
                    "checkpoint": checkpoint_config,
                    "trials": n,
                    "epochs": args.epochs,
                    "repeats": args.repeats,
                    "wall_s": wall,
                    "summary": summary,
                    "direct_s_per_trial": {k: dict(v) for k, v in direct.items()},
                    "cold_fixed_s": cold,
                    "warm_fixed_s": warm,
                    "problems": problems,
                },
                indent=2,
            )
        )
    return 1 if problems else 0


def print_profile(name: str, stats: pstats.Stats, n: int, top: int) -> None:
    """Top functions by own time, and own time by file, per trial."""
    entries = stats.stats  # (file, line, func) -> (cc, nc, tt, ct, callers)
    total = sum(v[2] for v in entries.values())
    print(
        f"## Profile, {name} (cProfile of run_experiment, paused inside training calls): "
        f"{total / n * 1e3:.2f} ms per trial under the profiler"
    )
    print("| own ms/trial | cum ms/trial | calls/trial | function |")
    print("|---:|---:|---:|---|")
    for (file, line, func), (_cc, nc, tt, ct, _callers) in sorted(
        entries.items(), key=lambda kv: kv[1][2], reverse=True
    )[:top]:
        print(f"| {tt / n * 1e3:.3f} | {ct / n * 1e3:.3f} | {nc / n:.1f} | {short(file)}:{line}({func}) |")
    by_file: dict[str, float] = defaultdict(float)
    for (file, _line, _func), value in entries.items():
        by_file[short(file)] += value[2]
    print()
    print("| own ms/trial | share | file ('~' = builtins and C functions) |")
    print("|---:|---:|---|")
    for file, tt in sorted(by_file.items(), key=lambda kv: kv[1], reverse=True)[:top]:
        print(f"| {tt / n * 1e3:.3f} | {tt / total * 100:.1f} % | {file} |")
    print()


def short(file: str) -> str:
    """A profile entry's file, relative to the repo or site-packages where it can be."""
    if file.startswith("~") or file.startswith("<"):
        return file
    path = Path(file)
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        pass
    parts = path.parts
    for anchor in ("site-packages", "lib"):
        if anchor in parts:
            return "/".join(parts[len(parts) - parts[::-1].index(anchor) :])
    return file


if __name__ == "__main__":
    sys.exit(main())
