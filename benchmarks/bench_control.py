#!/usr/bin/env python
"""The control file: nudge latency, and what watching it costs training, in one command.

    python benchmarks/bench_control.py [--nudges 50] [--modes inotify poll] [--rounds 7] [--epochs 20]

Two measurements, each for the inotify watcher and for ``--poll`` (watchdog's polling
observer) where it applies:

1. **Nudge latency** (aim: p50 under 50 ms on local disk). A real ``runner start
   EXPERIMENT --out TMP --plain [--poll]`` subprocess trains ``experiments/digits_babysit.json``
   (its epochs raised so that it never ends by itself; nothing else changed). This process
   edits the run's ``control.json`` as a person would, ``--nudges`` times per mode, each
   time changing ``lr`` to a new value; the saves alternate between an in-place write
   (``open('w')``, write, close) and a rename-save (a temporary file in the same folder,
   ``os.replace`` over ``control.json``). The clock starts with ``time.time()`` right after
   the ``close``/``os.replace`` returns. The run's event log gives the rest: the ``control``
   event (``t``: the run read and accepted that version) and the ``nudge`` event carrying
   its order (``t``: the new ``lr`` is in force; the trial applies it at its next step
   boundary). Each nudge waits for its ``nudge`` event (``--timeout``), then a random pause
   of ``--gap`` seconds before the next. Reported: p50, p95 and max of save -> in force,
   split into save -> read and read -> in force, per save pattern. The run is then stopped
   with a ``stop`` action written into the control file. All times are ``time.time()`` on
   one machine; save -> read can come out slightly negative when this process is
   descheduled between its save returning and its clock read while the run reads at once.
2. **The watcher's cost to training throughput** (aim: under 1 %). ``run_experiment`` in
   this process on a fixed single-trial run (the same experiment's data, model and train
   sections, ``--epochs`` epochs, ``checkpoint.min_interval`` 3600 so that no snapshot file
   is written before the trial's end), in these configurations:
   (a) as shipped: the control watcher runs (inotify, and ``poll=True`` for ``--poll``);
   (b) watcher off, the baseline: ``runner.control.inbox.FileWatcher`` is replaced, for these runs
       only, by a stand-in with the same attributes whose ``start``/``stop`` do nothing (no
       watchdog observer, no inotify thread, no watcher thread; the control file is still
       written and read once at the start, and ``status.json`` is still kept);
   (c) as (a), while a thread of this process saves ``control.json`` every
       ``--rewrite-interval`` seconds with contents of unchanged meaning (a trailing space
       toggled; in-place writes and rename-saves alternate), so that each save is read,
       parsed, compared and logged (a ``control`` event with no orders) as a real one is.
   In (a) and (c) the watcher is ``runner.control.watch.FileWatcher`` itself, subclassed only to
   note the threads it starts and read their CPU clocks once it has started and just
   before it stops. Rounds rotate the order of the configurations; one untimed warm-up
   run of each comes first. Reported: the trial's time (``TrialResult.seconds``) and the
   whole run's wall time per configuration (median, min, max) and their ratios to (b);
   the CPU time of the watcher's threads (to start, per second while running, per read);
   and what the loop's per-step mailbox check (``if mail or self.paused``) costs, timed
   on its own. Every run must end the trial with bit-identical metrics (watching must not
   change training).

The exit status is 1 if a check fails: a nudge not applied within ``--timeout``, a
``control_error`` in the latency runs, or metrics that differ between configurations.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import inspect
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from collections import deque
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # ``python benchmarks/bench_control.py`` from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_checkpoints import cpu_jiffies, filesystem, rotated  # noqa: E402

DEFAULT_EXPERIMENT = ROOT / "experiments" / "digits_babysit.json"
AIMS = {"p50_ms": 50.0, "cost": 0.01}
MODES = ("inotify", "poll")
IN_PLACE, RENAME = "in-place write", "rename-save"
OFF = "(b) watcher off"
COMPARED = ("train_loss", "val_loss", "val_acc")


def percentile(values: list[float], q: float) -> float:
    """NumPy's percentile (linear interpolation); NaN for no values."""
    return float(np.percentile(values, q)) if values else float("nan")


class MachineUse:
    """How busy the whole VM was during a block, against this command's own CPU time (its
    threads and the subprocesses it waited for): whatever else ran shows as "everything else"."""

    def __enter__(self) -> MachineUse:
        self._jiffies, self._times, self._start = cpu_jiffies(), os.times(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        after, times = cpu_jiffies(), os.times()
        self.elapsed = time.perf_counter() - self._start
        self.own = sum(times[:4]) - sum(self._times[:4])
        self.busy = self.steal = None
        if self._jiffies and after:
            hz = os.sysconf("SC_CLK_TCK")
            self.busy, self.steal = (after[0] - self._jiffies[0]) / hz, (after[1] - self._jiffies[1]) / hz

    def line(self) -> str:
        if self.busy is None:
            return f"{self.elapsed:.1f} s; this command used {self.own:.1f} CPU-s (no /proc/stat here)"
        return (
            f"{self.elapsed:.1f} s elapsed; the VM's CPUs were busy {self.busy:.1f} CPU-s (of "
            f"{self.elapsed * (os.cpu_count() or 1):.1f}), this command and its runs {self.own:.1f}, "
            f"everything else {max(0.0, self.busy - self.own):.1f}; steal {self.steal:.1f} CPU-s"
        )

    def as_dict(self) -> dict:
        return {"elapsed_s": self.elapsed, "own_cpu_s": self.own, "busy_cpu_s": self.busy, "steal_cpu_s": self.steal}


# -- 1. nudge latency ---------------------------------------------------------------------------


class EventTail:
    """The events appended to an ``events.jsonl`` since the last call (complete lines only)."""

    def __init__(self, path: Path):
        self.path, self.offset, self.rest = path, 0, b""

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.rest = (self.rest + data).split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


class LiveRun:
    """A ``runner start`` subprocess, its run directory and its event log."""

    def __init__(self, experiment: Path, out: Path, poll: bool, logs: Path):
        self.stdout = open(logs / "stdout.txt", "wb")  # a file, not a pipe: a full pipe would stall the run
        self.stderr = open(logs / "stderr.txt", "wb")
        self.logs = logs
        command = [sys.executable, "-m", "runner", "start", str(experiment), "--out", str(out), "--plain"]
        self.process = subprocess.Popen(
            command + (["--poll"] if poll else []), cwd=ROOT, stdout=self.stdout, stderr=self.stderr
        )
        self.run_dir = self.until(lambda: next(out.glob("*/control.json"), None), 120, "its control file").parent
        self.control = self.run_dir / "control.json"
        self.tail = EventTail(self.run_dir / "events.jsonl")
        self.events: list[dict] = []
        self.until(self.trained_an_epoch, 120, "its first epoch")

    def trained_an_epoch(self) -> bool:
        self.poll_events()
        return any(e["event"] == "epoch_end" for e in self.events)

    def poll_events(self) -> list[dict]:
        new = self.tail.read()
        self.events += new
        return new

    def until(self, found, timeout: float, what: str, interval: float = 0.01):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = found()
            if value:
                return value
            if self.process.poll() is not None and not found():
                raise RuntimeError(
                    f"the run ended (exit {self.process.returncode}) before {what}: "
                    f"{(self.logs / 'stderr.txt').read_text()[-2000:]}"
                )
            time.sleep(interval)
        raise RuntimeError(f"timed out waiting for {what}")

    def stop(self, document: dict) -> int:
        """Ask the run to stop through its control file; SIGTERM, then kill, if it does not."""
        if self.process.poll() is None:
            document["actions"] = list(document.get("actions") or []) + [{"id": 1_000_000, "do": "stop"}]
            save(self.control, json.dumps(document, indent=2) + "\n", RENAME)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        self.poll_events()
        self.stdout.close()
        self.stderr.close()
        return self.process.returncode


def save(path: Path, text: str, pattern: str) -> float:
    """Save ``text`` as an editor would; returns ``time.time()`` right after the save completes."""
    if pattern == IN_PLACE:
        with open(path, "w") as f:
            f.write(text)
    else:
        tmp = path.with_name(f".{path.name}.bench-{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return time.time()


def lr_values(n: int) -> list[float]:
    """``n`` distinct learning rates between 0.004 and 0.02, distinct at 6 significant digits
    (the ``what`` of an order prints them with ``:g``), none equal to its predecessor."""
    return [float(f"{0.004 + 0.016 * ((i * 0.6180339887) % 1.0):.6g}") for i in range(n)]


def nudge_series(
    run: LiveRun, n: int, gap: tuple[float, float], timeout: float, rng: random.Random
) -> tuple[list[dict], dict]:
    """``n`` nudges of ``lr``, saves alternating in place / rename; one record per nudge."""
    document = json.loads(run.control.read_text())
    records = []
    values = lr_values(n)
    if len(set(f"{v:g}" for v in values)) != n:
        raise RuntimeError("the lr values are not distinct; choose fewer nudges")
    for i, value in enumerate(values):
        pattern = IN_PLACE if i % 2 == 0 else RENAME
        document["lr"] = value
        what = f"lr={value:g}"
        run.poll_events()  # anything before this save is not this save's
        seen = len(run.events)
        t_save = save(run.control, json.dumps(document, indent=2) + "\n", pattern)
        record = {
            "i": i,
            "pattern": pattern,
            "lr": value,
            "t_save": t_save,
            "t_read": None,
            "t_force": None,
            "read": None,
            "order": None,
            "step": None,
            "problems": [],
            "order_events": [],
        }
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run.poll_events()
            for e in run.events[seen:]:
                if e["event"] == "control" and record["order"] is None:
                    order = next((o for o in e["orders"] if o["what"] == what), None)
                    if order is not None:
                        record.update(t_read=e["t"], read=e["read"], order=order["order"])
                elif e["event"] == "control_error":
                    record["problems"].append(e["message"])
                elif record["order"] is not None and e.get("order") == record["order"]:
                    if e["event"] == "nudge" and "lr" in e["changes"]:
                        record.update(t_force=e["t"], step=e["step"])
                    else:  # e.g. a `checkpoint` event the trial reported while carrying out the order
                        record["order_events"].append({k: e.get(k) for k in ("t", "event", "step", "message")})
            seen = len(run.events)
            if record["t_force"] is not None or record["problems"]:
                break
            if run.process.poll() is not None:
                raise RuntimeError(
                    f"the run ended (exit {run.process.returncode}) during the nudges: "
                    f"{(run.logs / 'stderr.txt').read_text()[-2000:]}"
                )
            time.sleep(0.005)  # how often this process looks; the times come from the run's log
        if record["t_force"] is None and not record["problems"]:
            record["problems"].append(f"not applied within {timeout:g} s (read: {record['read'] is not None})")
        records.append(record)
        time.sleep(rng.uniform(*gap))
    return records, document


def step_times(events: list[dict], start: float, end: float) -> dict:
    """The run's own pace between ``start`` and ``end`` (unix times), from its epoch_end
    events: ms per step and per epoch."""
    ends = [e for e in events if e["event"] == "epoch_end" and start <= e["t"] <= end]
    if len(ends) < 2:
        return {}
    steps = ends[1]["step"] - ends[0]["step"]
    per_epoch = [b["t"] - a["t"] for a, b in itertools.pairwise(ends)]
    training = [e["seconds"] for e in ends]
    return {
        "steps per epoch": steps,
        "epochs": len(ends),
        "epoch, event to event, ms": statistics.median(per_epoch) * 1e3,
        "steps of an epoch + evaluate, ms": statistics.median(training) * 1e3,
        "per step (epoch's seconds / steps), ms": statistics.median(training) / steps * 1e3,
    }


def latency(args, work: Path) -> dict:
    raw = json.loads(args.experiment.read_text())
    raw["train"]["epochs"] = 1_000_000  # runs until this benchmark stops it
    experiment = work / "latency-experiment.json"
    experiment.write_text(json.dumps(raw, indent=2))
    results = {}
    rng = random.Random(args.seed)
    for mode in args.modes:
        folder = work / f"latency-{mode}"
        folder.mkdir()
        print(f"  {mode}: starting runner start --plain{' --poll' if mode == 'poll' else ''} ...", flush=True)
        run = LiveRun(experiment, folder / "runs", mode == "poll", folder)
        document = None
        try:
            started = time.perf_counter()
            records, document = nudge_series(run, args.nudges, tuple(args.gap), args.timeout, rng)
            print(f"  {mode}: {len(records)} nudges in {time.perf_counter() - started:.1f} s", flush=True)
        finally:
            code = run.stop(document if document is not None else json.loads(run.control.read_text()))
        status = json.loads((run.run_dir / "status.json").read_text())
        results[mode] = {
            "records": records,
            "exit": code,
            "watching": status["control"]["watching"],
            "pace": step_times(run.events, records[0]["t_save"], max(x["t_force"] or x["t_save"] for x in records)),
            "control_errors": [e["message"] for e in run.events if e["event"] == "control_error"],
        }
    return results


def report_latency(results: dict) -> list[str]:
    problems = []
    print(
        "| watcher | save | nudges | save -> in force: p50 | p95 | max | save -> read: p50 | p95 | max "
        "| read -> in force: p50 | p95 | max |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, r in results.items():
        done = [x for x in r["records"] if x["t_force"] is not None]
        for label, rows in (
            (IN_PLACE, [x for x in done if x["pattern"] == IN_PLACE]),
            (RENAME, [x for x in done if x["pattern"] == RENAME]),
            ("**all**", done),
        ):
            cells = []
            for a, b in (("t_save", "t_force"), ("t_save", "t_read"), ("t_read", "t_force")):
                ms = [(x[b] - x[a]) * 1e3 for x in rows]
                cells += [f"{percentile(ms, 50):.1f}", f"{percentile(ms, 95):.1f}", f"{max(ms):.1f}" if ms else "-"]
            print(f"| {mode} ({r['watching']}) | {label} | {len(rows)} | " + " | ".join(cells) + " |")
        for x in r["records"]:
            for p in x["problems"]:
                problems.append(f"{mode} nudge {x['i']} ({x['pattern']}): {p}")
        problems += [f"{mode}: control_error: {m}" for m in r["control_errors"]]
        if r["exit"] != 0:
            problems.append(f"{mode}: the run exited with {r['exit']} after the stop action")
    print()
    for mode, r in results.items():
        pace = r["pace"]
        done = [x for x in r["records"] if x["t_force"] is not None]
        early = [x for x in done if x["order_events"]]
        if early:
            kinds = sorted({e["event"] for x in early for e in x["order_events"]})
            print(
                f"- {mode}: in {len(early)} of {len(done)} nudges, another event carried the nudge's order before "
                f"the `nudge` event ({', '.join(kinds)}): the trial reported an earlier snapshot file while it "
                "carried out the order, and status.json settles the order on that event"
            )
        slow = [x for x in done if (x["t_force"] - x["t_read"]) * 1e3 > 5]
        over = [x for x in done if (x["t_force"] - x["t_save"]) * 1e3 > AIMS["p50_ms"]]
        step = pace.get("per step (epoch's seconds / steps), ms", float("nan"))
        print(
            f"- {mode}: the run's pace during the nudges: {step:.2f} ms per step, {pace.get('steps per epoch')} "
            f"steps + evaluate per epoch, {pace.get('epoch, event to event, ms', float('nan')):.1f} ms from one "
            f"epoch_end to the next; read -> in force over 5 ms: {len(slow)} of {len(done)}; save -> in force "
            f"over {AIMS['p50_ms']:g} ms: {len(over)} of {len(done)}"
        )
    print()
    return problems


# -- 2. the watcher's cost to throughput --------------------------------------------------------


class InertWatcher:
    """Stands in for ``runner.control.watch.FileWatcher`` in the "watcher off" runs: the attributes
    ``ControlInbox`` and ``run_experiment`` use, and no observer, inotify or thread."""

    def __init__(self, path, check, *, on_idle=lambda: None, poll=False, **_):
        self.path, self.check, self.on_idle = path, check, on_idle
        self.mode = "off (benchmark)"

    def start(self):
        return self

    def stop(self) -> None:
        pass


def thread_cpu(threads: list[threading.Thread]) -> dict[str, float]:
    """CPU seconds each (live) thread has used so far, from its own CPU clock."""
    cpu = {}
    for t in threads:
        try:
            cpu[t.name] = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        except (OSError, ProcessLookupError, TypeError):  # it has ended
            cpu[t.name] = 0.0
    return cpu


def timed_watcher_class():
    """``runner.control.watch.FileWatcher`` unchanged, plus: the threads it starts are noted, and
    their CPU clocks read when it has started and just before it stops (``last``)."""
    from runner.control.watch import FileWatcher

    class TimedWatcher(FileWatcher):
        last: dict = {}

        def __init__(self, *args, **kwargs):
            self._before = {t.ident for t in threading.enumerate()}
            super().__init__(*args, **kwargs)  # the inotify observer starts its reader thread here

        def start(self):
            result = super().start()
            self._threads = [t for t in threading.enumerate() if t.ident not in self._before]
            self._started = (time.perf_counter(), thread_cpu(self._threads))
            return result

        def stop(self) -> None:
            at, started = self._started
            TimedWatcher.last = {
                "mode": self.mode,
                "started": started,
                "stopping": thread_cpu(self._threads),
                "watched_s": time.perf_counter() - at,
            }
            super().stop()

    return TimedWatcher


class Rewriter(threading.Thread):
    """Saves the control file every ``interval`` seconds with a trailing space toggled:
    the same meaning, new bytes, so that every save is read, parsed and logged."""

    def __init__(self, path: Path, interval: float):
        super().__init__(name="bench-control-rewriter", daemon=True)
        self.path, self.interval = path, interval
        self.stopped = threading.Event()
        self.saves, self.cpu = 0, 0.0

    def run(self) -> None:
        while not self.path.exists():
            if self.stopped.wait(0.001):
                return
        base = self.path.read_text().rstrip("\n") + "\n"
        start = time.monotonic()
        while not self.stopped.wait(max(0.0, start + (self.saves + 1) * self.interval - time.monotonic())):
            text = base + (" " if self.saves % 2 == 0 else "")
            save(self.path, text, IN_PLACE if self.saves % 2 == 0 else RENAME)
            self.saves += 1
        self.cpu = time.thread_time()

    def stop(self) -> None:
        self.stopped.set()
        self.join()


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    watcher: bool
    poll: bool = False
    rewrite: bool = False


def configurations(args) -> list[Config]:
    every = f"a save every {args.rewrite_interval * 1e3:g} ms"
    configs = [Config(OFF, watcher=False)]
    if "inotify" in args.modes:
        configs += [Config("(a) inotify watcher", True), Config(f"(c) inotify watcher + {every}", True, rewrite=True)]
    if "poll" in args.modes:
        configs += [
            Config("(a) --poll watcher", True, poll=True),
            Config(f"(c) --poll watcher + {every}", True, poll=True, rewrite=True),
        ]
    return configs


def throughput_runs(args, work: Path, plugins, dataset, spec) -> dict:
    import runner.control.inbox
    from runner.engine.loop import run_experiment
    from runner.records.events import read_events
    from runner.records.files import create_run_dir

    original = runner.control.inbox.FileWatcher
    timed = timed_watcher_class()
    configs = configurations(args)
    root = work / "throughput"

    def one(config: Config) -> dict:
        runner.control.inbox.FileWatcher = timed if config.watcher else InertWatcher
        timed.last = {}
        run_dir = create_run_dir(root, spec.name)
        rewriter = Rewriter(run_dir / "control.json", args.rewrite_interval) if config.rewrite else None
        gc.collect()
        try:
            if rewriter:
                rewriter.start()
            cpu0, start = time.process_time(), time.perf_counter()
            board = run_experiment(spec, plugins, dataset, run_dir, poll=config.poll)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
        finally:
            if rewriter:
                rewriter.stop()
            runner.control.inbox.FileWatcher = original
        events = list(read_events(run_dir / "events.jsonl"))
        shutil.rmtree(run_dir)
        result = board[0]
        return {
            "wall": wall,
            "trial": result.seconds,
            "cpu": cpu,
            "state": result.state,
            "final": {k: result.final[k] for k in COMPARED} if result.final else None,
            "watcher": dict(timed.last) if config.watcher else {},
            "reads": sum(e["event"] == "control" for e in events),
            "control_errors": sum(e["event"] == "control_error" for e in events),
            "saves": rewriter.saves if rewriter else 0,
            "rewriter_cpu": rewriter.cpu if rewriter else 0.0,
        }

    runs: dict[str, list[dict]] = {c.name: [] for c in configs}
    problems = []
    reference = None
    print("  warm-up (one untimed run of each)...", flush=True)
    for config in configs:
        r = one(config)
        reference = reference or r["final"]
        if r["final"] != reference or r["state"] != "completed":
            problems.append(f"warm-up {config.name}: {r['state']} {r['final']} != {reference}")
    for i in range(args.rounds):
        for config in rotated(configs, i):
            r = one(config)
            runs[config.name].append(r)
            if r["final"] != reference or r["state"] != "completed":
                problems.append(f"round {i + 1} {config.name}: {r['state']} {r['final']} != {reference}")
        print(
            f"  round {i + 1}: "
            + ", ".join(
                f"{k.split(' ')[0]}{' poll' if 'poll' in k else ''} {v[-1]['trial']:.3f} s" for k, v in runs.items()
            ),
            flush=True,
        )

    # One more run, with the first watcher configuration and timers: what a snapshot costs (a nudge
    # takes one, "before_nudge", before it applies the new value) and what a step costs. Not part of
    # the figures above.
    import runner.control.watch
    from benchmarks.bench_overhead import MethodTimer
    from runner.engine.trial_loop import TrialLoop
    from runner.plugins.backends.numpy_mlp.backend import NumpyBackend

    handled: dict[str, int] = {}
    original_handler = runner.control.watch._Handler.on_any_event

    def counting(self, event):  # which files' events reach the watcher's handler
        name = os.path.basename(os.fsdecode(event.dest_path or event.src_path))
        key = "status.json or its temporary" if "status.json" in name else name or "(the folder)"
        key = f"{type(event).__name__} {key}"
        handled[key] = handled.get(key, 0) + 1
        return original_handler(self, event)

    runner.control.watch._Handler.on_any_event = counting
    try:
        with (
            MethodTimer(TrialLoop, ("snapshot",)) as loop_timer,
            MethodTimer(NumpyBackend, ("train_step", "evaluate")) as backend_timer,
        ):
            instrumented = one(configs[1] if len(configs) > 1 else configs[0])
    finally:
        runner.control.watch._Handler.on_any_event = original_handler
    per_call = {
        "TrialLoop.snapshot": loop_timer.seconds["snapshot"] / max(1, loop_timer.calls["snapshot"]),
        **{
            f"NumpyBackend.{k}": backend_timer.seconds[k] / max(1, backend_timer.calls[k])
            for k in ("train_step", "evaluate")
        },
    }
    return {
        "runs": runs,
        "configs": [dataclasses.asdict(c) for c in configs],
        "problems": problems,
        "per_call": per_call,
        "calls": {**dict(loop_timer.calls), **dict(backend_timer.calls)},
        "instrumented": {
            "config": (configs[1] if len(configs) > 1 else configs[0]).name,
            "wall": instrumented["wall"],
            "handled": handled,
        },
    }


def mailbox_check_cost(repeats: int = 7, number: int = 1_000_000) -> dict:
    """The loop's per-step check for mail, timed alone: the same expression on an empty
    deque and an object with ``paused``, against the same loop without it (ns per step)."""
    from runner.engine.trial_loop import TrialLoop

    source, first = inspect.getsourcelines(TrialLoop.run_epoch)
    line = next((first + k for k, text in enumerate(source) if "if mail or self.paused" in text), None)

    class Loop:
        paused = False

    def with_check(n, mail, self):
        for _ in range(n):
            if mail or self.paused:
                pass

    def without(n, mail, self):
        for _ in range(n):
            pass

    mail, loop = deque(), Loop()
    a, b = [], []
    for _ in range(repeats):
        a.append(timeit.timeit(lambda: with_check(number, mail, loop), number=1) / number)
        b.append(timeit.timeit(lambda: without(number, mail, loop), number=1) / number)
    return {"ns": (min(a) - min(b)) * 1e9, "line": line}


def watcher_figures(r: dict) -> dict:
    """One run's watcher CPU: to start (ms), while running (ms per s watched), in all (ms)."""
    w = r["watcher"]
    started, stopping = sum(w["started"].values()), sum(w["stopping"].values())
    return {
        "start_ms": started * 1e3,
        "running_ms_per_s": (stopping - started) / w["watched_s"] * 1e3,
        "total_ms": stopping * 1e3,
        "share": stopping / r["wall"],
    }


def report_throughput(t: dict, args, mailbox: dict) -> None:
    runs = t["runs"]
    names = list(runs)
    print(
        "Time of the trial (`TrialResult.seconds`: the trial's own loop, start to end, where the watcher can "
        "slow training) and of the whole `run_experiment` call (which adds starting and stopping the watcher), "
        "seconds:"
    )
    print()
    print(
        "| configuration | trial: median | min | max | / (b), medians | / (b), minima "
        "| paired rounds / (b): median (min .. max) | whole run: median | / (b), medians | process CPU s, median |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    trial = {name: [r["trial"] for r in runs[name]] for name in names}
    wall = {name: [r["wall"] for r in runs[name]] for name in names}
    base_med, base_min, base_wall = statistics.median(trial[OFF]), min(trial[OFF]), statistics.median(wall[OFF])
    for name in names:
        med = statistics.median(trial[name])
        paired = [a / b for a, b in zip(trial[name], trial[OFF])]
        cpu = statistics.median(r["cpu"] for r in runs[name])
        print(
            f"| {name} | {med:.3f} | {min(trial[name]):.3f} | {max(trial[name]):.3f} | {med / base_med:.4f} "
            f"| {min(trial[name]) / base_min:.4f} | {statistics.median(paired):.4f} ({min(paired):.4f} .. "
            f"{max(paired):.4f}) | {statistics.median(wall[name]):.3f} | "
            f"{statistics.median(wall[name]) / base_wall:.4f} | {cpu:.3f} |"
        )
    print()
    print(
        "CPU time of the watcher's own threads (their CPU clocks, read once it has started and just before it "
        "stops), medians of the rounds:"
    )
    print()
    print(
        "| configuration | to start, ms | while running, ms per s (= % of one core x 10) | all, share of the "
        "run's wall time | reads of the file per run | ms per read | threads (last round, ms in all) |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    running = {}
    for name in names:
        if not runs[name] or not runs[name][0]["watcher"]:
            continue
        figures = [watcher_figures(r) for r in runs[name]]
        running[name] = statistics.median(f["running_ms_per_s"] for f in figures)
        reads = statistics.median(r["reads"] for r in runs[name])
        idle = running.get(name.split(" + ")[0].replace("(c)", "(a)"))  # the same watcher without the saves
        per_read = "-"
        if reads and idle is not None and " + " in name:
            seconds = statistics.median(r["watcher"]["watched_s"] for r in runs[name])
            per_read = f"{(running[name] - idle) * seconds / reads:.3f}"
        last = runs[name][-1]["watcher"]["stopping"]
        print(
            f"| {name} | {statistics.median(f['start_ms'] for f in figures):.2f} | {running[name]:.2f} "
            f"| {statistics.median(f['share'] for f in figures) * 100:.3f} % | {reads:g} | {per_read} "
            f"| {', '.join(f'{k}: {v * 1e3:.1f}' for k, v in last.items())} |"
        )
    print()
    for name in names:
        if runs[name] and runs[name][0]["saves"]:
            saves = statistics.median(r["saves"] for r in runs[name])
            rcpu = statistics.median(r["rewriter_cpu"] for r in runs[name]) * 1e3
            errors = sum(r["control_errors"] for r in runs[name])
            print(
                f"- {name}: {saves:g} saves per run by the rewriting thread (its own CPU, {rcpu:.1f} ms per run, "
                f"is in the process's CPU, not the watcher's); control_error events in these runs: {errors}."
            )
    per_call, calls = t["per_call"], t["calls"]
    step_ms = per_call["NumpyBackend.train_step"] * 1e3
    print(
        f"- Mailbox check (`if mail or self.paused:`, runner/engine/loop.py:{mailbox['line']}) timed alone: "
        f"{mailbox['ns']:.1f} ns per step, against {step_ms:.3f} ms per `train_step`: "
        f"{mailbox['ns'] * 1e-6 / step_ms * 100:.4f} % of a step."
    )
    print(
        f"- One more instrumented run, ms per call: train_step {step_ms:.3f} ({calls.get('train_step', 0)} calls), "
        f"evaluate {per_call['NumpyBackend.evaluate'] * 1e3:.3f} ({calls.get('evaluate', 0)}), TrialLoop.snapshot "
        f"{per_call['TrialLoop.snapshot'] * 1e3:.3f} ({calls.get('snapshot', 0)}; a nudge takes one, "
        f"'before_nudge', before it applies the value)."
    )
    ins = t["instrumented"]
    if ins["handled"]:
        print(
            f"- In that run ({ins['config']}, {ins['wall']:.2f} s), the watcher's event handler was called "
            f"{sum(ins['handled'].values())} times: "
            + ", ".join(f"{k}: {v}" for k, v in sorted(ins["handled"].items(), key=lambda kv: -kv[1]))
            + "."
        )
    print(
        f"- (b): {base_med:.3f} s per trial of {args.epochs} epochs, {base_med / args.epochs * 1e3:.1f} ms per epoch."
    )
    print()


# -- the command --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from benchmarks.bench_overhead import add_blas_threads_option, apply_blas_threads

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--experiment",
        type=Path,
        default=DEFAULT_EXPERIMENT,
        help="experiment file (default: experiments/digits_babysit.json); 1: its epochs are "
        "raised so that it runs until stopped; 2: its epochs are --epochs, its search "
        "a single trial, its checkpoint.min_interval 3600",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="watchers to measure, in 1 and 2 (default: inotify poll)",
    )
    parser.add_argument("--nudges", type=int, default=50, help="1: nudges per watcher (default 50)")
    parser.add_argument(
        "--gap",
        type=float,
        nargs=2,
        default=[0.15, 0.35],
        metavar=("MIN", "MAX"),
        help="1: seconds between one nudge's application and the next save, drawn uniformly "
        "(default 0.15 0.35: a span of whole polling intervals, so that saves fall at "
        "uniformly spread moments of the --poll observer's 0.1 s cycle)",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="1: seconds to wait for each nudge (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="1: seed of the pauses between nudges (default 0)")
    parser.add_argument("--rounds", type=int, default=7, help="2: timed rounds of every configuration (default 7)")
    parser.add_argument("--epochs", type=int, default=20, help="2: epochs of the single trial (default 20)")
    parser.add_argument(
        "--rewrite-interval",
        type=float,
        default=0.1,
        help="2: seconds between saves in configuration (c) (default 0.1)",
    )
    parser.add_argument(
        "--only", choices=("1", "2"), action="append", help="run only this measurement (repeatable; default both)"
    )
    add_blas_threads_option(parser)
    parser.add_argument("--tmp", type=Path, help="folder for the runs (default: the system's temp folder)")
    parser.add_argument("--json", type=Path, help="also write every raw figure to this JSON file")
    args = parser.parse_args(argv)
    if (
        min(args.nudges, args.rounds, args.epochs) < 1
        or args.timeout <= 0
        or args.rewrite_interval <= 0
        or not 0 <= args.gap[0] <= args.gap[1]
    ):
        parser.error(
            "--nudges, --rounds, --epochs must be >= 1; --timeout, --rewrite-interval > 0; 0 <= gap MIN <= MAX"
        )
    apply_blas_threads(parser, args)  # also reaches the `runner start` subprocesses (environment)
    only = set(args.only or ("1", "2"))

    from benchmarks.bench_overhead import machine

    started = time.perf_counter()
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="bench-control-", dir=args.tmp))
    info["files written to"] = f"{work.parent}: {filesystem(work)}"
    import watchdog.version

    info["watchdog"] = watchdog.version.VERSION_STRING
    info["sys.getswitchinterval()"] = f"{sys.getswitchinterval() * 1e3:g} ms"
    from runner.control.watch import FileWatcher

    defaults = inspect.signature(FileWatcher.__init__).parameters
    info["FileWatcher defaults"] = ", ".join(
        f"{k}={defaults[k].default}" for k in ("poll_interval", "quiet", "settle", "idle")
    )
    command = "python benchmarks/bench_control.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    print(f"# Control file: nudge latency and watcher cost\ncommand: {command}\n")
    print("## Machine")
    for key, value in info.items():
        print(f"- {key}: {value}")
    print(flush=True)
    problems: list[str] = []
    results: dict = {"command": command, "machine": info}
    try:
        if "1" in only:
            print(
                f"## 1. Nudge latency: {args.nudges} nudges of lr per watcher, saves alternating {IN_PLACE} / "
                f"{RENAME}, {args.gap[0]:g}-{args.gap[1]:g} s apart; `runner start {args.experiment.name}` "
                "(epochs raised) in a subprocess; ms",
                flush=True,
            )
            with MachineUse() as use:
                lat = latency(args, work)
            results["latency"] = lat
            results["latency_machine"] = use.as_dict()
            print()
            problems += report_latency(lat)
            print(f"- the machine during measurement 1: {use.line()}")
            print()

        if "2" in only:
            from runner.engine.experiment import load_dataset
            from runner.engine.plugin_manager import load_plugins
            from runner.experiment_file.spec import load

            raw = json.loads(args.experiment.read_text())
            raw["name"] = "bench-control"
            raw["train"]["epochs"] = args.epochs
            raw["search"] = {
                "strategy": {"name": "grid"},
                "metric": raw.get("search", {}).get("metric", "val_acc"),
                **({"mode": raw["search"]["mode"]} if "mode" in raw.get("search", {}) else {}),
            }
            raw["checkpoint"] = {**raw.get("checkpoint", {}), "min_interval": 3600}
            raw["executor"] = {"name": "inline"}
            path = work / "throughput-experiment.json"
            path.write_text(json.dumps(raw, indent=2))
            plugins = load_plugins()
            spec = dataclasses.replace(load(path, plugins.registry), base_dir=args.experiment.resolve().parent)
            dataset = load_dataset(spec, plugins)
            backend = plugins.registry.get("backend", spec.backend.name)
            print(
                f"## 2. The watcher's cost to training: one trial x {args.epochs} epochs of "
                f"{args.experiment.name}'s model ({backend.__name__}), in this process, {args.rounds} rounds, "
                "order rotated each round",
                flush=True,
            )
            with MachineUse() as use:
                t = throughput_runs(args, work, plugins, dataset, spec)
            mailbox = mailbox_check_cost()
            results["throughput"] = {**t, "mailbox": mailbox, "section": raw, "machine": use.as_dict()}
            problems += t["problems"]
            print()
            report_throughput(t, args, mailbox)
            print(f"- the machine during measurement 2's runs: {use.line()}")
            print()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("## Summary against the aims")
    for mode, r in results.get("latency", {}).items():
        done = [(x["t_force"] - x["t_save"]) * 1e3 for x in r["records"] if x["t_force"] is not None]
        p50 = percentile(done, 50)
        print(
            f"- nudge latency, {mode}: p50 {p50:.1f} ms, p95 {percentile(done, 95):.1f} ms, max "
            f"{max(done, default=float('nan')):.1f} ms "
            f"(aim p50 < {AIMS['p50_ms']:g} ms: {'met' if p50 < AIMS['p50_ms'] else 'MISSED'})"
        )
    if "throughput" in results:
        runs = results["throughput"]["runs"]
        base = statistics.median(r["trial"] for r in runs[OFF])
        for name, rs in runs.items():
            if name == OFF:
                continue
            ratio = statistics.median(r["trial"] for r in rs) / base
            share = statistics.median(watcher_figures(r)["share"] for r in rs)
            print(
                f"- watcher cost, {name}: {(ratio - 1) * 100:+.2f} % trial time (medians, vs {OFF}); its threads' "
                f"CPU: {share * 100:.3f} % of the run's wall time (aim < {AIMS['cost'] * 100:g} %: "
                f"{'met' if share < AIMS['cost'] else 'MISSED'} by this direct measure)"
            )
    print(f"- total time of this command: {time.perf_counter() - started:.0f} s")
    if problems:
        print(f"\nFAILED checks: {len(problems)}")
        for p in problems[:30]:
            print("  " + p)
    if args.json:
        args.json.write_text(json.dumps({**results, "problems": problems}, indent=2, default=str))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
