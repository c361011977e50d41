"""Clean stops on Ctrl-C (SIGINT) and SIGTERM: finish the step, snapshot, exit resumable.

The signal handler only sets a flag; the trial loop reads it between steps (one attribute
read per step), saves a durable snapshot and raises ``Interrupted``. A second Ctrl-C
stops at once (the last durable snapshot still allows a resume).
"""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager

from runner.errors import RunnerError


class Interrupted(RunnerError):
    """The run was stopped by a signal after saving what it needs to resume."""

    exit_code = 130


class _Flag:
    requested = False


FLAG = _Flag()  # signals are process-wide, and so is this flag


@contextmanager
def graceful_interrupts():
    """Within this block, SIGINT and SIGTERM ask the loop to stop at the next step."""

    def handler(signum, frame):
        if FLAG.requested:
            raise KeyboardInterrupt
        FLAG.requested = True
        print(
            f"\n{signal.Signals(signum).name}: stopping after this step and saving a snapshot "
            "(Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield FLAG
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        FLAG.requested = False
