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

from runner.engine.snapshot_files import CorruptSnapshot, read_snapshot
from tests.conftest import QUICK, deep_update

KILLER = textwrap.dedent('''
    """Test plugin: SIGKILLs this process at the moment RUNNER_TEST_KILL names ("where:n"),
    and counts the training steps taken where RUNNER_TEST_STEPS names a file."""
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
        import runner.engine.snapshot_files as snapshot_files
        real_write_all = snapshot_files.write_all

        def write_all(fd, buffers):
            count[0] += 1
            if count[0] == n:
                data = b"".join(memoryview(b).cast("B").tobytes() for b in buffers)
                os.write(fd, data[: len(data) // 2])
                die()
            real_write_all(fd, buffers)
        snapshot_files.write_all = write_all

    @hookimpl
    def runner_trial_complete(trial):
        if where == "trial_end" and trial.id == n:
            die()

    # With RUNNER_TEST_STEPS set, count the training steps this process takes: a line
    # {"trial", "epoch", "trained"} at each epoch's end, "trained" counting that trial's steps so far.
    steps_file = os.environ.get("RUNNER_TEST_STEPS")
    trained, current = {}, [None]
    if steps_file:
        from runner.plugins.backends.numpy_mlp.backend import NumpyBackend
        backends = [NumpyBackend]
        try:
            from runner.plugins.backends.torch_mlp.backend import TorchBackend  # torch loads when a trial uses it
            backends.append(TorchBackend)
        except ImportError:  # no PyTorch here
            pass

        def counting(real):
            def train_step(self):
                trained[current[0]] = trained.get(current[0], 0) + 1
                return real(self)
            return train_step
        for backend in backends:
            backend.train_step = counting(backend.train_step)

    @hookimpl
    def runner_trial_start(trial):  # also for a resumed trial, before its first step
        current[0] = trial.id

    @hookimpl
    def runner_epoch_end(trial, epoch):
        if steps_file:
            with open(steps_file, "a") as f:
                f.write(f'{{"trial": {trial.id}, "epoch": {epoch}, "trained": {trained.get(trial.id, 0)}}}\\n')
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
    tmp_path: Path, name: str, experiment: dict, kill: str | None = None, plugins=(), env: dict | None = None
) -> tuple[subprocess.CompletedProcess, Path]:
    """``runner start`` with KILLER (killing where ``kill`` says, or nowhere) and one-off ``plugins``."""
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
        *[arg for plugin in (*plugins, killer) for arg in ("--plugin", plugin)],
        env={"RUNNER_TEST_KILL": kill or "", **(env or {})},
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
        last = max(folder.glob("*.safetensors"), key=lambda p: read_snapshot(p)[1]["loop"]["events"])
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


def log_of(run_dir: Path) -> list[dict]:
    return [orjson.loads(line) for line in (run_dir / "events.jsonl").read_bytes().splitlines()]


def resume(run_dir: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """``runner resume``, given again the one-off plugins the run was started with, and a KILLER
    (killing nothing) that counts the steps trained; the process, and that count at each epoch's end."""
    plugins = [Path(p) for p in log_of(run_dir)[0]["plugin_files"]]
    if not any(p.name == "killer.py" for p in plugins):
        plugins.append(run_dir.parent.parent / "steps.py")
        plugins[-1].write_text(KILLER)
    steps = run_dir.parent.parent / "trained.jsonl"
    steps.unlink(missing_ok=True)
    proc = runner(
        "resume",
        run_dir,
        "--plain",
        *[arg for p in plugins for arg in ("--plugin", p)],
        env={"RUNNER_TEST_KILL": "", "RUNNER_TEST_STEPS": str(steps)},
    )
    trained = [orjson.loads(line) for line in steps.read_bytes().splitlines()] if steps.exists() else []
    return proc, trained


def snapshots_to_resume(run_dir: Path) -> dict[int, tuple[str, dict] | None]:
    """Before a resume: each interrupted trial's newest snapshot file (by the events it follows)
    that reads back intact, before-nudge ones aside, as (path in the run directory, meta); None
    for a trial that has none."""
    events = log_of(run_dir)
    finished = {e["trial"] for e in events if e["event"] == "trial_complete"}
    newest: dict[int, tuple[str, dict] | None] = {}
    for trial in [e["trial"] for e in events if e["event"] == "trial_start" and e["trial"] not in finished]:
        found = []
        for path in (run_dir / "trials" / f"t{trial:03d}").glob("*.safetensors"):
            try:
                meta = read_snapshot(path)[1]
            except CorruptSnapshot:
                continue
            if meta["reason"] != "before_nudge":
                found.append((meta["loop"]["events"], str(path.relative_to(run_dir)), meta))
        newest[trial] = max(found, key=lambda f: f[0])[1:] if found else None
    return newest


def assert_resumed_from(run_dir: Path, expected: dict[int, tuple[str, dict] | None], trained: list[dict]) -> None:
    """After a resume: each interrupted trial went on from the snapshot ``expected`` names (see
    ``snapshots_to_resume``), and the work before it was not done again; finished trials were left alone.
    ``trained``: the steps the resuming process trained (see ``resume``)."""
    events = log_of(run_dir)
    [at] = [i for i, e in enumerate(events) if e["event"] == "resume"]
    named = {int(t): path and Path(path).resolve() for t, path in events[at]["trials"].items()}
    assert named == {t: found and (run_dir / found[0]).resolve() for t, found in expected.items()}
    finished = {e["trial"] for e in events[:at] if e["event"] == "trial_complete"}
    assert not [e for e in events[at:] if e.get("trial") in finished], "a finished trial is left alone"
    for trial, found in expected.items():
        path, meta = found or (None, {"epoch": 0, "step": 0})
        mine = [e for e in events[at:] if e.get("trial") == trial]
        assert (mine[0]["event"], mine[0]["snapshot"], mine[0]["epoch"], mine[0]["step"]) == (
            "trial_resume",
            path,
            meta["epoch"],
            meta["step"],
        )
        first = next((e for e in mine if e["event"] == "epoch_end"), None)
        if first is None:  # the snapshot closed the epoch that ended the trial
            assert not [c for c in trained if c["trial"] == trial]
            continue
        assert first["epoch"] == meta["epoch"], "no epoch before the snapshot is trained again"
        count = next(c for c in trained if c["trial"] == trial)
        assert (count["epoch"], count["trained"]) == (first["epoch"], first["step"] - meta["step"]), (
            "the steps before the snapshot are not trained again"
        )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("baseline")
    proc, run_dir = start(tmp, "baseline", EXPERIMENT)
    assert proc.returncode == 0, proc.stderr
    return outcome(run_dir)


@pytest.mark.parametrize("kill", ["step:3", "step:20", "step:30", "write:5", "trial_end:1"])
def test_sigkill_at_any_moment_then_resume_gives_the_uninterrupted_result(tmp_path, uninterrupted, kill):
    proc, run_dir = start(tmp_path, "killed", EXPERIMENT, kill=kill)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    expected = snapshots_to_resume(run_dir)
    if kill == "step:20":  # trial 1's 8th step: its first epoch's snapshot was written when its second was taken
        assert expected.keys() == {1} and expected[1] is not None
    resumed, trained = resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_same(outcome(run_dir), uninterrupted)
    events = assert_clean_log(run_dir)
    assert [e["event"] for e in events].count("resume") == 1
    assert_resumed_from(run_dir, expected, trained)


def test_a_damaged_snapshot_is_skipped_with_a_message_and_the_result_is_the_same(tmp_path, uninterrupted):
    proc, run_dir = start(tmp_path, "killed", EXPERIMENT, kill="step:23")  # 12 steps a trial: trial 1, epoch 4
    assert proc.returncode == -signal.SIGKILL
    snapshots = sorted((run_dir / "trials" / "t001").glob("*.safetensors"))
    assert len(snapshots) >= 2
    newest = max(snapshots, key=lambda p: read_snapshot(p)[1]["loop"]["events"])
    data = bytearray(newest.read_bytes())
    newest.write_bytes(bytes(data[: len(data) - 100]))  # truncated
    expected = snapshots_to_resume(run_dir)
    assert expected[1] is not None and expected[1][0] != str(newest.relative_to(run_dir))
    resumed, trained = resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{newest}: truncated or damaged" in resumed.stdout and "using an earlier snapshot" in resumed.stdout
    assert_same(outcome(run_dir), uninterrupted)
    assert_clean_log(run_dir)
    assert_resumed_from(run_dir, expected, trained)


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
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "continue with: runner resume" in err and "Traceback" not in err
    [run_dir] = (tmp_path / "runs").iterdir()
    [interrupted] = [
        orjson.loads(x) for x in (run_dir / "events.jsonl").read_bytes().splitlines() if b'"interrupted"' in x
    ]
    assert interrupted["trial"] == 1
    snapshot = [
        p for p in (run_dir / "trials" / "t001").glob("*.safetensors") if read_snapshot(p)[1]["reason"] == "interrupt"
    ]
    assert len(snapshot) == 1 and read_snapshot(snapshot[0])[1]["step"] == interrupted["step"]
    expected = snapshots_to_resume(run_dir)
    assert expected == {1: (str(snapshot[0].relative_to(run_dir)), read_snapshot(snapshot[0])[1])}

    resumed, trained = resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_same(outcome(run_dir), baseline, epochs=3)
    events = assert_clean_log(run_dir, trials=2, epochs=3)
    assert [e["event"] for e in events if e.get("trial") == 1].count("interrupted") == 1
    assert_resumed_from(run_dir, expected, trained)  # mid-epoch: the steps of that epoch before it too


def test_a_pickle_in_place_of_a_snapshot_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "e00001-s000000001.safetensors"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CorruptSnapshot):
        read_snapshot(path)
    np.save(tmp_path / "obj.npy", np.array([Payload()], dtype=object), allow_pickle=True)
    import zipfile

    for named in (path, path.with_suffix(".npz")):  # under either name (runner 0.2 wrote .npz)
        with zipfile.ZipFile(named, "w") as z:  # an .npz whose array is an object array of pickles
            z.write(tmp_path / "obj.npy", "w.npy")
        with pytest.raises(CorruptSnapshot):
            read_snapshot(named)
    assert not marker.exists()


def test_resume_refuses_a_finished_run_and_a_folder_that_is_no_run(tmp_path, uninterrupted):
    proc, run_dir = start(tmp_path, "done", EXPERIMENT)
    assert proc.returncode == 0
    again = runner("resume", run_dir, "--plugin", tmp_path / "killer.py")
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
    expected = snapshots_to_resume(run_dir)
    resumed, trained = resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_resumed_from(run_dir, expected, trained)
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
    from runner.records.files import run_lock

    with run_lock(run_dir):
        other = runner("resume", run_dir, "--plugin", tmp_path / "killer.py")
    assert other.returncode == 2 and f"another runner process is using {run_dir}" in other.stderr
    assert resume(run_dir)[0].returncode == 0


TORCH = deep_update(EXPERIMENT, {"name": "resumable-torch", "backend": {"name": "torch", "device": "cpu"}})


@pytest.mark.torch
@pytest.mark.parametrize("kill", ["write:5", "trial_end:1"])
def test_a_torch_run_killed_and_resumed_gives_the_uninterrupted_result(tmp_path, kill):
    proc, run_dir = start(tmp_path, "torch-baseline", TORCH)
    assert proc.returncode == 0, proc.stderr
    baseline = outcome(run_dir)
    proc, run_dir = start(tmp_path, "torch-killed", TORCH, kill=kill)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    expected = snapshots_to_resume(run_dir)
    resumed, trained = resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_same(outcome(run_dir), baseline)
    assert_clean_log(run_dir)
    assert_resumed_from(run_dir, expected, trained)


def test_a_trial_queued_but_not_yet_begun_when_the_run_died_runs_on_resume_under_its_own_id(tmp_path, uninterrupted):
    """A worker may die before it logs its trial's trial_start; the driver's trial_queued keeps
    the trial known, so a resume starts it (and does not give its id to another trial)."""
    proc, run_dir = start(tmp_path, "killed", EXPERIMENT, kill="trial_end:0")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    events = log_of(run_dir)
    queued = [e for e in events if e["event"] == "trial_queued"]
    assert [(e["queued"], e["params"]) for e in queued][:1] == [(0, events[1]["params"])]
    # As if trial 1 had been handed to a worker that died before it logged anything.
    params = {"train.lr": 0.02}
    lines = [orjson.dumps(e) for e in events]
    lines.append(orjson.dumps({"t": events[-1]["t"], "event": "trial_queued", "queued": 1, "params": params}))
    (run_dir / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")

    resumed, _ = resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert "t001 continues from the start (no snapshot)" in resumed.stdout
    after = log_of(run_dir)
    starts = [e for e in after if e["event"] == "trial_start"]
    assert [(e["trial"], e["params"]) for e in starts][1] == (1, params)  # its own id, the params it was given
    assert sorted(e["trial"] for e in starts) == [0, 1, 2]
    assert [e["queued"] for e in after if e["event"] == "trial_queued"] == [0, 1, 2]
