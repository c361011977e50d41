"""The ray executor: trials on a Ray cluster (https://docs.ray.io), one Ray actor per slot.

``address`` names the cluster to join (``"auto"``: the one this machine is a node of;
``"ray://head:10001"``: a remote one through Ray Client); without it the runner joins the
cluster ``RAY_ADDRESS`` names, or starts a local one for the run and stops it after. Each
actor reserves ``cpus`` CPUs and ``gpus`` GPUs (a fraction shares a GPU between trials);
Ray sets ``CUDA_VISIBLE_DEVICES`` in each actor, so a backend's ``"cuda"`` is the GPU Ray
gave it. Workers send their messages (``runner.worker``) through one Ray queue actor; orders
reach an actor through its ``receive`` method, served by a thread of its own while ``run``
trains. A dead actor (its node lost, out of memory, ``ray.kill``) is noticed when its
``run`` call fails; ``runner.remote`` retries the trial in a new actor.

Every node must see the run directory at the same path (snapshots are written and read
there: NFS, a cloud file system mount) and have this package and the experiment's plugins
installed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from runner import bounds, hookimpl
from runner.checkpoints import SnapshotWriter
from runner.errors import RunnerError
from runner.remote import RemoteExecutor
from runner.worker import WorkerLink, run_job

INSTALL = "needs Ray: pip install 'runner[ray]' (or pip install ray)"
MAIL = "mail"  # the actor's concurrency group for messages from the driver: one thread, in order


@dataclass(frozen=True)
class RayOptions:
    address: str | None = field(default=None, metadata=bounds(doc='the cluster to run on: "auto", "HOST:PORT" or "ray://HOST:PORT"; null: RAY_ADDRESS if set, else a local cluster started for the run'))
    cpus: float = field(default=1.0, metadata=bounds(gt=0, doc="CPUs each trial reserves"))
    gpus: float = field(default=0.0, metadata=bounds(ge=0, doc="GPUs each trial reserves; a fraction (0.5) shares one GPU between trials"))
    workers: int = field(default=0, metadata=bounds(ge=0, doc="trials at once; 0: as many as the cluster's CPUs and GPUs fit"))
    retries: int = field(default=2, metadata=bounds(ge=0, doc="times a trial is retried from its newest snapshot after its actor dies"))


class TrialWorker:
    """A Ray actor that trains trials: the worker's end of ``runner.worker``."""

    def __init__(self, setup, outbox, slot: int):
        self.link = WorkerLink(lambda message: outbox.put((slot, message)))
        self.writer = SnapshotWriter()
        self.runner = setup.runner(self.link, self.writer)

    def run(self, job) -> None:
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
        from ray.util.queue import Queue

        self.ray = ray
        self.owns_cluster = not ray.is_initialized()
        if self.owns_cluster:
            address = options.address or os.environ.get("RAY_ADDRESS")
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING, configure_logging=True)
            except ConnectionError as err:
                raise RunnerError(f"executor.address: cannot reach the Ray cluster at {address!r}: {err}",
                                  exit_code=2) from None
        self.check_resources()
        self.slots = options.workers or self.fitting()
        self.actor_class = ray.remote(concurrency_groups={MAIL: 1})(TrialWorker).options(
            num_cpus=options.cpus, num_gpus=options.gpus, max_concurrency=2)
        self.outbox = Queue(actor_options={"num_cpus": 0})
        self.setup = ray.put(session.setup)  # the data set goes to the object store once
        self.actors: dict[int, Any] = {}
        self.runs: dict[Any, int] = {}  # each actor's ``run`` call in flight -> its slot
        self._ready: deque[tuple[int, tuple]] = deque()

    def check_resources(self) -> None:
        """A trial that asks for more than the whole cluster has would wait forever: refuse it."""
        resources = self.ray.cluster_resources()
        for option, kind in (("cpus", "CPU"), ("gpus", "GPU")):
            asked, has = getattr(self.options, option), resources.get(kind, 0)
            if asked > has:
                if self.owns_cluster:
                    self.ray.shutdown()
                raise RunnerError(f"executor.{option}: each trial asks for {asked:g} {kind}s, but the Ray cluster "
                                  f"has {has:g} in all", exit_code=2)

    def fitting(self) -> int:
        """How many trials the cluster's resources hold at once (at least one)."""
        resources = self.ray.cluster_resources()
        fit = resources.get("CPU", 0) // self.options.cpus
        if self.options.gpus:
            fit = min(fit, resources.get("GPU", 0) // self.options.gpus)
        return max(1, int(fit))

    def start(self, slot: int) -> None:
        self.actors[slot] = self.actor_class.remote(self.setup, self.outbox, slot)

    def launch(self, slot: int, job) -> None:
        self.runs[self.actors[slot].run.remote(job)] = slot

    def send(self, slot: int, message: tuple) -> None:
        actor = self.actors.get(slot)
        if actor is not None:
            actor.receive.options(concurrency_group=MAIL).remote(message)

    def receive(self, timeout: float) -> tuple[int, tuple] | None:
        from ray.util.queue import Empty

        if not self._ready:
            try:
                self._ready.append(self.outbox.get(block=timeout > 0, timeout=timeout or None))
                if waiting := self.outbox.qsize():
                    self._ready.extend(self.outbox.get_nowait_batch(waiting))
            except Empty:
                pass
        return self._ready.popleft() if self._ready else None

    def dead(self, slots: list[int]) -> dict[int, str]:
        from ray.exceptions import RayActorError

        ended, _ = self.ray.wait(list(self.runs), num_returns=len(self.runs), timeout=0) if self.runs else ([], [])
        lost = {}
        for ref in ended:
            slot = self.runs.pop(ref)
            try:
                self.ray.get(ref)
            except RayActorError as err:
                lost[slot] = f"its Ray actor died: {str(err).strip().splitlines()[0]}"
        return lost

    def shutdown(self, *, now: bool) -> None:
        ray = self.ray
        try:
            if not now:
                ray.wait([actor.close.remote() for actor in self.actors.values()],
                         num_returns=len(self.actors), timeout=30)
            for actor in self.actors.values():
                ray.kill(actor)
            self.outbox.shutdown()
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
