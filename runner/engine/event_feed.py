"""The run's events, passed on to plugins: each event the driver writes to ``events.jsonl``
goes to every ``runner_event`` hook, in the log's order, on a thread of its own (a slow
logger never holds up training); a resumed run's kept events go first, as replayed.
``run_experiment`` opens one feed per run and closes it last: closing waits for every event
still to pass on.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

from rich.markup import escape

from runner.engine.plugin_manager import Plugins, each_plugin


class EventFeed:
    """Feeds ``runner_event`` of every plugin that implements it, but for a plugin that
    registered a logger the experiment does not list (no thread if none is left). A plugin
    whose hook raises is told no more events this run, and ``notify`` says why."""

    def __init__(
        self, plugins: Plugins, experiment: Any, notify: Callable[[str], None], past: Iterable[dict[str, Any]] = ()
    ):
        self.experiment, self.notify = experiment, notify
        unlisted = {
            entry.plugin
            for entry in plugins.registry.entries()
            if entry.kind == "logger" and experiment.logger(entry.name) is None
        }
        self.callers = [
            (name, call) for name, call in each_plugin(plugins.manager, "runner_event") if name not in unlisted
        ]
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = None
        if self.callers:
            for event in past:  # what a resumed run keeps of its log
                self._events.put((event, True))
            self._thread = threading.Thread(target=self._work, name="runner-event-feed", daemon=True)
            self._thread.start()

    def observe(self, event: dict[str, Any]) -> None:
        """The event log's observer: called under its lock, so it only queues the event."""
        if self._thread is not None:
            self._events.put((event, False))

    def close(self) -> None:
        """Pass on every event queued, then stop the thread. Called once, when the run ends."""
        if self._thread is not None:
            self._events.put(None)
            self._thread.join()
            self._thread = None

    def __enter__(self) -> EventFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _work(self) -> None:
        """The feed's thread: each event to each plugin still fed, until ``close``."""
        while (item := self._events.get()) is not None:
            event, replayed = item
            for name, call in list(self.callers):
                try:
                    call(experiment=self.experiment, event=event, replayed=replayed)
                except Exception as err:  # one logger's failure does not end the run, nor other loggers
                    self.callers.remove((name, call))
                    self.notify(
                        f"[red]plugin {escape(name)}: runner_event failed on event {escape(event['event'])} "
                        f"({escape(type(err).__name__)}: {escape(str(err))}); it gets no more events this run[/]"
                    )
