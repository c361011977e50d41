"""Watching one file for saves, whichever way an editor saves it.

The watch is on the file's folder (watchdog), not on the file: editors that write a new
file and rename it over the old one (vim, VS Code, ``sed -i``) replace the file's inode,
which a watch on the file itself would lose. The kernel is asked only for the events that
end a save (a file closed after writing, renamed, created, deleted), so a folder whose
other files are appended to all the time (the event log) does not wake the watcher.

``FileWatcher`` runs its own thread. After a save it calls ``check(confirm=False)``; when
``check`` answers True (the file looked half written) it waits ``settle`` seconds and, if
nothing changed meanwhile, calls ``check(confirm=True)`` to have the error reported. Every
``idle`` seconds it calls ``on_idle()`` and compares the file's ``stat`` with the last one
seen, so a save is never missed even where file events are not delivered.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

SAVE_EVENTS = [
    FileClosedEvent,
    FileMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]
POLL_EVENTS = SAVE_EVENTS + [FileModifiedEvent]  # polling sees changes, not closes


def signature(path: Path) -> tuple | None:
    """What changes when a file is saved: inode, size, modification time (None: absent)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)


class FileWatcher:
    """Calls ``check`` on a thread of its own each time the file at ``path`` is saved.

    ``quiet``: seconds without further events before a save that did not end with a close
    or a rename is read (a writer still writing). ``poll``: use watchdog's polling observer
    (every ``poll_interval`` seconds) for file systems without inotify; its changes come a
    poll late already, so they are read at once (a half-written file still gets ``settle``).
    """

    def __init__(
        self,
        path: Path,
        check: Callable[[bool], bool],
        *,
        on_idle: Callable[[], None] = lambda: None,
        poll: bool = False,
        poll_interval: float = 0.1,
        quiet: float = 0.02,
        settle: float = 0.25,
        idle: float = 0.1,
    ):
        self.path, self.check, self.on_idle = path, check, on_idle
        self.poll_interval, self.settle, self.idle = poll_interval, settle, idle
        self.quiet = 0.0 if poll else quiet
        self.mode = "polling" if poll else "inotify"  # what ``start`` ends up using
        self._kick = threading.Event()
        self._complete = False  # the last event ended a save: read at once
        self._stopped = False
        self._seen = signature(path)
        self.observer: BaseObserver | None = None
        self._thread = threading.Thread(target=self._run, name="runner-control-watcher", daemon=True)

    def start(self) -> FileWatcher:
        """Start watching: inotify, or polling if asked for or if inotify cannot be had here
        (out of inotify instances or watches, or a file system without it)."""
        if self.mode == "inotify":
            try:
                self.observer = self._observe(Observer(), SAVE_EVENTS)
            except OSError:
                self.mode = "polling"
                self.quiet = 0.0
        if self.mode == "polling":
            self.observer = self._observe(PollingObserver(timeout=self.poll_interval), POLL_EVENTS)
        self._thread.start()
        return self

    def _observe(self, observer: BaseObserver, events: list) -> BaseObserver:
        try:
            observer.schedule(_Handler(self), str(self.path.parent), event_filter=events)
            observer.start()
        except OSError:
            observer.stop()  # leave no thread or descriptor behind
            if observer.is_alive():
                observer.join()
            raise
        return observer

    def stop(self) -> None:
        """Stop watching; called once when the run ends. Waits for a check in progress."""
        self._stopped = True
        self._kick.set()
        if self.observer is not None:
            self.observer.stop()
            self.observer.join()
        if self._thread.is_alive():
            self._thread.join()

    def kick(self, complete: bool = False) -> None:
        """Called by the observer thread for every event about the watched file."""
        self._complete = self._complete or complete
        self._kick.set()

    def _run(self) -> None:
        while not self._stopped:
            try:
                self._wait_and_check()
            except Exception:  # a bug in a callback must not end the watch: say so and keep watching
                traceback.print_exc()
                time.sleep(self.idle)

    def _wait_and_check(self) -> None:
        """Wait for a save (or ``idle`` seconds), then have the file checked."""
        if not self._kick.wait(self.idle):
            self.on_idle()
            if signature(self.path) == self._seen:
                return
        if self._stopped:
            return
        self._wait_until_quiet()
        self._seen = signature(self.path)
        if self.check(False) and not self._changes_within(self.settle):
            self.check(True)

    def _wait_until_quiet(self) -> None:
        while True:
            self._kick.clear()
            if self._complete:
                self._complete = False
                return
            if not self._kick.wait(self.quiet) or self._stopped:
                return

    def _changes_within(self, seconds: float) -> bool:
        return self._kick.wait(seconds) or signature(self.path) != self._seen


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FileWatcher):
        self.watcher = watcher
        self.target = os.fsdecode(os.path.abspath(watcher.path))

    def on_any_event(self, event: FileSystemEvent) -> None:
        source = os.path.abspath(os.fsdecode(event.src_path))
        dest = os.path.abspath(os.fsdecode(event.dest_path)) if event.dest_path else None
        if self.target not in (source, dest):
            return
        complete = isinstance(event, FileClosedEvent) or (isinstance(event, FileMovedEvent) and dest == self.target)
        self.watcher.kick(complete)
