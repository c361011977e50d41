"""The multilayer perceptron's math: initialisation, forward pass, loss and backward pass.

Rows are examples: an input batch ``x`` is ``(m, n)`` and a weight matrix ``W{l}`` is
``(n_in, n_out)``. Layers are numbered from 1; with ``H`` hidden layers the output layer is
``H + 1``. Parameters live in a plain ``dict[str, np.ndarray]``:

* hidden layer ``l`` without batch norm: ``W{l}``, ``b{l}``;
* hidden layer ``l`` with batch norm: ``W{l}``, ``gamma{l}``, ``beta{l}`` (no bias: the
  batch mean would cancel it, ``beta`` takes its place);
* output layer: ``W{L}``, ``b{L}`` (never batch-normalised), followed by a softmax.

Batch-norm running statistics live in a second dict: ``running_mean{l}``, ``running_var{l}``.

Every function here is pure (it reads its arguments and returns new arrays) and keeps the
dtype of its inputs, so a float32 network computes in float32 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Activation = Literal["relu", "tanh", "sigmoid"]
InitScheme = Literal["he", "xavier"]


def activate(name: Activation, h: np.ndarray) -> np.ndarray:
    """Apply the activation ``name`` elementwise; returns a new array of ``h``'s dtype."""
    if name == "relu":
        return np.maximum(h, 0)
    if name == "tanh":
        return np.tanh(h)
    if name == "sigmoid":
        # 1 / (1 + exp(-h)) written through tanh: the same function, no overflow for large |h|.
        a = np.tanh(h * 0.5)
        a += 1
        a *= 0.5
        return a
    raise ValueError(f"unknown activation {name!r}")


def activation_backward(name: Activation, da: np.ndarray, h: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Gradient with respect to the activation's input ``h``, given ``da`` and the output ``a``.

    Overwrites and returns ``da`` (the caller's fresh upstream gradient) to save a buffer.
    """
    if name == "relu":
        da *= h > 0
    elif name == "tanh":
        da *= 1 - a * a
    elif name == "sigmoid":
        da *= a * (1 - a)
    else:
        raise ValueError(f"unknown activation {name!r}")
    return da


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, numerically stable (finite for logits of any finite size)."""
    out = logits - logits.max(axis=1, keepdims=True)
    out -= np.log(np.exp(out).sum(axis=1, keepdims=True))
    return out


def softmax_cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[np.floating, np.ndarray]:
    """Mean cross-entropy of ``logits`` (m, C) against class ids ``y`` (m,), and its gradient.

    The gradient with respect to the logits is ``(softmax(logits) - onehot(y)) / m``.
    """
    m = logits.shape[0]
    rows = np.arange(m)
    logp = log_softmax(logits)
    loss = -logp[rows, y].mean()
    grad = np.exp(logp, out=logp)
    grad[rows, y] -= 1
    grad /= m
    return loss, grad


class LayerCache:
    """What a hidden layer's training forward pass keeps for the backward pass.

    ``a_prev`` input, ``z`` linear output, ``zn`` normalised ``z`` and ``inv_std`` = 1 /
    sqrt(var + eps) (batch norm only), ``mean``/``var`` the batch statistics (biased
    variance; batch norm only), ``h`` the activation's input, ``a`` its output.
    """

    __slots__ = ("a", "a_prev", "h", "inv_std", "mean", "var", "z", "zn")

    def __init__(self, a_prev, z, zn, inv_std, mean, var, h, a):
        self.a_prev, self.z, self.zn, self.inv_std = a_prev, z, zn, inv_std
        self.mean, self.var, self.h, self.a = mean, var, h, a


@dataclass(frozen=True)
class MLP:
    """The network's shape and fixed settings; the parameters are passed to each method."""

    n_inputs: int
    hidden: tuple[int, ...]
    n_classes: int
    activation: Activation = "relu"
    batch_norm: bool = False
    bn_epsilon: float = 1e-5

    @property
    def depth(self) -> int:
        """Number of weight layers: the hidden layers plus the output layer."""
        return len(self.hidden) + 1

    @property
    def sizes(self) -> tuple[int, ...]:
        """Widths from input to output: ``(n_inputs, *hidden, n_classes)``."""
        return (self.n_inputs, *self.hidden, self.n_classes)

    def init_params(self, rng: np.random.Generator, scheme: InitScheme, dtype: np.dtype) -> dict[str, np.ndarray]:
        """Fresh parameters: weights N(0, 2/fan_in) (He) or N(0, 1/fan_in) (Xavier), biases 0,
        ``gamma`` 1 and ``beta`` 0. Draws the weights from ``rng`` layer by layer."""
        gain = {"he": 2.0, "xavier": 1.0}[scheme]
        params: dict[str, np.ndarray] = {}
        sizes = self.sizes
        for l in range(1, self.depth + 1):
            n_in, n_out = sizes[l - 1], sizes[l]
            w = rng.standard_normal((n_in, n_out)) * np.sqrt(gain / n_in)
            params[f"W{l}"] = w.astype(dtype)
            if self.batch_norm and l < self.depth:
                params[f"gamma{l}"] = np.ones(n_out, dtype=dtype)
                params[f"beta{l}"] = np.zeros(n_out, dtype=dtype)
            else:
                params[f"b{l}"] = np.zeros(n_out, dtype=dtype)
        return params

    def init_running(self, dtype: np.dtype) -> dict[str, np.ndarray]:
        """Batch-norm running statistics at their start (mean 0, variance 1); empty without BN."""
        running: dict[str, np.ndarray] = {}
        if self.batch_norm:
            for l, width in enumerate(self.hidden, start=1):
                running[f"running_mean{l}"] = np.zeros(width, dtype=dtype)
                running[f"running_var{l}"] = np.ones(width, dtype=dtype)
        return running

    def forward_train(self, params: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, list[LayerCache]]:
        """Training-mode forward pass: batch norm uses the batch's own statistics.

        Returns the logits and one ``LayerCache`` per hidden layer.
        """
        caches: list[LayerCache] = []
        a = x
        eps = self.bn_epsilon
        for l in range(1, self.depth):
            z = a @ params[f"W{l}"]
            if self.batch_norm:
                mean = z.mean(axis=0)
                zc = z - mean
                var = (zc * zc).mean(axis=0)
                inv_std = 1 / np.sqrt(var + eps)
                zn = zc * inv_std
                h = zn * params[f"gamma{l}"]
                h += params[f"beta{l}"]
            else:
                z += params[f"b{l}"]
                zn = inv_std = mean = var = None
                h = z
            a_next = activate(self.activation, h)
            caches.append(LayerCache(a, z, zn, inv_std, mean, var, h, a_next))
            a = a_next
        logits = a @ params[f"W{self.depth}"]
        logits += params[f"b{self.depth}"]
        return logits, caches

    def forward_eval(
        self,
        params: dict[str, np.ndarray],
        running: dict[str, np.ndarray],
        x: np.ndarray,
        hidden: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        """Evaluation-mode logits: batch norm uses the running statistics, so each row's
        result depends on that row alone. Each hidden layer's outputs are appended to
        ``hidden`` if it is given."""
        a = x
        eps = self.bn_epsilon
        for l in range(1, self.depth):
            z = a @ params[f"W{l}"]
            if self.batch_norm:
                scale = params[f"gamma{l}"] / np.sqrt(running[f"running_var{l}"] + eps)
                z -= running[f"running_mean{l}"]
                z *= scale
                z += params[f"beta{l}"]
            else:
                z += params[f"b{l}"]
            a = activate(self.activation, z)
            if hidden is not None:
                hidden.append(a)
        logits = a @ params[f"W{self.depth}"]
        logits += params[f"b{self.depth}"]
        return logits

    def backward(
        self, params: dict[str, np.ndarray], x: np.ndarray, caches: list[LayerCache], dlogits: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Gradients of the loss with respect to every parameter, given ``dlogits``.

        Batch norm's gradient includes the dependence of the batch mean and variance on
        the batch. Writes only to arrays it allocates itself: ``x``, ``params``, ``caches``
        and ``dlogits`` are left as they were.
        """
        L = self.depth
        grads: dict[str, np.ndarray] = {}
        a_last = caches[-1].a if caches else x
        grads[f"W{L}"] = a_last.T @ dlogits
        grads[f"b{L}"] = dlogits.sum(axis=0)
        if not caches:
            return grads
        da = dlogits @ params[f"W{L}"].T
        for l in range(L - 1, 0, -1):
            c = caches[l - 1]
            dh = activation_backward(self.activation, da, c.h, c.a)
            if self.batch_norm:
                m = dh.shape[0]
                grads[f"gamma{l}"] = (dh * c.zn).sum(axis=0)
                grads[f"beta{l}"] = dh.sum(axis=0)
                dzn = dh * params[f"gamma{l}"]
                dz = m * dzn
                dz -= dzn.sum(axis=0)
                dz -= c.zn * (dzn * c.zn).sum(axis=0)
                dz *= c.inv_std / m
            else:
                dz = dh
                grads[f"b{l}"] = dz.sum(axis=0)
            grads[f"W{l}"] = c.a_prev.T @ dz
            if l > 1:
                da = dz @ params[f"W{l}"].T
        return {name: grads[name] for name in params}

    def loss_and_grads(
        self, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray
    ) -> tuple[np.floating, dict[str, np.ndarray], list[LayerCache]]:
        """Training-mode mean cross-entropy on the batch ``(x, y)``, its gradient with respect
        to every parameter (same keys and order as ``params``), and the layer caches (whose
        ``mean``/``var`` are the batch statistics for the running averages)."""
        logits, caches = self.forward_train(params, x)
        loss, dlogits = softmax_cross_entropy(logits, y)
        return loss, self.backward(params, x, caches, dlogits), caches

    def loss(self, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
        """Training-mode mean cross-entropy on ``(x, y)`` alone (for gradient checks)."""
        logits, _ = self.forward_train(params, x)
        return float(softmax_cross_entropy(logits, y)[0])
