#!/usr/bin/env python
"""Your own ``torch.nn.Module``: the runner's loop against a hand-written PyTorch loop, in one command.

    python benchmarks/bench_own_model.py [--rounds 4] [--epochs 12] [--threads 1] [--wide-channels 64] [--profile]

The aim of issue 16: the runner's loop around a person's module costs at most 3 % of wall
time against the same module, optimizer and batches in a plain PyTorch loop, with the
default snapshots, on the digits CNN and on a wider network.

Two networks, both ``Net`` of ``experiments/digits_cnn.py`` on the digits data as
``experiments/digits_cnn.json`` trains it (``"shape": "image"``, so batches are
``(64, 1, 8, 8)``; SGD, lr 0.05, momentum 0.9, weight decay 1e-4, batch 64):

* the digits CNN, ``channels`` 16 (conv 16, conv 32, the file's own setting);
* a wider network, ``channels`` 64 (conv 64, conv 128; ``--wide-channels``), whose step
  costs several times more, so the comparison does not hinge on a fast step alone.

Two sides, in this process, with the same torch thread count (``torch.set_num_threads``,
``--threads``, default 1: on a small shared machine, torch's OpenMP threads slow down many
times over as soon as another process takes one of their cores, which would drown the
comparison; ``--threads 2`` or more measures a quiet machine's cores):

* **hand-written**: what a careful person writes by hand. ``torch.manual_seed(seed)``, then
  the module; ``torch.optim.SGD(momentum, weight_decay)``; ``CrossEntropyLoss``; the data
  as tensors once; each epoch a NumPy permutation of the training rows from
  ``np.random.default_rng(seed)`` (the order ``ModuleBackend`` draws), ``model.train()``,
  for each batch forward, loss, ``zero_grad``, ``backward``, ``step`` and ``loss.item()``
  (the runner reads every step's loss, for its divergence checks); then the validation
  split in eval mode under ``no_grad``. ``seed`` is the trial's, ``runner.engine.experiment.trial_seed(spec.seed, 0)``.
* **runner**: ``run_experiment`` (as ``runner start`` runs it, in-process: ``load_plugins``,
  the experiment validated by ``load_document``, ``load_dataset`` once, ``create_run_dir``)
  of one trial (grid over an empty space), inline executor, the default ``checkpoint``
  section: the event log, ``status.json``, a snapshot every epoch and at every new best,
  divergence checks and the control file watched. The module is built by ``ModuleBackend``
  from ``"class_path": "digits_cnn:Net"``.

One untimed warm-up run of each side and network comes first. Then every round runs each
network's sides in the order hand-written, runner, runner, hand-written (the next round
runner, hand-written, hand-written, runner): the second run of a pair was seen to be
several % slower than the first on the 2-core VM, whichever side it was, and this order
cancels that and any drift. Each run is timed alone (``run_experiment`` only: the run
folder is made before and read and removed after), after a ``gc.collect()``. Reported per
network: each side's median wall time (min..max) over its runs, the ratio of the medians,
the median (min..max) of the rounds' ratios (the runner's two runs over the hand-written
two; the overhead) and the ratio of the fastest runs.

On a small shared machine the rounds' spread is wider than 3 %, so three direct
measurements follow, whose sum estimates the overhead without that noise:

1. instrumented rounds (``--instrumented``, the order of the sides alternating): the
   hand-written loop timed by laps and the
   runner's ``ModuleBackend`` by timers around its methods, phase by phase; what
   ``run_experiment`` spends outside the backend's calls is the runner's own work (the
   loop, the event log, ``status.json``, snapshots, the control file's watcher started
   and stopped), measured directly;
2. the backend's calls against the same statements by hand, one call of each in turn
   (``--interleaved-epochs``): a ``ModuleBackend`` and the hand-written model train side
   by side, a step of one then a step of the other, so that the machine's drift hits both
   alike; the paired differences are the backend's own bookkeeping per step and per
   evaluation (the trial's generator states swapped in and out, the chunked evaluation);
3. building the trial (``ModuleBackend.__init__`` against the hand-written setup, from 1).

``--profile`` adds a cProfile of one runner round per network with the backend's training
calls left out, so it lists only the runner's own work. ``/proc/stat`` is read around every
timed run: the CPU the rest of the machine used meanwhile is reported.

Checks: in every round (warm-up included) both sides must end every epoch with
bit-identical ``train_loss``, ``val_loss`` and ``val_acc`` (the runner's from its event
log), and in the interleaved comparison every step's loss and every evaluation must be
identical; the exit status is 1 if any differ.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import os
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
if str(ROOT) not in sys.path:  # ``python benchmarks/bench_own_model.py`` from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_checkpoints import cpu_jiffies  # noqa: E402
from benchmarks.bench_overhead import MethodTimer, machine, median_min_max  # noqa: E402

EXPERIMENTS = ROOT / "experiments"
SOURCE = EXPERIMENTS / "digits_cnn.json"
AIM = 0.03
HAND, RUNNER = "hand-written", "runner"
SIDES = (HAND, RUNNER)
#: Each round's order, by round parity: drift and the position in the round hit both sides alike.
ABBA = ((HAND, RUNNER, RUNNER, HAND), (RUNNER, HAND, HAND, RUNNER))
COMPARED = ("train_loss", "val_loss", "val_acc")
#: ModuleBackend's methods that the hand-written loop does itself: "training".
TRAINING = ("__init__", "begin_epoch", "train_step", "evaluate")
#: Backend methods only the runner calls (each epoch's settings, the snapshots' copies).
OTHER_BACKEND = ("hyperparameters", "state", "pending_losses")


def experiment(channels: int, epochs: int) -> dict:
    """``experiments/digits_cnn.json``'s data, model and train sections (``channels`` and
    ``epochs`` set), on the CPU, one trial, the inline executor, the default checkpoint section."""
    raw = json.loads(SOURCE.read_text())
    raw["name"] = f"bench-own-model-{channels}"
    raw["backend"] = {"name": "torch", "device": "cpu"}
    raw["model"]["init_args"] = {**raw["model"].get("init_args", {}), "channels": channels}
    raw["train"]["epochs"] = epochs
    raw["search"] = {"strategy": {"name": "grid"}, "metric": "val_acc", "mode": "max", "space": {}}
    raw["executor"] = {"name": "inline"}
    raw.pop("checkpoint", None)  # the default snapshots
    return raw


# -- the two sides ----------------------------------------------------------------------------


class Laps:
    """The hand-written loop's timers in the instrumented rounds: ``lap(name)`` adds the time
    since the previous lap to ``name`` (the ModuleBackend method doing the same work)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] += now - self.last
        self.last = now


def no_lap(name: str) -> None:
    """The timed rounds' ``lap``: nothing."""


def hand_setup(net_class: type, init_args: dict, train: dict, data, seed: int) -> tuple:
    """What a person sets up by hand: the module from the seed, SGD, the loss, the data as
    tensors once, the NumPy generator of each epoch's order, the rows and the batch size."""
    import numpy as np
    import torch

    torch.manual_seed(seed)
    model = net_class(**init_args)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=train["lr"], momentum=train["momentum"], weight_decay=train["weight_decay"]
    )
    loss_fn = torch.nn.CrossEntropyLoss()
    x_train = torch.as_tensor(np.ascontiguousarray(data.x_train), dtype=torch.float32)
    y_train = torch.as_tensor(data.y_train, dtype=torch.int64)
    x_val = torch.as_tensor(np.ascontiguousarray(data.x_val), dtype=torch.float32)
    y_val = torch.as_tensor(data.y_val, dtype=torch.int64)
    order = np.random.default_rng(seed)
    m, batch = len(x_train), min(train["batch_size"], len(x_train))
    return model, optimizer, loss_fn, x_train, y_train, x_val, y_val, order, m, batch


def hand_written(net_class: type, init_args: dict, train: dict, data, seed: int, lap=no_lap) -> list[dict]:
    """The plain PyTorch loop; each epoch's train_loss (mean of the steps' losses), val_loss and val_acc."""
    import torch

    model, optimizer, loss_fn, x_train, y_train, x_val, y_val, order, m, batch = hand_setup(
        net_class, init_args, train, data, seed
    )
    history = []
    lap("__init__")
    for _ in range(train["epochs"]):
        model.train()
        perm = torch.as_tensor(order.permutation(m))
        total, steps = 0.0, 0
        lap("begin_epoch")
        for start in range(0, m, batch):
            rows = perm[start : start + batch]
            loss = loss_fn(model(x_train[rows]), y_train[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
            steps += 1
            lap("train_step")
        model.eval()
        with torch.no_grad():
            out = model(x_val)
            val_loss = loss_fn(out, y_val).item()
            val_acc = (out.argmax(dim=1) == y_val).sum().item() / len(y_val)
        lap("evaluate")
        history.append({"train_loss": total / steps, "val_loss": val_loss, "val_acc": val_acc})
    return history


def measured(function, *args):
    """``function(*args)`` after a collection: (its wall seconds, its result, the CPU the rest
    of the machine used meanwhile, in cores; None without /proc/stat)."""
    gc.collect()
    before, own = cpu_jiffies(), time.process_time()
    start = time.perf_counter()
    result = function(*args)
    seconds = time.perf_counter() - start
    after, own = cpu_jiffies(), time.process_time() - own
    others = None
    if before and after:
        others = max(0.0, (after[0] - before[0]) / os.sysconf("SC_CLK_TCK") - own) / seconds
    return seconds, result, others


def run_hand(setup: tuple, lap=no_lap):
    """One hand-written run, timed: (seconds, each epoch's metrics, others' CPU)."""
    return measured(hand_written, *setup, lap)


def run_runner(spec, plugins, dataset, root: Path, profiler: cProfile.Profile | None = None):
    """One ``run_experiment``, timed alone: the run directory is made before and read and
    removed after. (seconds, each epoch's metrics from the event log, others' CPU, snapshot files written)."""
    from runner.engine.loop import run_experiment
    from runner.records.files import create_run_dir

    run_dir = create_run_dir(root, spec.name)

    def run():
        if profiler is not None:
            profiler.enable()
        try:
            return run_experiment(spec, plugins, dataset, run_dir)
        finally:
            if profiler is not None:
                profiler.disable()

    seconds, board, others = measured(run)
    bad = [(r.trial, r.state, r.reason) for r in board if r.state != "completed"]
    assert len(board) == 1 and not bad, f"expected one completed trial: {bad or len(board)}"
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    history = [{k: e[k] for k in COMPARED} for e in events if e["event"] == "epoch_end"]
    snapshots = sum(1 for p in run_dir.rglob("*.safetensors") if p.is_file())
    shutil.rmtree(run_dir)
    return seconds, history, others, snapshots


def last(runs: dict[str, list[float]]) -> list[float]:
    """Each side's time in the round just run (its two runs)."""
    return [sum(runs[side][-2:]) for side in SIDES]


def compare(hand: list[dict], runner: list[dict]) -> list[str]:
    """Epochs whose metrics differ between the sides (exact equality)."""
    if len(hand) != len(runner):
        return [f"{len(hand)} epochs by hand, {len(runner)} by the runner"]
    return [f"epoch {i}: hand {h} != runner {r}" for i, (h, r) in enumerate(zip(hand, runner)) if h != r]


# -- where the time goes ------------------------------------------------------------------------

PHASES = {
    "__init__": "build: module, optimizer, data as tensors (backend.__init__)",
    "begin_epoch": "each epoch's order (begin_epoch)",
    "train_step": "steps (train_step)",
    "evaluate": "validation (evaluate)",
}
OUTSIDE = "outside those: the loop's own (runner) / loop remainder (by hand)"
OWN_PARTS = {
    "state": "  of which backend.state(): snapshot copies",
    "store": "  of which CheckpointStore.save + collect + finish",
    "hyperparameters": "  of which backend.hyperparameters() + pending_losses()",
}


def instrumented_pair(setup: dict, plugins, root: Path, runner_first: bool) -> dict[str, dict[str, float]]:
    """A hand-written run with its laps timed and a runner run with ModuleBackend's methods
    and the snapshot store timed, in the order asked for: seconds per phase, each side."""
    from runner.engine.checkpoints import CheckpointStore
    from runner.plugins.backends.torch_module.backend import ModuleBackend

    laps = Laps()

    def laps_from_now(*args):
        laps.last = time.perf_counter()
        return hand_written(*args, laps)

    def timed_runner() -> float:
        with contextlib.ExitStack() as stack:
            timers.append(stack.enter_context(MethodTimer(ModuleBackend, TRAINING + OTHER_BACKEND)))
            timers.append(stack.enter_context(MethodTimer(CheckpointStore, ("save", "collect", "finish"))))
            return run_runner(setup["spec"], plugins, setup["dataset"], root)[0]

    timers: list[MethodTimer] = []
    if runner_first:
        seconds = timed_runner()
    hand_seconds, _, _ = measured(laps_from_now, *setup["hand"])
    if not runner_first:
        seconds = timed_runner()
    backend, store = timers
    hand = {PHASES[k]: laps.seconds[k] for k in PHASES}
    hand[OUTSIDE] = hand_seconds - sum(laps.seconds[k] for k in PHASES)
    hand["wall"] = hand_seconds
    runner = {PHASES[k]: backend.seconds[k] for k in PHASES}
    runner[OUTSIDE] = seconds - backend.total(TRAINING)
    runner[OWN_PARTS["state"]] = backend.seconds["state"]
    runner[OWN_PARTS["store"]] = store.total(("save", "collect", "finish"))
    runner[OWN_PARTS["hyperparameters"]] = backend.total(("hyperparameters", "pending_losses"))
    runner["wall"] = seconds
    runner["snapshots taken (count)"] = store.calls["save"]
    return {HAND: hand, RUNNER: runner}


def interleaved(setup: dict, epochs: int) -> tuple[dict[str, list[float]], list[str]]:
    """The backend's own calls against the hand-written statements, one call of each in turn
    (the order swapping every time), so that the machine's drift hits both alike: a
    ``ModuleBackend`` built as the runner builds it (``spec.backend_class``, the trial's
    seed) and the hand-written model, optimizer and data, ``epochs`` epochs of each.
    Seconds of every step and every evaluation, each side, and the results that differ
    (both sides train the same weights on the same batches, so none should)."""
    import torch

    from runner.experiment_file.spec import trial_sections
    from runner.imports import experiment_folder

    spec, data, seed = setup["spec"], setup["dataset"], setup["seed"]
    net_class, init_args, train, _, _ = setup["hand"]
    model_section, train_section, options = trial_sections(spec, {})
    with experiment_folder(spec.base_dir):
        backend = spec.backend_class(model=model_section, train=train_section, options=options, data=data, seed=seed)
    model, optimizer, loss_fn, x_train, y_train, x_val, y_val, order, m, batch = hand_setup(
        net_class, init_args, train, data, seed
    )
    perm = None

    def hand_step(start: int) -> float:
        rows = perm[start : start + batch]
        loss = loss_fn(model(x_train[rows]), y_train[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    def hand_evaluate() -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            out = model(x_val)
            loss, acc = loss_fn(out, y_val).item(), (out.argmax(dim=1) == y_val).sum().item() / len(y_val)
        model.train()
        return loss, acc

    clock = time.perf_counter
    times: dict[str, list[float]] = {"step, hand": [], "step, backend": [], "eval, hand": [], "eval, backend": []}
    turn, problems = 0, []
    gc.collect()
    for epoch in range(epochs):
        backend.begin_epoch(epoch)
        perm = torch.as_tensor(order.permutation(m))
        for start in range(0, m, batch):
            calls = [("step, backend", backend.train_step), ("step, hand", lambda s=start: hand_step(s))]
            results = {}
            for name, call in calls if turn % 2 else reversed(calls):
                t = clock()
                results[name] = call()
                times[name].append(clock() - t)
            if results["step, backend"] != results["step, hand"]:
                problems.append(f"epoch {epoch}, step at row {start}: losses {results}")
            turn += 1
        calls = [("eval, backend", lambda: backend.evaluate("val")), ("eval, hand", hand_evaluate)]
        results = {}
        for name, call in calls if epoch % 2 else reversed(calls):
            t = clock()
            results[name] = call()
            times[name].append(clock() - t)
        if tuple(results["eval, backend"].values()) != results["eval, hand"]:
            problems.append(f"epoch {epoch}, evaluation: {results}")
    return times, problems


def profile_runner(spec, plugins, dataset, root: Path, top: int) -> str:
    """cProfile of one runner run, paused inside the backend's training calls; the top rows by own time."""
    from runner.plugins.backends.torch_module.backend import ModuleBackend

    profiler = cProfile.Profile()
    with MethodTimer(ModuleBackend, TRAINING, profiler=profiler):
        run_runner(spec, plugins, dataset, root, profiler=profiler)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    total = next((line.strip() for line in lines if "function calls" in line), "")
    return "\n".join([total, *lines[start:]]).rstrip()


# -- the benchmark --------------------------------------------------------------------------------


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + (" with uncommitted changes" if dirty.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    parser.add_argument(
        "--rounds", type=int, default=4, help="timed rounds, each two runs of each side and network (default 4)"
    )
    parser.add_argument("--epochs", type=int, default=12, help="epochs per run (default 12, as digits_cnn.json)")
    parser.add_argument(
        "--threads", type=int, default=1, help=f"torch threads, both sides (default 1; usable cores here: {usable})"
    )
    parser.add_argument("--channels", type=int, default=16, help="channels of the digits CNN (default 16)")
    parser.add_argument(
        "--wide-channels", type=int, default=64, help="channels of the wider network (default 64: conv 64, conv 128)"
    )
    parser.add_argument(
        "--instrumented", type=int, default=2, help="instrumented rounds, the sides' order alternating (default 2)"
    )
    parser.add_argument(
        "--interleaved-epochs",
        type=int,
        default=6,
        help="epochs of the interleaved comparison of the backend's calls with the same statements by hand (default 6)",
    )
    parser.add_argument("--profile", action="store_true", help="also profile one runner round per network")
    parser.add_argument("--top", type=int, default=15, help="rows of each profile (default 15)")
    parser.add_argument("--json", type=Path, help="also write every raw figure to this JSON file")
    args = parser.parse_args(argv)
    if (
        min(args.rounds, args.epochs, args.threads, args.channels, args.wide_channels) < 1
        or min(args.instrumented, args.interleaved_epochs) < 0
    ):
        parser.error("counts must be >= 1 (--instrumented and --interleaved-epochs >= 0)")

    import torch

    from runner.engine.experiment import load_dataset, trial_seed
    from runner.engine.plugin_manager import load_plugins
    from runner.experiment_file.spec import load_document
    from runner.imports import import_object

    torch.set_num_threads(args.threads)
    info = machine()
    info["torch"] = (
        f"{torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()} (both sides), "
        f"interop threads {torch.get_num_interop_threads()}"
    )
    info["git"] = git_commit()
    command = "python benchmarks/bench_own_model.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    started = time.perf_counter()

    plugins = load_plugins()
    nets = {
        f"digits CNN (Net, channels {args.channels})": args.channels,
        f"wider CNN (Net, channels {args.wide_channels})": args.wide_channels,
    }
    setups = {}
    for net, channels in nets.items():
        raw = experiment(channels, args.epochs)
        spec = load_document(raw, plugins.registry, base_dir=EXPERIMENTS)
        dataset = load_dataset(spec, plugins)
        net_class = import_object(raw["model"]["class_path"], where="model.class_path", base_dir=EXPERIMENTS)
        seed = trial_seed(spec.seed, 0)
        setups[net] = {
            "spec": spec,
            "dataset": dataset,
            "seed": seed,
            "hand": (net_class, raw["model"]["init_args"], raw["train"], dataset, seed),
        }
    data = next(iter(setups.values()))["dataset"]
    steps = -(-len(data.x_train) // min(64, len(data.x_train)))
    print(
        f"own-model overhead: {len(nets)} networks x {args.epochs} epochs x {steps} steps, {args.rounds} rounds, "
        f"torch threads {torch.get_num_threads()}; train/val rows {len(data.x_train)}/{len(data.x_val)}, "
        f"input {tuple(data.x_train.shape[1:])}",
        flush=True,
    )

    work = Path(tempfile.mkdtemp(prefix="bench-own-model-"))
    runs = work / "runs"
    wall: dict[str, dict[str, list[float]]] = {net: {side: [] for side in SIDES} for net in nets}
    others: list[float] = []
    problems: list[str] = []
    finals: dict[str, dict] = {}
    reference: dict[str, list[dict]] = {}
    paired: dict[str, list[float]] = {net: [] for net in nets}
    snapshot_files: dict[str, int] = {}
    direct: dict[str, dict[str, dict[str, list[float]]]] = {
        net: {side: defaultdict(list) for side in SIDES} for net in nets
    }
    profiles: dict[str, str] = {}
    calls: dict[str, dict[str, list[float]]] = {}
    try:

        def one(net: str, side: str):
            """(seconds, each epoch's metrics, others' CPU) of one run of ``side``."""
            s = setups[net]
            if side == HAND:
                return run_hand(s["hand"])
            seconds, history, share, files = run_runner(s["spec"], plugins, s["dataset"], runs)
            snapshot_files[net] = files
            return seconds, history, share

        # Warm-up (not timed): first calls, allocator, caches; the reference metrics.
        for net in nets:
            _, hand, _ = one(net, HAND)
            seconds, runner_history, _ = one(net, RUNNER)
            problems.extend(f"{net}, warm-up: {p}" for p in compare(hand, runner_history))
            reference[net], finals[net] = hand, hand[-1]
            print(f"  warm-up {net}: runner {seconds:.2f} s; last epoch {hand[-1]}", flush=True)

        for i in range(args.rounds):
            for net in nets:
                spent = dict.fromkeys(SIDES, 0.0)
                for side in ABBA[i % 2]:
                    seconds, history, share = one(net, side)
                    wall[net][side].append(seconds)
                    spent[side] += seconds
                    if share is not None:
                        others.append(share)
                    problems.extend(f"{net}, round {i + 1}, {side}: {p}" for p in compare(reference[net], history))
                paired[net].append(spent[RUNNER] / spent[HAND])
            print(
                f"  round {i + 1}: "
                + "; ".join(
                    f"{net}: " + ", ".join(f"{s} {spent_s:.3f} s" for s, spent_s in zip(SIDES, last(wall[net])))
                    for net in nets
                ),
                flush=True,
            )

        for i in range(args.instrumented):
            for net in nets:
                for side, figures in instrumented_pair(setups[net], plugins, runs, runner_first=i % 2 == 1).items():
                    for key, value in figures.items():
                        direct[net][side][key].append(value)
            print(f"  instrumented round {i + 1} of {args.instrumented} done", flush=True)

        if args.interleaved_epochs:
            for net in nets:
                calls[net], mismatches = interleaved(setups[net], args.interleaved_epochs)
                problems.extend(f"{net}, interleaved: {p}" for p in mismatches)
            print("  interleaved calls done", flush=True)

        if args.profile:
            for net, s in setups.items():
                profiles[net] = profile_runner(s["spec"], plugins, s["dataset"], runs, args.top)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # -- report ---------------------------------------------------------------------------------
    print()
    print("# Your own torch.nn.Module: the runner's loop against a hand-written PyTorch loop")
    print(f"command: {command}  ({time.perf_counter() - started:.0f} s)")
    print()
    print("## Machine")
    for key, value in info.items():
        print(f"- {key}: {value}")
    if others:
        print(
            f"- CPU the rest of the machine used during the timed runs: median {statistics.median(others) * 100:.0f} %,"
            f" max {max(others) * 100:.0f} % of one core"
        )
    print()
    print(
        f"## Wall time per run ({args.epochs} epochs x {steps} steps of 64 and an evaluation of the {len(data.x_val)} "
        f"validation rows; s, median (min..max) of {2 * args.rounds} runs in {args.rounds} rounds)"
    )
    print(
        "| network | hand-written | runner | runner / hand-written, medians | rounds: median (min..max) "
        "| fastest runs | overhead | aim <= 3 % |"
    )
    print("|---|---|---|---:|---|---:|---:|---|")
    summary = {}
    for net in nets:
        h, r = wall[net][HAND], wall[net][RUNNER]
        h_med, h_lo, h_hi = median_min_max(h)
        r_med, r_lo, r_hi = median_min_max(r)
        p_med, p_lo, p_hi = median_min_max(paired[net])
        overhead = p_med - 1
        summary[net] = {
            "hand_s": h_med,
            "runner_s": r_med,
            "ratio_of_medians": r_med / h_med,
            "paired": paired[net],
            "fastest": r_lo / h_lo,
            "overhead": overhead,
            "met": overhead <= AIM,
            "ms_per_step": h_med / (args.epochs * steps) * 1e3,
        }
        print(
            f"| {net} | {h_med:.3f} ({h_lo:.3f}..{h_hi:.3f}) | {r_med:.3f} ({r_lo:.3f}..{r_hi:.3f}) | "
            f"{r_med / h_med:.4f} | {p_med:.4f} ({p_lo:.4f}..{p_hi:.4f}) | {r_lo / h_lo:.4f} | "
            f"{overhead * 100:+.2f} % | {'met' if overhead <= AIM else 'MISSED'} |"
        )
    print(
        "Overhead = median of the rounds' ratios - 1. Hand-written ms per step, all included: "
        + ", ".join(f"{net} {s['ms_per_step']:.2f}" for net, s in summary.items())
    )
    print()
    if args.instrumented:
        print(
            f"## Where the time goes (ms per run, median of {args.instrumented} instrumented rounds; "
            "the hand-written loop timed by laps, the runner's backend by timers around its methods)"
        )
        print(
            "| | "
            + " | ".join(f"{net}: {side}" for net in nets for side in SIDES)
            + " | "
            + " | ".join(f"{net}: runner - hand" for net in nets)
            + " |"
        )
        print("|---|" + "---:|" * (3 * len(nets)))
        keys = list(dict.fromkeys(k for net in nets for side in SIDES for k in direct[net][side]))
        for key in keys:
            cells, diffs = [], []
            for net in nets:
                values = {side: direct[net][side].get(key) for side in SIDES}
                meds = {side: statistics.median(v) if v else None for side, v in values.items()}
                for side in SIDES:
                    m = meds[side]
                    cells.append("-" if m is None else f"{m:.0f}" if "count" in key else f"{m * 1e3:.1f}")
                both = all(m is not None for m in meds.values()) and "count" not in key
                diffs.append(f"{(meds[RUNNER] - meds[HAND]) * 1e3:+.1f}" if both else "-")
            print(f"| {key} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
        print(
            "The runner - hand differences of the backend's phases are within this machine's noise (see the "
            "rounds' spread and the interleaved comparison below); the row outside those, the runner's own work, "
            "is timed directly."
        )
        print()
    if calls:
        print(
            f"## The backend's calls against the same statements by hand, one of each in turn "
            f"({args.interleaved_epochs} epochs; µs, medians)"
        )
        print(
            "| network | step by hand | backend.train_step | paired difference | evaluation by hand "
            "| backend.evaluate | paired difference |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for net in nets:
            t = calls[net]
            cells = []
            for kind in ("step", "eval"):
                hand, back = t[f"{kind}, hand"], t[f"{kind}, backend"]
                diff = statistics.median([b - a for a, b in zip(hand, back)])
                summary[net][f"{kind}_extra_s"] = diff
                cells += [
                    f"{statistics.median(hand) * 1e6:.0f}",
                    f"{statistics.median(back) * 1e6:.0f}",
                    f"{diff * 1e6:+.1f} ({diff / statistics.median(hand) * 100:+.2f} %)",
                ]
            print(f"| {net} | " + " | ".join(cells) + " |")
        print()
    if args.instrumented:
        print("## The overhead from the direct measurements (ms per run; % of the hand-written run)")
        for net in nets:
            d = direct[net]
            hand_wall = statistics.median(d[HAND]["wall"])
            own = statistics.median(d[RUNNER][OUTSIDE]) - statistics.median(d[HAND][OUTSIDE])
            build = statistics.median(d[RUNNER][PHASES["__init__"]]) - statistics.median(d[HAND][PHASES["__init__"]])
            parts = {"the runner's own work outside the backend's calls": own, "building the trial": build}
            if calls:
                parts["the backend's steps"] = summary[net]["step_extra_s"] * args.epochs * steps
                parts["the backend's evaluations"] = summary[net]["eval_extra_s"] * args.epochs
            total = sum(parts.values())
            summary[net]["direct_own"] = own / hand_wall
            summary[net]["direct_total"] = total / hand_wall
            print(
                f"- {net}: "
                + "; ".join(
                    f"{name} {value * 1e3:+.1f} ({value / hand_wall * 100:+.2f} %)" for name, value in parts.items()
                )
                + f"; together {total * 1e3:+.1f} ms = {total / hand_wall * 100:+.2f} % of {hand_wall:.3f} s"
            )
        print()
    print("## Check: both sides compute the same thing")
    for net in nets:
        print(
            f"- {net}: last epoch {finals[net]}; trial seed {setups[net]['seed']}; "
            f"snapshot files the runner's run left: {snapshot_files.get(net)}"
        )
    if problems:
        print(f"FAILED: {len(problems)} mismatches")
        for problem in problems[:20]:
            print("  " + problem)
    else:
        print(
            f"ok: every epoch's {', '.join(COMPARED)} bit-identical on both sides, both networks, "
            f"in all {2 * args.rounds + 1} runs of each (warm-up included)"
            + (", and every interleaved step's loss and evaluation identical" if calls else "")
        )
    print()
    for net, text in profiles.items():
        print(f"## cProfile of one runner round, {net} (the backend's training calls left out; by own time)")
        print("```")
        print(text)
        print("```")
        print()
    print("## Aim: runner overhead <= 3 % with default snapshots")
    for net, s in summary.items():
        lo, hi = min(s["paired"]), max(s["paired"])
        noisy = (hi - lo) / 2 > AIM
        print(
            f"- {net}: wall time {'met' if s['met'] else 'MISSED'} ({s['overhead'] * 100:+.2f} % from the "
            f"rounds, {(s['ratio_of_medians'] - 1) * 100:+.2f} % from the medians, {(s['fastest'] - 1) * 100:+.2f} % "
            f"from the fastest runs; the rounds spread {(lo - 1) * 100:+.1f} .. {(hi - 1) * 100:+.1f} %"
            + (", wider than the aim: the wall-time verdict is noise here)" if noisy else ")")
        )
        if "direct_total" in s:
            print(
                f"  direct measurements {'met' if s['direct_total'] <= AIM else 'MISSED'} "
                f"({s['direct_total'] * 100:+.2f} %, of which the runner's own work outside the backend's calls "
                f"{s['direct_own'] * 100:.2f} %)"
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": command,
                    "machine": info,
                    "wall_s": wall,
                    "summary": summary,
                    "direct_s": {n: {side: dict(v) for side, v in d.items()} for n, d in direct.items()},
                    "interleaved_s": calls,
                    "others": others,
                    "problems": problems,
                },
                indent=2,
                default=str,
            )
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
