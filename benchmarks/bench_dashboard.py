#!/usr/bin/env python
"""``runner dashboard``: how soon a page sees an epoch, how soon an order from the page is in
force, and what a page watching a run costs its training, in one command.

    python benchmarks/bench_dashboard.py [--epochs 60] [--orders 20] [--train-epochs 150] [--rounds 3]

1. **Stream latency** (aim: under a second, the issue's bound). A real ``runner start``
   trains ``experiments/digits_babysit.json`` (its epochs raised so that it never ends by
   itself) and a real ``runner dashboard RUN_DIR --port 0`` serves it. This process reads the
   run's event stream as the page does; for each ``epoch_end`` that arrives after the first
   message (the log so far), latency is the time it arrived (``time.time()``) less the
   event's ``t`` (when the run wrote it). ``--epochs`` epochs are measured.
2. **Order latency.** ``--orders`` times, this process POSTs ``{"settings": {"lr": ...}}`` as
   the page does (a new value each time) and measures, from just before the request: the
   answer (checked and written to ``control.json``); the ``nudge`` event's ``t`` (the new lr
   is in force from the next step); and the time the run's verdict ``applied`` is first seen
   in the ``run`` messages of the stream (what the page shows).
3. **Cost to training.** ``runner start`` of the same experiment with ``--train-epochs``
   epochs (the default 150), timed whole, with and without a dashboard (``--out`` the run's
   folder, started before the run, as a person's would be) streaming it to one reader from
   its first epoch, in alternating order for ``--rounds`` rounds; the ratio of the medians,
   and the dashboard process's own CPU time over each run it streamed (``/proc/PID/stat``),
   which does not drown in the noise of whole-run times as the ratio can.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.dashboard_helpers import Dashboard, wait_for  # noqa: E402


def experiment(folder: Path, epochs: int) -> Path:
    spec = json.loads((ROOT / "experiments" / "digits_babysit.json").read_text())
    spec.pop("$schema")
    spec["train"]["epochs"] = epochs
    path = folder / f"babysit-{epochs}.json"
    path.write_text(json.dumps(spec))
    return path


def start(exp: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "start", exp, "--out", out, "--plain"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, wait_for(lambda: next(out.glob("*/status.json"), None), what="the run").parent


def quantiles(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return f"{1000 * statistics.median(values):.0f} | {1000 * p95:.0f} | {1000 * values[-1]:.0f}"


def latencies(folder: Path, epochs: int, orders: int) -> None:
    process, run_dir = start(experiment(folder, 100_000), folder / "live")
    board = Dashboard(run_dir)
    try:
        stream = board.stream(run_dir.name)
        stream.next()  # the log so far
        seen: list[float] = []

        def arrived(name, data):
            if name == "log":
                now = time.time()
                seen.extend(now - e["t"] for e in data if e["event"] == "epoch_end")
            return len(seen) >= epochs

        stream.until(arrived, timeout=600)
        written, in_force, shown = [], [], []
        for n in range(orders):
            lr = round(0.01 + 0.0005 * n, 6)
            began = time.time()
            status, answer = board.order(run_dir.name, {"settings": {"lr": lr}})
            assert status == 200, answer
            written.append(time.time() - began)

            def verdict(name, data, sha=answer["sha256"]):
                recent = data["status"]["control"]["recent"] if name == "run" else []
                return any(r["sha256"] == sha and r["outcome"] == "applied" for r in recent)

            stream.until(verdict)
            shown.append(time.time() - began)
            nudges = [
                json.loads(line)
                for line in (run_dir / "events.jsonl").read_text().splitlines()
                if '"nudge"' in line and f'"new":{lr}' in line
            ]
            in_force.append(nudges[-1]["t"] - began)
            time.sleep(0.3)
        print("| measure | n | p50 ms | p95 ms | max ms |\n|---|---|---|---|---|")
        print(f"| epoch_end written -> on the page's stream | {len(seen)} | {quantiles(seen)} |")
        print(f"| order sent -> checked and written to control.json | {orders} | {quantiles(written)} |")
        print(f"| order sent -> the new lr in force (nudge event) | {orders} | {quantiles(in_force)} |")
        print(f"| order sent -> 'applied' on the page's stream | {orders} | {quantiles(shown)} |")
        stream.close()
    finally:
        board.close()
        process.kill()
        process.wait()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, all its threads (Linux: /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_along(stream) -> None:
    """A page reading the stream until it ends."""
    try:
        while True:
            stream.next()
    except (EOFError, OSError):
        pass


def cost(folder: Path, epochs: int, rounds: int) -> None:
    exp = experiment(folder, epochs)
    times: dict[str, list[float]] = {"without": [], "with": []}
    busy: list[float] = []  # the dashboard process's CPU seconds over each run it streamed
    for r in range(rounds):
        for mode in ("without", "with") if r % 2 == 0 else ("with", "without"):
            out = folder / f"cost-{r}-{mode}"
            out.mkdir()
            board = Dashboard("--out", out) if mode == "with" else None  # serving already, as a person's would be
            cpu_before = cpu_seconds(board.process.pid) if board else 0.0
            began = time.perf_counter()
            process = subprocess.Popen(
                [sys.executable, "-m", "runner", "start", exp, "--out", out, "--plain"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if board is not None:
                run_dir = wait_for(lambda out=out: next(out.glob("*/events.jsonl"), None), what="the run").parent
                reader = threading.Thread(target=read_along, args=(board.stream(run_dir.name),), daemon=True)
                reader.start()
            process.wait()
            times[mode].append(time.perf_counter() - began)
            if board is not None:
                busy.append(cpu_seconds(board.process.pid) - cpu_before)
                board.close()  # (its stream ends, and the reader with it)
    without, with_ = statistics.median(times["without"]), statistics.median(times["with"])
    print(
        f"\nthe dashboard's own CPU time while it streamed each run: {', '.join(f'{b:.2f}' for b in busy)} s, "
        f"{100 * statistics.median(busy) / with_:.1f} % of one core"
    )
    print(
        f"\n`runner start` of {epochs} epochs, median of {rounds}: without a dashboard {without:.2f} s, "
        f"with one streaming it {with_:.2f} s: ratio {with_ / without:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=60, help="epochs whose stream latency is measured")
    parser.add_argument("--orders", type=int, default=20)
    parser.add_argument("--train-epochs", type=int, default=150, help="epochs of each run timed for the cost")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        latencies(Path(tmp), args.epochs, args.orders)
        cost(Path(tmp), args.train_epochs, args.rounds)


if __name__ == "__main__":
    main()
