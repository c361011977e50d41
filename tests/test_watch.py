"""Watching a file: every way of saving it is seen, and polling takes over where inotify is missing."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import threading
import time

import pytest

from runner.control.watch import FileWatcher


def watch(path, **options) -> tuple[FileWatcher, list[bytes]]:
    seen: list[bytes] = []

    def check(confirm: bool) -> bool:
        seen.append(path.read_bytes() if path.is_file() else b"<none>")
        return False

    return FileWatcher(path, check, **options).start(), seen


def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def settled(seen: list, quiet: float = 0.5) -> int:
    """How many checks there were once none came for ``quiet`` seconds."""
    while True:
        count = len(seen)
        time.sleep(quiet)
        if len(seen) == count:
            return count


@pytest.mark.parametrize("poll", [False, True], ids=["inotify", "polling"])
def test_in_place_writes_renames_and_sed_are_each_seen(tmp_path, poll):
    path = tmp_path / "control.json"
    path.write_text("{}")
    watcher, seen = watch(path, poll=poll)
    try:
        path.write_text('{"a": 1}')
        until(lambda: b'{"a": 1}' in seen)
        (tmp_path / "new").write_text('{"a": 2}')
        os.replace(tmp_path / "new", path)
        until(lambda: b'{"a": 2}' in seen)
        subprocess.run(["sed", "-i", "s/2/3/", str(path)], check=True)
        until(lambda: b'{"a": 3}' in seen)
        checks = settled(seen)  # a save may be checked more than once (the inbox skips bytes it has read)
        with open(tmp_path / "events.jsonl", "a") as log:  # another file in the folder: no check
            log.write("x\n" * 100)
        time.sleep(0.3)
        assert len(seen) == checks
    finally:
        watcher.stop()


def test_polling_takes_over_when_inotify_cannot_be_had_and_nothing_is_left_running(tmp_path, monkeypatch):
    import watchdog.observers.inotify_c as inotify_c

    def no_more_instances() -> int:
        ctypes.set_errno(errno.EMFILE)
        return -1

    monkeypatch.setattr(inotify_c, "inotify_init", no_more_instances)
    path = tmp_path / "control.json"
    path.write_text("{}")
    threads = set(threading.enumerate())
    watcher, seen = watch(path)
    assert watcher.mode == "polling"
    path.write_text('{"a": 1}')
    until(lambda: b'{"a": 1}' in seen)
    watcher.stop()
    assert set(threading.enumerate()) <= threads
