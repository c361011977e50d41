"""Kill a real run at different moments, resume it, and get exactly the uninterrupted result."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from runner.checkpoints import CorruptSnapshot, read_snapshot
from tests.conftest import QUICK, deep_update

KILLER = textwrap.dedent('''
    """Test plugin: SIGKILLs this process at the moment RUNNER_TEST_KILL names ("where:n")."""
    import io, os, signal
    import numpy as np
    from runner import hookimpl

    where, _, n = os.environ.get("RUNNER_TEST_KILL", ":").partition(":")
    n = int(n or 0)
    count = [0]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if where == "step":  # inside a training step: after the gradients, before the update
        from runner.plugins.backends.numpy_mlp.network import MLP
        real = MLP.loss_and_grads

        def loss_and_grads(self, *args, **kwargs):
            out = real(self, *args, **kwargs)
            count[0] += 1
            if count[0] == n:
                die()
            return out
        MLP.loss_and_grads = loss_and_grads

    if where == "write":  # halfway through writing a snapshot file, on the writer thread
        import runner.checkpoints as checkpoints
        real_savez = np.savez

        def savez(f, **arrays):
            count[0] += 1
            if count[0] == n:
                buffer = io.BytesIO()
                real_savez(buffer, **arrays)
                f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                f.flush()
                die()
            real_savez(f, **arrays)
        checkpoints.np = type("np", (), {"savez": staticmethod(savez), "load": np.load, "frombuffer": np.frombuffer,
                                         "ascontiguousarray": np.ascontiguousarray, "uint8": np.uint8})

    @hookimpl
    def runner_trial_complete(trial):
        if where == "trial_end" and trial.id == n:
            die()
''')

EXPERIMENT = deep_update(
    QUICK,
    {
        "name": "resumable",
        "train": {"epochs": 4},
        "checkpoint": {"min_interval": 0, "keep": 10},
        "search": {
            "strategy": {"name": "random", "trials": 3},
            "space": {"train.lr": {"low": 0.003, "high": 0.03, "scale": "log"}, "model.hidden": None},
        },
    },
)


def runner(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "runner", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def start(
    tmp_path: Path, name: str, experiment: dict, kill: str | None = None
) -> tuple[subprocess.CompletedProcess, Path]:
    exp = tmp_path / f"{name}.json"
    exp.write_bytes(orjson.dumps(experiment))
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    out = tmp_path / name
    proc = runner(
        "start",
        exp,
        "--out",
        out,
        "--plain",
        "--plugin",
        killer,
        env={"RUNNER_TEST_KILL": kill} if kill else {"RUNNER_TEST_KILL": ""},
    )
    [run_dir] = out.iterdir()
    return proc, run_dir


def outcome(run_dir: Path) -> dict:
    """What must match bit for bit: every trial's result (timings aside) and final parameters."""

    def timeless(metrics):
        return {k: v for k, v in (metrics or {}).items() if k != "seconds"}

    results = orjson.loads((run_dir / "results.json").read_bytes())
    trials = {
        t["trial"]: (t["state"], t["params"], t["score"], timeless(t["best"]), timeless(t["final"]), t["epochs"])
        for t in results["trials"]
    }
    finals = {}
    for folder in sorted((run_dir / "trials").iterdir()):
        last = max(folder.glob("*.npz"), key=lambda p: read_snapshot(p)[1]["loop"]["events"])
        state, meta = read_snapshot(last)
        finals[folder.name] = (meta["epoch"], {k: v for k, v in state.arrays.items()})
    return {"trials": trials, "finals": finals}


def assert_same(a: dict, b: dict, epochs: int = 4) -> None:
    assert a["trials"] == b["trials"]
    assert a["finals"].keys() == b["finals"].keys()
    for trial in a["finals"]:
        (epoch_a, arrays_a), (epoch_b, arrays_b) = a["finals"][trial], b["finals"][trial]
        assert epoch_a == epoch_b == epochs
        assert arrays_a.keys() == arrays_b.keys()
        for name in arrays_a:
            assert np.array_equal(arrays_a[name], arrays_b[name]), (trial, name)


def assert_clean_log(run_dir: Path, trials: int = 3, epochs: int = 4) -> list[dict]:
    events = [orjson.loads(line) for line in (run_dir / "events.jsonl").read_bytes().splitlines()]
    for trial in range(trials):
        mine = [e["event"] for e in events if e.get("trial") == trial]
        assert mine.count("trial_start") == 1 and mine.count("trial_complete") == 1, (trial, mine)
        assert [e["epoch"] for e in events if e.get("trial") == trial and e["event"] == "epoch_end"] == list(
            range(epochs)
        )
    assert [e["event"] for e in events].count("experiment_complete") == 1
    assert not list(run_dir.glob("trials/*/*.tmp"))
    return events


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("baseline")
    proc, run_dir = start(tmp, "baseline", EXPERIMENT)
    assert proc.returncode == 0, proc.stderr
    return outcome(run_dir)


@pytest.mark.parametrize("kill", ["step:3", "step:30", "write:5", "trial_end:1"])
def test_sigkill_at_any_moment_then_resume_gives_the_uninterrupted_result(tmp_path, uninterrupted, kill):
    proc, run_dir = start(tmp_path, "killed", EXPERIMENT, kill=kill)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    resumed = runner("resume", run_dir, "--plain")
    assert resumed.returncode == 0, resumed.stderr
    assert_same(outcome(run_dir), uninterrupted)
    events = assert_clean_log(run_dir)
    assert [e["event"] for e in events].count("resume") == 1


def test_a_damaged_snapshot_is_skipped_with_a_message_and_the_result_is_the_same(tmp_path, uninterrupted):
    proc, run_dir = start(tmp_path, "killed", EXPERIMENT, kill="step:23")  # 12 steps a trial: trial 1, epoch 4
    assert proc.returncode == -signal.SIGKILL
    snapshots = sorted((run_dir / "trials" / "t001").glob("*.npz"))
    assert len(snapshots) >= 2
    newest = max(snapshots, key=lambda p: read_snapshot(p)[1]["loop"]["events"])
    data = bytearray(newest.read_bytes())
    newest.write_bytes(bytes(data[: len(data) - 100]))  # truncated
    resumed = runner("resume", run_dir, "--plain")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{newest}: cannot be read" in resumed.stdout and "using an earlier snapshot" in resumed.stdout
    assert_same(outcome(run_dir), uninterrupted)
    assert_clean_log(run_dir)


HEAVY = deep_update(
    EXPERIMENT,
    {
        "name": "heavy",
        "data": {"points_per_class": 1500},
        "train": {"epochs": 3, "batch_size": 8},
        "search": {"strategy": {"trials": 2}},
    },
)


def test_ctrl_c_saves_a_snapshot_mid_epoch_and_resume_finishes_the_run(tmp_path):
    proc, run_dir = start(tmp_path, "heavy-baseline", HEAVY)
    assert proc.returncode == 0, proc.stderr
    baseline = outcome(run_dir)

    exp = tmp_path / "heavy.json"
    exp.write_bytes(orjson.dumps(HEAVY))
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "start", exp, "--out", tmp_path / "runs", "--plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until trial 1 has trained an epoch, then press Ctrl-C
        logs = list((tmp_path / "runs").glob("*/events.jsonl"))
        if logs and any(b'"event":"epoch_end"' in x and b'"trial":1' in x for x in logs[0].read_bytes().splitlines()):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "continue with: runner resume" in err and "Traceback" not in err
    [run_dir] = (tmp_path / "runs").iterdir()
    [interrupted] = [
        orjson.loads(x) for x in (run_dir / "events.jsonl").read_bytes().splitlines() if b'"interrupted"' in x
    ]
    assert interrupted["trial"] == 1
    snapshot = [p for p in (run_dir / "trials" / "t001").glob("*.npz") if read_snapshot(p)[1]["reason"] == "interrupt"]
    assert len(snapshot) == 1 and read_snapshot(snapshot[0])[1]["step"] == interrupted["step"]

    resumed = runner("resume", run_dir, "--plain")
    assert resumed.returncode == 0, resumed.stderr
    assert_same(outcome(run_dir), baseline, epochs=3)
    events = assert_clean_log(run_dir, trials=2, epochs=3)
    assert [e["event"] for e in events if e.get("trial") == 1].count("interrupted") == 1


def test_a_pickle_in_place_of_a_snapshot_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "e00001-s000000001.npz"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CorruptSnapshot):
        read_snapshot(path)
    np.save(tmp_path / "obj.npy", np.array([Payload()], dtype=object), allow_pickle=True)
    import zipfile

    with zipfile.ZipFile(path, "w") as z:  # an .npz whose array is an object array of pickles
        z.write(tmp_path / "obj.npy", "w.npy")
    with pytest.raises(CorruptSnapshot):
        read_snapshot(path)
    assert not marker.exists()


def test_resume_refuses_a_finished_run_and_a_folder_that_is_no_run(tmp_path, uninterrupted):
    proc, run_dir = start(tmp_path, "done", EXPERIMENT)
    assert proc.returncode == 0
    again = runner("resume", run_dir)
    assert again.returncode == 2 and "has finished; there is nothing to resume" in again.stderr
    nothing = runner("resume", tmp_path)
    assert nothing.returncode == 2 and "is not a run directory" in nothing.stderr


STOPPER = textwrap.dedent('''
    """Test plugin: stops trial 0 after its 2nd epoch (the whole run if STOP_ALL is in this file),
    and, when RUNNER_TEST_KILL is set, dies at the moment it names."""
    import os, signal
    from runner import Stop, hookimpl

    KILL = os.environ.get("RUNNER_TEST_KILL", "")
    STOP_ALL = False

    @hookimpl
    def runner_epoch_end(trial, epoch):
        if trial.id == 0 and epoch == 1:
            return Stop("enough", experiment=STOP_ALL)

    @hookimpl
    def runner_checkpoint_saved(trial, checkpoint):
        if KILL == "after_last_snapshot" and trial.id == 0 and checkpoint["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # the stop is decided, trial_complete not yet written

    @hookimpl
    def runner_trial_complete(trial):
        if KILL == "after_trial_0" and trial.id == 0:
            os.kill(os.getpid(), signal.SIGKILL)
''')


@pytest.mark.parametrize("stop_all, kill", [(False, "after_last_snapshot"), (True, "after_trial_0")])
def test_a_stop_decided_before_a_kill_still_holds_after_resume(tmp_path, stop_all, kill):
    plugin = tmp_path / "stopper.py"
    plugin.write_text(STOPPER.replace("STOP_ALL = False", f"STOP_ALL = {stop_all}"))
    exp = tmp_path / "exp.json"
    exp.write_bytes(orjson.dumps(EXPERIMENT))

    def start_run(out, env):
        proc = runner("start", exp, "--out", tmp_path / out, "--plain", "--plugin", plugin, env=env)
        [run_dir] = (tmp_path / out).iterdir()
        return proc, run_dir

    proc, baseline_dir = start_run("baseline", {"RUNNER_TEST_KILL": ""})
    assert proc.returncode == 0, proc.stderr
    proc, run_dir = start_run("killed", {"RUNNER_TEST_KILL": kill})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    resumed = runner("resume", run_dir, "--plain", env={"RUNNER_TEST_KILL": ""})
    assert resumed.returncode == 0, resumed.stderr
    baseline = orjson.loads((baseline_dir / "results.json").read_bytes())["trials"]
    after = orjson.loads((run_dir / "results.json").read_bytes())["trials"]
    assert [(t["trial"], t["state"], t["epochs"], t["score"]) for t in after] == [
        (t["trial"], t["state"], t["epochs"], t["score"]) for t in baseline
    ]
    assert next(t for t in after if t["trial"] == 0)["state"] == "stopped"
    assert len(after) == (1 if stop_all else 3)


def test_two_processes_cannot_share_a_run_directory(tmp_path):
    proc, run_dir = start(tmp_path, "killed", EXPERIMENT, kill="step:20")
    assert proc.returncode == -signal.SIGKILL
    from runner.files import run_lock

    with run_lock(run_dir):
        other = runner("resume", run_dir)
    assert other.returncode == 2 and f"another runner process is using {run_dir}" in other.stderr
    assert runner("resume", run_dir, "--plain").returncode == 0


TORCH = deep_update(EXPERIMENT, {"name": "resumable-torch", "backend": {"name": "torch", "device": "cpu"}})


@pytest.mark.torch
@pytest.mark.parametrize("kill", ["write:5", "trial_end:1"])
def test_a_torch_run_killed_and_resumed_gives_the_uninterrupted_result(tmp_path, kill):
    proc, run_dir = start(tmp_path, "torch-baseline", TORCH)
    assert proc.returncode == 0, proc.stderr
    baseline = outcome(run_dir)
    proc, run_dir = start(tmp_path, "torch-killed", TORCH, kill=kill)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    resumed = runner("resume", run_dir, "--plain")
    assert resumed.returncode == 0, resumed.stderr
    assert_same(outcome(run_dir), baseline)
    assert_clean_log(run_dir)
