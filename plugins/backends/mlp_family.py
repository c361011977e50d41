"""The model family both built-in backends train, and what they share besides the math.

``Model`` and ``Train`` are the ``model`` and ``train`` sections of an experiment file; the
NumPy and Torch backends accept exactly the same ones, so an experiment moves from one to
the other by changing ``backend.name`` alone. ``MiniBatchBackend`` holds what does not
depend on where the arithmetic runs: the data order (a NumPy ``Generator`` seeded with the
trial's seed, which also draws the initial weights, so both backends start from the same
weights and see the same batches), the learning-rate schedule and the live
hyperparameters a nudge sets between two steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

import numpy as np

from runner import Backend, ModelSize, SpecError, TrainConfig, bounds, join_path
from runner.plugins.backends.schedules import scheduled_lr

#: Moment arrays each optimizer keeps per parameter (momentum: velocity; RMSprop: the mean
#: square; Adam: both), for ``estimate``.
OPTIMIZER_MOMENTS = {"gd": 0, "momentum": 1, "rmsprop": 1, "adam": 2}
#: Arrays of a batch's width per layer a training step holds: the linear output, the
#: normalised one, the activation and its gradient.
ACTIVATION_COPIES = 4
#: Rows evaluated at once (both backends' ``EVAL_CHUNK``).
EVAL_ROWS = 4096
#: Validation rows whose hidden outputs ``dead_units`` compares (the first ones: the same each epoch).
DEAD_SAMPLE = 512


@dataclass(frozen=True)
class Model:
    """The ``model`` section: the network's architecture."""

    hidden: tuple[int, ...] = field(
        default=(64,),
        metadata=bounds(doc="widths of the hidden layers, input side first; empty for softmax regression"),
    )
    activation: Literal["relu", "tanh", "sigmoid"] = field(
        default="relu", metadata=bounds(doc="activation of every hidden layer")
    )
    batch_norm: bool = field(
        default=False,
        metadata=bounds(doc="batch-normalise every hidden layer's linear output (learned gamma, beta; no bias)"),
    )
    init: Literal["auto", "he", "xavier"] = field(
        default="auto",
        metadata=bounds(
            doc='weight initialisation: "he" N(0, 2/fan_in), "xavier" N(0, 1/fan_in), '
            '"auto" He for relu, Xavier otherwise'
        ),
    )
    bn_momentum: float = field(
        default=0.9,
        metadata=bounds(
            ge=0, lt=1, doc="decay of the batch-norm running mean and variance: running = m * running + (1 - m) * batch"
        ),
    )
    bn_epsilon: float = field(
        default=1e-5, metadata=bounds(gt=0, doc="added to the variance before the square root in batch norm")
    )

    def check(self, path: str) -> None:
        """Every hidden width must be at least 1."""
        for i, width in enumerate(self.hidden):
            if width < 1:
                raise SpecError(join_path(path, "hidden", i), f"must be >= 1, got {width}")

    @property
    def init_scheme(self) -> Literal["he", "xavier"]:
        """The initialisation ``init`` stands for, with ``auto`` resolved by the activation."""
        if self.init != "auto":
            return self.init
        return "he" if self.activation == "relu" else "xavier"


@dataclass(frozen=True)
class Train(TrainConfig):
    """The ``train`` section: mini-batches, the optimizer and the learning-rate schedule."""

    batch_size: int = field(
        default=64, metadata=bounds(ge=1, doc="examples per training step (the last batch of an epoch may be smaller)")
    )
    optimizer: Literal["gd", "momentum", "rmsprop", "adam"] = field(default="adam", metadata=bounds(doc="update rule"))
    lr: float = field(default=1e-3, metadata=bounds(gt=0, doc="base learning rate, before the schedule's decay"))
    momentum: float = field(
        default=0.9,
        metadata=bounds(
            ge=0, lt=1, doc='EWMA coefficient of the gradient: beta1 of "adam", the momentum of "momentum"'
        ),
    )
    beta2: float = field(
        default=0.999,
        metadata=bounds(ge=0, lt=1, doc='EWMA coefficient of the squared gradient, for "rmsprop" and "adam"'),
    )
    epsilon: float = field(
        default=1e-8, metadata=bounds(gt=0, doc='added to the denominator of "rmsprop" and "adam" updates')
    )
    lr_decay: float = field(
        default=0.0, metadata=bounds(ge=0, doc="decay rate of the learning-rate schedule; 0 keeps the rate constant")
    )
    lr_schedule: Literal["inverse_time", "exponential", "step"] = field(
        default="inverse_time",
        metadata=bounds(doc="lr0/(1+decay*epoch), lr0*exp(-decay*epoch) or lr0*(1-decay)**(epoch//lr_step_epochs)"),
    )
    lr_step_epochs: int = field(
        default=10, metadata=bounds(ge=1, doc='epochs between two decays of the "step" schedule')
    )

    def check(self, path: str) -> None:
        """The ``step`` schedule multiplies by ``1 - lr_decay``, which must stay positive."""
        if self.lr_schedule == "step" and self.lr_decay >= 1:
            raise SpecError(join_path(path, "lr_decay"), f'must be < 1 for lr_schedule "step", got {self.lr_decay}')


class MiniBatchBackend(Backend):
    """The data order, the schedule and the live hyperparameters of the MLP family.

    A subclass sets up its arrays in ``__init__`` after calling ``_start``, and implements
    the arithmetic (``train_step``, ``evaluate``) and the state of its own arrays. The
    order of an epoch is ``self._perm`` (NumPy), its next row ``self._pos``;
    ``_order_changed`` is called whenever ``_perm`` is replaced or reordered.
    """

    Model = Model
    Train = Train
    live = ("lr", "momentum", "beta2")

    @classmethod
    def estimate(
        cls, *, model: Model, train: Train, options: Any, examples: int, features: int, classes: int
    ) -> ModelSize:
        """Called when an experiment file is read and once its data are loaded, before any
        trial builds its network: the exact parameter count of the MLP and an estimate of
        the bytes one trial holds. Allocates nothing."""
        widths = (features, *model.hidden, classes)
        parameters = running = largest = 0
        for layer, (fan_in, fan_out) in enumerate(pairwise(widths)):
            normalised = model.batch_norm and layer < len(model.hidden)  # gamma and beta instead of a bias
            parameters += fan_in * fan_out + (2 * fan_out if normalised else fan_out)
            running += 2 * fan_out if normalised else 0
            largest = max(largest, fan_in * fan_out)
        itemsize = 8 if getattr(options, "dtype", "float32") == "float64" else 4
        state = (parameters * (1 + OPTIMIZER_MOMENTS[train.optimizer]) + running) * itemsize + examples * 8
        batch = min(train.batch_size, examples)
        working = (
            parameters * itemsize  # gradients
            + largest * 8  # a layer's weights drawn in float64 before the cast
            + batch * sum(widths) * itemsize * ACTIVATION_COPIES
            + min(EVAL_ROWS, examples) * max(widths) * itemsize * 2
            + examples * (features * itemsize + 8)  # the backend's own copy of the data and labels
        )
        layers = " -> ".join(str(w) for w in widths)
        return ModelSize(parameters, state + working, state, f"layers {layers}")

    def _start(self, model: Model, train: Train, n_train: int, seed: int) -> np.random.Generator:
        """Called first by a subclass's ``__init__``: the generator that draws the initial
        weights (first) and each epoch's order (after), and the schedule at its start."""
        self.model, self.train = model, train
        self._m = n_train
        self._batch_size = min(train.batch_size, n_train)
        self._rng = np.random.default_rng(seed)
        self._lr0 = self._lr = float(train.lr)
        self._beta1, self._beta2 = float(train.momentum), float(train.beta2)
        self._epoch = -1  # no epoch begun yet
        self._perm = np.arange(0, dtype=np.int64)
        self._pos = 0
        return self._rng

    def _order_changed(self) -> None:
        """Called after ``_perm`` changed (a new epoch, a reshuffle, a restored state)."""

    # -- the data order ---------------------------------------------------------------------

    @property
    def steps_per_epoch(self) -> int:
        """``ceil(m / batch_size)``: the number of ``train_step`` calls in one epoch."""
        return math.ceil(self._m / self._batch_size)

    @property
    def lr_in_force(self) -> float:
        """The learning rate the next step uses: the base ``lr`` after the epoch's decay."""
        return self._lr

    @property
    def epoch(self) -> int:
        """The epoch begun last (-1 before the first ``begin_epoch``)."""
        return self._epoch

    def begin_epoch(self, epoch: int) -> None:
        """Called before each epoch's first step: draws a fresh permutation of the training
        rows from the backend's generator, rewinds to its start and sets the scheduled
        learning rate for ``epoch`` (counted from 0)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self._epoch = int(epoch)
        self._perm = self._rng.permutation(self._m)
        self._pos = 0
        self._apply_schedule()
        self._order_changed()

    def _next_rows(self) -> tuple[int, int]:
        """The next mini-batch as ``(start, stop)`` in ``_perm``; advances the position.
        Raises RuntimeError when the epoch's batches are used up (or no epoch was begun)."""
        start = self._pos
        if start >= len(self._perm):
            if self._epoch < 0:
                raise RuntimeError("train_step called before begin_epoch: call begin_epoch(0) first")
            raise RuntimeError(
                f"epoch {self._epoch} is over after {self.steps_per_epoch} steps; "
                f"call begin_epoch({self._epoch + 1}) before the next train_step"
            )
        self._pos = min(start + self._batch_size, len(self._perm))
        return start, self._pos

    def reshuffle(self, salt: int) -> None:
        """Called after a rollback: a new generator for the data order, derived from the
        current generator's state and ``salt``; the rest of the current epoch is reordered."""
        entropy = int(self._rng.integers(2**63))
        self._rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(int(salt),)))
        if self._pos < len(self._perm):
            self._perm[self._pos :] = self._rng.permutation(self._perm[self._pos :])
        self._order_changed()

    # -- live hyperparameters ---------------------------------------------------------------

    def hyperparameters(self) -> dict[str, float]:
        """The live values in force: ``lr`` (after the schedule's decay), ``momentum``, ``beta2``."""
        return {"lr": self._lr, "momentum": self._beta1, "beta2": self._beta2}

    def set_hyperparameters(self, **values: float) -> None:
        """Called between steps (a nudge): change ``lr``, ``momentum`` and/or ``beta2``.

        Takes effect from the next ``train_step``. A new ``lr`` is the rate in force from
        now on; the schedule keeps decaying from it in later epochs (the base rate becomes
        ``lr / decay factor of this epoch``). All names and values are checked before any
        is applied: unknown names, ``lr < 0`` or a coefficient outside [0, 1) raise ValueError.
        """
        unknown = sorted(set(values) - set(self.live))
        if unknown:
            raise ValueError(
                f"unknown hyperparameter(s) {', '.join(unknown)} for backend {self.name!r}; "
                f"live ones: {', '.join(self.live)}"
            )
        checked: dict[str, float] = {}
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"{key} must be a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"{key} must be finite, got {value}")
            if key == "lr" and value < 0:
                raise ValueError(f"lr must be >= 0, got {value}")
            if key in ("momentum", "beta2") and not 0 <= value < 1:
                raise ValueError(f"{key} must be in [0, 1), got {value}")
            checked[key] = value
        if "lr" in checked:
            factor = self._decay_factor()
            self._lr0 = checked["lr"] / factor if factor > 0 else checked["lr"]
            self._lr = checked["lr"]
        self._beta1 = checked.get("momentum", self._beta1)
        self._beta2 = checked.get("beta2", self._beta2)

    def _apply_schedule(self) -> None:
        if self._epoch < 0:
            self._lr = self._lr0
            return
        t = self.train
        self._lr = scheduled_lr(
            self._lr0, self._epoch, schedule=t.lr_schedule, decay=t.lr_decay, step_epochs=t.lr_step_epochs
        )

    def _decay_factor(self) -> float:
        """The schedule's multiplier for the current epoch (1 before the first epoch)."""
        if self._epoch < 0:
            return 1.0
        t = self.train
        return scheduled_lr(1.0, self._epoch, schedule=t.lr_schedule, decay=t.lr_decay, step_epochs=t.lr_step_epochs)

    # -- state shared by both backends ------------------------------------------------------

    def _order_meta(self) -> dict[str, Any]:
        """The ``meta`` entries for the data order and the schedule, for ``state()``."""
        return {
            "epoch": self._epoch,
            "position": self._pos,
            "hyperparameters": self.hyperparameters(),
            "lr_base": self._lr0,
            "rng": rng_state_to_json(self._rng.bit_generator.state),
        }

    def _check_order(self, meta: dict[str, Any], perm: np.ndarray) -> tuple[int, int, dict]:
        """Validate a saved order before anything is restored: ``(epoch, position, rng state)``."""
        epoch, pos = int(meta["epoch"]), int(meta["position"])
        if epoch >= 0 and not (perm.shape == (self._m,) and is_permutation(perm, self._m)):
            raise ValueError(f"state's permutation is not a permutation of the {self._m} training rows")
        if not 0 <= pos <= len(perm):
            raise ValueError(f"state's position {pos} lies outside its permutation of {len(perm)} rows")
        return epoch, pos, rng_state_from_json(meta["rng"])

    def _restore_order(self, meta: dict[str, Any], perm: np.ndarray, checked: tuple[int, int, dict]) -> None:
        """Put the order, the schedule and the live values back, as ``_order_meta`` saved them."""
        epoch, pos, rng_state = checked
        hp = meta["hyperparameters"]
        self._perm = perm.astype(np.int64, copy=True)
        self._epoch, self._pos = epoch, pos
        self._lr0, self._lr = float(meta["lr_base"]), float(hp["lr"])
        self._beta1, self._beta2 = float(hp["momentum"]), float(hp["beta2"])
        self._rng.bit_generator.state = rng_state
        self._order_changed()


def is_permutation(perm: np.ndarray, m: int) -> bool:
    """True if ``perm`` holds each of 0..m-1 exactly once (O(m), no sort)."""
    if perm.dtype.kind not in "iu" or (m and (perm.min() < 0 or perm.max() >= m)):
        return False
    return bool(np.bincount(perm, minlength=m).max(initial=0) <= 1)


def rng_state_to_json(state: dict[str, Any]) -> dict[str, Any]:
    """A PCG64 generator state with its 128-bit integers written as decimal strings."""
    if state.get("bit_generator") != "PCG64":
        raise ValueError(f"unsupported bit generator {state.get('bit_generator')!r}")
    return {
        "bit_generator": "PCG64",
        "state": str(state["state"]["state"]),
        "inc": str(state["state"]["inc"]),
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def rng_state_from_json(data: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``rng_state_to_json``: a state ``bit_generator.state`` accepts."""
    if data.get("bit_generator") != "PCG64":
        raise ValueError(f"unsupported bit generator {data.get('bit_generator')!r}")
    return {
        "bit_generator": "PCG64",
        "state": {"state": int(data["state"]), "inc": int(data["inc"])},
        "has_uint32": int(data["has_uint32"]),
        "uinteger": int(data["uinteger"]),
    }
