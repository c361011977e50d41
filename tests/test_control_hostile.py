"""Hostile contents and write patterns thrown at a live control file.

What a person (or a broken script) may leave in ``control.json`` while a run trains: cut-off
JSON, binary, text that is not UTF-8, JSON of the wrong shape, values of the wrong type or
out of bounds, literals JSON does not have, unknown keys, trial ids and actions that make
no sense, a file too big, an empty one; saved in place, by rename, in two halves, or not a
file at all (deleted, a folder, a FIFO, a link to /dev/zero, a link loop). For every one
the watcher must stay up, report the version (a ``control_error`` event naming the file)
and apply nothing; a valid save afterwards must still be applied.

Nothing here measures speed: waits poll the event log, with a generous limit that only
keeps a broken watcher from hanging the suite.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, assume, event, example, given, note, settings
from hypothesis import strategies as st

from runner.control.file import (
    ACTIONS,
    FILE_NAME,
    MAX_BYTES,
    ROLLBACK_TARGETS,
    Action,
    ControlDocument,
    ControlError,
    ControlSchema,
    initial_document,
    orders,
    parse,
    render,
)
from runner.control.inbox import ControlInbox
from runner.decisions import Nudge
from runner.plugins.backends.numpy_mlp.backend import Train
from runner.records.events import EventLog, read_events
from runner.records.files import atomic_write
from runner.records.status import StatusBoard

LIVE = ("lr", "momentum", "beta2")
SCHEMA = ControlSchema(LIVE, Train)
START = {"lr": 0.01, "momentum": 0.9, "beta2": None}  # beta2 null: "each trial's own value" is valid
INITIAL = initial_document(LIVE, START)
BASELINE = parse(INITIAL, SCHEMA)
GOOD = orjson.loads(INITIAL)  # the initial document as a dict, to derive variants from
KNOWN_KEYS = {"help", "trials", "actions", *LIVE}
WAIT = 15.0  # seconds; only a guard against a hung watcher, never a speed requirement


def _is_bad(data: bytes) -> bool:
    try:
        parse(data, SCHEMA)
    except ControlError:
        return True
    return False


# -- hostile contents -------------------------------------------------------------------------

FINITE = dict(allow_nan=False, allow_infinity=False)
ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what orjson can write
#: Number literals JSON does not have, or that orjson refuses (1e400 parses to infinity).
RAW_LITERALS = [
    b"NaN",
    b"-NaN",
    b"nan",
    b"Infinity",
    b"-Infinity",
    b"inf",
    b"1e400",
    b"-1e400",
    b"1" + b"0" * 400,
    b"01",
    b"+1",
    b".5",
    b"1.",
    b"1e",
    b"0x10",
    b"1_000",
    b"undefined",
    b"'0.01'",
    b"True",
    b"None",
]
PLACEHOLDER = "__hostile_raw_literal__"

wrong_type = st.one_of(
    st.text(max_size=12),  # "0.01" is a string, not a number
    st.booleans(),
    st.lists(st.floats(**FINITE), max_size=3),
    st.dictionaries(st.text(max_size=4), ints, max_size=2),
)
bad_lr = st.one_of(wrong_type, st.floats(max_value=0, **FINITE), st.integers(max_value=0, min_value=-(2**63)))
bad_beta = st.one_of(  # momentum and beta2 live in [0, 1)
    wrong_type,
    st.floats(min_value=1, **FINITE),
    st.floats(max_value=0, exclude_max=True, **FINITE),
    st.integers(min_value=1, max_value=2**64 - 1),
    st.integers(min_value=-(2**63), max_value=-1),
)


@st.composite
def bad_setting(draw) -> tuple[str, Any]:
    name = draw(st.sampled_from(LIVE))
    value = draw(bad_lr if name == "lr" else bad_beta)
    if draw(st.integers(0, 5)) == 0:
        value = PLACEHOLDER  # replaced by a raw literal once rendered
    return name, value


def valid_extras() -> st.SearchStrategy[dict]:
    """Valid changes that ride along with the bad part: none of them may be applied."""
    return st.fixed_dictionaries(
        {},
        optional={
            "lr": st.sampled_from([0.02, 0.5, 1e-6, None]),
            "momentum": st.sampled_from([0.0, 0.5, 0.99]),
            "trials": st.just({"0": {"lr": 0.03}, "t001": {"beta2": 0.9}}),
            "actions": st.just(
                [
                    {"id": 1, "do": "pause"},
                    {"id": "cut", "do": "set", "lr": 0.001, "trial": 0},
                    {"id": 2, "do": "rollback", "to": "best"},
                ]
            ),
        },
    )


@st.composite
def bad_document(draw) -> tuple[str, dict | list | Any]:
    """A JSON value that is well-formed but not a valid control document."""
    doc = {**GOOD, **draw(valid_extras())}
    kind = draw(
        st.sampled_from(
            [
                "setting",
                "trial_setting",
                "set_action",
                "unknown_key",
                "trial_key",
                "trials_shape",
                "trial_settings_shape",
                "trial_twice",
                "actions_shape",
                "action_shape",
                "action_no_id",
                "action_bad_id",
                "action_do",
                "action_to",
                "action_duplicate",
                "action_unknown_key",
                "action_set_empty",
                "action_trial",
                "action_reason",
                "unknown_trial_setting",
            ]
        )
    )
    actions = list(doc.get("actions", []))
    if kind == "setting":
        name, value = draw(bad_setting())
        doc[name] = value
    elif kind == "trial_setting":
        name, value = draw(bad_setting())
        doc["trials"] = {draw(st.sampled_from(["0", "3", "t003", "t0"])): {name: value}}
    elif kind == "set_action":
        name, value = draw(bad_setting())
        actions.append({"id": "bad-set", "do": "set", name: value})
    elif kind == "unknown_key":
        key = draw(
            st.one_of(
                st.sampled_from(
                    ["LR", "Lr", "lr ", "learning_rate", "epsilon", "batch_size", "trial", "action", "Help", ""]
                ),
                st.text(max_size=10),
            ).filter(lambda k: k not in KNOWN_KEYS)
        )
        doc[key] = draw(st.one_of(st.none(), st.floats(**FINITE), st.text(max_size=5)))
    elif kind == "trial_key":
        key = draw(
            st.one_of(
                st.sampled_from(
                    [
                        "x3",
                        "t",
                        "T3",
                        "-1",
                        "3.0",
                        " 3",
                        "3 ",
                        "t-3",
                        "1e3",
                        "0x3",
                        "t0000000001",
                        "1234567890",
                        "trial3",
                        "",
                    ]
                ),
                st.text(max_size=6),
            ).filter(lambda k: not re.fullmatch(r"t?\d{1,9}", k))
        )
        doc["trials"] = {key: {"lr": 0.02}}
    elif kind == "trials_shape":
        doc["trials"] = draw(st.one_of(st.lists(ints, max_size=2), ints, st.text(max_size=4), st.booleans(), st.none()))
    elif kind == "trial_settings_shape":
        doc["trials"] = {
            "2": draw(
                st.one_of(
                    st.lists(st.floats(**FINITE), max_size=2),
                    st.floats(**FINITE),
                    st.text(max_size=4),
                    st.booleans(),
                    st.none(),
                )
            )
        }
    elif kind == "trial_twice":
        doc["trials"] = {"3": {"lr": 0.02}, draw(st.sampled_from(["t003", "03", "t3", "000000003"])): {"lr": 0.03}}
    elif kind == "actions_shape":
        doc["actions"] = draw(
            st.one_of(
                st.dictionaries(st.text(max_size=3), ints, max_size=2),
                ints,
                st.text(max_size=4),
                st.booleans(),
                st.none(),
            )
        )
        actions = None
    elif kind == "action_shape":
        actions.append(draw(st.one_of(st.lists(ints, max_size=2), ints, st.text(max_size=4), st.booleans(), st.none())))
    elif kind == "action_no_id":
        actions.append({"do": draw(st.sampled_from(ACTIONS))})
    elif kind == "action_bad_id":
        actions.append(
            {
                "id": draw(
                    st.one_of(
                        st.booleans(),
                        st.none(),
                        st.floats(**FINITE),
                        st.just(""),
                        st.text(min_size=65, max_size=80),
                        st.lists(ints, max_size=1),
                        st.just({}),
                    )
                ),
                "do": "pause",
            }
        )
    elif kind == "action_do":
        item = {"id": "d"}
        if draw(st.booleans()):
            item["do"] = draw(
                st.one_of(
                    st.sampled_from(["Pause", "PAUSE", "halt", "restart", "", "set lr"]),
                    st.text(max_size=8),
                    st.none(),
                    ints,
                    st.lists(st.sampled_from(ACTIONS), max_size=1),
                ).filter(lambda d: d not in ACTIONS)
            )
        actions.append(item)
    elif kind == "action_to":
        to = draw(
            st.one_of(
                st.sampled_from(["worst", "first", "Best", "", "-1", "3"]),
                st.integers(min_value=-(2**63), max_value=-1),
                st.floats(**FINITE),
                st.booleans(),
                st.none(),
                st.lists(ints, max_size=1),
            ).filter(lambda t: t not in ROLLBACK_TARGETS)
        )
        actions.append({"id": "r", "do": "rollback", "to": to})
    elif kind == "action_duplicate":
        item = {
            "id": draw(st.sampled_from([7, "seven", -1])),
            "do": draw(st.sampled_from(["pause", "stop", "checkpoint"])),
        }
        second = dict(item) if draw(st.booleans()) else {**item, "do": "resume"}
        actions += [item, second]
    elif kind == "action_unknown_key":
        do = draw(st.sampled_from(ACTIONS))
        key = draw(
            st.sampled_from(
                ["foo", "lr" if do != "set" else "epsilon", "to" if do != "rollback" else "lr", "ID", "values"]
            )
        )
        item = {"id": "u", "do": do, key: 1}
        if do == "set" and key != "lr":
            item["lr"] = 0.02
        actions.append(item)
    elif kind == "action_set_empty":
        actions.append(
            {"id": "s", "do": "set", **draw(st.sampled_from([{}, {"lr": None}, {"lr": 0.02, "momentum": None}]))}
        )
    elif kind == "action_trial":
        actions.append(
            {
                "id": "t",
                "do": "pause",
                "trial": draw(
                    st.one_of(
                        st.sampled_from(["x3", "T3", "", "t", "3.5"]),
                        st.integers(min_value=-(2**63), max_value=-1),
                        st.integers(min_value=10**9, max_value=2**64 - 1),
                        st.floats(**FINITE),
                        st.booleans(),
                        st.lists(ints, max_size=1),
                    )
                ),
            }
        )
    elif kind == "action_reason":
        actions.append(
            {
                "id": "why",
                "do": "checkpoint",
                "reason": draw(st.one_of(ints, st.booleans(), st.lists(st.text(max_size=2), max_size=1))),
            }
        )
    elif kind == "unknown_trial_setting":
        doc["trials"] = {"1": {draw(st.sampled_from(["epsilon", "LR", "batch_size", "", "lr "])): 0.1}}
    if actions is not None and (actions or "actions" in doc):
        doc["actions"] = actions
    return kind, doc


def render_hostile(value: Any, indent: bool, literal: bytes) -> bytes:
    data = orjson.dumps(value, option=orjson.OPT_INDENT_2 if indent else 0)
    return data.replace(orjson.dumps(PLACEHOLDER), literal)


@st.composite
def hostile_contents(draw) -> tuple[str, bytes]:
    """(what it is, the bytes): every one of them a version that must be refused."""
    kind = draw(
        st.sampled_from(
            [
                "document",
                "document",
                "document",
                "shape",
                "truncated",
                "binary",
                "not_utf8",
                "raw_literal",
                "trailing",
                "empty",
                "too_big",
            ]
        )
    )
    if kind == "document":
        what, doc = draw(bad_document())
        data = render_hostile(doc, draw(st.booleans()), draw(st.sampled_from(RAW_LITERALS)))
        kind = f"document:{what}"
    elif kind == "shape":
        data = orjson.dumps(
            draw(
                st.one_of(
                    st.lists(ints, max_size=3),
                    ints,
                    st.floats(**FINITE),
                    st.text(max_size=10),
                    st.none(),
                    st.booleans(),
                    st.just([GOOD]),
                )
            )
        )
    elif kind == "truncated":
        _, doc = draw(bad_document()) if draw(st.booleans()) else ("", {**GOOD, **draw(valid_extras())})
        whole = render_hostile(doc, draw(st.booleans()), b"0.5")
        data = whole[: draw(st.integers(0, whole.rindex(b"}") - 1))]  # the object never closes
    elif kind == "binary":
        data = draw(
            st.one_of(
                st.binary(min_size=1, max_size=300),
                st.sampled_from(
                    [
                        b"\x00",
                        b"\x00" * 64,
                        b"\xff\xfe{\x00}\x00",
                        b"\x1f\x8b\x08\x00",
                        b"PK\x03\x04",
                        b"\x7fELF\x02\x01\x01",
                    ]
                ),
            )
        )
    elif kind == "not_utf8":
        how = draw(st.sampled_from(["bytes", "utf16", "utf16-bom", "utf8-bom", "latin1"]))
        if how == "bytes":
            bad = draw(
                st.sampled_from(
                    [
                        b"\xff",
                        b"\xfe",
                        b"\xc3\x28",
                        b"\xa0\xa1",
                        b"\xe2\x28\xa1",
                        b"\xf0\x28\x8c\xbc",
                        b"\xc0\xaf",
                        b"\xed\xa0\x80",
                        b"\xf8\x88\x80\x80\x80",
                    ]
                )
            )
            data = INITIAL.replace(b'"Edit', b'"' + bad + b"Edit", 1)
        elif how == "latin1":
            data = orjson.dumps({**GOOD, "help": "réglages"}).replace("é".encode(), "é".encode("latin-1"))
        else:
            text = INITIAL.decode()
            data = {
                "utf16": text.encode("utf-16-le"),
                "utf16-bom": text.encode("utf-16"),
                "utf8-bom": b"\xef\xbb\xbf" + INITIAL,
            }[how]
        kind = f"not_utf8:{how}"
    elif kind == "raw_literal":
        data = draw(st.sampled_from(RAW_LITERALS))
    elif kind == "trailing":  # a valid document followed by more
        data = render({**GOOD, "lr": 0.02}) + draw(st.sampled_from([b"x", b"}", b"{}", b",", b"\x00", b"//note"]))
    elif kind == "empty":
        data = draw(st.sampled_from([b"", b" ", b"\n", b"\r\n\t  \n"]))
    else:  # too big: a valid document padded inside its braces, so no prefix of it is valid either
        pad = MAX_BYTES + draw(st.integers(0, 4096))
        data = INITIAL.rstrip()[:-1] + b" " * pad + b"}\n"
    if kind == "binary":
        assume(_is_bad(data))  # random bytes can be valid JSON ({}): those are no hostile input
    return kind, data  # every other kind is bad by construction: the test asserts that parse agrees


# -- hostile write patterns ---------------------------------------------------------------------

CONTENT_PATTERNS = ["in_place", "rename", "two_chunks"]
STATE_PATTERNS = {  # pattern -> what the error says
    "delete": "the file is missing",
    "folder": "is a folder, not a file",
    "fifo": "is not a regular file",
    "dev_zero": "is not a regular file",
    "dangling_link": "the file is missing",
    "link_to_folder": "is a folder, not a file",
    "link_loop": "cannot be read: ",
    "sparse_huge": "a control file is at most",
}


@dataclass
class Attack:
    pattern: str
    data: bytes | None = None  # what the file holds at the end (None: no readable contents)
    what: str = ""
    split: int = 0  # two_chunks: the first chunk's length
    pause: float = 0.0  # two_chunks: seconds between the chunks


@st.composite
def content_attacks(draw) -> Attack:
    what, data = draw(hostile_contents())
    pattern = draw(st.sampled_from(CONTENT_PATTERNS))
    attack = Attack(pattern, data, what)
    if pattern == "two_chunks":
        attack.split = draw(st.integers(0, max(0, len(data) - 1)))
        attack.pause = draw(st.sampled_from([0.0, 0.01, 0.05, 0.3]))  # 0.3: longer than the watcher's settle
        if not _is_bad(data[: attack.split]):  # the half must not be a valid version itself
            attack.pattern = "in_place"
    return attack


attacks = st.one_of(st.sampled_from(list(STATE_PATTERNS)).map(Attack), content_attacks(), content_attacks())


def carry_out(attack: Attack, path: Path) -> None:
    tmp = path.with_name(".hostile.tmp")
    if attack.pattern == "in_place":
        with open(path, "wb") as f:
            f.write(attack.data)
    elif attack.pattern == "rename":
        tmp.write_bytes(attack.data)
        os.replace(tmp, path)
    elif attack.pattern == "two_chunks":  # saved half written, then completed
        with open(path, "wb") as f:
            f.write(attack.data[: attack.split])
        time.sleep(attack.pause)
        with open(path, "ab") as f:
            f.write(attack.data[attack.split :])
    elif attack.pattern == "delete":
        path.unlink()
    elif attack.pattern == "folder":
        path.unlink()
        path.mkdir()
    elif attack.pattern == "fifo":
        os.mkfifo(tmp)
        os.replace(tmp, path)
    elif attack.pattern == "dev_zero":
        os.symlink("/dev/zero", tmp)
        os.replace(tmp, path)
    elif attack.pattern == "dangling_link":
        os.symlink(path.with_name("no-such-file.json"), tmp)
        os.replace(tmp, path)
    elif attack.pattern == "link_to_folder":
        os.symlink(path.parent, tmp)
        os.replace(tmp, path)
    elif attack.pattern == "link_loop":
        os.symlink(path.name, tmp)  # control.json -> control.json
        os.replace(tmp, path)
    elif attack.pattern == "sparse_huge":  # grows without a close: only the idle stat check sees it
        os.truncate(path, MAX_BYTES + 1)
    else:
        raise AssertionError(attack.pattern)


def clear(path: Path) -> None:
    """Remove whatever stands at ``path`` (file, link, FIFO or folder), then the temp file."""
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    elif os.path.lexists(path):
        path.unlink()
    path.with_name(".hostile.tmp").unlink(missing_ok=True)


# -- the running inbox --------------------------------------------------------------------------


def thread_stacks() -> str:
    """Where every thread of this process is now: what a watcher that stopped answering is doing."""
    frames = sys._current_frames()
    return "\n".join(
        f"--- thread {t.name}:\n{''.join(traceback.format_stack(frames[t.ident]))}"
        for t in threading.enumerate()
        if t.ident in frames
    )


class Run(SimpleNamespace):
    def events(self) -> list[dict]:
        return list(read_events(self.log_path))

    def last_read(self) -> int:
        return max((e["read"] for e in self.events() if e.get("read") is not None), default=0)

    def wait_for(self, predicate, what: str) -> dict:
        """The first event matching ``predicate``; polls the log (the limit only stops a hang)."""
        deadline = time.monotonic() + WAIT
        while True:
            for record in self.events():
                if predicate(record):
                    return record
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {what} within {WAIT}s; the last events: {self.events()[-5:]}\n{thread_stacks()}"
                )
            time.sleep(0.01)

    def wait_until(self, condition, what: str) -> None:
        deadline = time.monotonic() + WAIT
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not {what} within {WAIT}s")
            time.sleep(0.01)

    def restore(self) -> None:
        """Put the initial document back and wait until the watcher has read it: a ``control``
        event that orders nothing (every setting is as before)."""
        before = self.last_read()
        clear(self.path)
        atomic_write(self.path, INITIAL)
        event = self.wait_for(lambda e: e["event"] == "control" and e["read"] > before, "read of the restored file")
        assert event["orders"] == []
        assert self.inbox.baseline == BASELINE


@pytest.fixture(params=["inotify", "polling"])
def control_run(request, tmp_path):
    """A live ControlInbox on a fresh run folder, with an event log, a status board and the
    mailbox of trial 0 (no training: the mailbox is only looked at); watching with inotify,
    or by polling as ``runner start --poll`` does."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = run_dir / FILE_NAME
    log = EventLog(run_dir / "events.jsonl")
    notes: list[str] = []
    inbox = ControlInbox(path, SCHEMA, log, notify=notes.append, poll=request.param == "polling")
    board = StatusBoard(
        run_dir / "status.json", control={"path": str(path), "watching": inbox.mode, "settings": list(LIVE)}
    )
    log.observers.append(board.observe)
    inbox.watcher.on_idle = board.flush
    inbox.start(INITIAL, fresh=True)
    mailbox = inbox.open(0)
    assert inbox.baseline == BASELINE and inbox.mode == request.param
    try:
        yield Run(
            path=path,
            run_dir=run_dir,
            log_path=run_dir / "events.jsonl",
            inbox=inbox,
            mailbox=mailbox,
            board=board,
            notes=notes,
        )
    finally:
        inbox.close()
        log.close()


#: Run every time besides the drawn ones: each write pattern at least once.
FIXED_ATTACKS = (
    [Attack(pattern) for pattern in STATE_PATTERNS]
    + [
        Attack("two_chunks", INITIAL[:40], "truncated", split=20, pause=0.3),  # each half reported on its own
        Attack("two_chunks", b'{"lr": -1}', "document:setting", split=5, pause=0.01),
        Attack("rename", INITIAL.rstrip()[:-1] + b" " * MAX_BYTES + b"}\n", "too_big"),
        Attack("in_place", b"", "empty"),
        Attack("in_place", INITIAL.replace(b'"lr": 0.01', b'"lr": 1e400', 1), "raw_literal"),
        Attack("rename", INITIAL.replace(b'"momentum": 0.9', b'"momentum": 1.0', 1), "document:setting"),
    ]
)


def test_hostile_saves_are_reported_and_change_nothing_and_the_watcher_survives(control_run):
    run = control_run
    attacked = {"count": 0}

    # No shrinking: each example leaves the live watcher in a new state, so a failing one
    # is reported as drawn (its note says what it was) rather than replayed for minutes.
    @settings(
        max_examples=40 if run.inbox.mode == "inotify" else 15,
        deadline=None,
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
    )
    @given(attack=attacks)
    def attack_once(attack: Attack) -> None:
        note(f"{attack.pattern} {attack.what} {attack.data[:200] if attack.data is not None else None!r}")
        event(attack.pattern)
        event(attack.what.split(":")[0] or "state")
        if attack.data is not None:  # or the runner accepts what it should refuse
            assert _is_bad(attack.data), f"parse accepted {attack.what}: {attack.data[:300]!r}"
        before = run.last_read()
        expected_sha = None
        if attack.data is not None and len(attack.data) <= MAX_BYTES:
            expected_sha = hashlib.sha256(attack.data).hexdigest()
        fragment = STATE_PATTERNS.get(attack.pattern, "")
        if attack.data is not None and len(attack.data) > MAX_BYTES:
            fragment = STATE_PATTERNS["sparse_huge"]  # refused on its size, before it is read
        try:
            carry_out(attack, run.path)
            error = run.wait_for(
                lambda e: (
                    e["event"] == "control_error"
                    and e["read"] > before
                    and e.get("sha256") == expected_sha
                    and fragment in e["message"]
                ),
                f"control_error for {attack.pattern} {attack.what}",
            )
            assert error["message"].startswith(f"{FILE_NAME}: ") and len(error["message"]) > len(FILE_NAME) + 2
            assert "order" not in error  # a refused version, not a valid order that failed
            since = [e for e in run.events() if e.get("read") is not None and e["read"] > before]
            assert [e for e in since if e["event"] == "control"] == []  # nothing read was valid
            assert all(e["event"] == "control_error" and e["message"] for e in since)
            assert list(run.mailbox.items) == []
            assert run.inbox.baseline == BASELINE
            attacked["count"] += 1
        finally:
            run.restore()
        assert list(run.mailbox.items) == []

    for fixed in FIXED_ATTACKS:
        assert fixed.data is None or _is_bad(fixed.data)
        attack_once = example(fixed)(attack_once)
    attack_once()
    assert attacked["count"] >= len(FIXED_ATTACKS)

    # Everything refused, nothing applied: every valid read ordered nothing.
    events = run.events()
    assert all(e["orders"] == [] for e in events if e["event"] == "control")
    errors = [e for e in events if e["event"] == "control_error"]
    assert len(errors) >= attacked["count"]
    assert len(run.notes) == len(errors)
    assert all("nothing in this version was applied" in n for n in run.notes)

    # The watcher survived: a valid change is still applied, once.
    before = run.last_read()
    atomic_write(run.path, render({**GOOD, "lr": 0.0123}))
    read = run.wait_for(lambda e: e["event"] == "control" and e["read"] > before, "read of the valid change")
    assert [o["what"] for o in read["orders"]] == ["lr=0.0123"]
    assert [o["trial"] for o in read["orders"]] == [0]
    run.wait_until(lambda: run.mailbox.items, "delivered")  # the event is written first, then the mail put
    deliveries = list(run.mailbox.items)
    assert len(deliveries) == 1
    assert isinstance(deliveries[0].decision, Nudge) and deliveries[0].decision.changes == {"lr": 0.0123}
    assert deliveries[0].order == read["orders"][0]["order"]
    assert run.inbox.baseline.settings["lr"] == 0.0123

    # status.json was kept through it all and says the same as the log.
    run.board.flush()
    status = orjson.loads((run.run_dir / "status.json").read_bytes())
    assert status["control"]["reads"] == read["read"] == run.inbox.reads
    assert status["control"]["last_error"]["message"] == errors[-1]["message"]
    assert status["control"]["recent"][-1]["read"] == read["read"]
    assert all(r["outcome"] == "rejected" for r in status["control"]["recent"] if r["message"] is not None)


def test_two_different_bad_versions_in_a_row_are_both_reported_even_with_the_same_message(control_run):
    run = control_run
    versions = [render({**GOOD, "lr": -1, "help": text}) for text in ("first", "second")]
    for data in versions:
        before = run.last_read()
        atomic_write(run.path, data)
        sha = hashlib.sha256(data).hexdigest()
        run.wait_for(
            lambda e, before=before, sha=sha: (
                e["event"] == "control_error" and e["read"] > before and e["sha256"] == sha
            ),
            "control_error for a new bad version",
        )
    messages = [e["message"] for e in run.events() if e["event"] == "control_error"]
    assert messages == [f"{FILE_NAME}: lr: must be > 0, got -1.0"] * 2
    run.restore()
    assert list(run.mailbox.items) == []


# -- parse alone, no files ----------------------------------------------------------------------

BOUNDS = {"lr": lambda v: v > 0, "momentum": lambda v: 0 <= v < 1, "beta2": lambda v: 0 <= v < 1}
VOCABULARY = st.sampled_from(
    [
        "help",
        "lr",
        "momentum",
        "beta2",
        "trials",
        "actions",
        "id",
        "do",
        "to",
        "trial",
        "reason",
        "0",
        "3",
        "t003",
        "x3",
        "epsilon",
        *ACTIONS,
        *ROLLBACK_TARGETS,
    ]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    st.floats(**FINITE),
    st.sampled_from([0.01, 0.5, 0.9, 0.999, 1.0, 0.0, -0.0, 1e-300, 1e308]),
    VOCABULARY,
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.one_of(VOCABULARY, st.text(max_size=4)), inner, max_size=5)
    ),
    max_leaves=25,
)
setting_values = st.one_of(
    st.none(),
    st.floats(**FINITE),
    st.integers(min_value=-5, max_value=5),
    st.sampled_from([0.01, 0.5, 0.9, 0.999, 1.0, -0.0]),
    st.text(max_size=3),
    st.booleans(),
)
action_items = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(-3, 3), st.sampled_from(["a", "b", "", True]))},
    optional={
        "do": st.one_of(st.sampled_from(ACTIONS), st.text(max_size=3)),
        "to": st.one_of(st.sampled_from(ROLLBACK_TARGETS), st.integers(-2, 5), st.none()),
        "trial": st.one_of(st.integers(-1, 5), st.sampled_from(["3", "t003", "x"])),
        "reason": st.one_of(st.text(max_size=5), ints),
        "lr": setting_values,
        "momentum": setting_values,
    },
)
# Documents shaped like the real thing, so many of them are valid and the checks below bite.
documents = st.fixed_dictionaries(
    {},
    optional={
        "help": json_values,
        "lr": setting_values,
        "momentum": setting_values,
        "beta2": setting_values,
        "trials": st.dictionaries(
            st.sampled_from(["0", "3", "t003", "t3", "12", "x3", "t"]),
            st.dictionaries(st.sampled_from([*LIVE, "epsilon"]), setting_values, max_size=3),
            max_size=3,
        ),
        "actions": st.lists(action_items, max_size=4),
    },
)


def check_document(doc: ControlDocument) -> None:
    def check_values(values: dict, allow_none: bool = True) -> None:
        for name, value in values.items():
            assert name in LIVE
            if value is None:
                assert allow_none
                continue
            assert type(value) is float and math.isfinite(value) and BOUNDS[name](value), (name, value)

    check_values(doc.settings)
    for trial, values in doc.trials.items():
        assert type(trial) is int and 0 <= trial < 10**9
        check_values(values)
    for action_id, action in doc.actions.items():
        assert action.id == action_id and type(action_id) in (int, str) and action_id != ""
        assert action.do in ACTIONS
        assert action.trial is None or (type(action.trial) is int and 0 <= action.trial < 10**9)
        assert isinstance(action.reason, str)
        if action.do == "set":
            assert action.values
            check_values(action.values, allow_none=False)
        else:
            assert action.values == {}
        if action.do == "rollback":
            assert action.to in ROLLBACK_TARGETS or (type(action.to) is int and action.to >= 0)
    assert orders(doc, doc) == []  # re-reading the same version applies nothing


class Refused(Exception):
    """What ``expected_parse`` says where ``parse`` must raise a ControlError."""


def expected_number(name: Any, value: Any) -> float | None:
    if name not in LIVE:
        raise Refused(f"{name!r} is no live setting")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Refused(f"{name}: {value!r} is not a finite number")
    if not BOUNDS[name](value):
        raise Refused(f"{name}: {value!r} is out of bounds")
    return float(value)


def expected_trial(key: Any) -> int:
    if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < 10**9:
        return key
    if isinstance(key, str) and re.fullmatch(r"t?[0-9]{1,9}", key):
        return int(key.removeprefix("t"))
    raise Refused(f"{key!r} names no trial")


def expected_action(item: Any) -> Action:
    if not isinstance(item, dict) or "id" not in item:
        raise Refused(f"{item!r} is no action")
    action_id, do = item["id"], item.get("do")
    if isinstance(action_id, bool) or not (isinstance(action_id, int) or (isinstance(action_id, str) and action_id)):
        raise Refused(f"{action_id!r} is no id")
    if isinstance(action_id, str) and len(action_id) > 64:
        raise Refused("a long id")
    if do not in ACTIONS:
        raise Refused(f"{do!r} is no action")
    allowed = {"id", "do", "trial", "reason", *(["to"] if do == "rollback" else []), *(LIVE if do == "set" else [])}
    if set(item) - allowed:
        raise Refused(f"{set(item) - allowed} not for {do}")
    trial = None if item.get("trial") is None else expected_trial(item["trial"])
    reason = item.get("reason", "")
    if not isinstance(reason, str):
        raise Refused(f"reason {reason!r}")
    values = {name: expected_number(name, v) for name, v in item.items() if name in LIVE} if do == "set" else {}
    if do == "set" and (not values or None in values.values()):
        raise Refused("a set of no number")
    to = item.get("to", "last") if do == "rollback" else "last"
    if not (to in ROLLBACK_TARGETS or (isinstance(to, int) and not isinstance(to, bool) and to >= 0)):
        raise Refused(f"rollback to {to!r}")
    return Action(action_id, do, trial, values, to, reason)


def expected_parse(data: bytes) -> ControlDocument:
    """What ``parse`` must make of ``data``, worked out afresh from the rules docs/control-file.md and the
    module's docstring state (not by calling runner.control.file): the document, or Refused."""
    if len(data) > MAX_BYTES:
        raise Refused("too big")
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise Refused("not JSON") from None
    if not isinstance(raw, dict):
        raise Refused("not an object")
    settings, trials, actions = {}, {}, {}
    for key, value in raw.items():
        if key == "trials":
            if not isinstance(value, dict):
                raise Refused("trials is no object")
            trials = {}
            for name, values in value.items():
                trial = expected_trial(name)
                if trial in trials or not isinstance(values, dict):
                    raise Refused(f"trials.{name}")
                trials[trial] = {k: expected_number(k, v) for k, v in values.items()}
        elif key == "actions":
            if not isinstance(value, list):
                raise Refused("actions is no list")
            actions = {}
            for item in value:
                action = expected_action(item)
                if action.id in actions:
                    raise Refused(f"id {action.id!r} twice")
                actions[action.id] = action
        elif key != "help":
            settings[key] = expected_number(key, value)
    return ControlDocument(settings, trials, actions)


def parse_checked(data: bytes) -> ControlDocument | None:
    """Parse ``data`` and check the outcome both ways against ``expected_parse``: a valid
    document gives exactly the expected one; an invalid one is refused, by a ControlError."""
    try:
        expected = expected_parse(data)
    except Refused as why:
        event("refused")
        with pytest.raises(ControlError) as refused:  # anything else escaping parse would be a bug
            parse(data, SCHEMA)
        assert str(refused.value).startswith(f"{FILE_NAME}: ") and refused.value.message, why
        return None
    event("valid" + (" with trials" if expected.trials else "") + (" with actions" if expected.actions else ""))
    doc = parse(data, SCHEMA)
    assert isinstance(doc, ControlDocument)
    check_document(doc)
    assert doc == expected
    assert list(doc.actions) == list(expected.actions), "actions in file order"
    return doc


PARSE_SETTINGS = settings(max_examples=300, deadline=None)


#: Documents with trials and actions that are valid, drawn among the rest (defined below).
valid_ones = st.deferred(lambda: valid_documents().map(lambda drawn: drawn[0]))


@PARSE_SETTINGS
@given(value=st.one_of(json_values, documents, valid_ones), indent=st.booleans())
def test_parse_of_any_json_value_gives_a_document_in_bounds_or_a_control_error(value, indent):
    parse_checked(orjson.dumps(value, option=orjson.OPT_INDENT_2 if indent else 0))


lr_values = st.one_of(
    st.floats(min_value=0, exclude_min=True, **FINITE), st.integers(1, 2**63), st.sampled_from([1e-300, 0.01, 1e308])
)
beta_values = st.one_of(
    st.floats(min_value=0, max_value=1, exclude_max=True), st.just(0), st.sampled_from([0.0, -0.0, 0.5, 0.999])
)
numbers = {"lr": lr_values, "momentum": beta_values, "beta2": beta_values}


@st.composite
def live_values(draw, allow_none: bool = True, min_size: int = 0) -> dict[str, float | int | None]:
    names = draw(st.lists(st.sampled_from(LIVE), min_size=min_size, unique=True))
    return {n: None if allow_none and draw(st.integers(0, 4)) == 0 else draw(numbers[n]) for n in names}


@st.composite
def trial_name(draw, trial: int, as_int: bool = False) -> str | int:
    forms = [str(trial), f"t{trial}", f"t{trial:03d}", f"{trial:09d}", f"t{trial:09d}", *([trial] if as_int else [])]
    return draw(st.sampled_from(forms))


@st.composite
def valid_documents(draw) -> tuple[dict, ControlDocument]:
    """A valid document with settings, trials and actions, and what it must parse to."""
    settings = draw(live_values())
    trials = draw(st.dictionaries(st.integers(0, 10**9 - 1), live_values(), min_size=1, max_size=4))
    ids = draw(
        st.lists(
            st.one_of(ints, st.text(min_size=1, max_size=64)), min_size=1, max_size=6, unique_by=lambda i: (type(i), i)
        )
    )
    raw_actions, actions = [], {}
    for action_id in ids:
        do = draw(st.sampled_from(ACTIONS))
        item: dict[str, Any] = {"id": action_id, "do": do}
        trial, reason, values, to = None, "", {}, "last"
        if draw(st.booleans()):
            trial = draw(st.integers(0, 10**9 - 1))
            item["trial"] = draw(trial_name(trial, as_int=True))
        if draw(st.booleans()):
            item["reason"] = reason = draw(st.text(max_size=20))
        if do == "set":
            values = draw(live_values(allow_none=False, min_size=1))
            item.update(values)
        if do == "rollback" and draw(st.booleans()):
            item["to"] = to = draw(st.one_of(st.sampled_from(ROLLBACK_TARGETS), st.integers(0, 2**63)))
        raw_actions.append(item)
        actions[action_id] = Action(action_id, do, trial, {k: float(v) for k, v in values.items()}, to, reason)
    doc = {
        "help": draw(st.one_of(st.just(GOOD["help"]), json_values)),
        **settings,
        "trials": {draw(trial_name(t)): values for t, values in trials.items()},
        "actions": raw_actions,
    }
    expected = ControlDocument(
        {k: None if v is None else float(v) for k, v in settings.items()},
        {t: {k: None if v is None else float(v) for k, v in values.items()} for t, values in trials.items()},
        actions,
    )
    return doc, expected


@PARSE_SETTINGS
@given(drawn=valid_documents(), indent=st.booleans())
def test_a_valid_document_with_trials_and_actions_parses_to_what_it_says(drawn, indent):
    doc, expected = drawn
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2 if indent else 0)
    assert parse_checked(data) == expected  # the oracle agrees it is valid, and so does parse
    assert orders(expected, parse(data, SCHEMA)) == []


@PARSE_SETTINGS
@given(drawn=bad_document(), literal=st.sampled_from(RAW_LITERALS), indent=st.booleans())
def test_a_document_with_one_thing_wrong_is_refused_even_with_valid_trials_and_actions(drawn, literal, indent):
    kind, doc = drawn
    event(kind)
    data = render_hostile(doc, indent, literal)
    with pytest.raises(Refused):
        expected_parse(data)
    assert parse_checked(data) is None


@PARSE_SETTINGS
@given(
    data=st.one_of(
        st.binary(max_size=200),
        valid_ones.map(orjson.dumps),
        st.builds(lambda d, cut: orjson.dumps(d)[:cut], st.one_of(documents, valid_ones), st.integers(0, 400)),
        st.builds(
            lambda d, i, b: (lambda raw: raw[:i] + b + raw[i:])(orjson.dumps(d)),
            st.one_of(documents, valid_ones),
            st.integers(0, 200),
            st.sampled_from(RAW_LITERALS + [b"\xff", b",", b"}", b"]", b'"', b"\\", b"\x00", b":"]),
        ),
    )
)
def test_parse_of_any_bytes_gives_a_document_in_bounds_or_a_control_error(data):
    parse_checked(data)


#: One of each kind of bad version, with the JSON path (or words) its error must name.
NAMED_HOSTILE = {
    "truncated": (INITIAL[: len(INITIAL) // 2], "not valid JSON"),
    "empty": (b"", "the file is empty"),
    "blank": (b" \n\t", "the file is empty"),
    "binary": (b"\x00\x01\xfe\xff", "not valid JSON"),
    "not UTF-8": (b'{"help": "\xff"}', "not valid JSON"),
    "UTF-16": ('{"lr": 0.01}'.encode("utf-16"), "not valid JSON"),
    "a list": (b"[1, 2]", "must be a JSON object"),
    "a number": (b"3", "must be a JSON object"),
    "a string": (b'"lr"', "must be a JSON object"),
    "null": (b"null", "must be a JSON object"),
    "lr a string": (b'{"lr": "0.01"}', "lr: must be a number"),
    "lr a boolean": (b'{"lr": true}', "lr: must be a number"),
    "lr a list": (b'{"lr": [0.01]}', "lr: must be a number"),
    "lr an object": (b'{"lr": {"value": 0.01}}', "lr: must be a number"),
    "lr zero": (b'{"lr": 0}', "lr: must be > 0"),
    "lr negative": (b'{"lr": -0.01}', "lr: must be > 0"),
    "momentum one": (b'{"momentum": 1}', "momentum: must be < 1"),
    "momentum negative": (b'{"momentum": -0.1}', "momentum: must be >= 0"),
    "beta2 huge": (b'{"beta2": 1e300}', "beta2: must be < 1"),
    "beta2 1e400": (b'{"beta2": 1e400}', "not valid JSON"),
    "lr NaN": (b'{"lr": NaN}', "not valid JSON"),
    "lr Infinity": (b'{"lr": Infinity}', "not valid JSON"),
    "unknown key": (b'{"learning_rate": 0.01}', "learning_rate: unknown key"),
    "not live": (b'{"epsilon": 0.01}', "epsilon: unknown key"),
    "trial x3": (b'{"trials": {"x3": {"lr": 0.01}}}', "trials.x3: "),
    "trial twice": (b'{"trials": {"3": {"lr": 0.01}, "t003": {"lr": 0.02}}}', "trial 3 is named twice"),
    "trial not an object": (b'{"trials": {"3": 0.01}}', "trials.3: must be an object"),
    "trials a list": (b'{"trials": [3]}', "trials: must be an object"),
    "trial setting not live": (b'{"trials": {"3": {"epsilon": 0.01}}}', "trials.3.epsilon: "),
    "actions an object": (b'{"actions": {"id": 1}}', "actions: must be a list"),
    "action not an object": (b'{"actions": ["pause"]}', "actions[0]: must be an object"),
    "action without id": (b'{"actions": [{"do": "pause"}]}', 'actions[0]: needs an "id"'),
    "action id a boolean": (b'{"actions": [{"id": true, "do": "pause"}]}', "actions[0].id: "),
    "action id empty": (b'{"actions": [{"id": "", "do": "pause"}]}', "actions[0].id: "),
    "action unknown do": (b'{"actions": [{"id": 1, "do": "explode"}]}', "actions[0].do: "),
    "action without do": (b'{"actions": [{"id": 1}]}', "actions[0].do: "),
    "rollback to worst": (b'{"actions": [{"id": 1, "do": "rollback", "to": "worst"}]}', "actions[0].to: "),
    "rollback to -1": (b'{"actions": [{"id": 1, "do": "rollback", "to": -1}]}', "actions[0].to: "),
    "rollback to 1.5": (b'{"actions": [{"id": 1, "do": "rollback", "to": 1.5}]}', "actions[0].to: "),
    "to on a pause": (b'{"actions": [{"id": 1, "do": "pause", "to": "best"}]}', "actions[0].to: unknown key"),
    "set nothing": (b'{"actions": [{"id": 1, "do": "set"}]}', '"do": "set" needs'),
    "set lr null": (b'{"actions": [{"id": 1, "do": "set", "lr": null}]}', '"do": "set" needs'),
    "set lr zero": (b'{"actions": [{"id": 1, "do": "set", "lr": 0}]}', "actions[0].lr: must be > 0"),
    "duplicate ids": (b'{"actions": [{"id": 1, "do": "pause"}, {"id": 1, "do": "pause"}]}', "id 1 is used twice"),
    "action trial x3": (b'{"actions": [{"id": 1, "do": "stop", "trial": "x3"}]}', "actions[0].trial: "),
    "reason a number": (b'{"actions": [{"id": 1, "do": "stop", "reason": 3}]}', "actions[0].reason: "),
    "valid parts and one bad": (
        render({**GOOD, "lr": 0.02, "actions": [{"id": 1, "do": "stop"}], "momentum": 2}),
        "momentum: must be < 1",
    ),
    "trailing content": (INITIAL + b"x", "not valid JSON"),
    "too big": (INITIAL.rstrip()[:-1] + b" " * MAX_BYTES + b"}", "a control file is at most"),
}


@pytest.mark.parametrize("name", list(NAMED_HOSTILE))
def test_each_kind_of_bad_version_is_refused_with_a_message_naming_the_file_and_the_place(name):
    data, expected = NAMED_HOSTILE[name]
    with pytest.raises(ControlError) as caught:
        parse(data, SCHEMA)
    assert str(caught.value).startswith(f"{FILE_NAME}: ") and expected in str(caught.value)


def test_null_is_a_valid_setting_that_leaves_each_trial_its_own_value():
    doc = parse(b'{"lr": null, "momentum": null, "trials": {"3": {"beta2": null}}}', SCHEMA)
    assert doc.settings == {"lr": None, "momentum": None} and doc.trials == {3: {"beta2": None}}
    assert orders(BASELINE, doc) == []


def test_parse_refuses_a_file_over_max_bytes_without_parsing_it():
    data = INITIAL.rstrip()[:-1] + b" " * MAX_BYTES + b"}"
    with pytest.raises(ControlError, match="at most"):
        parse(data, SCHEMA)
    assert isinstance(parse(INITIAL.rstrip()[:-1] + b" " * (MAX_BYTES - len(INITIAL)) + b"}", SCHEMA), ControlDocument)


def test_an_editor_that_deletes_then_rewrites_the_file_is_not_reported_missing(control_run):
    run = control_run
    before = run.last_read()
    run.path.unlink()
    time.sleep(0.1)  # longer than the watcher's quiet time, shorter than its settle time
    run.path.write_bytes(INITIAL.replace(b'"lr": 0.01', b'"lr": 0.02', 1))
    event = run.wait_for(lambda e: e["event"] == "control" and e["read"] > before, "read of the rewritten file")
    assert [o["what"] for o in event["orders"]] == ["lr=0.02"]
    assert not [e for e in run.events() if e["event"] == "control_error"]
