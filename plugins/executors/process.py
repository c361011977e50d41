"""The process executor: trials side by side in a pool of worker processes on this machine.

Each slot has one worker process that builds its own trial runner once and then runs trial
after trial. Workers start warm: by default they are forked from multiprocessing's
``forkserver``, a parent process started with the first worker (a clean interpreter, with
no thread or CUDA context of the driver's) that has runner, NumPy and the backend's module
imported already, so a worker, and a worker that replaces one that died, is up in a
fraction of the time a fresh interpreter takes. ``"start": "spawn"`` starts each worker
as a fresh interpreter instead (what macOS and Windows always do). The prepared data set reaches
the workers through shared memory, copied once (``shared_data``), not pickled to each.

Every worker has its own pair of pipes to the driver, so a worker killed in the middle of a
message cannot block the others. Workers ignore Ctrl-C and SIGTERM (both reach a whole
process group: a terminal's Ctrl-C, a scheduler's stop): the driver passes them on
(``RemoteExecutor``) so that every trial saves a snapshot before the run stops; a worker
whose driver is gone exits.

With GPUs, worker k sees only GPU ``gpus[k % len(gpus)]`` (``CUDA_VISIBLE_DEVICES``), so the
trials spread over them and a backend's ``"cuda"`` (or ``"auto"``) is that GPU.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import connection, get_context
from typing import Any, Literal

from runner import RunnerError, SpecError, bounds, hookimpl, join_path
from runner.executor import RemoteExecutor, SnapshotWriter, WorkerLink, WorkerSetup, build_runner, run_job
from runner.plugins.executors.shared_data import SharedDataset, close

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # workers ignore them: the driver passes a stop on
EXIT_SECONDS = 30  # a worker asked to exit (its trials done) that is still there after this is killed


@dataclass(frozen=True)
class ProcessOptions:
    workers: int = field(default=0, metadata=bounds(ge=0, doc="worker processes, trials at once; 0: one per CPU core"))
    retries: int = field(
        default=2, metadata=bounds(ge=0, doc="times a trial is retried from its newest snapshot after its worker dies")
    )
    threads: int = field(
        default=0,
        metadata=bounds(ge=0, doc="math threads per worker (OpenMP, BLAS); 0: the cores shared out among the workers"),
    )
    start: Literal["forkserver", "spawn"] = field(
        default="forkserver",
        metadata=bounds(
            doc="how workers start: forked from a warm parent that has runner, NumPy and the backend's module "
            "imported (on Linux), or each a fresh interpreter (spawn; what forkserver falls back to elsewhere)"
        ),
    )
    gpus: tuple[int, ...] | None = field(
        default=None,
        metadata=bounds(
            doc="GPU ids to spread the workers over; "
            "null: every visible CUDA device if the backend uses Torch, else none"
        ),
    )

    def check(self, path: str) -> None:
        if self.gpus is not None and any(g < 0 for g in self.gpus):
            raise SpecError(join_path(path, "gpus"), f"GPU ids are >= 0, got {list(self.gpus)}")


def cpu_count() -> int:
    """Cores this process may use (its affinity mask), not every core of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[int]:
    """The CUDA devices to spread over when the file names none: Torch's count, if the
    backend already imported Torch (nothing else is imported to find out)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return []
    return list(range(torch.cuda.device_count()))


def device_ids(gpus: list[int]) -> list[str]:
    """The GPUs as ``CUDA_VISIBLE_DEVICES`` names them: the driver's own list, if it has one,
    numbers GPU 0, 1, ... (as Torch does)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return [str(g) for g in gpus]
    ids = [v.strip() for v in visible.split(",")]
    for g in gpus:
        if g >= len(ids):
            raise RunnerError(
                f"executor.gpus: GPU {g} is not one of the {len(ids)} this process sees "
                f"(CUDA_VISIBLE_DEVICES={visible})",
                exit_code=2,
            )
    return [ids[g] for g in gpus]


def worker_environment(slot: int, threads: int, devices: list[str]) -> dict[str, str]:
    """What worker ``slot`` finds in its environment: its share of threads, its GPU."""
    env = {name: str(threads) for name in THREAD_VARIABLES}
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = devices[slot % len(devices)]
    return env


def forkserver_is_safe() -> bool:
    """Whether workers may fork from a warm parent here: on Linux (macOS's system libraries
    are not safe to use after a fork from a process that loaded them, so it spawns), and not
    with a Python whose forkserver listens where any local user can connect (CVE-2022-42919:
    3.10.0 to 3.10.8)."""
    if sys.platform != "linux" or "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    return not ((3, 10, 0) <= sys.version_info[:3] < (3, 10, 9))


def limit_math_threads(threads: int) -> None:
    """Hold the math libraries already loaded (the warm parent imported NumPy, so its BLAS
    read its thread count there) to ``threads`` in this worker."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings it; without it the environment variables stand
        return
    threadpool_limits(limits=threads)


@contextmanager
def inherited(changes: dict[str, str]):
    """What a child inherits as it starts: these variables, and Ctrl-C and SIGTERM ignored
    from its first instruction (a stop during its start-up must not kill it). Then the
    driver's own are put back."""
    before = {name: os.environ.get(name) for name in changes}
    handlers = {stop: signal.signal(stop, signal.SIG_IGN) for stop in STOP_SIGNALS}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for stop, handler in handlers.items():
            signal.signal(stop, handler)


def worker_main(
    setup: WorkerSetup,
    shared: SharedDataset | None,
    env: dict[str, str],
    inbound: connection.Connection,
    outbound: connection.Connection,
) -> None:
    """A worker process: build the trial runner, then run jobs until told to exit (or the
    driver is gone). Its main thread trains; a second thread receives from the driver.
    ``env`` is the driver's environment as it was when it started the worker, with the
    worker's share of threads and its GPU: a worker forked from the warm parent would
    otherwise have that parent's, from when it started (perhaps for an earlier run)."""
    for stop in STOP_SIGNALS:  # a Ctrl-C (or a scheduler's SIGTERM) reaches the whole process group; the driver decides
        signal.signal(stop, signal.SIG_IGN)
    os.environ.clear()  # before anything reads them: CUDA, Torch's thread pool, the plugins
    os.environ.update(env)
    limit_math_threads(int(env[THREAD_VARIABLES[0]]))
    if shared is not None:
        setup = dataclasses.replace(setup, dataset=shared.attach())
    lock, driver_alive = threading.Lock(), threading.Event()
    driver_alive.set()

    def send(message: tuple) -> None:
        with lock:
            outbound.send(message)

    link = WorkerLink(send, alive=driver_alive.is_set)
    jobs: deque = deque()
    arrived = threading.Condition()

    def receive() -> None:
        while True:
            try:
                message = inbound.recv()
            except (EOFError, OSError):  # the driver is gone: nobody will read what this worker does
                driver_alive.clear()
                os._exit(1)
            if message[0] in ("job", "exit"):
                with arrived:
                    jobs.append(message[1] if message[0] == "job" else None)
                    arrived.notify()
            else:
                link.receive(message)

    threading.Thread(target=receive, name="runner-worker-receive", daemon=True).start()
    writer = SnapshotWriter()
    try:
        runner = build_runner(setup, link, writer)
        while True:
            with arrived:
                arrived.wait_for(lambda: jobs)
                job = jobs.popleft()
            if job is None:
                break
            run_job(runner, link, job)
    finally:
        writer.close()


class ProcessExecutor(RemoteExecutor):
    name = "process"
    Options = ProcessOptions

    def __init__(self, options, *, run_trial, session):
        super().__init__(options, run_trial=run_trial, session=session)
        self.slots = options.workers or cpu_count()
        self.threads = options.threads or max(1, cpu_count() // self.slots)
        self.devices = device_ids(visible_gpus() if options.gpus is None else list(options.gpus))
        warm = options.start == "forkserver" and forkserver_is_safe()
        self._context = get_context("forkserver" if warm else "spawn")
        if warm:
            self._context.set_forkserver_preload(list(session.setup.modules))
        self._setup: WorkerSetup | None = None  # what workers receive: the data set in shared memory, if it fits
        self._shared: SharedDataset | None = None
        self._block = None  # the shared memory holding the data set, while workers run
        self._workers: dict[int, tuple[Any, connection.Connection, connection.Connection]] = {}
        self._send_lock = threading.Lock()
        self._ready: deque[tuple[int, tuple]] = deque()
        self._ended: set[int] = set()  # slots whose worker's pipe reached its end: it exited

    def start(self, slot: int) -> None:
        if slot in self._workers:  # its worker died
            with self._send_lock:
                self._forget(slot)
        if self._setup is None:
            shared = SharedDataset.share(self.session.setup.dataset)
            if shared is None:  # no room in /dev/shm: each worker gets the data pickled
                self._setup = self.session.setup
            else:
                (self._shared, self._block), self._setup = shared, dataclasses.replace(self.session.setup, dataset=None)
        inbound_reader, inbound_writer = self._context.Pipe(duplex=False)
        outbound_reader, outbound_writer = self._context.Pipe(duplex=False)
        env = worker_environment(slot, self.threads, self.devices)
        process = self._context.Process(
            target=worker_main,
            name=f"runner-worker-{slot}",
            daemon=True,
            args=(self._setup, self._shared, {**os.environ, **env}, inbound_reader, outbound_writer),
        )
        with inherited(env):  # (the warm parent, started by the first worker's start, inherits it too)
            process.start()
        inbound_reader.close()  # the worker's ends: closed here, so a dead worker reads as EOF
        outbound_writer.close()
        with self._send_lock:
            self._workers[slot] = (process, inbound_writer, outbound_reader)

    def launch(self, slot: int, job) -> None:
        self.send(slot, ("job", job))

    def send(self, slot: int, message: tuple) -> None:
        with self._send_lock:
            worker = self._workers.get(slot)
            if worker is None:
                return
            try:
                worker[1].send(message)
            except (BrokenPipeError, OSError):  # it died: ``dead`` reports it and its trial is retried
                pass

    def receive(self, timeout: float) -> tuple[int, tuple] | None:
        if not self._ready:
            readers = {worker[2]: slot for slot, worker in self._workers.items() if slot not in self._ended}
            for reader in connection.wait(list(readers), timeout):
                try:
                    while reader.poll():
                        self._ready.append((readers[reader], reader.recv()))
                except (EOFError, OSError):  # the worker is gone, and what it sent is read
                    self._ended.add(readers[reader])
        return self._ready.popleft() if self._ready else None

    def dead(self, slots: list[int]) -> dict[int, str]:
        lost = {}
        for slot in slots:
            process = self._workers[slot][0]
            if process.exitcode is not None:
                lost[slot] = describe_exit(process.exitcode)
        return lost

    def shutdown(self, *, now: bool) -> None:
        try:
            for slot in list(self._workers):
                if not now:
                    self.send(slot, ("exit", None))
            for slot, (process, _, _) in list(self._workers.items()):
                process.join(0 if now else EXIT_SECONDS)
                if process.is_alive():
                    process.kill()
                    process.join()
                with self._send_lock:
                    self._forget(slot)
        finally:  # a second Ctrl-C in a join must not leave the block in /dev/shm
            if self._block is not None:
                close(self._block)
                self._shared = self._block = None

    def _forget(self, slot: int) -> None:
        self._ended.discard(slot)
        process, writer, reader = self._workers.pop(slot)
        writer.close()
        reader.close()
        process.close()


def describe_exit(code: int) -> str:
    """A worker's exit code as a person reads it: ``killed by SIGKILL``, ``exit code 1``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@hookimpl
def runner_register(registry):
    registry.add_executor(ProcessExecutor)
