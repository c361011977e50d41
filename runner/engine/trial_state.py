"""What a trial's snapshots carry besides the backend's state, and how it is put back.

Two objects hold it, and their fields say what is saved: the ``Trial`` that hooks see
(where training stands, its best epoch, its rollback counts) and the trial loop's own
``LoopState``. A saved field is marked ``rewound`` or ``kept``:

- a rollback puts back the ``rewound`` ones (where training stood) and leaves the
  ``kept`` ones alone: counts keep counting, and what was tried is remembered;
- a resume puts back both.

To have something new saved and restored, declare it here as a field: nothing else copies
it. A field whose value has ``state()``/``load_state()`` (the babysitter, the spike
detector) is saved as its state and loaded into the object in place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from runner.babysitter import Babysitter
from runner.control.refusal import NudgeOnTrial
from runner.engine.divergence import SpikeDetector
from runner.engine.experiment import EndTrial
from runner.trial import KEPT, REWOUND


def loaded(kind: dict[str, str], load: Callable[[Any], Any]) -> dict[str, Any]:
    """Metadata of a saved field (``kind``: REWOUND or KEPT) whose JSON ``load`` turns back into its value."""
    return {**kind, "load": load}


@dataclass
class LoopState:
    """The trial loop's own resumable state (the ``Trial`` holds the rest)."""

    detector: SpikeDetector = field(metadata=REWOUND)  # the step-loss spike detector
    furthest: int = field(default=0, metadata=KEPT)  # the most epochs this trial has completed, on any path
    stuck_rollbacks: int = field(default=0, metadata=KEPT)  # rollbacks since it last completed more epochs than ever
    before_nudge_events: int | None = field(default=None, metadata=KEPT)  # its events at its latest before_nudge
    # a person's nudge that a divergence would still refuse (runner.control.refusal)
    nudge_on_trial: NudgeOnTrial | None = field(default=None, metadata=loaded(KEPT, NudgeOnTrial.from_json))
    babysitter: Babysitter = field(default_factory=Babysitter, metadata=KEPT)  # the strategy's, if it babysits
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


def save_state(*holders: Any) -> dict[str, Any]:
    """The saved fields of ``holders`` as JSON values: a snapshot's ``loop`` record."""
    record = {}
    for holder in holders:
        for spec in fields(holder):
            if "saved" in spec.metadata:
                value = getattr(holder, spec.name)
                if hasattr(value, "load_state"):
                    value = value.state()
                elif hasattr(value, "to_json"):
                    value = value.to_json()
                record[spec.name] = value
    return record


def load_state(meta: dict[str, Any], *holders: Any, resume: bool) -> None:
    """Put the saved fields of ``holders`` back from a snapshot's ``meta``: the ``rewound``
    ones for a rollback, all of them for a ``resume``."""
    loop = meta["loop"]
    for holder in holders:
        for spec in fields(holder):
            kind = spec.metadata.get("saved")
            if kind is None or (kind == "kept" and not resume):
                continue
            if spec.name in loop:
                value = loop[spec.name]
            elif spec.name in OLDER_SNAPSHOTS:
                value = OLDER_SNAPSHOTS[spec.name](loop, meta)
            else:
                continue
            current = getattr(holder, spec.name)
            if hasattr(current, "load_state"):
                current.load_state(value or {})
            else:
                load = spec.metadata.get("load")
                setattr(holder, spec.name, load(value) if load and value is not None else value)
