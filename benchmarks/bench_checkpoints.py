#!/usr/bin/env python
"""What checkpoints cost: in-memory rollback, durable snapshot files, snapshots every epoch.

    python benchmarks/bench_checkpoints.py [--samples 51] [--write-samples 41] [--rounds 7]

Three measurements, each against a baseline that does the same amount of raw work:

1. **In-memory rollback** against a plain copy of the same bytes (aim: under 2x). A real
   ``TrialLoop`` (real spec, event log, snapshot writer, checkpoint store) holds a snapshot
   of a real ``NumpyBackend`` in its memory ring; timed are ``backend.load_state(state)``,
   ``TrialLoop.restore(meta, resume=False)``, ``CheckpointStore.find("last")`` and the whole
   ``TrialLoop.rollback`` (find + load_state + restore + the ``rollback`` event).
   Baselines: ``np.copyto`` of every array of the state into preallocated buffers of the
   same shapes, and one ``np.copyto`` (a memcpy) of a single buffer of the same total size.
   Two networks: the digits demo's (64-64-10, batch norm, Adam, on the real digits data)
   and a wide one (784-512-512-10, batch norm, Adam, on a small random data set), since
   small states are dominated by per-array overhead. timeit-style: each sample runs a side
   enough times to take ``--sample-ms``; the sides take turns sample by sample (order
   rotating), with the garbage collector off.
2. **Durable snapshot** against a raw write of the same bytes (aim: under 1.5x):
   ``write_snapshot(path, state, meta)`` (checksum, safetensors, fsync, rename, folder fsync)
   against writing the concatenated raw array bytes to a file and fsyncing it, once with
   the same rename + folder fsync and once without. Same two networks and states; one call
   per sample, sides interleaved, each target file deleted just before its call (untimed),
   as the runner always writes a new name. Then where ``write_snapshot``'s time goes, stage
   by stage (a line-by-line copy of it, checked against the real one).
3. **Snapshots every epoch on the digits demo** (aim: under 5 % over no snapshots): the
   data, model and train sections of ``experiments/digits_random.json`` with the fixed
   20-trial random search of ``bench_overhead.py``, run by ``run_experiment`` with three
   ``checkpoint`` sections: a durable file every epoch (``min_interval`` 0), the default
   (memory ring every epoch, files at most every 30 s plus each trial's best at its end),
   and no snapshots at all. Rounds rotate the order of the sides. Every run must end every
   trial with bit-identical metrics. Then one instrumented run per side says where the
   time goes (state copies, queueing, waiting for the writer, the writer's own time).

The exit status is 1 if a check fails (metrics differ between sides, or the staged copy of
``write_snapshot`` no longer writes the same file).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import hashlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # ``python benchmarks/bench_checkpoints.py`` from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_overhead import rotated  # noqa: E402

DEFAULT_EXPERIMENT = ROOT / "experiments" / "digits_random.json"

#: The three ``checkpoint`` sections of measurement 3.
DURABLE, DEFAULT, OFF = "durable every epoch", "default", "no snapshots"
CHECKPOINT_SECTIONS = {
    DURABLE: {"every_epochs": 1, "min_interval": 0},
    DEFAULT: {"every_epochs": 1},
    OFF: {"every_epochs": 0, "best": False},
}
AIMS = {"rollback": 2.0, "write": 1.5, "every_epoch": {DURABLE: 0.10, DEFAULT: 0.05}}


def med_min(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), min(values)


def filesystem(path: Path) -> str:
    """The mount holding ``path``: device, type, options (from /proc/mounts)."""
    best = None
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype, options, *_ = line.split()
            if str(path.resolve()).startswith(mount) and (best is None or len(mount) > len(best[1])):
                best = (device, mount, fstype, options)
    except OSError:
        return "?"
    return f"{best[2]} on {best[0]} mounted at {best[1]} ({best[3]})" if best else "?"


# -- 1. in-memory rollback ---------------------------------------------------------------------


class Fixture:
    """A real TrialLoop around a trained backend, with one snapshot in its memory ring."""

    def __init__(self, label: str, spec, plugins, dataset, backend, work: Path):
        from runner.control.file import ControlSchema
        from runner.control.inbox import ControlInbox
        from runner.engine.checkpoints import SnapshotWriter
        from runner.engine.experiment import Experiment, TrialJob
        from runner.engine.trial_loop import TrialLoop, TrialRunner
        from runner.records.events import EventLog

        self.label, self.backend = label, backend
        run_dir = work / f"run-{label}"
        run_dir.mkdir()
        self.log = EventLog(run_dir / "events.jsonl")
        self.writer = SnapshotWriter()
        inbox = ControlInbox(run_dir / "control.json", ControlSchema(("lr",)), self.log)  # not watching: no orders
        runner = TrialRunner(Experiment(spec, run_dir, None), plugins, dataset, self.log, self.writer, inbox)
        self.loop = TrialLoop(runner, TrialJob(trial=0, params={}, seed=1))
        self.loop.backend = backend
        # One epoch of training and an evaluation, so the state is a real end-of-epoch one.
        backend.begin_epoch(0)
        for _ in range(backend.steps_per_epoch):
            backend.train_step()
        trial = self.loop.trial
        trial.epoch, trial.step = 1, backend.steps_per_epoch
        trial.metrics = {f"val_{k}": v for k, v in backend.evaluate("val").items()}
        trial.best = dict(trial.metrics)
        trial.hyperparameters = backend.hyperparameters()
        self.loop.snapshot("epoch", improved=True, durable=False)  # in the memory ring only
        _, self.state, self.meta = self.loop.store.ring[-1]
        arrays = list(self.state.arrays.values())
        self.n_arrays = len(arrays)
        self.nbytes = sum(a.nbytes for a in arrays)
        self.raw = b"".join(a.tobytes() for a in arrays)  # the concatenated array bytes
        self.shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in self.state.arrays.items() if k.startswith("param/"))

    def close(self) -> None:
        self.writer.close()
        self.log.close()


def build_fixtures(spec, plugins, dataset, work: Path, wide_rows: int) -> list[Fixture]:
    import numpy as np

    from runner.data import Dataset
    from runner.experiment_file.spec import trial_sections
    from runner.plugins.backends.numpy_mlp.backend import NumpyBackend

    model, train, options = trial_sections(spec, {})
    digits = NumpyBackend(model=model, train=train, options=options, data=dataset, seed=1)
    rng = np.random.default_rng(0)
    n_val = max(wide_rows // 4, 10)
    synthetic = Dataset(
        name="synthetic",
        x_train=rng.standard_normal((wide_rows, 784)),
        y_train=rng.integers(0, 10, wide_rows),
        x_val=rng.standard_normal((n_val, 784)),
        y_val=rng.integers(0, 10, n_val),
        classes=tuple(str(c) for c in range(10)),
    )
    wide_model = dataclasses.replace(model, hidden=(512, 512))
    wide = NumpyBackend(model=wide_model, train=train, options=options, data=synthetic, seed=1)
    return [
        Fixture("digits 64-64-10", spec, plugins, dataset, digits, work),
        Fixture("wide 784-512-512-10", spec, plugins, synthetic, wide, work),
    ]


def rollback_sides(fx: Fixture) -> dict:
    import numpy as np

    from runner.decisions import Rollback
    from runner.engine.trial_loop import RolledBack

    backend, loop, state, meta = fx.backend, fx.loop, fx.state, fx.meta
    src = list(state.arrays.values())
    dst = [np.empty_like(a) for a in src]
    pairs = list(zip(dst, src))
    big_src = np.frombuffer(bytearray(fx.raw), dtype=np.uint8)
    big_dst = np.empty_like(big_src)
    decision = Rollback(to="last", reason="benchmark")

    def copyto_arrays():
        for d, s in pairs:
            np.copyto(d, s)

    def rollback():
        loop.state.stuck_rollbacks = 0  # thousands of samples must not trip the guard against endless rollbacks
        try:
            loop.rollback(decision, "plugin")
        except RolledBack:
            pass

    return {
        "memcpy, one buffer": lambda: np.copyto(big_dst, big_src),
        "np.copyto, same arrays": copyto_arrays,
        "backend.load_state": lambda: backend.load_state(state),
        "TrialLoop.restore": lambda: loop.restore(meta, resume=False),
        "CheckpointStore.find": lambda: loop.store.find("last"),
        "TrialLoop.rollback, all": rollback,
    }


def calibrate(fn, target_s: float) -> int:
    """Calls per sample so that a sample takes about ``target_s``."""
    fn()
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        took = time.perf_counter() - start
        if took >= target_s / 4 or number >= 1 << 20:
            return max(1, round(number * target_s / max(took, 1e-9)))
        number *= 4


def interleaved_timeit(sides: dict, samples: int, target_s: float) -> dict[str, list[float]]:
    """Seconds per call, one figure per sample; sides take turns, order rotating."""
    numbers = {name: calibrate(fn, target_s) for name, fn in sides.items()}
    out: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    gc.collect()
    gc.disable()
    try:
        for i in range(samples):
            for name in rotated(names, i):
                fn, number = sides[name], numbers[name]
                start = time.perf_counter()
                for _ in range(number):
                    fn()
                out[name].append((time.perf_counter() - start) / number)
    finally:
        gc.enable()
    return out


def load_state_parts(fx: Fixture, samples: int, target_s: float) -> dict[str, list[float]]:
    """The pieces of NumpyBackend.load_state, each timed alone (line numbers in the printout)."""
    import numpy as np

    from runner.plugins.backends.mlp_family import rng_state_from_json as _rng_state_from_json
    from runner.plugins.backends.numpy_mlp.optimizers import copy_into

    backend, arrays, meta = fx.backend, fx.state.arrays, fx.state.meta
    perm = arrays["perm"]
    m = len(perm)
    opt_arrays = {k[len("opt/") :]: v for k, v in arrays.items() if k.startswith("opt/")}

    def names():  # the expected-names check, as written
        expected = {f"param/{k}" for k in backend.params} | {f"running/{k}" for k in backend.running} | {"perm"}
        expected |= {f"opt/{k}" for k in backend.optimizer.state_arrays()}
        return set(arrays) != expected

    def copies():  # the copies themselves: params, running, moments, perm
        for k, v in backend.params.items():
            copy_into(v, arrays[f"param/{k}"], f"param/{k}")
        for k, v in backend.running.items():
            copy_into(v, arrays[f"running/{k}"], f"running/{k}")
        backend.optimizer.load_state_arrays(opt_arrays, backend.optimizer.t)
        backend._perm = perm.astype(np.int64, copy=True)

    def rng():
        backend._rng.bit_generator.state = _rng_state_from_json(meta["rng"])

    return interleaved_timeit(
        {
            "backend.load_state, whole": lambda: backend.load_state(fx.state),
            "  names check (incl. optimizer.state_arrays())": names,
            "    of which optimizer.state_arrays() (copies every moment)": backend.optimizer.state_arrays,
            "  permutation check: np.sort + array_equal": lambda: np.array_equal(np.sort(perm), np.arange(m)),
            "  generator state from JSON + set": rng,
            "  the copies (copy_into, load_state_arrays, perm.astype)": copies,
        },
        samples,
        target_s,
    )


# -- 2. durable snapshots ----------------------------------------------------------------------


def write_sides(fx: Fixture, folder: Path) -> dict:
    from runner.engine.snapshot_files import fsync_dir, write_snapshot

    raw = fx.raw
    dirs = {name: folder / name for name in ("snapshot", "raw-rename", "raw")}
    for d in dirs.values():
        d.mkdir(parents=True)

    def snapshot():
        write_snapshot(dirs["snapshot"] / "snap.safetensors", fx.state, fx.meta)

    def raw_rename():
        target = dirs["raw-rename"] / "snap.bin"
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)

    def raw_fsync():
        with open(dirs["raw"] / "snap.bin", "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())

    targets = {
        "write_snapshot": dirs["snapshot"] / "snap.safetensors",
        "raw + fsync + rename + dir fsync": dirs["raw-rename"] / "snap.bin",
        "raw + fsync": dirs["raw"] / "snap.bin",
    }
    sides = {"write_snapshot": snapshot, "raw + fsync + rename + dir fsync": raw_rename, "raw + fsync": raw_fsync}
    return sides, targets


def interleaved_once(sides: dict, targets: dict, samples: int) -> dict[str, list[float]]:
    """One call per sample; the side's target is deleted (untimed) just before each call."""
    for fn in sides.values():  # warm-up
        fn()
    out: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    gc.collect()
    gc.disable()
    try:
        for i in range(samples):
            for name in rotated(names, i):
                targets[name].unlink(missing_ok=True)
                start = time.perf_counter()
                sides[name]()
                out[name].append(time.perf_counter() - start)
    finally:
        gc.enable()
    return out


def staged_write_snapshot(path: Path, state, meta, clock=time.perf_counter) -> dict[str, float]:
    """``runner.engine.snapshot_files.write_snapshot``, line for line, with a clock between lines."""
    from runner.engine.snapshot_files import fsync_dir, write_encoded
    from runner.engine.snapshot_format import encode

    t = {}
    t0 = clock()
    encoded = encode(state.arrays, {**meta, "backend": state.meta})
    t1 = clock()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        t2 = clock()
        write_encoded(f.fileno(), encoded, tmp)
        t3 = clock()
        os.fsync(f.fileno())
        t4 = clock()
    os.replace(tmp, path)
    t5 = clock()
    fsync_dir(path.parent)
    t6 = clock()
    t["encode: the header's entries and metadata text"] = t1 - t0
    t["open"] = t2 - t1
    t["CRC-32 (alongside, when over 1 MB) + write header, arrays, header again"] = t3 - t2
    t["fsync (file)"] = t4 - t3
    t["close + os.replace"] = t5 - t4
    t["fsync (folder)"] = t6 - t5
    return t


def staged_raw(path: Path, raw: bytes, clock=time.perf_counter) -> dict[str, float]:
    from runner.engine.snapshot_files import fsync_dir

    t0 = clock()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        t1 = clock()
        f.write(raw)
        f.flush()
        t2 = clock()
        os.fsync(f.fileno())
        t3 = clock()
    os.replace(tmp, path)
    t4 = clock()
    fsync_dir(path.parent)
    t5 = clock()
    return {
        "open": t1 - t0,
        "write + flush (no fsync)": t2 - t1,
        "fsync (file)": t3 - t2,
        "close + os.replace": t4 - t3,
        "fsync (folder)": t5 - t4,
    }


def write_breakdown(fx: Fixture, folder: Path, samples: int) -> tuple[dict, dict, dict, list[str]]:
    """Stages of write_snapshot and of the raw write (interleaved), plus CPU-only pieces."""
    import numpy as np

    from runner.engine.snapshot_files import read_snapshot, write_snapshot

    problems = []
    folder.mkdir(parents=True)
    staged, raw_path = folder / "staged.safetensors", folder / "staged.bin"
    # The staged copy must still be write_snapshot: the same bytes as the real one.
    staged_write_snapshot(staged, fx.state, fx.meta)
    write_snapshot(folder / "real.safetensors", fx.state, fx.meta)
    if staged.read_bytes() != (folder / "real.safetensors").read_bytes():
        problems.append(
            f"{fx.label}: the staged copy of write_snapshot no longer writes the same file; "
            "update staged_write_snapshot"
        )
    read_snapshot(staged)
    stages_snapshot: dict[str, list[float]] = defaultdict(list)
    stages_raw: dict[str, list[float]] = defaultdict(list)
    gc.collect()
    gc.disable()
    try:
        for i in range(samples):
            for side in ("snapshot", "raw") if i % 2 == 0 else ("raw", "snapshot"):
                if side == "snapshot":
                    staged.unlink(missing_ok=True)
                    for k, v in staged_write_snapshot(staged, fx.state, fx.meta).items():
                        stages_snapshot[k].append(v)
                else:
                    raw_path.unlink(missing_ok=True)
                    for k, v in staged_raw(raw_path, fx.raw).items():
                        stages_raw[k].append(v)
    finally:
        gc.enable()

    arrays = fx.state.arrays
    buf = io.BytesIO()

    def savez_memory():
        buf.seek(0)
        buf.truncate()
        np.savez(buf, **arrays)

    pieces = {
        "np.savez into memory (BytesIO; the format before issue 20)": savez_memory,
        "zlib.crc32 of the bytes (inside encode)": lambda: zlib.crc32(fx.raw),
        "hashlib.sha256 of the bytes": lambda: hashlib.sha256(fx.raw).digest(),
        "bytes copy of the bytes (bytearray)": lambda: bytearray(fx.raw),
    }
    with contextlib.suppress(ImportError):  # why the file is not written by the safetensors package
        import safetensors.numpy

        pieces["safetensors.numpy.save into memory (bytes)"] = lambda: safetensors.numpy.save(arrays)
    cpu = interleaved_timeit(pieces, max(samples // 2, 5), 0.005)
    return stages_snapshot, stages_raw, cpu, problems


# -- 3. snapshots every epoch on the digits demo -------------------------------------------------


def timed_run(spec, plugins, dataset, root: Path) -> tuple[float, float, dict]:
    """One ``run_experiment``: wall seconds, CPU seconds of this process (all threads: the
    loop, the snapshot writer, BLAS) and each trial's final metrics. The run directory is
    made before and removed after (untimed)."""
    from benchmarks.bench_overhead import COMPARED
    from runner.engine.loop import run_experiment
    from runner.records.files import create_run_dir

    run_dir = create_run_dir(root, spec.name)
    gc.collect()
    cpu0, start = time.process_time(), time.perf_counter()
    board = run_experiment(spec, plugins, dataset, run_dir)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    bad = [(r.trial, r.state, r.reason) for r in board if r.state != "completed"]
    assert not bad, f"trials did not complete: {bad}"
    shutil.rmtree(run_dir)
    return seconds, cpu, {r.trial: {k: r.final[k] for k in COMPARED} for r in board}


def cpu_jiffies() -> tuple[int, int, int] | None:
    """(busy, steal, total) jiffies of all CPUs from /proc/stat, or None."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    steal = fields[7] if len(fields) > 7 else 0
    return sum(fields[:8]) - idle - steal, steal, sum(fields[:8])


def instrumented(spec, plugins, dataset, root: Path, n: int) -> dict[str, float]:
    """One run with the backend's training calls, the snapshot calls and the writer timed;
    per trial (seconds) and counts per run."""
    import runner.engine.checkpoints as checkpoints
    from benchmarks.bench_overhead import TRAINING, MethodTimer
    from runner.engine.checkpoints import CheckpointStore
    from runner.plugins.backends.numpy_mlp.backend import NumpyBackend

    writes = {"wall": 0.0, "cpu": 0.0, "calls": 0}
    original = checkpoints.write_snapshot

    @functools.wraps(original)
    def timed_write(*args, **kwargs):  # runs on the writer thread
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            writes["wall"] += time.perf_counter() - w0
            writes["cpu"] += time.thread_time() - c0
            writes["calls"] += 1

    checkpoints.write_snapshot = timed_write
    try:
        with contextlib.ExitStack() as stack:
            backend = stack.enter_context(MethodTimer(NumpyBackend, TRAINING + ("state",)))
            store = stack.enter_context(MethodTimer(CheckpointStore, ("save", "collect")))
            main_cpu0 = time.thread_time()
            seconds, cpu, _ = timed_run(spec, plugins, dataset, root)
            main_cpu = time.thread_time() - main_cpu0
    finally:
        checkpoints.write_snapshot = original
    return {
        "wall time of the run": seconds / n,
        "training (backend __init__, begin_epoch, train_step, evaluate)": backend.total(TRAINING) / n,
        "snapshot: backend.state() copies": backend.seconds["state"] / n,
        "snapshot: CheckpointStore.save (ring, queue)": store.seconds["save"] / n,
        "snapshot: CheckpointStore.collect (waits for the writer)": store.seconds["collect"] / n,
        "writer thread: write_snapshot, wall": writes["wall"] / n,
        "writer thread: write_snapshot, its own CPU": writes["cpu"] / n,
        "main thread CPU (loop, training, BLAS calls)": main_cpu / n,
        "process CPU, all threads": cpu / n,
        "files written per trial": writes["calls"] / n,
        "snapshots taken per trial": backend.calls["state"] / n,
    }


def raw_floor(spec, plugins, dataset, args, folder: Path) -> dict[str, list[float]]:
    """The least a durable file every epoch can cost here: the bare loop (``NumpyBackend``
    stepped directly over the same trials, sections and seeds) with and without a thread
    that writes, after each epoch, as many bytes as the state holds with a raw write + fsync +
    rename + folder fsync (waiting for the previous write first, as the runner does).
    The sides take turns round by round; wall seconds per run of all the trials."""
    import queue
    import threading

    from benchmarks.bench_overhead import planned_jobs
    from runner.experiment_file.spec import trial_sections
    from runner.plugins.backends.numpy_mlp.backend import NumpyBackend

    jobs = planned_jobs(spec, plugins)
    sections = {trial: trial_sections(spec, params) for trial, params, _ in jobs}
    model, train, options = sections[0]
    state = NumpyBackend(model=model, train=train, options=options, data=dataset, seed=0).state()
    payload = os.urandom(sum(a.nbytes for a in state.arrays.values()))
    folder.mkdir(exist_ok=True)
    writes: queue.Queue = queue.Queue()

    def writer() -> None:
        while (n := writes.get()) is not None:
            target = folder / f"raw-{n % 4}.bin"
            with open(target.with_suffix(".tmp"), "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(target.with_suffix(".tmp"), target)
            fd = os.open(folder, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            writes.task_done()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()

    def run(write: bool) -> float:
        start = time.perf_counter()
        for trial, _, seed in jobs:
            model, train, options = sections[trial]
            backend = NumpyBackend(model=model, train=train, options=options, data=dataset, seed=seed)
            for epoch in range(train.epochs):
                backend.begin_epoch(epoch)
                for _ in range(backend.steps_per_epoch):
                    backend.train_step()
                backend.evaluate("val")
                if write:
                    writes.join()
                    writes.put(epoch)
            writes.join()
        return time.perf_counter() - start

    sides = {"bare loop, raw durable write every epoch": True, "bare loop": False}
    out: dict[str, list[float]] = {name: [] for name in sides}
    try:
        for i in range(args.rounds):
            for name in rotated(list(sides), i):
                out[name].append(run(sides[name]))
    finally:
        writes.put(None)
        thread.join()
    return out


def every_epoch(args, plugins, work: Path) -> dict:
    from benchmarks.bench_overhead import COMPARED, bench_experiment
    from runner.engine.experiment import load_dataset
    from runner.experiment_file.spec import load

    specs = {}
    base_dir = args.experiment.resolve().parent
    for name, section in CHECKPOINT_SECTIONS.items():
        raw = bench_experiment(args.experiment, args.trials, args.epochs, section)
        path = work / f"experiment-{len(specs)}.json"
        path.write_text(json.dumps(raw, indent=2))
        specs[name] = dataclasses.replace(load(path, plugins.registry), base_dir=base_dir)
    dataset = load_dataset(specs[OFF], plugins)
    runs = work / "runs"
    runs.mkdir()

    problems: list[str] = []
    reference = None
    names = list(specs)
    # Warm-up (untimed), and the reference metrics.
    for name in names:
        _, _, finals = timed_run(specs[name], plugins, dataset, runs)
        if reference is None:
            reference = finals
        elif finals != reference:
            problems.append(f"warm-up {name}: final metrics differ from {names[0]}")
    n = len(reference)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    before, own0, start = cpu_jiffies(), time.process_time(), time.perf_counter()
    for i in range(args.rounds):
        for name in rotated(names, i):
            seconds, used, finals = timed_run(specs[name], plugins, dataset, runs)
            wall[name].append(seconds)
            cpu[name].append(used)
            if finals != reference:
                problems.append(f"round {i + 1} {name}: final metrics differ")
        print(f"  round {i + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in wall.items()), flush=True)
    after, own, elapsed = cpu_jiffies(), time.process_time() - own0, time.perf_counter() - start
    machine_use = None
    if before and after:
        busy, steal, total = (b - a for a, b in zip(before, after))
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        machine_use = {
            "elapsed_s": elapsed,
            "this_process_cpu_s": own,
            "all_busy_cpu_s": busy / hz,
            "steal_s": steal / hz,
            "total_cpu_s": total / hz,
        }
    floor = raw_floor(specs[OFF], plugins, dataset, args, work / "floor")
    detail: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in names}
    for i in range(args.instrumented):
        for name in rotated(names, i):
            for key, value in instrumented(specs[name], plugins, dataset, runs, n).items():
                detail[name][key].append(value)
    return {
        "n": n,
        "wall": wall,
        "cpu": cpu,
        "machine_use": machine_use,
        "detail": detail,
        "problems": problems,
        "floor": floor,
        "sections": {k: dataclasses.asdict(s.checkpoint) for k, s in specs.items()},
        "compared": COMPARED,
    }


# -- the report --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from benchmarks.bench_overhead import add_blas_threads_option, apply_blas_threads

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--experiment",
        type=Path,
        default=DEFAULT_EXPERIMENT,
        help="experiment file whose data, model and train sections are used (default: experiments/digits_random.json)",
    )
    parser.add_argument("--samples", type=int, default=51, help="1: timed samples per side (default 51)")
    parser.add_argument("--sample-ms", type=float, default=5.0, help="1: length of one sample, ms (default 5)")
    parser.add_argument(
        "--wide-rows",
        type=int,
        default=2048,
        help="1, 2: training rows of the wide network's random data set (default 2048)",
    )
    parser.add_argument(
        "--write-samples", type=int, default=41, help="2: calls per side, and staged calls (default 41)"
    )
    parser.add_argument("--rounds", type=int, default=7, help="3: timed rounds of every side (default 7)")
    parser.add_argument("--instrumented", type=int, default=2, help="3: instrumented runs per side (default 2)")
    parser.add_argument("--trials", type=int, default=20, help="3: trials per run (default 20)")
    parser.add_argument("--epochs", type=int, default=15, help="3: epochs per trial (default 15)")
    parser.add_argument(
        "--only", choices=("1", "2", "3"), action="append", help="run only these measurements (repeatable; default all)"
    )
    add_blas_threads_option(parser)
    parser.add_argument("--tmp", type=Path, help="folder for the files written (default: the system's temp folder)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    if (
        min(args.samples, args.write_samples, args.rounds, args.trials, args.epochs, args.wide_rows) < 1
        or args.instrumented < 0
        or args.sample_ms <= 0
    ):
        parser.error("counts must be >= 1 (--instrumented >= 0), --sample-ms > 0")
    apply_blas_threads(parser, args)
    only = set(args.only or ("1", "2", "3"))

    from benchmarks.bench_overhead import bench_experiment, machine
    from runner.engine.experiment import load_dataset
    from runner.engine.plugin_manager import load_plugins
    from runner.experiment_file.spec import load

    started = time.perf_counter()
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="bench-checkpoints-", dir=args.tmp))
    info["files written to"] = f"{work.parent}: {filesystem(work)}"
    command = "python benchmarks/bench_checkpoints.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    problems: list[str] = []
    results: dict = {"command": command, "machine": info}
    fixtures: list[Fixture] = []
    try:
        plugins = load_plugins()
        raw = bench_experiment(args.experiment, args.trials, args.epochs)
        path = work / "experiment.json"
        path.write_text(json.dumps(raw))
        spec = dataclasses.replace(load(path, plugins.registry), base_dir=args.experiment.resolve().parent)
        if spec.backend.name != "numpy":
            parser.error(f"this benchmark builds NumpyBackend; the experiment uses {spec.backend.name!r}")
        if only & {"1", "2"}:
            dataset = load_dataset(spec, plugins)
            fixtures = build_fixtures(spec, plugins, dataset, work, args.wide_rows)

        print(f"# Checkpoint costs\ncommand: {command}\n")
        print("## Machine")
        for key, value in info.items():
            print(f"- {key}: {value}")
        print()
        if fixtures:
            print("| network | arrays in the state | bytes | parameters |")
            print("|---|---:|---:|---|")
            for fx in fixtures:
                print(
                    f"| {fx.label} | {fx.n_arrays} | {fx.nbytes:,} | {fx.shapes}, perm ({len(fx.state.arrays['perm'])},) |"
                )
            print()

        if "1" in only:
            print(
                f"## 1. In-memory rollback against a copy of the same bytes ({args.samples} samples of "
                f"~{args.sample_ms:g} ms per side, interleaved; µs per call)",
                flush=True,
            )
            results["rollback"] = {}
            for fx in fixtures:
                t = interleaved_timeit(rollback_sides(fx), args.samples, args.sample_ms / 1e3)
                parts = load_state_parts(fx, args.samples, args.sample_ms / 1e3)
                results["rollback"][fx.label] = {"sides": t, "load_state parts": parts}
                report_rollback(fx, t, parts)

        if "2" in only:
            print(
                f"## 2. Durable snapshot against a raw write of the same bytes ({args.write_samples} calls "
                "per side, interleaved; ms per call)",
                flush=True,
            )
            results["write"] = {}
            for fx in fixtures:
                folder = work / f"write-{fx.label.split()[0]}"
                sides, targets = write_sides(fx, folder)
                t = interleaved_once(sides, targets, args.write_samples)
                stages_snapshot, stages_raw, cpu, bad = write_breakdown(fx, folder / "staged", args.write_samples)
                problems += bad
                results["write"][fx.label] = {
                    "sides": t,
                    "stages write_snapshot": stages_snapshot,
                    "stages raw": stages_raw,
                    "cpu": cpu,
                }
                report_write(fx, t, stages_snapshot, stages_raw, cpu)

        if "3" in only:
            print(
                f"## 3. Snapshots every epoch on the digits demo: {args.trials} trials x {args.epochs} epochs, "
                f"{args.rounds} rounds, order rotated each round",
                flush=True,
            )
            (work / "every-epoch").mkdir()
            ev = every_epoch(args, plugins, work / "every-epoch")
            problems += ev["problems"]
            results["every_epoch"] = ev
            report_every_epoch(ev, args)
    finally:
        for fx in fixtures:
            fx.close()
        shutil.rmtree(work, ignore_errors=True)

    print("## Summary against the aims")
    for fx_label, r in results.get("rollback", {}).items():
        t = {k: statistics.median(v) for k, v in r["sides"].items()}
        both = t["backend.load_state"] + t["TrialLoop.restore"]
        print(
            f"- rollback, {fx_label}: {both * 1e6:.1f} µs = {both / t['memcpy, one buffer']:.2f}x one memcpy, "
            f"{both / t['np.copyto, same arrays']:.2f}x np.copyto of the same arrays (aim < {AIMS['rollback']:g}x)"
        )
    for fx_label, r in results.get("write", {}).items():
        t = {k: statistics.median(v) for k, v in r["sides"].items()}
        print(
            f"- durable snapshot, {fx_label}: {t['write_snapshot'] * 1e3:.2f} ms = "
            f"{t['write_snapshot'] / t['raw + fsync + rename + dir fsync']:.2f}x raw + fsync + rename + dir fsync, "
            f"{t['write_snapshot'] / t['raw + fsync']:.2f}x raw + fsync (aim < {AIMS['write']:g}x)"
        )
    if "every_epoch" in results:
        wall = results["every_epoch"]["wall"]
        for name in (DURABLE, DEFAULT):
            print(
                f"- digits demo, {name}: {(statistics.median(wall[name]) / statistics.median(wall[OFF]) - 1) * 100:+.1f} % "
                f"(medians), {(min(wall[name]) / min(wall[OFF]) - 1) * 100:+.1f} % (minima) over no snapshots "
                f"(aim < {AIMS['every_epoch'][name] * 100:g} %)"
            )
    print()
    print("## Check")
    if problems:
        print(f"FAILED: {len(problems)} problems")
        for p in problems[:20]:
            print("  " + p)
    else:
        print(
            "ok"
            + (
                f": every side of measurement 3 ended all trials with bit-identical "
                f"{', '.join(results['every_epoch']['compared'])}"
                if "every_epoch" in results
                else ""
            )
        )
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")
    results["problems"] = problems
    if args.json:
        args.json.write_text(
            json.dumps(results, indent=2, default=lambda o: dict(o) if isinstance(o, defaultdict) else str(o))
        )
    return 1 if problems else 0


def report_rollback(fx: Fixture, t: dict, parts: dict) -> None:
    us = {k: med_min([x * 1e6 for x in v]) for k, v in t.items()}
    memcpy, copyto = us["memcpy, one buffer"], us["np.copyto, same arrays"]
    print(f"\n### {fx.label}: {fx.n_arrays} arrays, {fx.nbytes:,} bytes")
    print(
        "| side | median µs | min µs | / memcpy (medians) | / memcpy (minima) | / np.copyto (medians) | / np.copyto (minima) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = dict(us)
    ls, rl = us["backend.load_state"], us["TrialLoop.restore"]
    rows["load_state + restore"] = (ls[0] + rl[0], ls[1] + rl[1])
    for name, (m, lo) in rows.items():
        print(
            f"| {name} | {m:.2f} | {lo:.2f} | {m / memcpy[0]:.2f}x | {lo / memcpy[1]:.2f}x "
            f"| {m / copyto[0]:.2f}x | {lo / copyto[1]:.2f}x |"
        )
    aim = AIMS["rollback"]
    r_mem = (ls[0] + rl[0]) / memcpy[0]
    r_cp = (ls[0] + rl[0]) / copyto[0]
    print(
        f"Aim: load_state + restore under {aim:g}x a copy of the same bytes: against one memcpy "
        f"{r_mem:.2f}x ({'met' if r_mem < aim else 'MISSED'}), against np.copyto of the same arrays "
        f"{r_cp:.2f}x ({'met' if r_cp < aim else 'MISSED'}); the whole TrialLoop.rollback "
        f"{us['TrialLoop.rollback, all'][0] / memcpy[0]:.2f}x / {us['TrialLoop.rollback, all'][0] / copyto[0]:.2f}x."
    )
    print("\nWhere load_state's time goes (each piece timed alone; lines of plugins/backends/numpy_mlp/backend.py):")
    print("| piece | median µs | min µs | share of load_state (medians) |")
    print("|---|---:|---:|---:|")
    whole = statistics.median(parts["backend.load_state, whole"]) * 1e6
    where = {
        "names check": " [l. 347-349]",
        "of which": " [l. 348]",
        "permutation": " [l. 354]",
        "generator": " [l. 359, 372]",
        "the copies": " [l. 361-368]",
    }
    for name, values in parts.items():
        m, lo = med_min([x * 1e6 for x in values])
        tag = next((v for k, v in where.items() if k in name), "")
        print(f"| {name}{tag} | {m:.2f} | {lo:.2f} | {m / whole * 100:.0f} % |")
    print()


def report_write(fx: Fixture, t: dict, stages_snapshot: dict, stages_raw: dict, cpu: dict) -> None:
    ms = {k: med_min([x * 1e3 for x in v]) for k, v in t.items()}
    print(f"\n### {fx.label}: {fx.nbytes:,} bytes of arrays")
    print("| side | median ms | min ms | write_snapshot / side (medians) | (minima) |")
    print("|---|---:|---:|---:|---:|")
    snap = ms["write_snapshot"]
    for name, (m, lo) in ms.items():
        print(f"| {name} | {m:.3f} | {lo:.3f} | {snap[0] / m:.2f}x | {snap[1] / lo:.2f}x |")
    paired = {
        name: statistics.median([a / b for a, b in zip(t["write_snapshot"], t[name])])
        for name in t
        if name != "write_snapshot"
    }
    aim = AIMS["write"]
    full = snap[0] / ms["raw + fsync + rename + dir fsync"][0]
    bare = snap[0] / ms["raw + fsync"][0]
    print(
        f"Aim: under {aim:g}x the raw write: against raw + fsync + rename + dir fsync {full:.2f}x "
        f"({'met' if full < aim else 'MISSED'}), against raw + fsync {bare:.2f}x "
        f"({'met' if bare < aim else 'MISSED'}); paired samples (median of ratios): "
        + ", ".join(f"{k} {v:.2f}x" for k, v in paired.items())
    )
    print(
        "\nStage by stage (a line-by-line copy of write_snapshot, checked to write the same bytes; "
        "interleaved with the raw write; ms, medians):"
    )
    print("| write_snapshot stage | median ms | raw-write stage | median ms |")
    print("|---|---:|---|---:|")
    left = [(k, statistics.median(v) * 1e3) for k, v in stages_snapshot.items()]
    right = [(k, statistics.median(v) * 1e3) for k, v in stages_raw.items()]
    order = {
        "open": "open",
        "CRC-32 (alongside, when over 1 MB) + write header, arrays, header again": "write + flush (no fsync)",
        "fsync (file)": "fsync (file)",
        "close + os.replace": "close + os.replace",
        "fsync (folder)": "fsync (folder)",
    }
    right_d = dict(right)
    for k, v in left:
        r = order.get(k)
        print(f"| {k} | {v:.3f} | {r or ''} | {f'{right_d[r]:.3f}' if r else ''} |")
    print(f"| sum | {sum(v for _, v in left):.3f} | sum | {sum(v for _, v in right):.3f} |")
    print("\nCPU-only pieces, in memory (µs, median (min)):")
    for name, values in cpu.items():
        m, lo = med_min([x * 1e6 for x in values])
        print(f"- {name}: {m:.1f} ({lo:.1f})")
    print()


def report_every_epoch(ev: dict, args) -> None:
    wall, n = ev["wall"], ev["n"]
    off = wall[OFF]
    print("\nCheckpoint sections: " + "; ".join(f"{k}: {CHECKPOINT_SECTIONS[k]}" for k in wall))
    print(
        "\n| side | median s | min s | max s | / no snapshots (medians) | (minima) | paired rounds: median (min .. max) |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, values in wall.items():
        m, lo = med_min(values)
        paired = [a / b for a, b in zip(values, off)]
        pm, plo, phi = statistics.median(paired), min(paired), max(paired)
        print(
            f"| {name} | {m:.3f} | {lo:.3f} | {max(values):.3f} | {m / statistics.median(off):.3f} "
            f"| {lo / min(off):.3f} | {pm:.3f} ({plo:.3f} .. {phi:.3f}) |"
        )
    cpu, cpu_off = ev["cpu"], ev["cpu"][OFF]
    print(
        "\nCPU seconds of the benchmark process per run (all its threads), less sensitive to neighbours than wall time:"
    )
    print("| side | median s | min s | / no snapshots (medians) | (minima) |")
    print("|---|---:|---:|---:|---:|")
    for name, values in cpu.items():
        m, lo = med_min(values)
        print(f"| {name} | {m:.3f} | {lo:.3f} | {m / statistics.median(cpu_off):.3f} | {lo / min(cpu_off):.3f} |")
    use = ev["machine_use"]
    if use:
        others = use["all_busy_cpu_s"] - use["this_process_cpu_s"]
        print(
            f"During the timed rounds ({use['elapsed_s']:.0f} s, {use['total_cpu_s']:.0f} CPU-seconds of "
            f"capacity): this process used {use['this_process_cpu_s']:.1f} CPU-s, everything else on the VM "
            f"{max(others, 0):.1f} CPU-s, hypervisor steal {use['steal_s']:.1f} CPU-s."
        )
    for name in (DURABLE, DEFAULT):
        aim = AIMS["every_epoch"][name]
        o_med = statistics.median(wall[name]) / statistics.median(off) - 1
        o_min = min(wall[name]) / min(off) - 1
        print(
            f"Aim ({name}): overhead under {aim * 100:g} %: {o_med * 100:+.1f} % from medians, "
            f"{o_min * 100:+.1f} % from minima ({'met' if max(o_med, o_min) < aim else 'MISSED' if min(o_med, o_min) >= aim else 'unclear'})"
        )
    if floor := ev.get("floor"):
        with_writes, bare = (statistics.median(v) for v in floor.values())
        print(
            f"Floor: the bare loop with a raw durable write of the state's bytes every epoch "
            f"on a thread: {with_writes:.3f} s against {bare:.3f} s without, {(with_writes / bare - 1) * 100:+.1f} % "
            f"(medians of {len(floor['bare loop'])} rounds): no format makes a file every epoch cost less here."
        )
    print(
        f"no snapshots: {statistics.median(off) / n * 1e3:.1f} ms per trial, "
        f"{statistics.median(off) / n / args.epochs * 1e3:.2f} ms per epoch"
    )
    detail = ev["detail"]
    if any(detail.values()):
        print(f"\nWhere the time goes: per trial, ms (median of {args.instrumented} instrumented run(s) per side)")
        names = list(detail)
        print("| where | " + " | ".join(names) + " |")
        print("|---|" + "---:|" * len(names))
        keys = list(dict.fromkeys(k for name in names for k in detail[name]))
        for key in keys:
            counts = key.startswith(("files", "snapshots"))
            cells = [
                (
                    f"{statistics.median(detail[name][key]):.1f}"
                    if counts
                    else f"{statistics.median(detail[name][key]) * 1e3:.2f}"
                )
                if detail[name].get(key)
                else "-"
                for name in names
            ]
            print(f"| {key} | " + " | ".join(cells) + " |")
        per_trial_off = statistics.median(wall[OFF]) / n
        print(
            "Direct estimate of the overhead, from the instrumented runs, against the no-snapshot trial "
            f"({per_trial_off * 1e3:.1f} ms, median of the timed rounds):"
        )
        for name in names:
            if name == OFF:
                continue
            d = {k: statistics.median(v) for k, v in detail[name].items()}
            loop_side = (
                d["snapshot: backend.state() copies"]
                + d["snapshot: CheckpointStore.save (ring, queue)"]
                + d["snapshot: CheckpointStore.collect (waits for the writer)"]
            )
            writer = d["writer thread: write_snapshot, its own CPU"]
            print(
                f"- {name}: snapshot calls on the loop's thread {loop_side * 1e3:.2f} ms/trial = "
                f"{loop_side / per_trial_off * 100:.1f} %; with the writer's CPU (GIL-bound work that "
                f"competes with training) {(loop_side + writer) * 1e3:.2f} ms/trial = "
                f"{(loop_side + writer) / per_trial_off * 100:.1f} %; "
                f"{writer / max(d['files written per trial'], 1) * 1e3:.2f} ms of writer CPU per file"
            )
        print(
            "The writer runs on its own thread: its wall time overlaps training except where "
            "CheckpointStore.collect waits for it; its CPU time competes with training for the 2 cores."
        )
    print()


if __name__ == "__main__":
    sys.exit(main())
