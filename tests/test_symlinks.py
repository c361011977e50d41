"""No symbolic link planted in a run directory makes runner write, rename or delete outside it.

Each test plants a link to a person's own folder or file (outside the run), runs the real
command, and checks that runner refuses (exit 2, one line naming the link, no traceback)
and that the person's files are byte for byte as they were, and no link target was created.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import textwrap
from pathlib import Path

import orjson
import pytest

from runner.records.events import read_events
from tests.conftest import QUICK, deep_update
from tests.test_control_live import LiveRun
from tests.test_resume import runner

INTERRUPTED = deep_update(
    QUICK,
    {"name": "linked", "train": {"epochs": 3}, "checkpoint": {"min_interval": 0, "keep": 10}},
)

# Test plugin: with SYMLINK_TEST_KILL set, SIGKILLs the run at the end of trial 0's second
# epoch, once the file of its first is on disk. A resume (without the variable) runs on.
KILL_IN_TRIAL_0 = textwrap.dedent("""
    import os, signal, time
    from runner import hookimpl

    @hookimpl
    def runner_epoch_end(trial, epoch):
        if os.environ.get("SYMLINK_TEST_KILL") and trial.id == 0 and epoch == 1:
            deadline = time.monotonic() + 60
            while not list(trial.folder.glob("e00001-*.safetensors")) and time.monotonic() < deadline:
                time.sleep(0.001)
            os.kill(os.getpid(), signal.SIGKILL)
""")

# Test plugin: plants RUN_DIR/error.log -> SYMLINK_TEST_TARGET, then fails as a buggy plugin does.
PLANT_ERROR_LOG_AND_FAIL = textwrap.dedent("""
    import os
    from runner import hookimpl

    @hookimpl
    def runner_experiment_start(experiment):
        os.symlink(os.environ["SYMLINK_TEST_TARGET"], experiment.run_dir / "error.log")
        raise RuntimeError("a bug in this plugin")
""")

# Test plugin, loaded in every worker: the worker that writes the second snapshot file of its
# life first (the marker beside this file decides, once) writes half of it and is SIGKILLed.
KILL_WORKER_MID_WRITE = textwrap.dedent("""
    import os, signal
    from pathlib import Path
    import runner.engine.snapshot_files as snapshot_files

    MARKER = Path(__file__).with_name("killed-mid-write")
    count = [0]
    real_write_all = snapshot_files.write_all

    def first_to_claim(marker):
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            return False

    def write_all(fd, buffers):
        count[0] += 1
        if count[0] == 2 and first_to_claim(MARKER):
            data = b"".join(memoryview(b).cast("B").tobytes() for b in buffers)
            os.write(fd, data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real_write_all(fd, buffers)

    snapshot_files.write_all = write_all
""")


def files_in(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder`` (links not followed): a file's bytes, a link's target."""
    found: dict[str, bytes | str] = {}
    for parent, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(parent, name)
            key = str(path.relative_to(folder))
            if path.is_symlink():
                found[key] = f"-> {os.readlink(path)}"
            elif path.is_dir():
                found[key] = "a folder"
            else:
                found[key] = path.read_bytes()
    return found


def assert_refused(proc, path: Path) -> None:
    """Exit 2 with one ``error:`` line that names ``path``, and no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == lines[-1] and str(path) in errors[0], proc.stderr


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A run killed in its first trial: resumable, and reportable."""
    tmp = tmp_path_factory.mktemp("interrupted")
    (tmp / "exp.json").write_bytes(orjson.dumps(INTERRUPTED))
    (tmp / "killer.py").write_text(KILL_IN_TRIAL_0)
    proc = runner(
        "start", tmp / "exp.json", "--out", tmp / "runs", "--plain", "--plugin", tmp / "killer.py",
        env={"SYMLINK_TEST_KILL": "1"},
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    [run_dir] = (tmp / "runs").iterdir()
    assert list((run_dir / "trials" / "t000").glob("e00001-*.safetensors"))
    return run_dir


@pytest.fixture
def run_dir(interrupted, tmp_path) -> Path:
    """A copy of the interrupted run for one test to plant links in."""
    copy = tmp_path / "runs" / interrupted.name
    shutil.copytree(interrupted, copy, symlinks=True)
    return copy


@pytest.fixture
def resume(interrupted):
    """``runner resume`` of a copy of the interrupted run (with the plugin it was started with)."""
    killer = interrupted.parent.parent / "killer.py"
    return lambda run_dir: runner("resume", run_dir, "--plain", "--plugin", killer)


@pytest.fixture
def photos(tmp_path) -> Path:
    """A person's folder of PNGs, one named as a figure of runner's report is."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.png").write_bytes(b"\x89PNG a holiday")
    (folder / "curves.png").write_bytes(b"\x89PNG a person's own curves")
    return folder


@pytest.fixture
def data(tmp_path) -> Path:
    """A person's data folder holding files named as runner names its snapshots and temporary files."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "e00001-s000000004-n000009.safetensors").write_bytes(b"not a snapshot: a person's array")
    (folder / "e00001-s000000005-n000010.npz").write_bytes(b"not a snapshot either")
    (folder / "measurements.npz").write_bytes(b"a person's arrays")
    (folder / "e00002-s000000008-n000017.npz.tmp").write_bytes(b"a person's temporary file")
    (folder / ".e00002-s000000008-n000017.npz.123-0badf00d.tmp").write_bytes(b"another")
    (folder / "scratch.tmp").write_bytes(b"scratch")
    return folder


def test_a_linked_report_folder_is_refused_and_the_photos_in_it_stay(run_dir, photos):
    (run_dir / "report").symlink_to(photos)
    before = files_in(photos)
    proc = runner("report", run_dir)
    assert_refused(proc, run_dir / "report")
    assert files_in(photos) == before


def test_a_linked_report_page_is_refused_and_its_target_stays(run_dir, photos):
    page = photos / "index.html"
    page.write_text("<p>a person's page</p>")
    (run_dir / "report.html").symlink_to(page)
    before = files_in(photos)
    proc = runner("report", run_dir)
    assert_refused(proc, run_dir / "report.html")
    assert files_in(photos) == before


def test_a_report_removes_only_the_figures_it_wrote_itself(run_dir):
    assert runner("report", run_dir).returncode == 0
    drawn = sorted(p.name for p in (run_dir / "report").glob("*.png"))
    assert drawn and "curves.png" in drawn
    (run_dir / "report" / "mine.png").write_bytes(b"\x89PNG a person put it here")
    assert runner("report", run_dir).returncode == 0
    assert (run_dir / "report" / "mine.png").read_bytes() == b"\x89PNG a person put it here"


@pytest.mark.parametrize("linked", ["trials/t000", "trials"])
def test_a_linked_trial_folder_is_refused_by_resume_and_the_data_in_it_stays(run_dir, resume, data, linked):
    """Before: resume's clean-up deleted the ``.tmp`` files there and renamed a damaged
    snapshot to ``.damaged``."""
    if linked == "trials":
        (data / "t000").mkdir()
        (data / "t000" / "e00001-s000000004-n000009.safetensors").write_bytes(b"a person's file in a folder named t000")
    shutil.rmtree(run_dir / linked)
    (run_dir / linked).symlink_to(data)
    before = files_in(data)
    proc = resume(run_dir)
    assert_refused(proc, run_dir / linked)
    assert files_in(data) == before


@pytest.mark.parametrize("name", [".lock", ".control.lock"])
def test_a_dangling_lock_link_is_refused_by_resume_and_creates_nothing(run_dir, resume, tmp_path, name):
    target = tmp_path / "outside" / "created-by-runner"
    target.parent.mkdir()
    (run_dir / name).unlink(missing_ok=True)
    (run_dir / name).symlink_to(target)
    proc = resume(run_dir)
    assert_refused(proc, run_dir / name)
    assert not target.exists() and list(target.parent.iterdir()) == []


@pytest.mark.parametrize(
    "name", ["events.jsonl", "experiment.json", "status.json", "control.json", "results.json", "error.log"]
)
def test_a_linked_run_file_is_refused_by_resume_and_its_target_stays(run_dir, resume, tmp_path, name):
    """The link points at a person's copy of the file (or, for a file the run has not
    written yet, at any file of theirs)."""
    mine = tmp_path / "mine" / name
    mine.parent.mkdir()
    if (run_dir / name).exists():
        shutil.copyfile(run_dir / name, mine)
        (run_dir / name).unlink()
    else:
        mine.write_bytes(b"a person's file\n")
    (run_dir / name).symlink_to(mine)
    before = files_in(mine.parent)
    proc = resume(run_dir)
    assert_refused(proc, run_dir / name)
    assert files_in(mine.parent) == before


@pytest.mark.parametrize("command", ["resume", "report"])
def test_a_run_directory_named_through_a_link_is_the_folder_it_points_to(run_dir, resume, command):
    """A ``latest`` alias is the person's choice: runner works in the real folder behind it."""
    alias = run_dir.with_name("latest")
    alias.symlink_to(run_dir)
    proc = resume(alias) if command == "resume" else runner("report", alias)
    assert proc.returncode == 0, proc.stderr
    assert alias.is_symlink() and os.readlink(alias) == str(run_dir)
    written = run_dir / ("results.json" if command == "resume" else "report.html")
    assert written.is_file() and not written.is_symlink()


def test_a_dangling_control_lock_link_is_refused_by_nudge_and_creates_nothing(tmp_path):
    run = LiveRun(tmp_path)
    try:
        target = tmp_path / "outside" / "created-by-runner"
        target.parent.mkdir()
        (run.run_dir / ".control.lock").symlink_to(target)
        control = run.control.read_bytes()
        proc = runner("nudge", run.run_dir, "lr=0.005", "--timeout", "30")
        assert_refused(proc, run.run_dir / ".control.lock")
        assert not target.exists() and list(target.parent.iterdir()) == []
        assert run.control.read_bytes() == control  # nothing was sent
    finally:
        run.kill()


def test_a_linked_error_log_gets_no_traceback_and_the_traceback_goes_to_a_file_of_its_own(tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_bytes(b"a person's notes\n")
    (tmp_path / "exp.json").write_bytes(orjson.dumps(QUICK))
    (tmp_path / "planter.py").write_text(PLANT_ERROR_LOG_AND_FAIL)
    proc = runner(
        "start", tmp_path / "exp.json", "--out", tmp_path / "runs", "--plain", "--plugin", tmp_path / "planter.py",
        env={"SYMLINK_TEST_TARGET": str(mine)},
    )  # fmt: skip
    [run_dir] = (tmp_path / "runs").iterdir()
    assert_refused(proc, run_dir / "error.log")
    assert mine.read_bytes() == b"a person's notes\n"
    assert "RuntimeError" in proc.stderr and "a bug in this plugin" in proc.stderr
    saved = Path(re.search(r"the traceback is in (\S+)", proc.stderr)[1])
    try:
        assert "Traceback" in saved.read_text() and "planter.py" in saved.read_text()
    finally:
        saved.unlink()


def test_a_trial_retried_after_its_worker_died_mid_write_leaves_no_temporary_file(tmp_path):
    experiment = deep_update(INTERRUPTED, {"executor": {"name": "process", "workers": 2}})
    (tmp_path / "exp.json").write_bytes(orjson.dumps(experiment))
    (tmp_path / "killer.py").write_text(KILL_WORKER_MID_WRITE)
    proc = runner(
        "start", tmp_path / "exp.json", "--out", tmp_path / "runs", "--plain", "--plugin", tmp_path / "killer.py"
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "killed-mid-write").exists()
    [run_dir] = (tmp_path / "runs").iterdir()
    [retry] = [e for e in read_events(run_dir / "events.jsonl") if e["event"] == "trial_retry"]
    assert retry["reason"] == "killed by SIGKILL"
    assert [name for name in files_in(run_dir) if name.endswith(".tmp")] == []
