"""The prepared data set in shared memory: copied once by the driver, mapped by every worker.

A worker process used to receive the whole ``Dataset`` pickled (a copy per worker, and the
time to pickle, send and unpickle it on every start). ``SharedDataset.share`` copies its
arrays once into one block of POSIX shared memory (``multiprocessing.shared_memory``); what
a worker receives is the block's name and where each array lies in it, and
``SharedDataset.attach`` gives back a ``Dataset`` whose arrays are views of that one block:
no copy, however many workers there are or however often one is replaced. The driver
unlinks the block when the run's workers are done (``close``); if the driver dies first,
multiprocessing's resource tracker unlinks it. Where the shared memory file system has no
room for the data, workers receive it pickled, as a spawned worker always did.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from runner import Dataset

ARRAYS = ("x_train", "y_train", "x_val", "y_val")
ALIGN = 64  # each array starts on a cache line
SHM_FOLDER = "/dev/shm"
_ATTACHED: dict[str, shared_memory.SharedMemory] = {}  # in a worker: the blocks its data sets are views of


@dataclass(frozen=True)
class SharedDataset:
    """What a worker receives instead of the data: picklable, a few hundred bytes."""

    block: str  # the shared memory block's name
    layout: tuple[tuple[str, int, tuple[int, ...], str], ...]  # (field, offset, shape, dtype)
    fields: dict[str, Any]  # the Dataset's other fields (name, classes, task)

    @classmethod
    def share(cls, dataset: Dataset) -> tuple[SharedDataset, shared_memory.SharedMemory] | None:
        """Called once by the driver: the descriptor, and the block, which the driver keeps
        (and closes and unlinks at the end of the run). None if the shared memory file
        system has no room for the data (a container's /dev/shm is often 64 MB): copying
        into a block past its end would kill the driver with SIGBUS."""
        layout, size = [], 0
        for name in ARRAYS:
            array = getattr(dataset, name)
            size = -(-size // ALIGN) * ALIGN
            layout.append((name, size, tuple(array.shape), array.dtype.str))
            size += array.nbytes
        if not room_for(size):
            return None
        block = shared_memory.SharedMemory(create=True, size=max(size, 1))
        try:
            for name, offset, shape, dtype in layout:
                np.ndarray(shape, dtype, buffer=block.buf, offset=offset)[...] = getattr(dataset, name)
        except BaseException:
            close(block)
            raise
        others = {f.name: getattr(dataset, f.name) for f in dataclasses.fields(dataset) if f.name not in ARRAYS}
        return cls(block.name, tuple(layout), others), block

    def attach(self) -> Dataset:
        """Called in a worker: the data set as views of the block (held open as long as the
        worker lives: the arrays are its memory)."""
        if self.block not in _ATTACHED:
            _ATTACHED[self.block] = shared_memory.SharedMemory(name=self.block)
        block = _ATTACHED[self.block]
        arrays = {
            name: np.ndarray(shape, np.dtype(dtype), buffer=block.buf, offset=offset)
            for name, offset, shape, dtype in self.layout
        }
        return Dataset(**self.fields, **arrays)


def room_for(size: int, folder: str = SHM_FOLDER) -> bool:
    """Whether ``folder`` (where Linux keeps shared memory blocks) has ``size`` bytes free,
    with a margin; True where there is no such folder (macOS keeps them in the kernel)."""
    try:
        info = os.statvfs(folder)
    except (OSError, AttributeError):
        return True
    return info.f_bavail * info.f_frsize >= size + (16 << 20)


def close(block: shared_memory.SharedMemory) -> None:
    """The driver's end of a block: unmap it and remove its name."""
    block.close()
    try:
        block.unlink()
    except FileNotFoundError:  # already gone (the resource tracker, or a second close)
        pass
