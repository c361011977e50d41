"""Divergence: what counts as training blowing up, and the event that reports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class DivergenceEvent:
    """What the loop saw. ``step`` counts training steps over all epochs, from 1."""

    kind: Literal["non_finite_loss"]
    epoch: int
    step: int
    loss: float
