"""From the control file to the running trials: read, validate, and deliver each order once.

``ControlInbox`` owns ``control.json`` for the length of a run. It writes the file when a
run starts, watches it (``runner.control.watch``), and on every save reads it on the watcher's
thread: a version that cannot be applied is reported (a ``control_error`` event, the
terminal, ``status.json``) and changes nothing; a valid one is compared with the last valid
one (``runner.control.file.orders``) and each order goes to the mailbox of the trial it names,
recorded first in a ``control`` event. Trials take their mail at the next step boundary
(``TrialLoop``) and every event they write while carrying out an order names it, which is
how ``status.json`` acknowledges it.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from runner.control.file import Action, ControlDocument, ControlError, ControlSchema, Order, orders, parse
from runner.control.refusal import settings
from runner.control.watch import FileWatcher, signature
from runner.decisions import Decision, Note, Nudge, Rollback, Stop, decision_from_json, decision_to_json
from runner.inputs import CONTROL_FILE, InputError, read_bytes
from runner.records.events import EventLog
from runner.records.files import atomic_write

# Events that record orders the run gives its trials itself, by the source those orders carry.
OWN_ORDERS = {"trial_continue": "strategy", "resume": "resume"}


def describe(decision: Decision) -> str:
    """An order the run gives itself, in a few words, as a ``Delivery``'s ``what``: ``lr=0.01``,
    ``rollback to epoch 4 of t005``, ``prune``, ``note rung``."""
    if isinstance(decision, Nudge):
        return settings(decision.changes)
    if isinstance(decision, Rollback):
        to = f"epoch {decision.to}" if isinstance(decision.to, int) else decision.to
        return f"rollback to {to}" + ("" if decision.trial is None else f" of t{decision.trial:03d}")
    if isinstance(decision, Note):
        return f"note {decision.kind}"
    return type(decision).__name__.lower()


@dataclass(frozen=True)
class Delivery:
    """One order for one trial. ``order`` ("5.1": read 5, second delivery) names it in events.
    ``source`` says who gave it: ``control`` (the control file), or a part of the run that
    sends orders the same way (``pruner``), which is the ``source`` of the events it causes."""

    order: str
    decision: Decision
    what: str
    source: str = "control"


def logged_delivery(event: dict, entry: dict) -> Delivery:
    """The order that ``entry`` of a ``control``, ``trial_continue`` or ``resume`` event
    records, as it was delivered (a resumed run delivers it again; ``runner replay`` too)."""
    source = OWN_ORDERS.get(event["event"], "control")
    return Delivery(entry["order"], decision_from_json(entry["decision"]), entry["what"], source=source)


class Mailbox:
    """A trial's incoming orders. The loop reads ``items`` (a deque) once per step."""

    def __init__(self) -> None:
        self.items: deque[Delivery] = deque()
        self._arrived = threading.Event()

    def put(self, delivery: Delivery) -> None:
        """Called on the watcher's thread (or by ``open``): the trial finds it at its next step."""
        self.items.append(delivery)
        self._arrived.set()

    def wait(self, timeout: float) -> None:
        """Block until mail arrives or ``timeout`` passes (a paused trial waiting for resume).
        Clearing after the wait can swallow a signal for mail already queued; harmless, as the
        caller looks at ``items`` before every wait."""
        self._arrived.wait(timeout)
        self._arrived.clear()


class ControlInbox:
    """The control file of one run, and the mailboxes of its running trials.

    Called by the driver (``start``, ``take_run_stop``, ``close``), by each trial's loop
    on the training thread (``open`` when it starts, ``close_mailbox`` when it ends) and,
    for every save, by the watcher thread (``check``).
    """

    def __init__(
        self,
        path: Path,
        schema: ControlSchema,
        log: EventLog,
        *,
        poll: bool = False,
        notify: Callable[[str], None] = lambda message: None,
        on_idle: Callable[[], None] = lambda: None,
    ):
        self.path, self.schema, self.log, self.notify = path, schema, log, notify
        self.watcher = FileWatcher(path, self.check, poll=poll, on_idle=on_idle)
        self.baseline: ControlDocument | None = None  # the last valid version
        self.used: dict[int | str, Action | None] = {}  # every action id applied in this run
        self.reads = 0
        self._last_read: bytes | None = None
        self._last_problem: tuple[str, tuple | None] | None = None  # (message, file signature)
        self._mailboxes: dict[int, Mailbox] = {}
        self._waiting: list[Delivery] = []  # orders for every trial, read while none was running
        self._held: dict[int, list[Delivery]] = {}  # orders a resumed trial had not carried out
        self._suspended: dict[int, list[Delivery]] = {}  # suspended trial -> orders waiting for its next run
        self._run_stop: Delivery | None = None
        self._lock = threading.Lock()

    @property
    def mode(self) -> str:
        return self.watcher.mode

    def start(self, initial: bytes, *, fresh: bool) -> None:
        """Called once by the driver before the first trial. Writes ``initial`` for a new run
        (``fresh``); a resumed run keeps the file that is there (writing ``initial`` only if
        it is gone): its settings are the starting point and are not applied again. Then
        watches it."""
        if fresh or not self.path.exists():
            atomic_write(self.path, initial, durable=False)  # rebuilt by a resume if a crash loses it
        try:
            data = self._read()
            self.baseline = parse(data, self.schema)
            self._last_read = data
            self.used.update(self.baseline.actions)
        except ControlError:
            self.check(True)  # say what is wrong with it now; its first valid version is the starting point
        self.watcher.start()

    def resume(self, events: list[dict], continuing: set[int], suspended: set[int] = frozenset()) -> None:
        """Called by the driver of a resumed run, before ``start``, with the events it keeps:
        read numbers and action ids go on from them, and orders that were read but whose
        effect was lost with the work after the last snapshot are carried out again when
        their trial continues (or, for every trial, by the next one to run). So are those a
        strategy gave a suspended trial it continued (``trial_continue``) and those of an
        earlier ``runner resume --set`` (``resume``). The ``suspended`` trials (among the
        continuing ones) wait as they did: their orders come after their strategy's."""
        for trial in suspended:
            self._suspended.setdefault(trial, [])
        settled = {e["order"] for e in events if "order" in e}
        for event in events:
            if event["event"] in OWN_ORDERS:  # a strategy's (trial_continue), runner resume --set's (resume)
                for entry in event.get("orders", []):
                    trial = entry.get("trial", event.get("trial"))
                    if entry["order"] not in settled and trial in continuing:
                        self._owe(trial, logged_delivery(event, entry))
            if event["event"] not in ("control", "control_error") or event.get("read") is None:
                continue
            self.reads = max(self.reads, event["read"])
            for entry in event.get("orders", []):
                if entry["action"] is not None:
                    self.used.setdefault(entry["action"], None)
                if entry["order"] in settled or "decision" not in entry:
                    continue
                delivery = logged_delivery(event, entry)
                if entry["trial"] in continuing:
                    self._owe(entry["trial"], delivery)
                elif entry["trial"] is None:
                    self._hold_for_any_trial(delivery)

    def owe(self, trial: int, delivery: Delivery) -> None:
        """An order a resumed run owes a trial (a pruner's verdict, ``runner resume --set``):
        it waits for the trial's next run, after what its strategy has it do first if it is
        suspended. Called by the driver before the first trial runs."""
        with self._lock:
            self._owe(trial, delivery)

    def _owe(self, trial: int, delivery: Delivery) -> None:
        if trial in self._suspended and delivery.source != "strategy":
            self._suspended[trial].append(delivery)
        else:
            self._held.setdefault(trial, []).append(delivery)

    def close(self) -> None:
        """Called once by the driver when the run ends: stop watching."""
        self.watcher.stop()

    # -- trials ----------------------------------------------------------------------------

    def open(self, trial: int, mailbox: Mailbox | None = None) -> Mailbox:
        """A trial starts (or resumes): its mailbox, holding any order read while no trial
        ran, or left undone when the run stopped. An executor that runs the trial in another
        process passes a ``mailbox`` of its own (anything with ``put``) that forwards there."""
        mailbox = mailbox if mailbox is not None else Mailbox()
        with self._lock:
            self._mailboxes[trial] = mailbox
            for delivery in self._held.pop(trial, []) + self._suspended.pop(trial, []) + self._waiting:
                mailbox.put(delivery)
            self._waiting = []
        return mailbox

    def send(self, trial: int, delivery: Delivery) -> bool:
        """An order from the driver itself (a pruner's verdict) for a running trial: into its
        mailbox, as the control file's orders go. False if the trial is not running. Called by
        an observer of the event log, under the log's lock, so it takes no lock of the inbox's
        (the watcher's thread holds that one while it writes to the log)."""
        mailbox = self._mailboxes.get(trial)
        if mailbox is None:
            return False
        mailbox.put(delivery)
        return True

    def hold(self, trial: int, delivery: Delivery) -> None:
        """An order a resumed run owes a trial it continues: it waits in the trial's mailbox
        when the trial opens it. Called by the driver before the first trial runs."""
        with self._lock:
            self._held.setdefault(trial, []).append(delivery)

    def close_mailbox(self, trial: int, *, suspended: bool = False, carried: list[Delivery] = ()) -> None:
        """A trial ended: orders read from now on cannot reach it (and are reported so). A
        ``suspended`` trial keeps the orders it had not carried out (those in its mailbox, or
        ``carried`` back from its worker), and those read while it waits, for its next run,
        after what its strategy has it do first."""
        with self._lock:
            mailbox = self._mailboxes.pop(trial, None)
            left = list(carried)
            if isinstance(mailbox, Mailbox):  # the trial's own, in this process: drained here, under the lock
                left += [mailbox.items.popleft() for _ in range(len(mailbox.items))]
            if suspended:
                self._suspended.setdefault(trial, []).extend(left)
                return
            for delivery in left:
                self._lost(trial, delivery)

    def undelivered(self, trial: int, delivery: Delivery) -> None:
        """An order that reached a trial's worker after the trial's run ended there: kept for
        its next run if the trial is suspended (or given to that run, if it has begun), else
        reported lost."""
        with self._lock:
            if trial in self._mailboxes:
                self._mailboxes[trial].put(delivery)
            elif trial in self._suspended:
                self._suspended[trial].append(delivery)
            else:
                self._lost(trial, delivery)

    def forget(self, trial: int) -> None:
        """A suspended trial ends without going on: the orders that waited for it are reported lost."""
        with self._lock:
            for delivery in self._suspended.pop(trial, []):
                self._lost(trial, delivery)

    def _lost(self, trial: int, delivery: Delivery) -> None:
        """A person's order that its trial ended before carrying out (a pruner's verdict on
        a trial that ended anyway needs no word)."""
        if delivery.source == "control":
            message = f"{delivery.what}: trial {trial} ended before the order reached it"
            self.log.emit("control_error", order=delivery.order, message=message)
            self.notify(f"[red]control.json: {escape(message)}[/]")

    def take_run_stop(self) -> Delivery | None:
        """A stop for the whole run read while no trial was running (the driver ends the run)."""
        with self._lock:
            stop, self._run_stop = self._run_stop, None
        return stop

    def _hold_for_any_trial(self, delivery: Delivery) -> None:
        if isinstance(delivery.decision, Stop) and delivery.decision.experiment:
            self._run_stop = delivery
        else:
            self._waiting.append(delivery)

    # -- reading the file (the watcher's thread) --------------------------------------------

    def check(self, confirm: bool) -> bool:
        """Read the file after a save. Returns True when it looks half written (or is gone
        for a moment, as when an editor deletes and rewrites it) and the watcher should ask
        again (``confirm``) once saves have settled."""
        data = None
        try:
            data = self._read()
            if data == self._last_read:
                return False
            document = parse(data, self.schema)
            # With no valid version before (a resumed run's file was broken), its settings are the
            # starting point; its new actions still apply.
            previous = self.baseline or ControlDocument(document.settings, document.trials)
            found = orders(previous, document, self.used)
            with self._lock:
                self.reads += 1
                self._last_read, self._last_problem = data, None
                self.baseline = document
                self.used.update(document.actions)
                self._deliver(found, hashlib.sha256(data).hexdigest())
        except ControlError as err:
            if err.incomplete and not confirm:
                return True
            problem = (str(err), signature(self.path))
            if data is not None or problem != self._last_problem:  # new contents, or a new reason it has none
                self._last_problem, self._last_read = problem, data
                self.reads += 1
                self.log.emit(
                    "control_error",
                    read=self.reads,
                    message=problem[0],
                    sha256=hashlib.sha256(data).hexdigest() if data is not None else None,
                )
                self.notify(f"[red]{escape(problem[0])}[/] (nothing in this version was applied)")
        return False

    def _read(self) -> bytes:
        """The file's bytes, read by ``inputs.read_bytes`` (regular files only, never more
        than a control file's 1 MiB + 1 bytes, never blocks on a FIFO); a ControlError says what keeps
        it from being read, in words for the person editing it."""
        try:
            return read_bytes(self.path, CONTROL_FILE)
        except InputError as err:
            if err.kind == "missing":
                raise ControlError(
                    "", "the file is missing; write it again to change settings", incomplete=True
                ) from None
            if err.kind == "folder":
                raise ControlError("", "is a folder, not a file; remove the folder and write the file again") from None
            raise ControlError("", err.problem) from None

    def _deliver(self, found: list[Order], sha: str) -> None:
        """Record the read (a ``control`` event), then put each order in the mailbox of its
        trial. An order for every trial goes to each running one (or, if none is running, to
        the next that starts); one for a trial that is not running fails with a message."""
        deliveries: list[tuple[Delivery, int | None, Order]] = []
        for order in found:
            targets = [order.trial] if order.trial is not None else sorted(self._mailboxes) or [None]
            for trial in targets:
                deliveries.append(
                    (Delivery(f"{self.reads}.{len(deliveries)}", order.decision, order.what), trial, order)
                )
        self.log.emit(
            "control",
            read=self.reads,
            sha256=sha,
            orders=[
                {
                    "order": d.order,
                    "trial": trial,
                    "what": d.what,
                    "action": order.action,
                    "decision": decision_to_json(order.decision),
                }
                for d, trial, order in deliveries
            ],
        )
        for delivery, trial, _order in deliveries:
            if trial in self._mailboxes:
                self._mailboxes[trial].put(delivery)  # the trial says when it is applied
            elif trial in self._suspended:
                self._suspended[trial].append(delivery)
                self.notify(f"control.json: {escape(delivery.what)} for t{trial:03d} when it goes on (suspended)")
            elif trial is not None:
                running = ", ".join(f"t{t:03d}" for t in sorted(self._mailboxes)) or "none"
                message = f"{delivery.what}: trial {trial} is not running (running: {running})"
                self.log.emit("control_error", read=self.reads, order=delivery.order, message=message)
                self.notify(f"[red]control.json: {escape(message)}[/]")
            else:
                self._hold_for_any_trial(delivery)
                self.notify(f"control.json: {escape(delivery.what)} for the next trial that starts")
