"""``runner dashboard`` over plain HTTP: a real server process on real runs, its event stream,
orders sent as ``runner nudge`` sends them, and what it refuses (no token, another site's
page, another host name, a path outside the served runs, a finished run)."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys

import orjson
import pytest

from runner.records.events import read_events
from tests.conftest import QUICK, deep_update, run_file
from tests.dashboard_helpers import Dashboard, wait_for
from tests.test_control_live import LiveRun

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


@pytest.fixture
def dashboard():
    started = []

    def start(*args) -> Dashboard:
        started.append(Dashboard(*args))
        return started[-1]

    yield start
    for each in started:
        each.close()


@pytest.fixture
def live(tmp_path):
    runs = []

    def start(changes: dict | None = None) -> LiveRun:
        runs.append(LiveRun(tmp_path, changes))
        return runs[-1]

    yield start
    for run in runs:
        run.kill()


def finished_run(folder):
    """A run of the quick experiment that has ended, in ``folder/runs``."""
    folder.mkdir(exist_ok=True)
    exp = folder / "finished.json"
    exp.write_bytes(orjson.dumps(deep_update(QUICK, {"name": "finished"})))
    return run_file(exp, folder).run_dir


@pytest.fixture
def finished(tmp_path):
    return finished_run(tmp_path / "old")


def test_the_runs_page_lists_every_run_with_its_state_and_best_score(dashboard, live, tmp_path):
    run = live()
    finished = finished_run(tmp_path)  # beside it
    board = dashboard("--out", finished.parent)
    status, runs = board.get("/api/runs")
    assert status == 200
    by_name = {row["name"]: row for row in runs}
    assert set(by_name) == {finished.name, run.run_dir.name}
    results = orjson.loads((finished / "results.json").read_bytes())
    assert by_name[finished.name]["state"] == "finished" and not by_name[finished.name]["alive"]
    assert by_name[finished.name]["best"]["score"] == results["best"]["score"]
    assert by_name[finished.name]["best"]["trial"] == results["best"]["trial"]
    assert by_name[run.run_dir.name]["state"] == "running" and by_name[run.run_dir.name]["alive"]
    trial = wait_for(lambda: orjson.loads((run.run_dir / "status.json").read_bytes())["trials"].get("0"))
    best = {row["name"]: row for row in board.get("/api/runs")[1]}[run.run_dir.name]["best"]
    assert best["trial"] == 0 and best["score"] >= trial["best"]["val_acc"]  # a running trial's best so far


def test_the_stream_sends_the_whole_log_then_each_new_line_and_the_run_as_it_changes(dashboard, live):
    run = live()
    board = dashboard(run.run_dir)
    stream = board.stream(run.run_dir.name)
    seen: list[dict] = []

    def logged(name, data):
        if name == "log":
            seen.extend(data)
        return len(seen) >= 3 and seen[-1]["event"] == "epoch_end" and seen[-1]["epoch"] >= 2

    stream.until(logged)
    on_disk = list(read_events(run.run_dir / "events.jsonl"))
    assert seen == on_disk[: len(seen)]  # in order, none lost, none twice
    later = stream.until(lambda name, data: name == "log" and [e for e in data if e["event"] == "epoch_end"])
    assert later[0]["epoch"] > seen[-1]["epoch"]  # the stream goes on as epochs end
    run_doc = stream.until(lambda name, data: data if name == "run" else None)
    assert run_doc["status"]["alive"] is True and run_doc["status"]["run"]["state"] == "running"
    assert orjson.loads(run_doc["control_file"]) == run.document()
    stream.close()


def test_an_order_goes_the_way_runner_nudge_goes_and_the_run_applies_it(dashboard, live):
    run = live()
    board = dashboard("--out", run.run_dir.parent)
    name = run.run_dir.name
    status, answer = board.order(name, {"settings": {"lr": 0.005}})
    assert status == 200, answer
    written = (run.run_dir / "control.json").read_bytes()
    assert answer["sha256"] == hashlib.sha256(written).hexdigest()  # what the page waits on
    assert orjson.loads(written)["lr"] == 0.005
    nudge = run.until(lambda: run.find("nudge", source="control"))[0]
    assert nudge["changes"]["lr"] == {"old": 0.01, "new": 0.005}
    recent = wait_for(
        lambda: [
            r
            for r in board.get(f"/api/runs/{name}")[1]["status"]["control"]["recent"]
            if r["sha256"] == answer["sha256"] and r["outcome"] == "applied"
        ],
        what="the run's acknowledgement",
    )
    assert recent[0]["read"] > answer["reads_before"]
    assert recent[0]["orders"][0]["step"] == nudge["step"]

    status, answer = board.order(name, {"trial": 0, "action": {"do": "rollback", "to": "best"}})
    assert status == 200, answer
    rollback = run.until(lambda: run.find("rollback", source="control"))[0]
    assert rollback["trial"] == 0 and rollback["snapshot"] == "best"


@pytest.mark.parametrize(
    ("order", "says"),
    [
        ({"settings": {"momentum": 1.5}}, "momentum"),  # the run's own bounds
        ({"settings": {"no_such": 1.0}}, "no_such"),
        ({"trial": 7, "settings": {"lr": 0.1}}, "trial 7 is not running"),
    ],
)
def test_an_order_the_run_would_refuse_is_not_written(dashboard, live, order, says):
    run = live()
    before = run.control.read_bytes()
    board = dashboard(run.run_dir)
    status, answer = board.order(run.run_dir.name, order)
    assert status == 409 and says in answer["error"]
    assert run.control.read_bytes() == before


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"lr=0.1", "not JSON"),
        ({"settings": {"lr": "fast"}}, "a number"),
        ({"settings": {"lr": True}}, "a number"),
        ({"action": {"do": "explode"}}, "action must be"),
        ({"trial": "t-1", "settings": {"lr": 0.1}}, "trial"),
        ({}, "nothing to change"),
        ({"settings": {"lr": 0.1}, "extra": 1}, "an order is"),
    ],
)
def test_a_malformed_order_gets_a_message_and_writes_nothing(dashboard, live, body, says):
    run = live()
    before = run.control.read_bytes()
    board = dashboard(run.run_dir)
    status, answer = board.order(run.run_dir.name, body)
    assert status == 400 and says in answer["error"], answer
    assert run.control.read_bytes() == before


def test_a_finished_run_is_read_only(dashboard, finished):
    board = dashboard(finished)
    before = (finished / "control.json").read_bytes()
    status, answer = board.order(finished.name, {"settings": {"lr": 0.1}})
    assert status == 409 and "no runner process is running" in answer["error"]
    assert (finished / "control.json").read_bytes() == before
    status, doc = board.get(f"/api/runs/{finished.name}")
    assert status == 200 and doc["status"]["alive"] is False and doc["results"]["best"] is not None


def test_without_the_token_or_from_another_page_nothing_is_read_or_changed(dashboard, live):
    run = live()
    board = dashboard(run.run_dir)
    name = run.run_dir.name
    before = run.control.read_bytes()
    order = {"settings": {"lr": 0.5}}
    refused = [
        board.get("/api/runs", token=False),
        board.get(f"/api/runs/{name}", token=False),
        board.get(f"/api/runs/{name}/stream?token=wrong", token=False),
        board.get(f"/api/runs/{name}", token=False, headers={"X-Runner-Token": board.token[:-1]}),
        board.order(name, order, token=False),
        board.order(name, order, headers={"X-Runner-Token": "x" * len(board.token)}),
        board.request("POST", f"/api/runs/{name}/orders?token={board.token}", body=order, token=False),
        board.order(name, order, headers={"Origin": "http://evil.example"}),
        board.order(name, order, headers={"Origin": "null"}),
        board.order(name, order, headers={"Sec-Fetch-Site": "cross-site"}),
        board.order(name, order, headers={"Content-Type": "text/plain"}),  # what a form on another page can send
    ]
    for status, answer in refused:
        assert status == 403 and answer["error"], answer
    status, _ = board.order(name, order, headers={"Host": f"evil.example:{board.port}"})  # DNS rebinding
    assert status == 400
    status, _ = board.get("/api/runs", headers={"Host": f"evil.example:{board.port}"})
    assert status == 400
    assert run.control.read_bytes() == before
    assert not run.find("nudge", source="control")
    status, answer = board.order(name, order, headers={"Origin": board.base})  # the page's own origin
    assert status == 200, answer


def test_no_file_outside_the_served_runs_can_be_read(dashboard, finished, tmp_path):
    (tmp_path / "secret.txt").write_text("SECRET")
    (finished.parent / "secret.txt").write_text("SECRET")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "events.jsonl").write_text("{}\n")
    (finished.parent / "linked").symlink_to(tmp_path / "other")  # a link planted among the runs
    board = dashboard("--out", finished.parent)
    paths = [
        "/api/runs/..",
        "/api/runs/%2e%2e",
        "/api/runs/..%2Fsecret.txt",
        "/api/runs/..%2F..%2Fsecret.txt",
        "/api/runs/secret.txt",
        "/api/runs/linked",
        "/api/runs/linked/stream",
        f"/api/runs/{finished.name}%2F..%2Fsecret.txt",
        f"/api/runs/{finished.name}/..%2F..%2Fsecret.txt",
        "/static/../../secret.txt",
        "/static/..%2F..%2F..%2Fsecret.txt",
        "/static/%2e%2e/%2e%2e/secret.txt",
        "/static/" + "../" * 12 + "etc/passwd",
        "/runs/..%2F..%2Fsecret.txt",
    ]
    for path in paths:
        status, body = board.get(path)
        text = body if isinstance(body, bytes) else orjson.dumps(body)
        assert b"SECRET" not in text and b"root:" not in text, path
        assert status in (404, 400) or (status == 200 and b"<!doctype html>" in text), (path, status)
    names = {row["name"] for row in board.get("/api/runs")[1]}
    assert names == {finished.name}  # the linked folder is not a served run


def test_a_run_that_resumes_later_comes_back_to_life_on_the_stream(dashboard, tmp_path):
    run = LiveRun(tmp_path)
    try:
        run.process.send_signal(signal.SIGINT)
        run.process.wait(timeout=60)
        board = dashboard(run.run_dir)
        stream = board.stream(run.run_dir.name)
        doc = stream.until(lambda name, data: data if name == "run" else None)
        assert doc["status"]["alive"] is False and doc["status"]["run"]["state"] == "interrupted"
        resumed = subprocess.Popen(
            [sys.executable, "-m", "runner", "resume", run.run_dir, "--plain"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            stream.until(lambda name, data: name == "log" and any(e["event"] == "resume" for e in data))
            stream.until(lambda name, data: name == "run" and data["status"]["alive"])
            status, answer = board.order(run.run_dir.name, {"settings": {"lr": 0.004}})
            assert status == 200, answer
        finally:
            resumed.send_signal(signal.SIGINT)
            resumed.wait(timeout=60)
        stream.close()
    finally:
        run.kill()


def test_listening_beyond_this_machine_warns_and_still_needs_the_token(live):
    run = live()
    board = Dashboard(run.run_dir, "--host", "0.0.0.0")
    try:
        board.host = "127.0.0.1"
        assert board.get("/api/runs", token=False)[0] == 403
        assert board.get("/api/runs")[0] == 200
        name, order = run.run_dir.name, {"settings": {"lr": 0.02}}
        assert board.order(name, order, headers={"Origin": "http://evil.example"})[0] == 403
        own = f"http://127.0.0.1:{board.port}"  # the page's own origin, as the browser sends it
        status, answer = board.order(name, order, headers={"Origin": own, "Host": f"127.0.0.1:{board.port}"})
        assert status == 200, answer
    finally:
        board.close()
    assert "warning: listening on 0.0.0.0" in board.process.stderr.read()


def test_a_taken_port_or_a_folder_that_is_no_run_is_a_clear_error(tmp_path, finished):
    board = Dashboard(finished)
    try:
        taken = subprocess.run(
            [sys.executable, "-m", "runner", "dashboard", finished, "--port", str(board.port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert taken.returncode == 2 and "--port 0 picks a free one" in taken.stderr
        assert "Traceback" not in taken.stderr
    finally:
        board.close()
    empty = subprocess.run(
        [sys.executable, "-m", "runner", "dashboard", tmp_path, "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert empty.returncode == 2 and "is not a run directory" in empty.stderr


def test_the_log_is_streamed_line_by_line_whatever_a_line_holds(tmp_path, monkeypatch):
    from runner.dashboard import runs
    from runner.dashboard.app import _event

    monkeypatch.setattr(runs, "LINE_LIMIT", 64)
    log = tmp_path / "events.jsonl"
    log.write_bytes(
        b'{"event": "a",\r "n": 1}\r\n' + b'{"event": "long", "x": "' + b"y" * 200 + b'"}\n{"event": "b"}\n{"ev'
    )
    tail = runs.LogTail(log)
    lines = [_event(line) for line in tail.new_lines()]
    assert lines == [b'{"event":"a","n":1}', b'{"event":"b"}']  # no carriage return; the long line skipped
    assert list(tail.new_lines()) == [] and not tail.reset  # the last line is still being written
    with log.open("ab") as f:
        f.write(b'ent": "c"}\n' + b"z" * 100)  # its end; an over-long line without an end yet
    assert list(tail.new_lines()) == [b'{"event": "c"}\n']
    with log.open("ab") as f:
        f.write(b"\nnot json\n[1]\n")
    assert [_event(line) for line in tail.new_lines()] == [None, None]
    log.unlink()
    assert list(tail.new_lines()) == []
    log.write_bytes(b'{"event": "new"}\n')  # a log made anew under the same name
    assert list(tail.new_lines()) == [b'{"event": "new"}\n'] and tail.reset
