"""``NumpyBackend``: a from-scratch NumPy MLP trained with mini-batches, and its config sections.

The runner validates the ``model``, ``train`` and ``backend`` sections of an experiment
against ``Model``, ``Train`` and ``Options`` below, then builds one ``NumpyBackend`` per
trial and drives it as described in ``runner.backend``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from runner import Backend, BackendState, TrainConfig, bounds
from runner.data import Dataset
from runner.errors import SpecError, join_path

from plugins.backends.numpy_mlp.network import MLP, log_softmax
from plugins.backends.numpy_mlp.optimizers import copy_into, make_optimizer
from plugins.backends.numpy_mlp.schedules import scheduled_lr

#: Rows evaluated at once by ``evaluate``, to bound memory on large splits.
EVAL_CHUNK = 4096
#: Version of the layout of ``BackendState`` this backend writes and reads.
STATE_FORMAT = 1


@dataclass(frozen=True)
class Model:
    """The ``model`` section: the network's architecture."""

    hidden: tuple[int, ...] = field(default=(64,), metadata=bounds(doc="widths of the hidden layers, input side first; empty for softmax regression"))
    activation: Literal["relu", "tanh", "sigmoid"] = field(default="relu", metadata=bounds(doc="activation of every hidden layer"))
    batch_norm: bool = field(default=False, metadata=bounds(doc="batch-normalise every hidden layer's linear output (learned gamma, beta; no bias)"))
    init: Literal["auto", "he", "xavier"] = field(default="auto", metadata=bounds(doc='weight initialisation: "he" N(0, 2/fan_in), "xavier" N(0, 1/fan_in), "auto" He for relu, Xavier otherwise'))
    bn_momentum: float = field(default=0.9, metadata=bounds(ge=0, lt=1, doc="decay of the batch-norm running mean and variance: running = m * running + (1 - m) * batch"))
    bn_epsilon: float = field(default=1e-5, metadata=bounds(gt=0, doc="added to the variance before the square root in batch norm"))

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

    batch_size: int = field(default=64, metadata=bounds(ge=1, doc="examples per training step (the last batch of an epoch may be smaller)"))
    optimizer: Literal["gd", "momentum", "rmsprop", "adam"] = field(default="adam", metadata=bounds(doc="update rule"))
    lr: float = field(default=1e-3, metadata=bounds(gt=0, doc="base learning rate, before the schedule's decay"))
    momentum: float = field(default=0.9, metadata=bounds(ge=0, lt=1, doc='EWMA coefficient of the gradient: beta1 of "adam", the momentum of "momentum"'))
    beta2: float = field(default=0.999, metadata=bounds(ge=0, lt=1, doc='EWMA coefficient of the squared gradient, for "rmsprop" and "adam"'))
    epsilon: float = field(default=1e-8, metadata=bounds(gt=0, doc='added to the denominator of "rmsprop" and "adam" updates'))
    lr_decay: float = field(default=0.0, metadata=bounds(ge=0, doc="decay rate of the learning-rate schedule; 0 keeps the rate constant"))
    lr_schedule: Literal["inverse_time", "exponential", "step"] = field(default="inverse_time", metadata=bounds(doc="lr0/(1+decay*epoch), lr0*exp(-decay*epoch) or lr0*(1-decay)**(epoch//lr_step_epochs)"))
    lr_step_epochs: int = field(default=10, metadata=bounds(ge=1, doc='epochs between two decays of the "step" schedule'))

    def check(self, path: str) -> None:
        """The ``step`` schedule multiplies by ``1 - lr_decay``, which must stay positive."""
        if self.lr_schedule == "step" and self.lr_decay >= 1:
            raise SpecError(join_path(path, "lr_decay"), f'must be < 1 for lr_schedule "step", got {self.lr_decay}')


@dataclass(frozen=True)
class Options:
    """The ``backend`` section's options besides ``name``."""

    dtype: Literal["float32", "float64"] = field(default="float32", metadata=bounds(doc="floating-point type of parameters, data and all computation"))


class NumpyBackend(Backend):
    """A multilayer perceptron written in NumPy: softmax output, optional batch norm.

    Owns one ``np.random.Generator`` seeded with the trial's seed: it draws the initial
    weights, then each epoch's shuffle. For inspection (tests, debugging) it exposes
    ``network`` (the ``MLP`` shape), ``params`` and ``running`` (parameter and batch-norm
    running-statistic dicts) and ``optimizer``; change them only through ``load_state``.

    With batch norm, a final batch of a single example trains with its own (degenerate)
    statistics but leaves the running statistics alone: one example has no unbiased
    variance.
    """

    name = "numpy"
    Model = Model
    Train = Train
    Options = Options
    live = ("lr", "momentum", "beta2")

    def __init__(self, *, model: Model, train: Train, options: Options, data: Dataset, seed: int) -> None:
        """Called once per trial, before the first epoch: casts the data to ``options.dtype``
        (once), draws the initial weights and creates zero optimizer moments."""
        if data.n_features < 1 or len(data.x_train) < 1:
            raise ValueError("the training split needs at least one example and one feature")
        self.model, self.train, self.options = model, train, options
        self.dtype = np.dtype(options.dtype)
        self._x_train = np.ascontiguousarray(data.x_train, dtype=self.dtype)
        self._y_train = np.ascontiguousarray(data.y_train, dtype=np.intp)
        self._x_val = np.ascontiguousarray(data.x_val, dtype=self.dtype)
        self._y_val = np.ascontiguousarray(data.y_val, dtype=np.intp)
        self._m = len(self._x_train)
        self._batch_size = min(train.batch_size, self._m)
        # Reused batch buffers: a step copies its rows in instead of allocating new arrays.
        self._xb = np.empty((self._batch_size, data.n_features), dtype=self.dtype)
        self._yb = np.empty(self._batch_size, dtype=np.intp)

        self.network = MLP(
            n_inputs=data.n_features,
            hidden=tuple(model.hidden),
            n_classes=data.n_classes,
            activation=model.activation,
            batch_norm=model.batch_norm,
            bn_epsilon=model.bn_epsilon,
        )
        self._rng = np.random.default_rng(seed)
        self.params = self.network.init_params(self._rng, model.init_scheme, self.dtype)
        self.running = self.network.init_running(self.dtype)
        self._bn_layers = tuple(range(1, len(model.hidden) + 1)) if model.batch_norm else ()
        self.optimizer = make_optimizer(train.optimizer, self.params, train.epsilon)

        self._lr0 = float(train.lr)
        self._beta1 = float(train.momentum)
        self._beta2 = float(train.beta2)
        self._epoch = -1  # no epoch begun yet
        self._perm = np.arange(0, dtype=np.int64)
        self._pos = 0
        self._lr = self._lr0

    # -- the training loop ----------------------------------------------------------------

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

    def train_step(self) -> float:
        """Called ``steps_per_epoch`` times per epoch: trains on the next mini-batch of the
        epoch's permutation and returns its mean loss, computed before the update.

        Changes the parameters, the optimizer's moments and ``t``, the batch-norm running
        statistics and the position in the epoch. Raises RuntimeError when the epoch's
        batches are used up (or no epoch was begun).
        """
        start = self._pos
        if start >= len(self._perm):
            if self._epoch < 0:
                raise RuntimeError("train_step called before begin_epoch: call begin_epoch(0) first")
            raise RuntimeError(
                f"epoch {self._epoch} is over after {self.steps_per_epoch} steps; "
                f"call begin_epoch({self._epoch + 1}) before the next train_step"
            )
        idx = self._perm[start:start + self._batch_size]
        k = len(idx)
        x = np.take(self._x_train, idx, axis=0, out=self._xb[:k], mode="clip")
        y = np.take(self._y_train, idx, out=self._yb[:k], mode="clip")
        self._pos = start + k

        # Overflow here means the run is diverging: the runner sees the non-finite loss and
        # reports it as a divergence event, so NumPy's warnings would only be noise.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            loss, grads, caches = self.network.loss_and_grads(self.params, x, y)
            if self._bn_layers and k > 1:
                self._update_running(caches, k)
            self.optimizer.step(self.params, grads, self._lr, self._beta1, self._beta2)
        return float(loss)

    def _update_running(self, caches, k: int) -> None:
        """EWMA of the batch mean and the unbiased batch variance (PyTorch's convention).

        A batch of one example has no unbiased variance; ``train_step`` skips it here.
        """
        mom = self.model.bn_momentum
        keep = 1.0 - mom
        var_weight = keep * k / (k - 1)
        for l in self._bn_layers:
            c = caches[l - 1]
            mean, var = self.running[f"running_mean{l}"], self.running[f"running_var{l}"]
            mean *= mom
            mean += keep * c.mean
            var *= mom
            var += var_weight * c.var

    def evaluate(self, split: Literal["train", "val"]) -> dict[str, float]:
        """Called after an epoch (and whenever the loop wants metrics): mean loss and
        accuracy over the whole split in evaluation mode (batch norm uses the running
        statistics), in chunks of ``EVAL_CHUNK`` rows. Changes nothing."""
        if split == "train":
            x, y = self._x_train, self._y_train
        elif split == "val":
            x, y = self._x_val, self._y_val
        else:
            raise ValueError(f'split must be "train" or "val", got {split!r}')
        n = len(x)
        if n == 0:
            return {"loss": float("nan"), "acc": float("nan")}
        loss_sum = 0.0
        correct = 0
        for lo in range(0, n, EVAL_CHUNK):
            xc, yc = x[lo:lo + EVAL_CHUNK], y[lo:lo + EVAL_CHUNK]
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a diverged model
                logits = self.network.forward_eval(self.params, self.running, xc)
                logp = np.take_along_axis(log_softmax(logits), yc[:, None], axis=1)
            loss_sum -= float(logp.sum(dtype=np.float64))
            correct += int((logits.argmax(axis=1) == yc).sum())
        return {"loss": loss_sum / n, "acc": correct / n}

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
        self._lr = scheduled_lr(self._lr0, self._epoch, schedule=t.lr_schedule, decay=t.lr_decay,
                                step_epochs=t.lr_step_epochs)

    def _decay_factor(self) -> float:
        """The schedule's multiplier for the current epoch (1 before the first epoch)."""
        if self._epoch < 0:
            return 1.0
        t = self.train
        return scheduled_lr(1.0, self._epoch, schedule=t.lr_schedule, decay=t.lr_decay, step_epochs=t.lr_step_epochs)

    # -- checkpoints ----------------------------------------------------------------------

    def reshuffle(self, salt: int) -> None:
        """Called after a rollback: a new generator for the data order, derived from the
        current generator's state and ``salt``; the rest of the current epoch is reordered."""
        entropy = int(self._rng.integers(2**63))
        self._rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(int(salt),)))
        if self._pos < len(self._perm):
            self._perm[self._pos:] = self._rng.permutation(self._perm[self._pos:])

    def state(self) -> BackendState:
        """Called when the loop checkpoints (between steps): copies of everything needed to
        continue bit for bit. Changes nothing.

        ``arrays``: ``param/<name>``, ``running/<name>``, ``opt/<slot>/<name>`` and ``perm``
        (this epoch's row order). ``meta``: format, dtype, optimizer, epoch, position in the
        epoch, update count ``t``, hyperparameters in force, the base ``lr`` of the schedule
        (``lr_base``) and the generator state (its big
        integers as decimal strings).
        """
        arrays: dict[str, np.ndarray] = {f"param/{k}": v.copy() for k, v in self.params.items()}
        arrays.update({f"running/{k}": v.copy() for k, v in self.running.items()})
        arrays.update({f"opt/{k}": v for k, v in self.optimizer.state_arrays().items()})
        arrays["perm"] = self._perm.copy()
        meta: dict[str, Any] = {
            "format": STATE_FORMAT,
            "backend": self.name,
            "dtype": self.dtype.name,
            "optimizer": self.optimizer.name,
            "epoch": self._epoch,
            "position": self._pos,
            "t": self.optimizer.t,
            "hyperparameters": self.hyperparameters(),
            "lr_base": self._lr0,
            "rng": _rng_state_to_json(self._rng.bit_generator.state),
        }
        return BackendState(arrays=arrays, meta=meta)

    def load_state(self, state: BackendState) -> None:
        """Called instead of training from scratch when a trial resumes: restores a
        ``state()`` taken from a backend built with the same config and data, so that the
        next step is the one that followed it. Copies the arrays (the caller's ``state``
        stays independent) and replaces the parameters, running statistics, optimizer
        moments and ``t``, the epoch's permutation and position, the hyperparameters
        and the generator state. Raises ValueError when the state does not fit.
        """
        meta, arrays = state.meta, state.arrays
        if meta.get("format") != STATE_FORMAT or meta.get("backend") != self.name:
            raise ValueError(f"not a {self.name!r} backend state of format {STATE_FORMAT}")
        if meta.get("dtype") != self.dtype.name or meta.get("optimizer") != self.optimizer.name:
            raise ValueError(
                f"state is for dtype {meta.get('dtype')!r} with optimizer {meta.get('optimizer')!r}; "
                f"this backend uses {self.dtype.name!r} with {self.optimizer.name!r}"
            )
        expected = {f"param/{k}" for k in self.params} | {f"running/{k}" for k in self.running} | {"perm"}
        expected |= {f"opt/{slot}/{k}" for slot, buf in self.optimizer.moments.items() for k in buf}
        if set(arrays) != expected:
            missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
            raise ValueError(f"state arrays do not match this network: missing {missing}, unexpected {extra}")
        epoch, pos = int(meta["epoch"]), int(meta["position"])
        perm = np.asarray(arrays["perm"])
        if epoch >= 0 and not (perm.shape == (self._m,) and _is_permutation(perm, self._m)):
            raise ValueError(f"state's permutation is not a permutation of the {self._m} training rows")
        if not 0 <= pos <= len(perm):
            raise ValueError(f"state's position {pos} lies outside its permutation of {len(perm)} rows")
        hp = meta["hyperparameters"]
        rng_state = _rng_state_from_json(meta["rng"])

        for k, v in self.params.items():
            copy_into(v, arrays[f"param/{k}"], f"param/{k}")
        for k, v in self.running.items():
            copy_into(v, arrays[f"running/{k}"], f"running/{k}")
        self.optimizer.load_state_arrays(
            {k[len("opt/"):]: v for k, v in arrays.items() if k.startswith("opt/")}, int(meta["t"])
        )
        self._perm = perm.astype(np.int64, copy=True)
        self._epoch, self._pos = epoch, pos
        self._lr0, self._lr = float(meta["lr_base"]), float(hp["lr"])
        self._beta1, self._beta2 = float(hp["momentum"]), float(hp["beta2"])
        self._rng.bit_generator.state = rng_state


def _is_permutation(perm: np.ndarray, m: int) -> bool:
    """True if ``perm`` holds each of 0..m-1 exactly once (O(m), no sort)."""
    if perm.dtype.kind not in "iu" or (m and (perm.min() < 0 or perm.max() >= m)):
        return False
    return bool(np.bincount(perm, minlength=m).max(initial=0) <= 1)


def _rng_state_to_json(state: dict[str, Any]) -> dict[str, Any]:
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


def _rng_state_from_json(data: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``_rng_state_to_json``: a state ``bit_generator.state`` accepts."""
    if data.get("bit_generator") != "PCG64":
        raise ValueError(f"unsupported bit generator {data.get('bit_generator')!r}")
    return {
        "bit_generator": "PCG64",
        "state": {"state": int(data["state"]), "inc": int(data["inc"])},
        "has_uint32": int(data["has_uint32"]),
        "uinteger": int(data["uinteger"]),
    }
