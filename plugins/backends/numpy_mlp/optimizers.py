"""Parameter updates: gradient descent, momentum, RMSprop and Adam, with their moments.

An optimizer owns one moment buffer per parameter and slot (``v`` for the first moment,
``s`` for the second), all zero at the start, and a scratch buffer per parameter, so that
an update allocates nothing. ``step`` changes the parameters in place::

    gd        w -= lr * g
    momentum  v = b1 * v + (1 - b1) * g;        w -= lr * v
    rmsprop   s = b2 * s + (1 - b2) * g**2;     w -= lr * g / (sqrt(s) + eps)
    adam      v, s as above, t = updates so far (this one included);
              w -= lr * (v / (1 - b1**t)) / (sqrt(s / (1 - b2**t)) + eps)

The hyperparameters (``lr``, ``b1``, ``b2``) are passed to each ``step``, so a change
between two steps takes effect at the next one; ``epsilon`` is fixed at construction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import numpy as np

OptimizerName = Literal["gd", "momentum", "rmsprop", "adam"]


class Optimizer(ABC):
    """Base class: the moment buffers, the update counter ``t`` and the update loop."""

    name: ClassVar[str]
    #: Moment buffers kept per parameter, by slot name.
    slots: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: dict[str, np.ndarray], epsilon: float) -> None:
        """Zero moments shaped like ``params`` (same dtype); ``t`` starts at 0."""
        self.epsilon = float(epsilon)
        self.t = 0
        self.moments: dict[str, dict[str, np.ndarray]] = {
            slot: {k: np.zeros_like(p) for k, p in params.items()} for slot in self.slots
        }
        self._scratch = {k: np.empty_like(p) for k, p in params.items()}

    def step(
        self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float, b1: float, b2: float
    ) -> None:
        """Apply one update to every parameter in place, counting it in ``t``."""
        self.t += 1
        for key, w in params.items():
            self._update(key, w, grads[key], lr, b1, b2)

    @abstractmethod
    def _update(self, key: str, w: np.ndarray, g: np.ndarray, lr: float, b1: float, b2: float) -> None:
        """Update one parameter ``w`` in place from its gradient ``g`` (and its moments)."""

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Copies of the moment buffers, keyed ``"{slot}/{parameter}"``."""
        return {f"{slot}/{k}": a.copy() for slot, buf in self.moments.items() for k, a in buf.items()}

    def load_state_arrays(self, arrays: dict[str, np.ndarray], t: int) -> None:
        """Copy moments saved by ``state_arrays`` into the buffers, and set ``t``.

        Raises ValueError when a buffer is missing or extra, or differs in shape or dtype.
        """
        expected = {f"{slot}/{k}" for slot, buf in self.moments.items() for k in buf}
        if set(arrays) != expected:
            missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
            raise ValueError(f"{self.name} optimizer state mismatch: missing {missing}, unexpected {extra}")
        for slot, buf in self.moments.items():
            for k, a in buf.items():
                copy_into(a, arrays[f"{slot}/{k}"], f"{slot}/{k}")
        self.t = int(t)


class GradientDescent(Optimizer):
    name = "gd"

    def _update(self, key, w, g, lr, b1, b2):
        tmp = self._scratch[key]
        np.multiply(g, lr, out=tmp)
        w -= tmp


class Momentum(Optimizer):
    name = "momentum"
    slots = ("v",)

    def _update(self, key, w, g, lr, b1, b2):
        v, tmp = self.moments["v"][key], self._scratch[key]
        v *= b1
        np.multiply(g, 1.0 - b1, out=tmp)
        v += tmp
        np.multiply(v, lr, out=tmp)
        w -= tmp


class RMSprop(Optimizer):
    name = "rmsprop"
    slots = ("s",)

    def _update(self, key, w, g, lr, b1, b2):
        s, tmp = self.moments["s"][key], self._scratch[key]
        s *= b2
        np.square(g, out=tmp)
        tmp *= 1.0 - b2
        s += tmp
        np.sqrt(s, out=tmp)
        tmp += self.epsilon
        np.divide(g, tmp, out=tmp)
        tmp *= lr
        w -= tmp


class Adam(Optimizer):
    name = "adam"
    slots = ("v", "s")

    def _update(self, key, w, g, lr, b1, b2):
        """The bias corrections use this update's ``t`` (1 on the first)."""
        c1 = 1.0 - b1**self.t
        c2 = 1.0 - b2**self.t
        v, s, tmp = self.moments["v"][key], self.moments["s"][key], self._scratch[key]
        v *= b1
        np.multiply(g, 1.0 - b1, out=tmp)
        v += tmp
        s *= b2
        np.square(g, out=tmp)
        tmp *= 1.0 - b2
        s += tmp
        np.divide(s, c2, out=tmp)
        np.sqrt(tmp, out=tmp)
        tmp += self.epsilon
        np.divide(v, tmp, out=tmp)
        tmp *= lr / c1
        w -= tmp


OPTIMIZERS: dict[str, type[Optimizer]] = {cls.name: cls for cls in (GradientDescent, Momentum, RMSprop, Adam)}


def make_optimizer(name: OptimizerName, params: dict[str, np.ndarray], epsilon: float) -> Optimizer:
    """A fresh optimizer ``name`` for ``params`` (zero moments, ``t`` = 0)."""
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}") from None
    return cls(params, epsilon)


def copy_into(dst: np.ndarray, src: np.ndarray, what: str) -> None:
    """Copy saved array ``src`` into buffer ``dst``; ValueError naming ``what`` on a shape
    or dtype mismatch."""
    src = np.asarray(src)
    if src.shape != dst.shape or src.dtype != dst.dtype:
        raise ValueError(f"state array {what}: expected {dst.dtype} {dst.shape}, got {src.dtype} {src.shape}")
    np.copyto(dst, src)
