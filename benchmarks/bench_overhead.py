#!/usr/bin/env python
"""Overhead of the runner against a bare hand-written NumPy loop, in one command.

    python benchmarks/bench_overhead.py [--trials 20] [--epochs 15] [--repeats 9]

Both sides train the same ``NumpyBackend`` on the same prepared data, for the same trials
(same parameters, same per-trial seeds from ``runner.loop.trial_seed``):

* bare:   build ``NumpyBackend`` directly and run ``for epoch: begin_epoch; for steps:
          train_step; evaluate("val")``. No runner code besides the backend and the data.
* runner: ``run_experiment(spec, plugins, dataset, run_dir)`` with the real plugin manager
          (entry points loaded), writing the real ``events.jsonl`` and ``results.json`` in a
          temporary folder. No terminal reporter (only the CLI registers one).

The two sides alternate (bare, runner, runner, bare, ...) over ``--repeats`` rounds so that
machine drift and position effects cancel. Reported:

1. wall time per side (median, min, max), runner/bare, overhead %;
2. time per trial outside training: (runner - bare) / trials, and a direct measurement:
   the backend's training methods wrapped with timers, everything else counted as outside;
3. the fixed costs a ``runner start`` pays once per run (imports, ``load_plugins``,
   ``spec.load``, ``load_dataset``, ``create_run_dir``), cold (fresh interpreter) and warm;
4. a cProfile of one runner run with the backend's training calls excluded, so only the
   runner's own work is listed.

Every round checks that both sides end every trial with bit-identical metrics.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import dataclasses
import datetime
import functools
import gc
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

#: What a fresh ``runner start`` process does before its first trial, stage by stage.
COLD_CHILD = r"""
import json, sys, time
from pathlib import Path
t = [time.perf_counter()]
import runner.cli  # what the `runner` console script imports (click, rich, the core)
from runner.files import create_run_dir
from runner.loop import load_dataset
from runner.plugins import load_plugins
from runner.spec import load
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
        self._saved = {name: self.cls.__dict__[name] for name in self.methods}
        for name, method in self._saved.items():
            setattr(self.cls, name, self._wrap(name, method))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, method in self._saved.items():
            setattr(self.cls, name, method)

    def _wrap(self, name, method):
        seconds, calls, profiler = self.seconds, self.calls, self.profiler
        clock = time.perf_counter

        if profiler is None:
            @functools.wraps(method)
            def timed(*args, **kwargs):
                start = clock()
                try:
                    return method(*args, **kwargs)
                finally:
                    seconds[name] += clock() - start
                    calls[name] += 1
        else:
            @functools.wraps(method)
            def timed(*args, **kwargs):
                profiler.disable()
                start = clock()
                try:
                    return method(*args, **kwargs)
                finally:
                    seconds[name] += clock() - start
                    calls[name] += 1
                    profiler.enable()
        return timed

    def total(self, names: tuple[str, ...]) -> float:
        return sum(self.seconds[n] for n in names)


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


def bare_run(jobs: list[tuple[int, dict, int]], raw: dict, dataset) -> dict[int, dict[str, float]]:
    """The hand-written loop: NumpyBackend built directly, epochs of steps, evaluate("val")."""
    from plugins.backends.numpy_mlp.backend import Model, NumpyBackend, Options, Train

    finals = {}
    for trial, params, seed in jobs:
        cfg = bare_configs(raw, params)
        model = Model(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["model"].items()})
        train = Train(**cfg["train"])
        options = Options(**{k: v for k, v in cfg["backend"].items() if k != "name"})
        backend = NumpyBackend(model=model, train=train, options=options, data=dataset, seed=seed)
        for epoch in range(train.epochs):
            backend.begin_epoch(epoch)
            total = 0.0
            steps = backend.steps_per_epoch
            for _ in range(steps):
                total += backend.train_step()
            val = backend.evaluate("val")
        finals[trial] = {"train_loss": total / steps, "val_loss": val["loss"], "val_acc": val["acc"]}
    return finals


def runner_run(spec, plugins, dataset, root: Path) -> tuple[float, dict[int, dict[str, float]]]:
    """One ``run_experiment``, timed; the run directory is made before and removed after."""
    from runner.files import create_run_dir
    from runner.loop import run_experiment

    run_dir = create_run_dir(root, spec.name)
    gc.collect()
    start = time.perf_counter()
    board = run_experiment(spec, plugins, dataset, run_dir)
    seconds = time.perf_counter() - start
    for name in ("events.jsonl", "results.json", "experiment.json"):
        assert (run_dir / name).is_file(), f"the runner wrote no {name}"
    bad = [(r.trial, r.state, r.reason) for r in board if r.state != "completed"]
    assert not bad, f"trials did not complete: {bad}"
    shutil.rmtree(run_dir)
    return seconds, {r.trial: {k: r.final[k] for k in COMPARED} for r in board}


def timed_bare(jobs, raw, dataset) -> tuple[float, dict]:
    gc.collect()
    start = time.perf_counter()
    finals = bare_run(jobs, raw, dataset)
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

        blas = ", ".join(f"{p.get('internal_api')} {p.get('version')} {p.get('num_threads')} threads"
                         for p in threadpool_info()) or "none found"
    except ImportError:
        blas = "threadpoolctl not installed; env " + ", ".join(
            f"{k}={os.environ[k]}" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ)
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
        out = subprocess.run([sys.executable, "-c", COLD_CHILD, str(experiment), str(work / f"cold{i}")],
                             check=True, cwd=ROOT, capture_output=True, text=True).stdout
        for name, seconds in json.loads(out.strip().splitlines()[-1]).items():
            stages[name].append(seconds)
    return stages


def warm_fixed_costs(experiment: Path, work: Path, times: int) -> dict[str, list[float]]:
    """The same stages repeated in this (warm) process: modules and files already loaded."""
    from runner.files import create_run_dir
    from runner.loop import load_dataset
    from runner.plugins import load_plugins
    from runner.spec import load

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
        for name, seconds in (("load_plugins", t1 - t0), ("spec.load", t2 - t1),
                              ("load_dataset", t3 - t2), ("create_run_dir", t4 - t3)):
            stages[name].append(seconds)
    return stages


# -- the benchmark --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", type=Path, default=DEFAULT_EXPERIMENT,
                        help="experiment file whose data, model and train sections are used "
                             "(default: experiments/digits_random.json); its search is replaced by a "
                             "random search over train.lr and train.momentum, its executor by inline")
    parser.add_argument("--trials", type=int, default=20, help="trials per run (default 20)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per trial (default 15)")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds of bare + runner (default 9)")
    parser.add_argument("--instrumented", type=int, default=3,
                        help="rounds with the backend's methods timed, for the direct measurement (default 3)")
    parser.add_argument("--cold", type=int, default=3, help="fresh processes for the cold fixed costs (default 3)")
    parser.add_argument("--top", type=int, default=15, help="rows of the runner-side profile (default 15)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    if min(args.trials, args.epochs, args.repeats, args.instrumented, args.cold) < 1:
        parser.error("--trials, --epochs, --repeats, --instrumented and --cold must be >= 1")

    from runner.loop import TrialRunner, load_dataset, trial_seed
    from runner.plugins import load_plugins
    from runner.spec import load
    from runner.trial import History

    from plugins.backends.numpy_mlp.backend import NumpyBackend

    info = machine()
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    try:
        # The benchmark's experiment: the file's data/model/train, a fixed random search.
        raw = json.loads(args.experiment.read_text())
        raw["train"]["epochs"] = args.epochs
        search = raw.get("search", {})
        raw["search"] = {"strategy": {"name": "random", "trials": args.trials},
                         "metric": search.get("metric", "val_acc"), "mode": search.get("mode", "max"),
                         "space": SPACE}
        raw["executor"] = {"name": "inline"}
        experiment = work / "bench-experiment.json"
        experiment.write_text(json.dumps(raw, indent=2))

        print(f"runner overhead benchmark: {args.trials} trials x {args.epochs} epochs, "
              f"{args.repeats} rounds; experiment {args.experiment} (search replaced)", flush=True)
        print("fixed costs (fresh processes)...", flush=True)
        cold = cold_fixed_costs(experiment, work, args.cold)

        plugins = load_plugins()
        spec = load(experiment, plugins.registry)
        # Relative data paths resolve against the original file's folder, as with the CLI.
        spec = dataclasses.replace(spec, base_dir=args.experiment.resolve().parent)
        if spec.backend.name != "numpy":
            parser.error(f"the bare loop builds NumpyBackend; the experiment uses backend {spec.backend.name!r}")
        dataset = load_dataset(spec, plugins)
        warm = warm_fixed_costs(experiment, work, 5)

        # The trials, exactly as the runner's strategy will ask for them (setup, not timed).
        strategy = plugins.registry.get("strategy", "random")(
            space=spec.search.space, options=spec.search.strategy.options, seed=spec.seed,
            metric=spec.search.metric, mode=spec.search.mode)
        history, jobs = History(), []
        while (params := strategy.ask(history)) is not None:
            trial = len(history)
            history.add(trial, params)
            jobs.append((trial, params, trial_seed(spec.seed, trial)))
        n = len(jobs)

        # Warm-up (not timed): first calls, allocator, BLAS threads.
        reference = bare_run(jobs, raw, dataset)
        _, warm_runner = runner_run(spec, plugins, dataset, work / "runs")
        problems = compare(reference, warm_runner)

        print(f"timed rounds ({args.repeats} x bare + runner, alternating order)...", flush=True)
        bare_s, runner_s = [], []
        for i in range(args.repeats):
            order = ("bare", "runner") if i % 2 == 0 else ("runner", "bare")
            for side in order:
                if side == "bare":
                    seconds, finals = timed_bare(jobs, raw, dataset)
                    bare_s.append(seconds)
                else:
                    seconds, finals = runner_run(spec, plugins, dataset, work / "runs")
                    runner_s.append(seconds)
                problems += [f"round {i} {side}: {p}" for p in compare(reference, finals)]
            print(f"  round {i + 1}: bare {bare_s[-1]:.3f} s, runner {runner_s[-1]:.3f} s", flush=True)

        # Direct measurement: backend methods timed, everything else is outside training.
        print(f"instrumented rounds ({args.instrumented})...", flush=True)
        direct = defaultdict(list)
        for i in range(args.instrumented):
            with MethodTimer(NumpyBackend, TRAINING + OTHER_BACKEND) as timer:
                seconds, _ = timed_bare(jobs, raw, dataset)
            direct["bare outside training"].append((seconds - timer.total(TRAINING)) / n)
            with MethodTimer(NumpyBackend, TRAINING + OTHER_BACKEND) as timer, \
                    MethodTimer(TrialRunner, ("__call__",)) as trials:
                seconds, _ = runner_run(spec, plugins, dataset, work / "runs")
            training, in_trials = timer.total(TRAINING), trials.seconds["__call__"]
            direct["runner outside training"].append((seconds - training) / n)
            direct["  inside TrialRunner.__call__"].append((in_trials - training) / n)
            direct["    of which backend.hyperparameters()"].append(timer.seconds["hyperparameters"] / n)
            direct["  run level (ask, seeds, files), per trial"].append((seconds - in_trials) / n)
            direct["runner training (backend calls)"].append(training / n)

        # Where the runner's own time goes: cProfile with the training calls paused.
        print("profile (one runner run, training calls excluded)...", flush=True)
        profiler = cProfile.Profile()
        with MethodTimer(NumpyBackend, TRAINING, profiler=profiler):
            profiler.enable()
            runner_run(spec, plugins, dataset, work / "runs")
            profiler.disable()
        stats = pstats.Stats(profiler)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # -- report -------------------------------------------------------------------------------
    b_med, b_min, b_max = median_min_max(bare_s)
    r_med, r_min, r_max = median_min_max(runner_s)
    paired = [(r - b) / b for r, b in zip(runner_s, bare_s)]
    p_med, p_min, p_max = median_min_max(paired)
    diff_ms = [(r - b) / n * 1e3 for r, b in zip(runner_s, bare_s)]
    d_med, d_min, d_max = median_min_max(diff_ms)
    overhead = (r_med - b_med) / b_med
    per_trial_ms = (r_med - b_med) / n * 1e3
    direct_ms = {k: [v * 1e3 for v in vs] for k, vs in direct.items()}
    runner_direct = statistics.median(direct_ms["runner outside training"])

    print()
    print("## Machine")
    for key, value in info.items():
        print(f"- {key}: {value}")
    print()
    print(f"## Wall time of {n} trials x {args.epochs} epochs, {args.repeats} rounds (seconds)")
    print("| side | median | min | max |")
    print("|---|---:|---:|---:|")
    print(f"| bare loop | {b_med:.3f} | {b_min:.3f} | {b_max:.3f} |")
    print(f"| runner | {r_med:.3f} | {r_min:.3f} | {r_max:.3f} |")
    print()
    print("| figure | value | spread over rounds (min .. max) |")
    print("|---|---:|---|")
    print(f"| runner / bare (medians) | {r_med / b_med:.4f} | |")
    print(f"| overhead % = (runner - bare) / bare (medians) | {overhead * 100:+.2f} % | |")
    print(f"| overhead %, median of paired rounds | {p_med * 100:+.2f} % | {p_min * 100:+.2f} .. {p_max * 100:+.2f} % |")
    print(f"| per trial outside training, (runner - bare) / trials | {per_trial_ms:+.2f} ms | "
          f"paired {d_min:+.2f} .. {d_max:+.2f} ms (median {d_med:+.2f}) |")
    print(f"| bare loop time per trial | {b_med / n * 1e3:.1f} ms | |")
    print()
    print(f"## Direct measurement, ms per trial (median of {args.instrumented} instrumented rounds)")
    print("| where | median | min | max |")
    print("|---|---:|---:|---:|")
    for key, values in direct_ms.items():
        m, lo, hi = median_min_max(values)
        print(f"| {key} | {m:.3f} | {lo:.3f} | {hi:.3f} |")
    print("(The bare row is the bare loop's own bookkeeping plus the timers' cost: a floor.)")
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

    # The profile: top functions by own time, and own time by file.
    entries = stats.stats  # (file, line, func) -> (cc, nc, tt, ct, callers)
    total = sum(v[2] for v in entries.values())
    print(f"## Runner-side profile (cProfile, training calls paused): {total * 1e3:.1f} ms in all, "
          f"{total / n * 1e3:.2f} ms per trial under the profiler")
    print("Top functions by own time:")
    print("| own ms/trial | cum ms/trial | calls/trial | function |")
    print("|---:|---:|---:|---|")
    top = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)[:args.top]
    for (file, line, func), (cc, nc, tt, ct, _callers) in top:
        print(f"| {tt / n * 1e3:.3f} | {ct / n * 1e3:.3f} | {nc / n:.1f} | {short(file)}:{line}({func}) |")
    by_file: dict[str, float] = defaultdict(float)
    for (file, _line, _func), value in entries.items():
        by_file[short(file)] += value[2]
    print("Own time by file:")
    print("| ms/trial | share | file |")
    print("|---:|---:|---|")
    for file, tt in sorted(by_file.items(), key=lambda kv: kv[1], reverse=True)[:args.top]:
        print(f"| {tt / n * 1e3:.3f} | {tt / total * 100:.1f} % | {file} |")
    print()

    print("## Check: same final metrics on both sides")
    if problems:
        print(f"FAILED: {len(problems)} mismatches")
        for p in problems[:20]:
            print("  " + p)
    else:
        print(f"ok: all {n} trials end with identical {', '.join(COMPARED)} on both sides, "
              f"in all {args.repeats + 1} rounds (warm-up included)")
    print()
    verdict_overhead = "met" if overhead <= 0.03 else "MISSED"
    verdict_trial = "met" if runner_direct < 5.0 else "MISSED"
    print(f"## Targets: overhead <= 3 %: {verdict_overhead} ({overhead * 100:+.2f} %); "
          f"outside training < 5 ms/trial: {verdict_trial} (direct {runner_direct:.2f} ms, "
          f"by difference {per_trial_ms:+.2f} ms)")

    if args.json:
        args.json.write_text(json.dumps({
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": info, "trials": n, "epochs": args.epochs, "repeats": args.repeats,
            "bare_s": bare_s, "runner_s": runner_s, "overhead": overhead, "paired_overhead": paired,
            "per_trial_ms_by_difference": per_trial_ms, "direct_ms": direct_ms,
            "cold_fixed_s": cold, "warm_fixed_s": warm, "problems": problems,
        }, indent=2))
    return 1 if problems else 0


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
            return "/".join(parts[len(parts) - parts[::-1].index(anchor):])
    return file


if __name__ == "__main__":
    sys.exit(main())
