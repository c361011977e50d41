"""The control file (``control.json``): its format, its validation, and how a saved version
becomes orders for running trials.

A person (or ``runner nudge``) edits the file while the run trains::

    {
      "help": "...",                            text for people; ignored
      "lr": 0.05, "momentum": 0.9,              every running trial: applied when a value changes
      "trials": {"3": {"lr": 0.01}},            one trial ("3" or "t003"): applied when a value changes
      "actions": [                              each applied once, by its id
        {"id": 1, "do": "rollback", "to": "best", "trial": 3},
        {"id": 2, "do": "pause"}, {"id": 3, "do": "resume"}, {"id": 4, "do": "stop"},
        {"id": 5, "do": "checkpoint"}, {"id": 6, "do": "set", "lr": 0.01}
      ]
    }

Settings are compared with the previous valid version of the file: only a value that
changed is applied, so re-reading the same file (every save fires several file events)
applies nothing twice. Actions carry an id and each id is applied once, so the same action
can be asked for again under a new id. Everything here is pure: no files, no threads.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from runner.decisions import Checkpoint, Decision, Nudge, Pause, Rollback, Stop, Unpause
from runner.errors import SpecError, join_path
from runner.experiment_file.typed import check_bounds, check_field, describe, field_bounds
from runner.inputs import CONTROL_FILE, duplicate_key

FILE_NAME = "control.json"
MAX_BYTES = CONTROL_FILE.default  # a control file is a few hundred bytes; anything past 1 MiB is a mistake
ACTIONS = ("set", "rollback", "pause", "resume", "stop", "checkpoint")
ROLLBACK_TARGETS = ("last", "best", "before_nudge")
HELP = [
    "Edit and save while the run trains; `runner status` shows what is in force.",
    'Top-level settings apply to every running trial, \'trials\' to one: {"3": {"lr": 0.01}}.',
    "A setting is applied when its value changes; null leaves each trial's own value.",
    'Each action runs once per new id: {"id": 1, "do": "rollback", "to": "best"}.',
    "do: set, rollback (to last, best, before_nudge or an epoch), pause, resume, stop, checkpoint.",
    'Add "trial": 3 to aim an action at one trial; a stop without a trial ends the run.',
]
_TRIAL_KEY = re.compile(r"t?([0-9]{1,9})")


class ControlError(SpecError):
    """A version of the control file that cannot be applied; names the file and the JSON path."""

    def __init__(self, path: str, message: str, *, incomplete: bool = False):
        super().__init__(path, message, source=FILE_NAME)
        self.incomplete = incomplete  # empty or cut-off JSON: perhaps a save still being written


@dataclass(frozen=True)
class Action:
    """One entry of ``actions``: applied once, to ``trial`` (None: every running trial)."""

    id: int | str
    do: str
    trial: int | None = None
    values: dict[str, float] = field(default_factory=dict)  # for "set"
    to: str | int = "last"  # for "rollback"
    reason: str = ""

    def decision(self) -> Decision:
        """What the loop is asked to do when this action is new."""
        reason = self.reason or f"control action {self.id}"
        if self.do == "set":
            return Nudge(dict(self.values), reason=reason)
        if self.do == "rollback":
            return Rollback(to=self.to, reason=reason)
        if self.do == "stop":  # without a trial: the whole run
            return Stop(reason=reason, experiment=self.trial is None)
        return {"pause": Pause, "resume": Unpause, "checkpoint": Checkpoint}[self.do](reason=reason)

    def describe(self) -> str:
        """A short line for people: ``rollback to best``, ``set lr=0.01``."""
        if self.do == "set":
            return "set " + _values(self.values)
        if self.do == "rollback":
            return f"rollback to {'epoch ' if isinstance(self.to, int) else ''}{self.to}"
        return self.do


@dataclass(frozen=True)
class ControlDocument:
    """A valid version of the control file."""

    settings: dict[str, float | None] = field(default_factory=dict)  # for every running trial
    trials: dict[int, dict[str, float | None]] = field(default_factory=dict)
    actions: dict[int | str, Action] = field(default_factory=dict)  # by id, in file order


@dataclass(frozen=True)
class Order:
    """What one saved version asks of a trial (``trial`` None: every running trial)."""

    trial: int | None
    decision: Decision
    action: int | str | None = None  # the action's id; None for a changed setting
    what: str = ""  # for people: "lr=0.01", "rollback to best"


@dataclass(frozen=True)
class ControlSchema:
    """What the running backend lets a person change: its ``live`` hyperparameters, checked
    against the bounds of its ``Train`` section where it declares them."""

    live: tuple[str, ...]
    train_cls: type | None = None
    # bounds of the live settings, where no Train class is at hand: as status.json records them
    bounds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @classmethod
    def for_backend(cls, backend_cls: type) -> ControlSchema:
        return cls(tuple(backend_cls.live), backend_cls.Train)

    def recorded_bounds(self) -> dict[str, dict[str, float]]:
        """Each live setting's bounds, for ``status.json`` (``runner nudge`` checks by them
        without loading the backend). Called in the driver, on the schema of its backend."""
        return {name: rule for name in self.live if (rule := field_bounds(self.train_cls, name))}

    def check(self, name: str, value: Any, path: str) -> float | None:
        """Called for each setting in a version of the file: its value as a float (None: no
        value), or a ControlError naming ``path`` and the rule it breaks."""
        if name not in self.live:
            raise ControlError(path, f"not a setting this run's backend can change; settings: {', '.join(self.live)}")
        if value is None:
            return None  # no value: leave every trial's own
        fields = {f.name for f in dataclasses.fields(self.train_cls)} if self.train_cls else set()
        try:
            if name in fields:
                value = check_field(self.train_cls, name, value, path)
            elif name in self.bounds:
                check_bounds(self.bounds[name], value, path)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ControlError(path, f"must be a number, got {describe(value)}")
            if not math.isfinite(value):
                raise ControlError(path, f"must be a finite number, got {value}")
        except ControlError:
            raise
        except SpecError as err:
            raise ControlError(err.path, err.message) from None
        return float(value)


def parse(data: bytes, schema: ControlSchema) -> ControlDocument:
    """Read one version of the file; raise ControlError naming the first thing wrong (a key
    written twice in one object included: the last one silently winning would surprise)."""
    if len(data) > MAX_BYTES:
        raise ControlError("", f"the file is {len(data):,} bytes; a control file is at most {MAX_BYTES:,}")
    if not data.strip():
        raise ControlError("", "the file is empty; expected a JSON object", incomplete=True)
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise ControlError("", f"not valid JSON: {err}", incomplete=True) from None
    if not isinstance(raw, dict):
        raise ControlError("", f"must be a JSON object, got {describe(raw)}")
    duplicate = duplicate_key(data)
    if duplicate is not None:
        raise ControlError(_path_of(duplicate), "duplicate key")
    settings, trials, actions = {}, {}, {}
    for key, value in raw.items():
        if key == "help":
            continue
        if key == "trials":
            trials = _trials(value, schema)
        elif key == "actions":
            actions = _actions(value, schema)
        elif key in schema.live:
            settings[key] = schema.check(key, value, key)
        else:
            raise ControlError(
                key, f"unknown key; the keys are help, trials, actions and the settings {', '.join(schema.live)}"
            )
    return ControlDocument(settings, trials, actions)


def _path_of(parts: list[str | int]) -> str:
    """A JSON path as this file's messages write it: ``trials.3.lr``, ``actions[1].do``."""
    path = ""
    for part in parts:
        path = f"{path}[{part}]" if isinstance(part, int) else join_path(path, part)
    return path


def _trials(value: Any, schema: ControlSchema) -> dict[int, dict[str, float | None]]:
    if not isinstance(value, dict):
        raise ControlError("trials", f'must be an object such as {{"3": {{"lr": 0.01}}}}, got {describe(value)}')
    trials: dict[int, dict[str, float | None]] = {}
    for key, settings in value.items():
        path = join_path("trials", key)
        trial = trial_id(key, path)
        if trial in trials:
            raise ControlError(path, f"trial {trial} is named twice")
        if not isinstance(settings, dict):
            raise ControlError(path, f"must be an object of settings, got {describe(settings)}")
        trials[trial] = {name: schema.check(name, v, join_path(path, name)) for name, v in settings.items()}
    return trials


def trial_id(key: Any, path: str) -> int:
    """A trial named as 3, "3" or "t003"."""
    if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < 10**9:
        return key
    if isinstance(key, str) and (match := _TRIAL_KEY.fullmatch(key)):
        return int(match.group(1))
    raise ControlError(path, f'a trial is named by its number, such as 3 or "t003", got {describe(key)}')


def _actions(value: Any, schema: ControlSchema) -> dict[int | str, Action]:
    if not isinstance(value, list):
        raise ControlError("actions", f'must be a list such as [{{"id": 1, "do": "pause"}}], got {describe(value)}')
    actions: dict[int | str, Action] = {}
    for i, item in enumerate(value):
        path = f"actions[{i}]"
        action = _action(item, path, schema)
        if action.id in actions:
            raise ControlError(join_path(path, "id"), f"id {action.id!r} is used twice; give every action its own id")
        actions[action.id] = action
    return actions


def _action(item: Any, path: str, schema: ControlSchema) -> Action:
    if not isinstance(item, dict):
        raise ControlError(path, f'must be an object such as {{"id": 1, "do": "pause"}}, got {describe(item)}')
    if "id" not in item:
        raise ControlError(path, 'needs an "id" (a number or a text not used before): each id is applied once')
    action_id = item["id"]
    if (
        isinstance(action_id, bool)
        or not isinstance(action_id, (int, str))
        or action_id == ""
        or (isinstance(action_id, str) and len(action_id) > 64)
    ):
        raise ControlError(join_path(path, "id"), f"must be a number or a short text, got {describe(action_id)}")
    do = item.get("do")
    if do not in ACTIONS:
        raise ControlError(join_path(path, "do"), f"must be one of {', '.join(ACTIONS)}, got {describe(do)}")
    allowed = (
        {"id", "do", "trial", "reason"}
        | ({"to"} if do == "rollback" else set())
        | (set(schema.live) if do == "set" else set())
    )
    for key in item:
        if key not in allowed:
            raise ControlError(
                join_path(path, key), f'unknown key for "do": "{do}"; allowed: {", ".join(sorted(allowed))}'
            )
    trial = item.get("trial")
    if trial is not None:
        trial = trial_id(trial, join_path(path, "trial"))
    reason = item.get("reason", "")
    if not isinstance(reason, str):
        raise ControlError(join_path(path, "reason"), f"must be a text, got {describe(reason)}")
    values: dict[str, float] = {}
    to: str | int = "last"
    if do == "set":
        values = {k: schema.check(k, v, join_path(path, k)) for k, v in item.items() if k in schema.live}
        if not values or any(v is None for v in values.values()):
            raise ControlError(path, f'"do": "set" needs at least one number among {", ".join(schema.live)}')
    if do == "rollback":
        to = item.get("to", "last")
        if not (to in ROLLBACK_TARGETS or (isinstance(to, int) and not isinstance(to, bool) and to >= 0)):
            raise ControlError(
                join_path(path, "to"),
                f"must be {', '.join(ROLLBACK_TARGETS)} or an epoch "
                f"number (0 = the start, 1 = after the first epoch), got {describe(to)}",
            )
    return Action(action_id, do, trial, values, to, reason)


def orders(
    previous: ControlDocument, current: ControlDocument, used: dict[int | str, Action | None] | None = None
) -> list[Order]:
    """What changed from ``previous`` to ``current``: a nudge for every running trial if
    top-level settings changed, one per trial whose own settings changed, then the actions
    whose ids are new, in file order. ``used`` holds every action id the run has applied
    (None where only the id is known, as after a resume); by default, ``previous``'s. An
    id used before for another action (or whose action is not known) is an error: a new
    action needs a new id, and an applied one stays applied when taken out and put back."""
    used = previous.actions if used is None else used
    found: list[Order] = []
    changed = _changed(previous.settings, current.settings)
    if changed:
        found.append(Order(None, Nudge(changed, reason=FILE_NAME), what=_values(changed)))
    for trial, settings in current.trials.items():
        changed = _changed(previous.trials.get(trial, {}), settings)
        if changed:
            found.append(Order(trial, Nudge(changed, reason=FILE_NAME), what=_values(changed)))
    for action_id, action in current.actions.items():
        if action_id not in used:
            found.append(Order(action.trial, action.decision(), action_id, action.describe()))
        elif used[action_id] != action and previous.actions.get(action_id) != action:
            before = used[action_id]
            applied = f'was already applied as "{before.describe()}"' if before else "was already used in this run"
            raise ControlError(f"actions (id {action_id!r})", f"id {action_id!r} {applied}; give a new action a new id")
    return found


def _changed(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float]:
    """Settings that hold a number now and held another (or none) before; ``None`` means no value."""
    return {k: v for k, v in after.items() if v is not None and before.get(k) != v}


def _values(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:g}" for k, v in values.items())


def initial_document(live: tuple[str, ...], values: dict[str, float | None]) -> bytes:
    """The file written when a run starts: the help line, every live setting with the value
    the trials start with (null where the search chooses it per trial), no trials, no actions."""
    document = {"help": HELP, **{name: values.get(name) for name in live}, "trials": {}, "actions": []}
    return render(document)


def render(document: dict[str, Any]) -> bytes:
    """A control document as people like to read it: indented, one key a line."""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
