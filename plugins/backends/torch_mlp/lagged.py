"""Reading each step's loss from a GPU without making the host wait for it.

``train_step`` must give the loop a loss to check for divergence, and reading a GPU tensor
from the host waits for the GPU to finish. ``LaggedLosses`` copies the step's loss,
asynchronously, into pinned host memory behind a CUDA event, and hands back the loss of
the *previous* step, whose copy is done or nearly so: the GPU always has the next step
queued, and a divergence is seen one step late (the rollback that follows restores a
snapshot anyway). ``drain`` gives the rest at the end of an epoch and before a mid-epoch
snapshot (a backend's ``pending_losses``). Used by both Torch backends, on CUDA only.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from runner.plugins.backends.torch_mlp.lazy import lazy_import

torch = lazy_import("torch")


class LaggedLosses:
    """Losses on their way from the GPU to the host, oldest first."""

    def __init__(self) -> None:
        self._queue: deque[tuple[Any, Any]] = deque()  # (pinned host copy, CUDA event)

    def push(self, loss: torch.Tensor) -> float | None:
        """Called after a step: queue its (detached) loss; the previous step's, or None at first."""
        pinned = torch.empty((), dtype=loss.dtype, pin_memory=True)
        pinned.copy_(loss, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._queue.append((pinned, event))
        if len(self._queue) < 2:
            return None
        return self._pop()

    def drain(self) -> list[float]:
        """Every loss not handed back yet, oldest first (waits for the GPU)."""
        losses = []
        while self._queue:
            losses.append(self._pop())
        return losses

    def clear(self) -> None:
        """Forget the queued losses (a restored state continues from another step)."""
        self._queue.clear()

    def _pop(self) -> float:
        pinned, event = self._queue.popleft()
        event.synchronize()
        return float(pinned)
