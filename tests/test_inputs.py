"""Input files are read as bounded regular files, and experiments that cannot fit are refused up front.

A FIFO, a device or an oversized file given where runner reads a file (an experiment file,
a data file, a run directory's event log, status or experiment file, a snapshot) is refused
at once with one line naming the path (exit 2), never a hang or a read until memory runs
out. A spec whose model or data cannot fit is refused by ``runner validate`` and ``runner
start`` before any data are generated, and no run directory is made for it. Duplicate keys
in the files people write are refused with their dotted path.

Every subprocess here runs with a capped address space and a timeout, so a regression fails
the test instead of hanging it or eating the machine's memory.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.conftest import QUICK, deep_update, run_file

MEMORY_CAP = 3 << 30  # bytes of address space a runner subprocess may use here
TIMEOUT = 90  # seconds: far more than any of these commands needs when it works


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def runner(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """``runner ARGS`` in a subprocess with capped memory and a timeout (a hang fails the test)."""
    return subprocess.run(
        [sys.executable, "-m", "runner", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=TIMEOUT,
        preexec_fn=_cap_memory,
    )


def refused(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert exit 2 with one line on stderr holding every needle; return the line."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def write(path: Path, document: dict) -> Path:
    path.write_bytes(orjson.dumps(document))
    return path


def quick(tmp_path: Path, changes: dict | None = None, name: str = "exp.json") -> Path:
    return write(tmp_path / name, deep_update(QUICK, changes or {}))


def make_fifo(path: Path) -> Path:
    if path.exists() or path.is_symlink():
        path.unlink()
    os.mkfifo(path)
    return path


def link_to_dev_zero(path: Path) -> Path:
    if path.exists() or path.is_symlink():
        path.unlink()
    os.symlink("/dev/zero", path)
    return path


# -- the shared reader ----------------------------------------------------------------------------


def small_limit():
    """A 100-byte limit raised by RUNNER_TEST_MAX_BYTES (imported here: the module is what is tested)."""
    from runner.inputs import Limit

    return Limit("a test file", 100, "RUNNER_TEST_MAX_BYTES")


def test_the_reader_reads_a_regular_file_within_its_limit(tmp_path):
    from runner.inputs import read_bytes

    path = tmp_path / "a.json"
    path.write_bytes(b"x" * 100)
    assert read_bytes(path, small_limit()) == b"x" * 100


@pytest.mark.parametrize(
    "make, kind, problem",
    [
        (make_fifo, "not_regular", "is not a regular file but a named pipe (FIFO)"),
        (lambda p: Path("/dev/zero"), "not_regular", "is not a regular file but a character device"),
        (lambda p: p.mkdir() or p, "folder", "is a folder, not a file"),
        (lambda p: p, "missing", "no such file"),
        (lambda p: p.write_bytes(b"x" * 101) and p, "too_big", "101 bytes"),
    ],
    ids=["fifo", "dev_zero", "folder", "missing", "too_big"],
)
def test_the_reader_refuses_what_is_not_a_small_regular_file_at_once(tmp_path, make, kind, problem):
    from runner.inputs import InputError, read_bytes

    path = make(tmp_path / "input")
    started = time.monotonic()
    with pytest.raises(InputError) as caught:
        read_bytes(path, small_limit())
    assert time.monotonic() - started < 5
    assert caught.value.kind == kind and caught.value.exit_code == 2
    assert str(caught.value).startswith(f"{path}: ") and problem in str(caught.value)


def test_the_limit_is_raised_through_its_environment_variable(tmp_path, monkeypatch):
    from runner.inputs import InputError, read_bytes

    path = tmp_path / "big"
    path.write_bytes(b"x" * 150)
    with pytest.raises(InputError, match="RUNNER_TEST_MAX_BYTES"):
        read_bytes(path, small_limit())
    monkeypatch.setenv("RUNNER_TEST_MAX_BYTES", "200")
    assert read_bytes(path, small_limit()) == b"x" * 150
    monkeypatch.setenv("RUNNER_TEST_MAX_BYTES", "lots")
    with pytest.raises(InputError, match="RUNNER_TEST_MAX_BYTES: must be a whole number of bytes"):
        read_bytes(path, small_limit())


def test_a_link_is_refused_where_links_are_not_followed(tmp_path):
    from runner.inputs import InputError, read_bytes

    target = tmp_path / "real"
    target.write_bytes(b"{}")
    link = tmp_path / "link"
    os.symlink(target, link)
    assert read_bytes(link, small_limit()) == b"{}"
    with pytest.raises(InputError, match="is a symbolic link"):
        read_bytes(link, small_limit(), follow_symlinks=False)


def test_the_event_log_limit_is_hundreds_of_megabytes():
    from runner.inputs import EVENT_LOG

    assert EVENT_LOG.bytes() >= 256 << 20


# -- experiment files ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "dev_zero_link"])
def test_an_experiment_file_that_is_not_a_regular_file_is_refused_at_once(tmp_path, kind):
    path = {
        "fifo": lambda: make_fifo(tmp_path / "exp.json"),
        "dev_zero": lambda: Path("/dev/zero"),
        "dev_zero_link": lambda: link_to_dev_zero(tmp_path / "exp.json"),
    }[kind]()
    refused(runner("validate", path), str(path), "not a regular file")
    out = tmp_path / "runs"
    refused(runner("start", path, "--out", out, "--plain"), str(path), "not a regular file")
    assert not out.exists()


def test_an_oversized_experiment_file_is_refused_and_the_limit_can_be_raised(tmp_path):
    path = tmp_path / "exp.json"
    path.write_bytes(orjson.dumps(QUICK)[:-1] + b" " * (5 << 20) + b"}")
    refused(runner("validate", path), str(path), "RUNNER_MAX_EXPERIMENT_BYTES")
    raised = runner("validate", path, env={"RUNNER_MAX_EXPERIMENT_BYTES": str(6 << 20)})
    assert raised.returncode == 0, raised.stderr


# -- data files ---------------------------------------------------------------------------------


def csv_experiment(tmp_path: Path, data_path: str, name: str = "csv") -> Path:
    return quick(tmp_path, {"data": {"name": name, "path": data_path, "points_per_class": None, "classes": None}})


@pytest.mark.parametrize("dataset", ["csv", "npz"])
@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_a_data_file_that_is_not_a_regular_file_is_refused_at_once(tmp_path, dataset, kind):
    data = make_fifo(tmp_path / "data") if kind == "fifo" else Path("/dev/zero")
    exp = csv_experiment(tmp_path, str(data), dataset)
    what = "named pipe (FIFO)" if kind == "fifo" else "character device"
    refused(runner("validate", exp), "data.path", str(data), what)
    out = tmp_path / "runs"
    refused(runner("start", exp, "--out", out, "--plain"), "data.path", what)
    assert not out.exists()


def test_an_oversized_data_file_is_refused_and_the_limit_can_be_raised(tmp_path):
    rows = "\n".join(f"{i % 7},{i % 5},{i % 3}" for i in range(300))
    (tmp_path / "d.csv").write_text("a,b,label\n" + rows + "\n")
    exp = csv_experiment(tmp_path, "d.csv")
    assert runner("validate", exp).returncode == 0
    refused(runner("validate", exp, env={"RUNNER_MAX_DATA_FILE_BYTES": "1000"}), "data.path", "at most 1,000")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(300, 3)), y=np.arange(300) % 3)
    exp = csv_experiment(tmp_path, "d.npz", "npz")
    assert runner("validate", exp).returncode == 0
    refused(runner("validate", exp, env={"RUNNER_MAX_DATA_FILE_BYTES": "1000"}), "data.path", "at most 1,000")


# -- a run directory ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("finished")
    return run_file(quick(tmp), tmp).run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


@pytest.mark.parametrize("file", ["status.json"])
@pytest.mark.parametrize("kind", ["fifo", "dev_zero_link"])
def test_status_refuses_a_status_file_that_is_not_a_regular_file(run_copy, file, kind):
    path = make_fifo(run_copy / file) if kind == "fifo" else link_to_dev_zero(run_copy / file)
    refused(runner("status", run_copy), str(path))
    refused(runner("status", run_copy, "--json"), str(path))


@pytest.mark.parametrize("file", ["events.jsonl", "experiment.json"])
@pytest.mark.parametrize("kind", ["fifo", "dev_zero_link"])
def test_report_refuses_run_files_that_are_not_regular_files(run_copy, file, kind):
    path = make_fifo(run_copy / file) if kind == "fifo" else link_to_dev_zero(run_copy / file)
    what = "named pipe (FIFO)" if kind == "fifo" else "symbolic link"
    refused(runner("report", run_copy, "--csv"), str(path), what)


def test_an_oversized_event_log_is_refused_and_the_limit_can_be_raised(run_copy):
    size = (run_copy / "events.jsonl").stat().st_size
    refused(
        runner("report", run_copy, "--csv", env={"RUNNER_MAX_EVENTS_BYTES": str(size - 1)}),
        "events.jsonl",
        "RUNNER_MAX_EVENTS_BYTES",
    )
    assert runner("report", run_copy, "--csv", env={"RUNNER_MAX_EVENTS_BYTES": str(size)}).returncode == 0


@pytest.mark.parametrize(
    "file, kind", [("events.jsonl", "fifo"), ("events.jsonl", "dev_zero_link"), ("experiment.json", "fifo")]
)
def test_start_from_a_run_whose_files_are_not_regular_files_is_refused_before_a_run_directory(
    run_copy, tmp_path, file, kind
):
    path = make_fifo(run_copy / file) if kind == "fifo" else link_to_dev_zero(run_copy / file)
    out = tmp_path / "runs"
    proc = runner("start", quick(tmp_path, {"search": None}), "--from", run_copy, "--out", out, "--plain")
    refused(proc, str(path), "named pipe (FIFO)" if kind == "fifo" else "symbolic link")
    assert not out.exists()


def test_a_snapshot_that_is_not_a_regular_file_is_reported_damaged_at_once(run_copy):
    snapshot = next(run_copy.glob("trials/t000/*.safetensors"))
    make_fifo(snapshot)
    code = (
        "import sys; from runner.engine.snapshot_files import read_snapshot, CorruptSnapshot\n"
        "try:\n    read_snapshot(sys.argv[1])\nexcept CorruptSnapshot as err:\n    print(err)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(snapshot)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        preexec_fn=_cap_memory,
    )
    assert proc.returncode == 0, proc.stderr
    assert str(snapshot) in proc.stdout and "named pipe (FIFO)" in proc.stdout


# -- experiments that cannot fit ----------------------------------------------------------------

ABSURD = [
    ({"data": "digits", "model": {"hidden": [1_000_000_000]}, "search": None}, "model: ", "parameters"),
    ({"data": {"name": "spirals", "classes": 10_000_000, "points_per_class": None}}, "data: ", "bytes"),
    ({"data": {"name": "spirals", "points_per_class": 1_000_000_000, "classes": None}}, "data: ", "bytes"),
    (
        {"search": {"space": {"model.hidden": {"choices": [[8], [400_000, 400_000]]}}}},
        "search.space.model.hidden: ",
        "parameters",
    ),
]


@pytest.mark.parametrize("changes, path, what", ABSURD, ids=["hidden", "classes", "points", "space"])
def test_a_spec_that_cannot_fit_is_refused_before_anything_is_made(tmp_path, changes, path, what):
    exp = quick(tmp_path, changes)
    started = time.monotonic()
    line = refused(runner("validate", exp), f"{exp}: {path}", what, "limits.max_")
    out = tmp_path / "runs"
    assert refused(runner("start", exp, "--out", out, "--plain")) == line
    assert not out.exists(), "no run directory for a spec that cannot start"
    assert time.monotonic() - started < 60


def test_a_raised_limit_lets_a_spec_through(tmp_path):
    big = {"data": "digits", "model": {"hidden": [20_000_000]}, "search": None}
    refused(runner("validate", quick(tmp_path, big)), "model: ", "limits.max_parameters")
    raised = {**big, "limits": {"max_parameters": 2e9, "max_array_bytes": 1e12}}
    proc = runner("validate", quick(tmp_path, raised))
    assert proc.returncode == 0, proc.stderr


def test_the_parameter_estimate_is_exact_for_the_mlp_at_the_limit(tmp_path):
    # digits: 64 inputs, 10 classes; hidden [200]: 64*200 + 200 + 200*10 + 10 = 15010 parameters
    exact = {"data": "digits", "model": {"hidden": [200], "batch_norm": False}, "search": None}
    assert runner("validate", quick(tmp_path, {**exact, "limits": {"max_parameters": 15010}})).returncode == 0
    refused(
        runner("validate", quick(tmp_path, {**exact, "limits": {"max_parameters": 15009}})),
        "model: ",
        "15,010 parameters",
    )


def test_a_csv_whose_labels_make_the_model_too_big_is_refused_once_loaded(tmp_path):
    rows = "\n".join(f"{i},{i // 2}" for i in range(4000))  # 2,000 classes of two examples
    (tmp_path / "d.csv").write_text(rows + "\n")
    exp = quick(
        tmp_path,
        {
            "data": {"name": "csv", "path": "d.csv", "header": False, "classes": None, "points_per_class": None},
            "model": {"hidden": [64]},
            "search": None,
            "limits": {"max_parameters": 100_000},
        },
    )
    out = tmp_path / "runs"
    refused(runner("start", exp, "--out", out, "--plain"), "model: ", "2,000 classes", "limits.max_parameters")
    assert not out.exists()


def test_every_example_passes_the_limits_easily(plugins):
    from runner.experiment_file.spec import load

    for path in sorted((Path(__file__).parent.parent / "experiments").glob("*.json")):
        if path.name.endswith(".schema.json"):
            continue
        raw = orjson.loads(path.read_bytes())
        raw["limits"] = {"max_parameters": 1e7, "max_array_bytes": 1e9}  # 100 and 16 times below the defaults
        tight = path.with_name(f".tight-{path.name}")
        try:
            tight.write_bytes(orjson.dumps(raw))
            load(tight, plugins.registry)
        finally:
            tight.unlink(missing_ok=True)


# -- duplicate keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, path",
    [
        ('{"a": 1, "a": 2}', ["a"]),
        ('{"train": {"lr": 0.1, "epochs": 2, "lr": 0.2}}', ["train", "lr"]),
        (
            '{"search": {"space": {"train.lr": {"low": 1, "high": 2, "low": 0.5}}}}',
            ["search", "space", "train.lr", "low"],
        ),
        ('{"actions": [{"id": 1}, {"id": 2, "do": "x", "do": "y"}]}', ["actions", 1, "do"]),
        ('{"a": {"b": 1}, "c": [1, {"d": 1}]}', None),
    ],
)
def test_duplicate_key_finds_the_full_path(text, path):
    from runner.inputs import duplicate_key

    assert duplicate_key(text.encode()) == path


def test_a_duplicate_key_in_an_experiment_file_is_refused_with_its_dotted_path(tmp_path):
    text = orjson.dumps(QUICK).decode().replace('"lr":0.01', '"lr":0.01,"lr":0.5')
    assert text.count('"lr"') == 2
    exp = tmp_path / "exp.json"
    exp.write_text(text)
    refused(runner("validate", exp), f"{exp}: train.lr: duplicate key")
    space = '"space":{"model.hidden":{"choices":[[8],[16]],"choices":[[4]]}}'
    exp.write_text(orjson.dumps(QUICK).decode().replace('"space":{"model.hidden":{"choices":[[8],[16]]}}', space))
    refused(runner("validate", exp), f"{exp}: search.space.model.hidden.choices: duplicate key")


def test_a_duplicate_key_in_the_control_file_is_a_control_error_and_the_run_goes_on(tmp_path):
    from tests.test_control_live import LiveRun

    run = LiveRun(tmp_path)
    try:
        text = run.control.read_text().replace('"lr": 0.01', '"lr": 0.02, "lr": 0.03')
        assert text.count('"lr"') == 2
        run.control.write_text(text)
        error = run.until(lambda: [e for e in run.find("control_error") if "duplicate key" in e["message"]])[0]
        assert error["message"] == "control.json: lr: duplicate key"

        def last_error() -> str | None:  # status.json is rewritten right after the log line, not with it
            error = orjson.loads((run.run_dir / "status.json").read_bytes())["control"]["last_error"]
            return error and error["message"]

        assert run.until(lambda: last_error() == "control.json: lr: duplicate key")
        assert not run.find("nudge", source="control"), "nothing in the refused version was applied"
        run.write({**orjson.loads(text.replace('"lr": 0.02, ', "")), "lr": 0.005})
        nudge = run.until(lambda: run.find("nudge", source="control"))[0]
        assert nudge["changes"] == {"lr": {"old": 0.01, "new": 0.005}}
        assert run.stop() == 0
    finally:
        run.kill()
