"""``NumpyBackend``: a from-scratch NumPy MLP trained with mini-batches.

The runner validates the ``model``, ``train`` and ``backend`` sections of an experiment
against ``Model``, ``Train`` (the MLP family's, in ``runner.plugins.backends.mlp_family``) and
``Options`` below, then builds one ``NumpyBackend`` per trial and drives it as described
in ``runner.backend``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from runner import BackendState, Dataset, bounds, dead_fraction
from runner.plugins.backends.mlp_family import DEAD_SAMPLE, MiniBatchBackend, Model, Train
from runner.plugins.backends.numpy_mlp.network import MLP, log_softmax
from runner.plugins.backends.numpy_mlp.optimizers import copy_into, make_optimizer

#: Rows evaluated at once by ``evaluate``, to bound memory on large splits.
EVAL_CHUNK = 4096
#: Version of the layout of ``BackendState`` this backend writes and reads.
STATE_FORMAT = 1


@dataclass(frozen=True)
class Options:
    """The ``backend`` section's options besides ``name``."""

    dtype: Literal["float32", "float64"] = field(
        default="float32", metadata=bounds(doc="floating-point type of parameters, data and all computation")
    )


class NumpyBackend(MiniBatchBackend):
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
    Options = Options

    def __init__(self, *, model: Model, train: Train, options: Options, data: Dataset, seed: int) -> None:
        """Called once per trial, before the first epoch: flattens each example's inputs to
        ``data.n_features`` values and casts them to ``options.dtype`` (once), draws the
        initial weights and creates zero optimizer moments."""
        if data.n_features < 1 or len(data.x_train) < 1:
            raise ValueError("the training split needs at least one example and one feature")
        self.options = options
        self.dtype = np.dtype(options.dtype)
        rng = self._start(model, train, len(data.x_train), seed)
        self._x_train = np.ascontiguousarray(data.x_train.reshape(len(data.x_train), -1), dtype=self.dtype)
        self._y_train = np.ascontiguousarray(data.y_train, dtype=np.intp)
        self._x_val = np.ascontiguousarray(data.x_val.reshape(len(data.x_val), -1), dtype=self.dtype)
        self._y_val = np.ascontiguousarray(data.y_val, dtype=np.intp)
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
        self.params = self.network.init_params(rng, model.init_scheme, self.dtype)
        self.running = self.network.init_running(self.dtype)
        self._bn_layers = tuple(range(1, len(model.hidden) + 1)) if model.batch_norm else ()
        self.optimizer = make_optimizer(train.optimizer, self.params, train.epsilon)

    # -- the training loop ----------------------------------------------------------------

    def train_step(self) -> float:
        """Called ``steps_per_epoch`` times per epoch: trains on the next mini-batch of the
        epoch's permutation and returns its mean loss, computed before the update.

        Changes the parameters, the optimizer's moments and ``t``, the batch-norm running
        statistics and the position in the epoch. Raises RuntimeError when the epoch's
        batches are used up (or no epoch was begun).
        """
        start, stop = self._next_rows()
        idx = self._perm[start:stop]
        k = len(idx)
        x = np.take(self._x_train, idx, axis=0, out=self._xb[:k], mode="clip")
        y = np.take(self._y_train, idx, out=self._yb[:k], mode="clip")

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
            xc, yc = x[lo : lo + EVAL_CHUNK], y[lo : lo + EVAL_CHUNK]
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a diverged model
                logits = self.network.forward_eval(self.params, self.running, xc)
                logp = np.take_along_axis(log_softmax(logits), yc[:, None], axis=1)
            loss_sum -= float(logp.sum(dtype=np.float64))
            correct += int((logits.argmax(axis=1) == yc).sum())
        return {"loss": loss_sum / n, "acc": correct / n}

    def dead_units(self) -> dict[str, float] | None:
        """Called after an epoch's evaluation: per hidden layer (``layer1``...), the fraction
        of its units with the same output for the first ``DEAD_SAMPLE`` validation rows."""
        if len(self._x_val) < 2:
            return None
        hidden: list[np.ndarray] = []
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            self.network.forward_eval(self.params, self.running, self._x_val[:DEAD_SAMPLE], hidden)
        return {f"layer{l}": dead_fraction(a) for l, a in enumerate(hidden, start=1)}

    # -- checkpoints ----------------------------------------------------------------------

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
            "t": self.optimizer.t,
            **self._order_meta(),
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
        perm = np.asarray(arrays["perm"])
        order = self._check_order(meta, perm)

        for k, v in self.params.items():
            copy_into(v, arrays[f"param/{k}"], f"param/{k}")
        for k, v in self.running.items():
            copy_into(v, arrays[f"running/{k}"], f"running/{k}")
        self.optimizer.load_state_arrays(
            {k[len("opt/") :]: v for k, v in arrays.items() if k.startswith("opt/")}, int(meta["t"])
        )
        self._restore_order(meta, perm, order)
