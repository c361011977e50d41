"""The ray executor: trials on a Ray cluster (https://docs.ray.io), one Ray actor per slot.

``address`` names the cluster to join (``"auto"``: the one this machine is a node of;
``"ray://head:10001"``: a remote one through Ray Client); without it the runner joins the
cluster ``RAY_ADDRESS`` names, else one ``ray start`` started on this machine, else it
starts a local one for the run and stops it after. Each
actor reserves ``cpus`` CPUs and ``gpus`` GPUs (a fraction shares a GPU between trials);
Ray sets ``CUDA_VISIBLE_DEVICES`` in each actor, so a backend's ``"cuda"`` is the GPU Ray
gave it. Each actor keeps what it has to tell the driver (``runner.execution.worker``'s messages)
until the driver collects it: the driver keeps one ``collect`` call waiting on every actor,
which returns as soon as there is something, with everything there is (so a busy actor's
events travel in batches, and an idle one costs nothing). Orders reach an actor through its
``receive`` method. Both are served by a thread of their own (concurrency groups of one
thread, so each keeps its order) while ``run`` trains. A dead actor (its node lost, out of
memory, ``ray.kill``) is noticed when its ``run`` call fails; ``RemoteExecutor`` retries the
trial in a new actor.

Snapshot files (``storage``): on a cluster of other machines, only the driver touches the
run directory. Actors send their snapshots to the driver, which writes them, and ask it for
a file to resume or retry from, to take another trial's weights or to list a trial's files
(``runner.execution.worker.DriverSnapshots``): the nodes need no shared file system. On a
cluster of this machine alone, or with ``"storage": "shared"``, actors read and write the
run directory themselves; then every node must see it at the same path (NFS, a cloud file
system mount). Either way, every node needs this package and the experiment's plugins
installed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from runner import RunnerError, bounds, hookimpl
from runner.executor import RemoteExecutor, SnapshotWriter, WorkerLink, build_runner, run_job

INSTALL = "needs Ray: pip install 'panda-caviar[ray]' (or pip install ray)"
MAIL = "mail"  # the actor's concurrency group for messages from the driver: one thread, in order
OUT = "out"  # and for the driver's ``collect`` calls
COLLECT_SECONDS = 1.0  # how long a ``collect`` call waits for a message before it returns empty


@dataclass(frozen=True)
class RayOptions:
    address: str | None = field(
        default=None,
        metadata=bounds(
            doc='the cluster to run on: "auto", "HOST:PORT" or "ray://HOST:PORT"; null: RAY_ADDRESS if set, '
            "else one `ray start` started on this machine, else a local cluster started for the run"
        ),
    )
    cpus: float = field(default=1.0, metadata=bounds(gt=0, doc="CPUs each trial reserves"))
    gpus: float = field(
        default=0.0,
        metadata=bounds(ge=0, doc="GPUs each trial reserves; a fraction (0.5) shares one GPU between trials"),
    )
    workers: int = field(
        default=0, metadata=bounds(ge=0, doc="trials at once; 0: as many as the cluster's CPUs and GPUs fit")
    )
    retries: int = field(
        default=2, metadata=bounds(ge=0, doc="times a trial is retried from its newest snapshot after its actor dies")
    )
    storage: Literal["auto", "driver", "shared"] = field(
        default="auto",
        metadata=bounds(
            doc="who reads and writes snapshot files: the driver, which the actors send them to (no shared disk "
            'needed), or each actor in the run directory, which every node must then see at the same path; "auto": '
            "shared when the cluster is this machine alone, else the driver"
        ),
    )


class TrialWorker:
    """A Ray actor that trains trials: the worker's end (``WorkerLink``, ``run_job``)."""

    def __init__(self, setup):
        self.outbox: deque[tuple] = deque()
        self.posted = threading.Condition()
        self.link = WorkerLink(self.post)
        self.writer = SnapshotWriter()
        try:
            self.runner = build_runner(setup, self.link, self.writer)
        except Exception:  # the reason is posted: the driver collects it and ends the run
            self.runner = None

    def post(self, message: tuple) -> None:
        """The link's ``send``: keep the message until the driver collects it."""
        with self.posted:
            self.outbox.append(message)
            self.posted.notify()

    def collect(self, timeout: float) -> list[tuple]:
        """Called by the driver (group ``OUT``): every message kept, as soon as there is
        one, or none after ``timeout``."""
        with self.posted:
            self.posted.wait_for(lambda: self.outbox, timeout)
            messages = list(self.outbox)
            self.outbox.clear()
        return messages

    def run(self, job) -> None:
        if self.runner is not None:
            run_job(self.runner, self.link, job)

    def receive(self, message: tuple) -> None:
        self.link.receive(message)

    def close(self) -> None:
        self.writer.close()


class RayExecutor(RemoteExecutor):
    name = "ray"
    Options = RayOptions

    def __init__(self, options, *, run_trial, session):
        super().__init__(options, run_trial=run_trial, session=session)
        import ray

        self.ray = ray
        self.owns_cluster = not ray.is_initialized()
        if self.owns_cluster:
            address = options.address or os.environ.get("RAY_ADDRESS")
            try:
                ray.init(
                    address=address,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    configure_logging=True,
                )
            except ConnectionError as err:
                raise RunnerError(
                    f"executor.address: cannot reach the Ray cluster at {address!r}: {err}", exit_code=2
                ) from None
        self.check_resources()
        self.slots = options.workers or self.fitting()
        self.actor_class = ray.remote(concurrency_groups={MAIL: 1, OUT: 1})(TrialWorker).options(
            num_cpus=options.cpus, num_gpus=options.gpus, max_concurrency=1
        )
        self.storage = (
            options.storage if options.storage != "auto" else "shared" if self.on_this_machine() else "driver"
        )
        setup = session.setup
        if self.storage == "driver":
            setup = replace(setup, snapshots="driver")
        self.setup = ray.put(setup)  # the data set goes to the object store once
        self.actors: dict[int, Any] = {}
        self.runs: dict[Any, int] = {}  # each actor's ``run`` call in flight -> its slot
        self.collecting: dict[Any, tuple[int, Any]] = {}  # each actor's ``collect`` call in flight -> (slot, actor)
        self._ready: deque[tuple[int, tuple]] = deque()

    def check_resources(self) -> None:
        """A trial that asks for more than the whole cluster has would wait forever: refuse it."""
        resources = self.ray.cluster_resources()
        for option, kind in (("cpus", "CPU"), ("gpus", "GPU")):
            asked, has = getattr(self.options, option), resources.get(kind, 0)
            if asked > has:
                if self.owns_cluster:
                    self.ray.shutdown()
                raise RunnerError(
                    f"executor.{option}: each trial asks for {asked:g} {kind}s, but the Ray cluster has {has:g} in all",
                    exit_code=2,
                )

    def on_this_machine(self) -> bool:
        """True if every node of the cluster is the one this driver runs on (its actors see
        this machine's disk), False for a cluster of other machines or one reached through
        Ray Client."""
        from ray.util.client import ray as client

        if client.is_connected():
            return False
        here = self.ray.get_runtime_context().get_node_id()
        return here is not None and all(node["NodeID"] == here for node in self.ray.nodes() if node["Alive"])

    def fitting(self) -> int:
        """How many trials the cluster's resources hold at once (at least one)."""
        resources = self.ray.cluster_resources()
        fit = resources.get("CPU", 0) // self.options.cpus
        if self.options.gpus:
            fit = min(fit, resources.get("GPU", 0) // self.options.gpus)
        return max(1, int(fit))

    def start(self, slot: int) -> None:
        self.actors[slot] = self.actor_class.remote(self.setup)
        self.collect(slot)

    def collect(self, slot: int) -> None:
        """Leave a ``collect`` call waiting on the actor in ``slot``: one at a time, so its
        messages come back in order."""
        actor = self.actors[slot]
        self.collecting[actor.collect.options(concurrency_group=OUT).remote(COLLECT_SECONDS)] = (slot, actor)

    def launch(self, slot: int, job) -> None:
        self.runs[self.actors[slot].run.remote(job)] = slot

    def send(self, slot: int, message: tuple) -> None:
        actor = self.actors.get(slot)
        if actor is not None:
            actor.receive.options(concurrency_group=MAIL).remote(message)

    def receive(self, timeout: float) -> tuple[int, tuple] | None:
        from ray.exceptions import ActorUnavailableError, RayActorError

        if not self._ready and self.collecting:
            refs = list(self.collecting)
            done, _ = self.ray.wait(refs, num_returns=len(refs) if timeout == 0 else 1, timeout=timeout)
            for ref in done:
                slot, actor = self.collecting.pop(ref)
                try:
                    messages = self.ray.get(ref)
                except ActorUnavailableError:  # for a moment (a network blip): ask again
                    messages = []
                except RayActorError:  # it died: ``dead`` says so once its ``run`` fails too
                    continue
                self._ready.extend((slot, message) for message in messages)
                if self.actors.get(slot) is actor:
                    self.collect(slot)
        return self._ready.popleft() if self._ready else None

    def dead(self, slots: list[int]) -> dict[int, str]:
        from ray.exceptions import RayActorError, RayTaskError

        ended, _ = self.ray.wait(list(self.runs), num_returns=len(self.runs), timeout=0) if self.runs else ([], [])
        lost = {}
        for ref in ended:
            slot = self.runs.pop(ref)
            try:
                self.ray.get(ref)
            except RayActorError as err:
                lost[slot] = f"its Ray actor died: {str(err).strip().splitlines()[0]}"
            except RayTaskError as err:  # the runner itself failed in the actor
                raise RunnerError(f"the worker in slot {slot} failed: {err}") from None
        return lost

    def shutdown(self, *, now: bool) -> None:
        ray = self.ray
        try:
            if not now:
                ray.wait(
                    [actor.close.remote() for actor in self.actors.values()], num_returns=len(self.actors), timeout=30
                )
            for actor in self.actors.values():
                ray.kill(actor)
        finally:
            self.actors.clear()
            if self.owns_cluster:
                ray.shutdown()


@hookimpl
def runner_register(registry):
    if importlib.util.find_spec("ray") is None:
        registry.add_unavailable("executor", "ray", INSTALL)
        return
    registry.add_executor(RayExecutor)
