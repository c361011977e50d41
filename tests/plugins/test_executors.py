"""The process and ray executors: the same numbers as inline, orders that reach a worker,
workers that die, and Ctrl-C, with real ``runner`` processes (and a real Ray cluster)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from runner.errors import RunnerError
from runner.records.events import read_events
from tests.conftest import deep_update
from tests.test_control_live import LiveRun
from tests.test_control_live import runner as cli
from tests.test_resume import EXPERIMENT, assert_same, outcome, runner

FOUR = deep_update(EXPERIMENT, {"name": "four", "search": {"strategy": {"trials": 4}}})
PROCESS = {"name": "process", "workers": 2}

# Test plugin, loaded in every worker: SIGKILLs the worker running trial ``trial`` at the end
# of epoch ``epoch``, once its file of the epoch before is on disk (so the retry's starting
# point is known), once (the marker file is created first) or, with ``always``, every time.
# ``driver`` then also kills the driver (once) at the epoch after, in the retried worker. Settings
# come from the .json file of the same name beside it: a Ray worker does not inherit the runner's environment.
DIE = textwrap.dedent("""
    import json, os, signal, time
    from pathlib import Path
    from runner import hookimpl

    SETTINGS = json.loads(Path(__file__).with_suffix(".json").read_text())
    TRIAL, EPOCH, MARKER = SETTINGS["trial"], SETTINGS["epoch"], Path(__file__).with_name("died")
    DRIVER = Path(__file__).with_name("driver.pid")

    def once(marker):
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            return False

    def die(trial, epoch):
        deadline = time.monotonic() + 60
        while not list(trial.folder.glob(f"e{epoch:05d}-*.safetensors")) and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGKILL)

    @hookimpl
    def runner_epoch_end(trial, epoch):
        if trial.id != TRIAL:
            return
        if epoch == EPOCH:
            if SETTINGS.get("always"):
                die(trial, epoch)
            if once(MARKER):
                die(trial, epoch)
        if epoch == EPOCH + 1 and SETTINGS.get("driver") and MARKER.exists() and once(MARKER.with_name("driver-died")):
            os.kill(int(DRIVER.read_text()), signal.SIGKILL)  # (a worker's parent is the warm forkserver)

    @hookimpl
    def runner_experiment_start(experiment):  # called in the driver
        DRIVER.write_text(str(os.getpid()))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray cluster started for these tests (as ``ray start`` on a head node); its address."""
    pytest.importorskip("ray")
    port = free_port()
    temp = tmp_path_factory.mktemp("ray")
    settings = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}  # a loopback cluster: no token
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)  # for the runner processes that join it, too
    env = dict(os.environ)
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    started = subprocess.run(
        [
            *ray,
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=false",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert started.returncode == 0, started.stderr
    yield f"127.0.0.1:{port}"
    subprocess.run([*ray, "stop", "--force"], capture_output=True, env=env, timeout=120)
    for name, value in saved.items():
        os.environ.pop(name) if value is None else os.environ.update({name: value})


@pytest.fixture(params=["process", "ray"])
def executor(request) -> dict:
    if request.param == "process":
        return PROCESS
    return {"name": "ray", "address": request.getfixturevalue("ray_cluster")}


@pytest.fixture(scope="module")
def inline(tmp_path_factory):
    """The four trials run one after another in the driver: what every executor must reproduce."""
    proc, run_dir = start(tmp_path_factory.mktemp("inline"), FOUR)
    assert proc.returncode == 0, proc.stderr
    return outcome(run_dir)


def start(tmp_path: Path, experiment: dict, **die) -> tuple[subprocess.CompletedProcess, Path]:
    """``runner start`` with the ``DIE`` plugin, set by ``die`` (trial, epoch, always, driver)."""
    (tmp_path / "plugin.json").write_bytes(orjson.dumps({"trial": -1, "epoch": -1, **die}))
    return start_with_plugin(tmp_path, DIE, experiment)


def elsewhere(request, workers: int) -> dict:
    """The executor section of a parametrized fixture over ``["process", "ray"]`` (Ray on the
    module's local cluster): trials run outside the driver on ``workers`` workers."""
    if request.param == "process":
        return {"name": "process", "workers": workers}
    return {"name": "ray", "address": request.getfixturevalue("ray_cluster"), "workers": workers}


def events_of(run_dir: Path) -> list[dict]:
    return list(read_events(run_dir / "events.jsonl"))


def start_with_plugin(
    tmp_path: Path, source: str, experiment: dict | None = None
) -> tuple[subprocess.CompletedProcess, Path]:
    """``runner start`` with a one-off plugin of this ``source`` (``plugin.py``); by default
    the four trials on 2 worker processes."""
    exp = tmp_path / "exp.json"
    exp.write_bytes(orjson.dumps(experiment or deep_update(FOUR, {"executor": PROCESS})))
    plugin = tmp_path / "plugin.py"
    plugin.write_text(textwrap.dedent(source))
    proc = runner("start", exp, "--out", tmp_path / "runs", "--plain", "--plugin", plugin)
    assert (tmp_path / "runs").is_dir(), proc.stderr
    [run_dir] = (tmp_path / "runs").iterdir()
    return proc, run_dir


def test_four_trials_give_exactly_the_inline_results(tmp_path, inline, executor):
    proc, run_dir = start(tmp_path, deep_update(FOUR, {"executor": executor}))
    assert proc.returncode == 0, proc.stderr
    assert_same(outcome(run_dir), inline)
    events = events_of(run_dir)
    assert [e["event"] for e in events].count("trial_complete") == 4
    for trial in range(4):  # each trial's events are whole and in order, though trials ran side by side
        epochs = [e["epoch"] for e in events if e.get("trial") == trial and e["event"] == "epoch_end"]
        assert epochs == [0, 1, 2, 3]
    # the finished lines are printed by the driver, from the events the workers sent
    assert sorted(line[:4] for line in proc.stdout.splitlines() if line[4:15] == " completed ") == [
        "t000",
        "t001",
        "t002",
        "t003",
    ]


def test_a_nudge_through_the_control_file_reaches_the_trial_in_its_worker(tmp_path, executor):
    run = LiveRun(tmp_path, {"executor": executor})
    try:
        nudged = cli("nudge", run.run_dir, "lr=0.0031", "--trial", "0")
        assert nudged.returncode == 0, nudged.stderr
        assert nudged.stdout.startswith("t000: lr=0.0031 applied at step")
        [nudge] = run.find("nudge", trial=0)
        assert nudge["source"] == "control" and nudge["changes"]["lr"] == {"old": 0.01, "new": 0.0031}
        after = run.until(lambda: [e for e in run.find("epoch_end", trial=0) if e["step"] > nudge["step"]])
        assert after[0]["lr"] == 0.0031  # in force in the worker's very next steps
        status = orjson.loads((run.run_dir / "status.json").read_bytes())
        assert status["trials"]["0"]["hyperparameters"]["lr"] == 0.0031
        assert run.stop() == 0
    finally:
        run.kill()


def test_a_worker_killed_mid_trial_is_retried_from_its_snapshot(tmp_path, inline, executor):
    proc, run_dir = start(tmp_path, deep_update(FOUR, {"executor": executor}), trial=1, epoch=2)
    assert proc.returncode == 0, proc.stderr
    assert_same(outcome(run_dir), inline)  # bit for bit, though trial 1 lost its worker
    events = events_of(run_dir)
    [retry] = [e for e in events if e["event"] == "trial_retry"]
    assert retry["trial"] == 1 and retry["attempt"] == 1 and retry["reason"]
    assert retry["snapshot"].startswith("trials/t001/e00002-") and retry["epoch"] == 2  # its newest file
    mine = [e for e in events if e.get("trial") == 1]
    assert [e["event"] for e in mine].count("trial_complete") == 1
    resumed = mine[mine.index(retry) + 1]
    assert resumed["event"] == "trial_resume" and resumed["epoch"] == retry["epoch"]
    assert [e["epoch"] for e in mine[mine.index(resumed) :] if e["event"] == "epoch_end"] == list(
        range(retry["epoch"], 4)
    )
    assert "t001: its worker died" in proc.stdout


# Test plugin for workers that cannot see the run directory. Loaded in a Ray actor (no
# RUNNER_TEST_DRIVER in its environment), it moves the actor at once to the empty folder
# "actors" beside it, where the run directory, given to the runner as a relative path, is not;
# and from then on no file in the test's folder opens there, by any path.
BLINDFOLD = textwrap.dedent("""
    import os
    from pathlib import Path

    HERE = Path(__file__).parent
    if os.environ.get("RUNNER_TEST_DRIVER") != "1":
        os.chdir(HERE / "actors")
        real_open = os.open

        def blind_open(path, *args, dir_fd=None, **kwargs):
            if dir_fd is None and HERE in Path(os.path.abspath(path)).parents:
                raise FileNotFoundError(2, "not on this node", str(path))
            return real_open(path, *args, dir_fd=dir_fd, **kwargs)

        os.open = blind_open
""")

# And SIGKILLs the actor training trial 1 at the end of epoch 2, once the driver has that epoch's file.
BLIND = BLINDFOLD + textwrap.dedent("""
    import signal, time
    from runner import hookimpl

    @hookimpl
    def runner_epoch_end(trial, epoch):
        died = Path(__file__).with_name("died")
        if trial.id == 1 and epoch == 2 and not died.exists():
            os.close(real_open(died, os.O_CREAT | os.O_WRONLY))  # (the test's own marker: past the blindfold)
            deadline = time.monotonic() + 60
            while not list(Path(__file__).with_name("runs").glob("*/trials/t001/e00002-*.safetensors")):
                assert time.monotonic() < deadline
                time.sleep(0.001)
            os.kill(os.getpid(), signal.SIGKILL)
""")


def blindfolded(tmp_path: Path, source: str = BLINDFOLD) -> Path:
    """The plugin ``source`` (``BLINDFOLD``, by default) as ``tmp_path/plugin.py``, with the
    empty folder ``actors`` beside it; for a driver that runs with ``RUNNER_TEST_DRIVER=1``
    and ``tmp_path`` as its working directory."""
    (tmp_path / "actors").mkdir()
    plugin = tmp_path / "plugin.py"
    plugin.write_text(source)
    return plugin


def test_ray_actors_that_cannot_see_the_run_directory_have_the_driver_keep_every_snapshot(
    tmp_path, inline, ray_cluster
):
    """``"storage": "driver"``: actors send snapshot files to the driver and get them back from
    it. Here they run in an empty folder where the run directory's (relative) path does not
    exist; one is killed mid-trial, and its trial is retried from the file the driver holds,
    bit for bit."""
    plugin = blindfolded(tmp_path, BLIND)
    executor = {"name": "ray", "address": ray_cluster, "storage": "driver"}
    (tmp_path / "exp.json").write_bytes(
        orjson.dumps(deep_update(FOUR, {"executor": executor, "checkpoint": {"keep": 2}}))
    )
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "start", "exp.json", "--out", "runs", "--plain", "--plugin", str(plugin)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "RUNNER_TEST_DRIVER": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    [run_dir] = (tmp_path / "runs").iterdir()
    assert_same(outcome(run_dir), inline)  # bit for bit, though trial 1 lost its actor
    assert list((tmp_path / "actors").iterdir()) == []  # no actor wrote where it stood
    events = events_of(run_dir)
    assert not [e for e in events if e["event"] == "checkpoint_error"]
    [retry] = [e for e in events if e["event"] == "trial_retry"]
    assert retry["trial"] == 1 and retry["snapshot"].startswith("trials/t001/e00002-") and retry["epoch"] == 2
    resumed = [e for e in events if e.get("trial") == 1][[e for e in events if e.get("trial") == 1].index(retry) + 1]
    assert resumed["event"] == "trial_resume" and resumed["snapshot"] == retry["snapshot"]
    for trial in range(4):  # the files the driver wrote (the retry's, before its report) less those keep 2 pruned
        saved = {e["path"] for e in events if e["event"] == "checkpoint" and e["trial"] == trial}
        saved |= {retry["snapshot"]} if trial == 1 else set()
        kept = {str(p.relative_to(run_dir)) for p in (run_dir / "trials" / f"t{trial:03d}").glob("*.safetensors")}
        assert saved >= kept and len(saved) > len(kept) >= 2, (trial, saved, kept)


def test_an_actor_that_cannot_see_the_disk_starts_from_weights_the_driver_reads(tmp_path, ray_cluster, monkeypatch):
    from runner.api import start_run
    from tests.test_from_weights import ONE, epochs_of

    original = start_run(ONE, out=tmp_path / "original")
    monkeypatch.setenv("RUNNER_TEST_DRIVER", "1")
    monkeypatch.chdir(tmp_path)
    executor = {"name": "ray", "address": ray_cluster, "storage": "driver"}
    again = start_run(
        deep_update(ONE, {"executor": executor}),
        out=Path("runs"),
        from_run=original.run_dir,
        weights=True,
        plugin_refs=(str(blindfolded(tmp_path)),),
    )
    assert epochs_of(again.run_dir)[:3] == epochs_of(original.run_dir)[1:]  # bit for bit from its best snapshot
    assert list((tmp_path / "actors").iterdir()) == []


def test_a_snapshot_the_driver_is_still_writing_for_a_worker_that_died_is_where_its_retry_starts(tmp_path):
    """``"storage": "driver"``: a worker dies while the driver writes the file it sent. The
    driver finishes the write before it looks for the trial's newest file, so the retry starts
    from it (and the write is not cut short by the removal of a dead worker's temporaries)."""
    import time
    from collections import Counter
    from types import SimpleNamespace

    import numpy as np

    from runner.backend import BackendState
    from runner.engine.experiment import TrialJob
    from runner.engine.snapshot_files import snapshot_name, trial_folder
    from runner.execution.remote import RemoteExecutor, Running
    from runner.executor import Session

    class Transport(RemoteExecutor):
        slots = 1

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.sent, self.launched = [], []

        def start(self, slot): ...
        def launch(self, slot, job):
            self.launched.append(job)

        def send(self, slot, message):
            self.sent.append(message)

        def receive(self, timeout):
            return None

        def dead(self, slots):
            return {}

        def shutdown(self, *, now): ...

    events = []
    log = SimpleNamespace(sync=lambda: None, emit=lambda event, **fields: events.append({"event": event, **fields}))
    inbox = SimpleNamespace(open=lambda trial, mailbox: None, notify=lambda message: None)
    session = Session(None, log, inbox, None, tmp_path, "val_acc", Counter({1: 7}))
    driver = Transport(SimpleNamespace(retries=2), run_trial=None, session=session)
    real_write = driver.snapshots.write

    def slow_write(path, state, meta):  # a large file on a slow disk
        time.sleep(0.3)
        real_write(path, state, meta)

    driver.snapshots.write = slow_write
    driver.running[0] = Running(TrialJob(1, {}, 0, announced=True))
    path = trial_folder(tmp_path, 1) / snapshot_name(2, 20, 6)
    meta = {"trial": 1, "epoch": 2, "step": 20, "reason": "epoch", "best": False, "loop": {"events": 6}}
    try:
        driver.answer(0, 11, "snapshot_write", (str(path), BackendState({"w": np.ones(3)}, {}), meta))
        driver.lost(0, "killed by SIGKILL")
    finally:
        driver.close()
    [retry] = [e for e in events if e["event"] == "trial_retry"]
    assert retry["snapshot"] == str(path.relative_to(tmp_path)) and retry["epoch"] == 2
    assert driver.launched[-1].resume == str(path) and path.is_file()
    assert ("answer", 11, None, None) in driver.sent


def test_the_driver_reads_no_snapshot_for_a_worker_through_a_linked_trial_folder(tmp_path):
    import numpy as np

    from runner.backend import BackendState
    from runner.engine.snapshot_files import snapshot_name, write_snapshot
    from runner.engine.snapshot_storage import LocalSnapshots
    from runner.records.files import UnsafePath

    outside = tmp_path / "outside"
    name = snapshot_name(1, 10, 3)
    meta = {"trial": 1, "epoch": 1, "step": 10, "reason": "epoch", "best": False, "loop": {"events": 3}}
    write_snapshot(outside / name, BackendState({"w": np.ones(2)}, {}), meta, within=tmp_path)
    run_dir = tmp_path / "run"
    (run_dir / "trials").mkdir(parents=True)
    (run_dir / "trials" / "t001").symlink_to(outside)
    with pytest.raises(UnsafePath):
        LocalSnapshots(run_dir).raw(run_dir / "trials" / "t001" / name)
    assert LocalSnapshots(outside).raw(outside / name)  # (the file itself reads)


def test_auto_storage_is_shared_only_on_a_cluster_of_this_machine_alone():
    pytest.importorskip("ray")
    from types import SimpleNamespace

    from runner.plugins.executors.ray_cluster import RayExecutor

    def executor(*nodes):
        here = SimpleNamespace(get_node_id=lambda: "A")
        ray = SimpleNamespace(get_runtime_context=lambda: here, nodes=lambda: [dict(n) for n in nodes])
        return SimpleNamespace(ray=ray)

    assert RayExecutor.on_this_machine(executor({"NodeID": "A", "Alive": True}, {"NodeID": "B", "Alive": False}))
    assert not RayExecutor.on_this_machine(executor({"NodeID": "A", "Alive": True}, {"NodeID": "B", "Alive": True}))


def test_a_worker_may_name_only_snapshot_files_of_its_own_run_to_the_driver(tmp_path):
    from types import SimpleNamespace

    from runner.execution.remote import RemoteExecutor

    driver = SimpleNamespace(session=SimpleNamespace(run_dir=Path("runs/exp")))
    name = "e00002-s000000020-n000010.safetensors"
    assert RemoteExecutor.snapshot_path(driver, f"runs/exp/trials/t001/{name}") == Path("runs/exp/trials/t001") / name
    assert RemoteExecutor.snapshot_path(driver, "runs/exp/trials/t012", folder=True) == Path("runs/exp/trials/t012")
    for named in (
        f"runs/exp/trials/../trials/t001/{name}",
        f"runs/exp/trials/t001/../../../{name}",
        f"runs/other/trials/t001/{name}",
        f"/etc/trials/t001/{name}",
        "runs/exp/trials/t001/events.jsonl",
        f"runs/exp/trials/t1/{name}",
        f"runs/exp/t001/{name}",
    ):
        with pytest.raises(PermissionError):
            RemoteExecutor.snapshot_path(driver, named)
    with pytest.raises(PermissionError):
        RemoteExecutor.snapshot_path(driver, "runs/exp/trials", folder=True)


# The DIE plugin, and a line per trial start in workers.jsonl: the process, its parent, the
# shared memory blocks it has attached and where its data set's arrays live.
WHO_RUNS = DIE + textwrap.dedent("""
    import sys

    @hookimpl
    def runner_trial_start(trial):
        shared = sys.modules.get("runner.plugins.executors.shared_data")
        attached = sorted(shared._ATTACHED) if shared else []
        line = {"trial": trial.id, "pid": os.getpid(), "parent": os.getppid(), "attached": attached}
        with open(Path(__file__).with_name("workers.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\\n")
""")


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_workers_start_from_one_warm_parent_and_map_the_data_from_one_shared_block(tmp_path, inline, start_method):
    """With forkserver (the default), every worker, and the one that replaces a worker killed
    mid-trial, is a child of the same warm parent, not of the driver; each maps the data from
    the one shared memory block the driver made, which is gone once the run ends. The
    results are the inline ones, bit for bit, either way."""
    (tmp_path / "plugin.json").write_bytes(orjson.dumps({"trial": 1, "epoch": 2}))
    experiment = deep_update(FOUR, {"executor": {**PROCESS, "start": start_method}})
    proc, run_dir = start_with_plugin(tmp_path, WHO_RUNS, experiment)
    assert proc.returncode == 0, proc.stderr
    assert_same(outcome(run_dir), inline)
    assert [e["trial"] for e in events_of(run_dir) if e["event"] == "trial_retry"] == [1]
    starts = [orjson.loads(line) for line in (tmp_path / "workers.jsonl").read_bytes().splitlines()]
    driver = int((tmp_path / "driver.pid").read_text())
    assert len({s["pid"] for s in starts}) == 3, "two workers, and the one that replaced the killed one"
    parents = {s["parent"] for s in starts}
    if start_method == "forkserver":
        assert len(parents) == 1 and driver not in parents, starts
    else:
        assert parents == {driver}
    [blocks] = {tuple(s["attached"]) for s in starts}
    assert len(blocks) == 1, starts
    assert not Path("/dev/shm", blocks[0]).exists()
    assert "leaked shared_memory" not in proc.stderr, "the driver unlinks it (not multiprocessing's tracker, at exit)"


def test_data_too_big_for_dev_shm_reaches_the_workers_pickled(tmp_path, inline, monkeypatch):
    """A container's /dev/shm is often 64 MB: copying more into a shared block would kill
    the driver with SIGBUS. Where it has no room, every worker gets the data pickled, and
    the results are the same."""
    import runner.plugins.executors.shared_data as shared_data
    from tests.conftest import run_file

    monkeypatch.setattr(shared_data, "room_for", lambda size, folder="/dev/shm": False)
    (tmp_path / "plugin.json").write_bytes(orjson.dumps({"trial": -1, "epoch": -1}))
    (tmp_path / "plugin.py").write_text(WHO_RUNS)
    path = tmp_path / "exp.json"
    path.write_bytes(orjson.dumps(deep_update(FOUR, {"executor": PROCESS})))
    r = run_file(path, tmp_path, [str(tmp_path / "plugin.py")])
    assert_same(outcome(r.run_dir), inline)
    starts = [orjson.loads(line) for line in (tmp_path / "workers.jsonl").read_bytes().splitlines()]
    assert len(starts) == 4 and all(s["attached"] == [] for s in starts), starts
    monkeypatch.undo()  # the real check: free space, with a margin
    assert shared_data.room_for(1 << 20, str(tmp_path)) and not shared_data.room_for(1 << 62, str(tmp_path))


SEES_ENVIRONMENT = """
import os
from pathlib import Path
from runner import hookimpl

@hookimpl
def runner_trial_start(trial):
    with open(Path(__file__).with_name("seen.txt"), "a") as f:
        f.write(f"{trial.id} {os.environ.get('RUNNER_TEST_SETTING')} {os.environ.get('OMP_NUM_THREADS')}\\n")
"""


def test_workers_of_a_later_run_in_the_same_process_see_the_environment_as_it_is_then(tmp_path, monkeypatch):
    """The warm parent outlives a run (multiprocessing keeps one per process): a worker it
    forks for a later run gets the driver's environment of that moment, as a fresh process
    would, and its share of the threads."""
    from tests.conftest import run_file

    plugin = tmp_path / "sees.py"
    plugin.write_text(SEES_ENVIRONMENT)
    path = tmp_path / "exp.json"
    path.write_bytes(orjson.dumps(deep_update(FOUR, {"executor": PROCESS, "search": {"strategy": {"trials": 2}}})))
    monkeypatch.setenv("RUNNER_TEST_SETTING", "first")
    run_file(path, tmp_path / "a", [str(plugin)])
    monkeypatch.setenv("RUNNER_TEST_SETTING", "second")
    run_file(path, tmp_path / "b", [str(plugin)])
    seen = sorted((tmp_path / "seen.txt").read_text().splitlines())
    threads = str(max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2) // 2))
    assert seen == sorted(f"{t} {v} {threads}" for t in (0, 1) for v in ("first", "second")), seen


def test_a_trial_whose_worker_keeps_dying_fails_and_the_others_finish(tmp_path, inline):
    proc, run_dir = start(
        tmp_path, deep_update(FOUR, {"executor": {**PROCESS, "retries": 1}}), trial=2, epoch=1, always=True
    )
    assert proc.returncode == 0, proc.stderr
    results = orjson.loads((run_dir / "results.json").read_bytes())
    states = {t["trial"]: t["state"] for t in results["trials"]}
    assert states == {0: "completed", 1: "completed", 2: "failed", 3: "completed"}
    [failed] = [t for t in results["trials"] if t["trial"] == 2]
    assert failed["reason"] == "its worker died 2 times (last: killed by SIGKILL)"
    events = events_of(run_dir)
    first = next(e for e in events if e["event"] == "epoch_end" and e["trial"] == 2)
    assert failed["epochs"] == 1 and failed["best"]["val_acc"] == first["val_acc"]  # as its newest snapshot left it
    assert [e["attempt"] for e in events if e["event"] == "trial_retry"] == [1]
    for trial in (0, 1, 3):
        assert outcome(run_dir)["trials"][trial] == inline["trials"][trial]


def test_a_run_killed_after_a_retry_resumes_to_the_same_result(tmp_path, inline):
    """The retried trial's event count goes on from the log's, so a resume cuts the log right."""
    proc, run_dir = start(tmp_path, deep_update(FOUR, {"executor": PROCESS}), trial=1, epoch=1, driver=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert any(e["event"] == "trial_retry" for e in events_of(run_dir))
    resumed = runner("resume", run_dir, "--plain", "--plugin", tmp_path / "plugin.py")
    assert resumed.returncode == 0, resumed.stderr
    assert_same(outcome(run_dir), inline)
    events = events_of(run_dir)
    for trial in range(4):
        mine = [e["event"] for e in events if e.get("trial") == trial]
        assert mine.count("trial_start") == 1 and mine.count("trial_complete") == 1, (trial, mine)


HEAVY = deep_update(
    FOUR,
    {"name": "heavy", "data": {"points_per_class": 1500}, "train": {"epochs": 8, "batch_size": 8}, "executor": PROCESS},
)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_to_the_process_group_stops_every_worker_with_a_snapshot_and_resume_finishes(tmp_path, stop):
    """A terminal's Ctrl-C, or a scheduler's SIGTERM, reaches every process of the group."""
    (tmp_path / "baseline").mkdir()
    proc, run_dir = start(tmp_path / "baseline", deep_update(HEAVY, {"executor": None}))  # inline
    assert proc.returncode == 0, proc.stderr
    baseline = outcome(run_dir)

    exp = tmp_path / "heavy.json"
    exp.write_bytes(orjson.dumps(HEAVY))
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "start", exp, "--out", tmp_path / "runs", "--plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # both workers have trained an epoch: press Ctrl-C (the whole process group)
        logs = list((tmp_path / "runs").glob("*/events.jsonl"))
        trained = {e.get("trial") for e in read_events(logs[0]) if e["event"] == "epoch_end"} if logs else set()
        if {0, 1} <= trained:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, stop)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "continue with: runner resume" in err and "Traceback" not in err
    [run_dir] = (tmp_path / "runs").iterdir()
    events = events_of(run_dir)
    # a trial about to end may still complete; the run then also notes it stopped between trials
    stopped = {e["trial"] for e in events if e["event"] == "interrupted" and "trial" in e}
    assert stopped and stopped == {e["trial"] for e in events if e["event"] == "trial_start"} - {
        e["trial"] for e in events if e["event"] == "trial_complete"
    }
    for trial in stopped:  # each saved a snapshot of the very step it stopped at
        [at] = [e for e in events if e["event"] == "interrupted" and e.get("trial") == trial]
        [checkpoint] = [
            e for e in events if e["event"] == "checkpoint" and e.get("trial") == trial and e["reason"] == "interrupt"
        ]
        assert checkpoint["step"] == at["step"]

    resumed = runner("resume", run_dir, "--plain")
    assert resumed.returncode == 0, resumed.stderr
    assert_same(outcome(run_dir), baseline, epochs=8)


def test_workers_share_out_the_cores_and_spread_over_the_gpus(monkeypatch):
    from runner.plugins.executors.process import device_ids, worker_environment

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    devices = device_ids([0, 1])
    assert [worker_environment(k, 1, devices)["CUDA_VISIBLE_DEVICES"] for k in range(4)] == ["0", "1", "0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,7")  # the driver's own share: GPU 1 is device 5
    devices = device_ids([1, 2])
    assert [worker_environment(k, 2, devices)["CUDA_VISIBLE_DEVICES"] for k in range(3)] == ["5", "7", "5"]
    with pytest.raises(RunnerError, match=r"executor.gpus: GPU 3 is not one of the 3 this process sees"):
        device_ids([3])
    alone = worker_environment(0, 2, [])
    assert "CUDA_VISIBLE_DEVICES" not in alone and alone["OMP_NUM_THREADS"] == alone["OPENBLAS_NUM_THREADS"] == "2"


def test_a_worker_that_cannot_load_a_plugin_ends_the_run_with_the_reason(tmp_path):
    proc, run_dir = start_with_plugin(
        tmp_path,
        """
        import multiprocessing
        if multiprocessing.parent_process() is not None:
            raise RuntimeError('this plugin needs a licence server only the driver reaches')
    """,
    )
    assert proc.returncode == 1
    assert (
        "the worker in slot 0 could not start" in proc.stderr or "the worker in slot 1 could not start" in proc.stderr
    )
    assert "licence server only the driver reaches" in proc.stderr
    assert not any(e["event"] in ("trial_retry", "trial_complete") for e in events_of(run_dir))


def test_a_worker_that_dies_starting_up_is_replaced_and_its_trial_starts_once(tmp_path, inline):
    proc, run_dir = start_with_plugin(
        tmp_path,
        """
        import multiprocessing, os, signal
        from pathlib import Path
        if multiprocessing.parent_process() is not None:  # in a worker, the first one only
            try:
                os.close(os.open(Path(__file__).with_name("died"), os.O_CREAT | os.O_EXCL))
                os.kill(os.getpid(), signal.SIGKILL)
            except FileExistsError:
                pass
    """,
    )
    assert proc.returncode == 0, proc.stderr
    events = events_of(run_dir)
    for trial in range(4):  # no retry was logged: the trial had not begun
        mine = [e["event"] for e in events if e.get("trial") == trial]
        assert mine[0] == "trial_start" and mine.count("trial_start") == 1 and mine.count("trial_complete") == 1
    assert not any(e["event"] == "trial_retry" for e in events)
    assert_same(outcome(run_dir), inline)


def test_a_worker_that_dies_after_its_trial_completed_does_not_run_it_again(tmp_path, inline):
    proc, run_dir = start_with_plugin(
        tmp_path,
        """
        import os, signal
        from runner import hookimpl

        @hookimpl
        def runner_trial_complete(trial):  # trial_complete is in the log; the worker's "done" is not sent
            if trial.id == 1:
                os.kill(os.getpid(), signal.SIGKILL)
    """,
    )
    assert proc.returncode == 0, proc.stderr
    events = events_of(run_dir)
    assert [e["event"] for e in events if e.get("trial") == 1].count("trial_complete") == 1
    assert not any(e["event"] == "trial_retry" for e in events)
    assert outcome(run_dir)["trials"] == inline["trials"]
