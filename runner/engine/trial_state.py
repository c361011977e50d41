"""What a trial's snapshots carry besides the backend's state, and how it is put back.

Two objects hold it, and their fields say what is saved: the ``Trial`` that hooks see
(where training stands, its best epoch, its rollback counts) and the trial loop's own
``LoopState``. A saved field is marked ``rewound`` or ``kept``:

- a rollback puts back the ``rewound`` ones (where training stood) and leaves the
  ``kept`` ones alone: counts keep counting, and what was tried is remembered;
- a resume puts back both.

To have something new saved and restored, declare it here as a field: nothing else copies
it. A field marked ``stateful`` holds an object with ``state()``/``load_state()`` (the
babysitter, the spike detector): it is saved as its state and loaded into the object in
place. One with a ``load`` function is written with its value's ``to_json()``, if it has one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from runner.babysitter import Babysitter
from runner.control.refusal import NudgeOnTrial
from runner.engine.collapse import CollapseDetector
from runner.engine.divergence import SpikeDetector
from runner.engine.experiment import EndTrial
from runner.trial import KEPT, REWOUND


def loaded(kind: dict[str, str], load: Callable[[Any], Any]) -> dict[str, Any]:
    """Metadata of a saved field (``kind``: REWOUND or KEPT) whose JSON ``load`` turns back into its value."""
    return {**kind, "load": load}


@dataclass
class LoopState:
    """The trial loop's own resumable state (the ``Trial`` holds the rest)."""

    detector: SpikeDetector = field(metadata={**REWOUND, "stateful": True})  # the step-loss spike detector
    collapse: CollapseDetector = field(metadata={**REWOUND, "stateful": True})  # what a collapse would show
    furthest: int = field(default=0, metadata=KEPT)  # the most epochs this trial has completed, on any path
    stuck_rollbacks: int = field(default=0, metadata=KEPT)  # rollbacks since it last completed more epochs than ever
    before_nudge_events: int | None = field(default=None, metadata=KEPT)  # its events at its latest before_nudge
    # a person's nudge that a divergence would still refuse (runner.control.refusal)
    nudge_on_trial: NudgeOnTrial | None = field(default=None, metadata=loaded(KEPT, NudgeOnTrial.from_json))
    # the strategy's, if it babysits trials
    babysitter: Babysitter = field(default_factory=Babysitter, metadata={**KEPT, "stateful": True})
    lowest_val_loss: float | None = field(default=None, metadata=REWOUND)
    events: int = field(default=0, metadata=KEPT)  # its events in the log, so a resume can cut the log there
    # mid-epoch, at a step boundary where the loop stopped to act: (steps done, loss sum) so far
    partial: tuple[int, float] | None = field(default=None, metadata=loaded(REWOUND, tuple))
    # a Stop or Prune decided at the end of the epoch the snapshot closes
    ending: EndTrial | None = field(default=None, metadata=loaded(KEPT, EndTrial.from_json))


# Snapshots written before a field existed: what it was then, from the snapshot (others take their defaults).
OLDER_SNAPSHOTS: dict[str, Callable[[dict[str, Any], dict[str, Any]], Any]] = {
    "divergence_rollbacks": lambda loop, meta: loop["rollbacks"],  # every rollback was counted alike
    "furthest": lambda loop, meta: meta["epoch"],
}


@dataclass(frozen=True)
class Saved:
    """One saved field of a holder's class: how it is written and read back."""

    name: str
    rewound: bool  # a rollback puts it back (else only a resume does)
    stateful: bool  # an object with state()/load_state(), loaded in place
    load: Callable[[Any], Any] | None  # JSON -> value, for a value written with to_json()


@functools.cache
def saved_fields(cls: type) -> tuple[Saved, ...]:
    """The saved fields of a dataclass, read once per class (a snapshot is taken often)."""
    return tuple(
        Saved(f.name, f.metadata["saved"] == "rewound", f.metadata.get("stateful", False), f.metadata.get("load"))
        for f in fields(cls)
        if "saved" in f.metadata
    )


def save_state(*holders: Any) -> dict[str, Any]:
    """The saved fields of ``holders`` as JSON values: a snapshot's ``loop`` record."""
    record = {}
    for holder in holders:
        for field_ in saved_fields(type(holder)):
            value = getattr(holder, field_.name)
            if field_.stateful:
                value = value.state()
            elif field_.load is not None and value is not None and hasattr(value, "to_json"):
                value = value.to_json()
            record[field_.name] = value
    return record


def load_state(meta: dict[str, Any], *holders: Any, resume: bool) -> None:
    """Put the saved fields of ``holders`` back from a snapshot's ``meta``: the ``rewound``
    ones for a rollback, all of them for a ``resume``."""
    loop = meta["loop"]
    for holder in holders:
        for field_ in saved_fields(type(holder)):
            name = field_.name
            if not (resume or field_.rewound):
                continue
            if name in loop:
                value = loop[name]
            elif name in OLDER_SNAPSHOTS:
                value = OLDER_SNAPSHOTS[name](loop, meta)
            else:
                continue
            if field_.stateful:
                getattr(holder, name).load_state(value or {})
            else:
                setattr(holder, name, field_.load(value) if field_.load and value is not None else value)
