"""Learning-rate decay by epoch (epochs count from 0, so epoch 0 trains at the base rate).

* ``inverse_time``: ``lr0 / (1 + decay * epoch)``
* ``exponential``:  ``lr0 * exp(-decay * epoch)``
* ``step``:         ``lr0 * (1 - decay) ** (epoch // step_epochs)``  (needs decay < 1)
"""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["inverse_time", "exponential", "step"]


def scheduled_lr(lr0: float, epoch: int, *, schedule: Schedule, decay: float, step_epochs: int) -> float:
    """The learning rate in force during ``epoch`` for base rate ``lr0``."""
    if schedule == "inverse_time":
        return lr0 / (1.0 + decay * epoch)
    if schedule == "exponential":
        return lr0 * math.exp(-decay * epoch)
    if schedule == "step":
        return lr0 * (1.0 - decay) ** (epoch // step_epochs)
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")
