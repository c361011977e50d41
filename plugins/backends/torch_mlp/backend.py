"""``TorchBackend``: the NumPy backend's network, trained with PyTorch on CPU, CUDA or MPS.

Same model family, same options, same arithmetic: the initial weights and every epoch's
order come from the same NumPy generator as the NumPy backend's (``MiniBatchBackend``), so
for one seed both backends start from the same weights and see the same batches, and
agree to float tolerance. Batch norm (no bias; batch statistics in training, running ones
in evaluation), the softmax cross-entropy and the four optimizers are written out as the
NumPy backend writes them; autograd computes the gradients. ``lr`` and the momenta are
plain Python floats passed to every update, so a nudge between two steps takes effect at
the next one.

The data moves to the device once, when the backend is built; a step gathers its rows
there by index (the epoch's order moves once per epoch).

**Reading the loss without stalling a GPU.** ``train_step`` must give the loop a loss to
check for divergence, and reading a GPU tensor from the host waits for the GPU to finish.
On CUDA the step's loss is copied, asynchronously, into pinned host memory behind an
event, and ``train_step`` returns the loss of the *previous* step, whose copy is done or
nearly so: the GPU always has the next step queued, and a divergence is seen one step
late (the rollback that follows restores a snapshot anyway). ``pending_losses`` hands the
loop the last one at the end of an epoch and before a mid-epoch snapshot. The cost is one
small device-to-host copy per step, which overlaps the next step's kernels. On CPU (and
MPS) the loss is read at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from runner import Backend, BackendState, Dataset, SpecError, bounds, dead_fraction, join_path
from runner.plugins.backends.mlp_family import DEAD_SAMPLE, MiniBatchBackend, Model, Train
from runner.plugins.backends.numpy_mlp.network import MLP
from runner.plugins.backends.torch_mlp.lagged import LaggedLosses
from runner.plugins.backends.torch_mlp.lazy import lazy_import
from runner.torch_state import check_arrays, copy_arrays_into, tensors_to_arrays

torch = lazy_import("torch")  # loaded (about a second) when a trial first uses it, not when plugins load

EVAL_CHUNK = 4096
STATE_FORMAT = 1
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclass(frozen=True)
class Options:
    """The ``backend`` section's options besides ``name``."""

    device: str = field(
        default="auto",
        metadata=bounds(doc='where to train: "auto" (CUDA if present, else CPU), "cpu", "cuda", "cuda:N" or "mps"'),
    )
    dtype: Literal["float32", "float64"] = field(
        default="float32", metadata=bounds(doc="floating-point type of parameters, data and all computation")
    )

    def check(self, path: str) -> None:
        """The device must be named correctly and present on this machine (checked when the
        experiment file is read, so a missing GPU stops the run before anything starts)."""
        where = join_path(path, "device")
        if not _DEVICE.fullmatch(self.device):
            raise SpecError(where, f'must be "auto", "cpu", "cuda", "cuda:N" or "mps", got "{self.device}"')
        if self.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise SpecError(
                    where,
                    f'"{self.device}" asked for, but this machine has no CUDA device '
                    f'(torch {torch.__version__}); use "auto" or "cpu"',
                )
            count = torch.cuda.device_count()
            if int(self.device.partition(":")[2] or 0) >= count:
                raise SpecError(where, f'"{self.device}" asked for, but there are {count} CUDA devices')
        if self.device == "mps" and not torch.backends.mps.is_available():
            raise SpecError(where, '"mps" asked for, but MPS is not available here')


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class TorchBackend(MiniBatchBackend):
    """The MLP family trained with PyTorch. Exposes ``params``, ``running`` and ``moments``
    (dicts of tensors, for tests and inspection); change them only through ``load_state``."""

    name = "torch"
    Options = Options

    @classmethod
    def for_model(cls, model: Mapping[str, Any]) -> type[Backend]:
        """Called when an experiment file is read: a ``model`` section with a ``class_path``
        (a person's own ``torch.nn.Module``) is trained by ``ModuleBackend``; any other, by
        this MLP."""
        if isinstance(model, Mapping) and "class_path" in model:
            from runner.plugins.backends.torch_module.backend import ModuleBackend

            return ModuleBackend
        return cls

    def __init__(self, *, model: Model, train: Train, options: Options, data: Dataset, seed: int) -> None:
        """Called once per trial, before the first epoch: flattens each example's inputs to
        ``data.n_features`` values and moves the data to the device (once), draws the initial
        weights (as the NumPy backend does) and creates zero moments."""
        if data.n_features < 1 or len(data.x_train) < 1:
            raise ValueError("the training split needs at least one example and one feature")
        self.options = options
        self.device = resolve_device(options.device)
        self.np_dtype = np.dtype(options.dtype)
        self.dtype = getattr(torch, options.dtype)
        rng = self._start(model, train, len(data.x_train), seed)

        def to_device(array: np.ndarray, dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype, device=self.device)

        def flat(x: np.ndarray) -> np.ndarray:
            return x.reshape(len(x), -1)

        self._x_train, self._y_train = to_device(flat(data.x_train), self.dtype), to_device(data.y_train, torch.int64)
        self._x_val, self._y_val = to_device(flat(data.x_val), self.dtype), to_device(data.y_val, torch.int64)
        network = MLP(
            n_inputs=data.n_features,
            hidden=tuple(model.hidden),
            n_classes=data.n_classes,
            activation=model.activation,
            batch_norm=model.batch_norm,
            bn_epsilon=model.bn_epsilon,
        )
        self.depth = network.depth
        initial = network.init_params(rng, model.init_scheme, self.np_dtype)
        self.params = {k: to_device(v, self.dtype).requires_grad_(True) for k, v in initial.items()}
        self.running = {k: to_device(v, self.dtype) for k, v in network.init_running(self.np_dtype).items()}
        slots = {"gd": (), "momentum": ("v",), "rmsprop": ("s",), "adam": ("v", "s")}[train.optimizer]
        self.moments = {slot: {k: torch.zeros_like(p) for k, p in self.params.items()} for slot in slots}
        self.t = 0  # updates so far
        self._perm_device = torch.empty(0, dtype=torch.int64, device=self.device)
        # The trial's own torch generator (nothing in this network draws from it yet; a layer
        # that does, such as dropout, must use it): seeded from the trial's seed, saved in state().
        self.generator = torch.Generator(device=self.device).manual_seed(seed % 2**63)
        self._lagged = self.device.type == "cuda"
        self._losses = LaggedLosses()  # CUDA only

    def _order_changed(self) -> None:
        """The epoch's order changed: send it to the device (once per epoch or reshuffle)."""
        self._perm_device = torch.as_tensor(self._perm, dtype=torch.int64, device=self.device)

    # -- the math -------------------------------------------------------------------------

    def _forward(self, x: torch.Tensor, training: bool, hidden: list | None = None) -> tuple[torch.Tensor, list[tuple]]:
        """Logits, and per batch-normed layer its batch mean and biased variance (training).
        Each hidden layer's outputs are appended to ``hidden`` if it is given."""
        model, p = self.model, self.params
        stats = []
        a = x
        for l in range(1, self.depth):
            z = a @ p[f"W{l}"]
            if model.batch_norm:
                if training:
                    mean = z.mean(dim=0)
                    zc = z - mean
                    var = (zc * zc).mean(dim=0)
                    h = zc * torch.rsqrt(var + model.bn_epsilon) * p[f"gamma{l}"] + p[f"beta{l}"]
                    stats.append((mean.detach(), var.detach()))
                else:
                    scale = p[f"gamma{l}"] / torch.sqrt(self.running[f"running_var{l}"] + model.bn_epsilon)
                    h = (z - self.running[f"running_mean{l}"]) * scale + p[f"beta{l}"]
            else:
                h = z + p[f"b{l}"]
            a = (
                torch.relu(h)
                if model.activation == "relu"
                else torch.tanh(h)
                if model.activation == "tanh"
                else torch.sigmoid(h)
            )
            if hidden is not None:
                hidden.append(a)
        return a @ p[f"W{self.depth}"] + p[f"b{self.depth}"], stats

    def train_step(self) -> float | None:
        """Called ``steps_per_epoch`` times per epoch: trains on the next mini-batch and
        returns its mean loss, computed before the update (on CUDA: the previous step's,
        or None on the first; see the module's docstring). Changes the parameters, the
        moments and ``t``, the batch-norm running statistics and the position in the epoch."""
        start, stop = self._next_rows()
        rows = self._perm_device[start:stop]
        x, y = self._x_train.index_select(0, rows), self._y_train.index_select(0, rows)
        logits, stats = self._forward(x, training=True)
        loss = torch.nn.functional.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, list(self.params.values()))
        with torch.no_grad():
            if stats and stop - start > 1:
                self._update_running(stats, stop - start)
            self._update(dict(zip(self.params, grads)))
        if not self._lagged:
            return loss.item()
        return self._losses.push(loss.detach())

    def _update_running(self, stats: list[tuple], k: int) -> None:
        """EWMA of the batch mean and the unbiased batch variance (PyTorch's convention)."""
        mom = self.model.bn_momentum
        for l, (mean, var) in enumerate(stats, start=1):
            self.running[f"running_mean{l}"].mul_(mom).add_(mean, alpha=1 - mom)
            self.running[f"running_var{l}"].mul_(mom).add_(var, alpha=(1 - mom) * k / (k - 1))

    def _update(self, grads: dict[str, torch.Tensor]) -> None:
        """One update of every parameter, as ``runner.plugins.backends.numpy_mlp.optimizers`` writes it."""
        self.t += 1
        lr, b1, b2, eps, name = self._lr, self._beta1, self._beta2, self.train.epsilon, self.train.optimizer
        items = [(key, w, grads[key]) for key, w in self.params.items()]
        if name == "gd":
            for _, w, g in items:
                w.sub_(g, alpha=lr)
        elif name == "momentum":
            for key, w, g in items:
                w.sub_(self.moments["v"][key].mul_(b1).add_(g, alpha=1 - b1), alpha=lr)
        elif name == "rmsprop":
            for key, w, g in items:
                s = self.moments["s"][key].mul_(b2).addcmul_(g, g, value=1 - b2)
                w.sub_(lr * g / (s.sqrt() + eps))
        else:
            c1, c2 = 1.0 - b1**self.t, 1.0 - b2**self.t
            for key, w, g in items:
                v = self.moments["v"][key].mul_(b1).add_(g, alpha=1 - b1)
                s = self.moments["s"][key].mul_(b2).addcmul_(g, g, value=1 - b2)
                w.sub_(v / ((s / c2).sqrt() + eps), alpha=lr / c1)

    def pending_losses(self) -> list[float]:
        """Losses of steps ``train_step`` has not returned yet (CUDA: the last one), oldest first."""
        return self._losses.drain()

    def evaluate(self, split: Literal["train", "val"]) -> dict[str, float]:
        """Called after an epoch: mean loss and accuracy over the whole split in evaluation
        mode (batch norm uses the running statistics), in chunks. Changes nothing."""
        if split not in ("train", "val"):
            raise ValueError(f'split must be "train" or "val", got {split!r}')
        x, y = (self._x_train, self._y_train) if split == "train" else (self._x_val, self._y_val)
        n = len(x)
        if n == 0:
            return {"loss": float("nan"), "acc": float("nan")}
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        with torch.no_grad():
            for lo in range(0, n, EVAL_CHUNK):
                logits, _ = self._forward(x[lo : lo + EVAL_CHUNK], training=False)
                yc = y[lo : lo + EVAL_CHUNK]
                loss_sum += torch.nn.functional.cross_entropy(logits, yc, reduction="sum").double()
                correct += (logits.argmax(dim=1) == yc).sum()
        return {"loss": loss_sum.item() / n, "acc": correct.item() / n}

    def dead_units(self) -> dict[str, float] | None:
        """Called after an epoch's evaluation: per hidden layer (``layer1``...), the fraction
        of its units with the same output for the first ``DEAD_SAMPLE`` validation rows."""
        if len(self._x_val) < 2:
            return None
        hidden: list = []
        with torch.no_grad():
            self._forward(self._x_val[:DEAD_SAMPLE], training=False, hidden=hidden)
        return {f"layer{l}": dead_fraction(a) for l, a in enumerate(hidden, start=1)}

    # -- checkpoints ----------------------------------------------------------------------

    def state(self) -> BackendState:
        """Called when the loop checkpoints (between steps): host copies of everything needed
        to continue bit for bit (on CPU). ``arrays``: ``param/``, ``running/``, ``opt/<slot>/``,
        ``perm`` and ``rng/torch`` (the trial's torch generator); ``meta`` as the NumPy
        backend's (the NumPy generator that orders the data among it)."""
        arrays = tensors_to_arrays(self.params, "param/")  # copies: training on must not change them
        arrays.update(tensors_to_arrays(self.running, "running/"))
        for slot, buf in self.moments.items():
            arrays.update(tensors_to_arrays(buf, f"opt/{slot}/"))
        arrays["perm"] = self._perm.copy()
        arrays["rng/torch"] = self.generator.get_state().numpy().copy()
        meta = {
            "format": STATE_FORMAT,
            "backend": self.name,
            "dtype": self.np_dtype.name,
            "optimizer": self.train.optimizer,
            "t": self.t,
            **self._order_meta(),
        }
        return BackendState(arrays=arrays, meta=meta)

    def load_state(self, state: BackendState) -> None:
        """Restore a ``state()`` taken from a backend built with the same config and data (on
        any device): the next step is the one that followed it. Copies the arrays; raises
        ValueError, restoring nothing, when the state does not fit."""
        meta, arrays = state.meta, state.arrays
        if meta.get("format") != STATE_FORMAT or meta.get("backend") != self.name:
            raise ValueError(f"not a {self.name!r} backend state of format {STATE_FORMAT}")
        if meta.get("dtype") != self.np_dtype.name or meta.get("optimizer") != self.train.optimizer:
            raise ValueError(
                f"state is for dtype {meta.get('dtype')!r} with optimizer {meta.get('optimizer')!r}; "
                f"this backend uses {self.np_dtype.name!r} with {self.train.optimizer!r}"
            )
        groups = {"param/": self.params, "running/": self.running}
        groups.update({f"opt/{slot}/": buf for slot, buf in self.moments.items()})
        required = {prefix + k for prefix, tensors in groups.items() for k in tensors} | {"perm", "rng/torch"}
        if set(arrays) != required:
            missing, extra = sorted(required - set(arrays)), sorted(set(arrays) - required)
            raise ValueError(f"state arrays do not match this network: missing {missing}, unexpected {extra}")
        for prefix, tensors in groups.items():
            check_arrays(tensors, arrays, prefix)  # shapes and dtypes, before anything changes
        perm = np.asarray(arrays["perm"])
        order = self._check_order(meta, perm)
        generator_state = torch.from_numpy(np.array(arrays["rng/torch"], dtype=np.uint8))
        try:
            self.generator.set_state(generator_state)
        except RuntimeError as err:  # saved on another kind of device: the generators differ
            raise ValueError(f"state's torch generator does not fit a {self.device.type} generator: {err}") from None
        for prefix, tensors in groups.items():
            copy_arrays_into(tensors, arrays, prefix)
        self.t = int(meta["t"])
        self._losses.clear()
        self._restore_order(meta, perm, order)
