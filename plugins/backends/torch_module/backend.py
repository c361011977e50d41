"""``ModuleBackend``: a person's own ``torch.nn.Module``, trained by the runner's loop.

Chosen by the ``torch`` backend when the ``model`` section has a ``class_path``
(``TorchBackend.for_model``). The runner owns the loop and uses PyTorch's own parts for
the rest: a ``torch.optim`` optimizer whose ``param_groups`` carry the live settings (a
nudge of ``lr``, ``momentum``, ``beta2`` or ``weight_decay`` is one assignment, in force
from the next step), the learning-rate schedule of the ``train`` section, and
``CrossEntropyLoss`` for classification, ``MSELoss`` for regression, or the loss module
``train.loss`` names.

**What is seeded and saved.** The data order comes from a NumPy generator seeded with the
trial's seed (as the MLP backends'). The module's initial weights, and layers such as
dropout, draw from torch's global generators; the backend gives them the trial's own
states (seeded with the trial's seed) while the module is built and while it trains or
evaluates, and puts back whatever they held outside those moments, so trials in one
process never share a stream. Those states are part of ``state()``, with the module's
``state_dict`` and the optimizer's state (``runner.torch_state``), so a resumed trial
continues bit for bit on the same machine.

**Shapes.** Inputs reach the module with their own shape, ``(batch, *data.input_shape)``.
For classification the module returns ``(batch, classes)`` logits; for regression
``(batch,)`` or ``(batch, targets)`` (a ``(batch, 1)`` output for one target is accepted).
The module is called once on two examples when the trial is built, so a wrong output
shape is reported before training, naming the class and the shape it must return.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal

import numpy as np

from runner import BackendState, Dataset, ModelSize, dead_fraction
from runner.plugins.backends.mlp_family import DEAD_SAMPLE, MiniBatchBackend
from runner.plugins.backends.torch_mlp.backend import EVAL_CHUNK, Options, resolve_device
from runner.plugins.backends.torch_mlp.lagged import LaggedLosses
from runner.plugins.backends.torch_mlp.lazy import lazy_import
from runner.plugins.backends.torch_module.config import Model, Train, module_class
from runner.torch_state import capture, restore

torch = lazy_import("torch")

STATE_FORMAT = 1
METRICS = {"classification": ("loss", "acc"), "regression": ("loss", "mae")}


class ModuleBackend(MiniBatchBackend):
    """A ``torch.nn.Module`` named by ``model.class_path``. Exposes ``net`` (the module),
    ``optimizer`` and ``loss_fn`` for inspection; change them only through the Backend methods."""

    name = "torch"
    Model = Model
    Train = Train
    Options = Options
    live = ("lr", "momentum", "beta2", "weight_decay")
    tasks = ("classification", "regression")

    @classmethod
    def metrics_for(cls, task: str) -> tuple[str, ...]:
        """``loss`` and ``acc`` for classification; ``loss`` and ``mae`` for regression."""
        return METRICS.get(task, METRICS["classification"])

    @classmethod
    def estimate(
        cls, *, model: Model, train: Train, options: Options, examples: int, features: int, classes: int
    ) -> ModelSize | None:
        """Called when an experiment file is read and once its data are loaded: the module,
        built on PyTorch's "meta" device (no memory), gives the exact parameter count; the
        bytes count parameters, gradients, the optimizer's moments, buffers and the data on
        the device (activations depend on the module's code and are not counted). None when
        the module cannot be built there."""
        size = model.size_on_meta()
        if not isinstance(size, tuple):  # a constructor that needs real tensors: no estimate
            return None
        parameters, buffers = size
        itemsize = 8 if options.dtype == "float64" else 4
        moments = {"sgd": int(train.momentum > 0), "rmsprop": 1 + int(train.momentum > 0)}.get(train.optimizer, 2)
        state = (parameters * (1 + moments) + buffers) * itemsize + examples * 8
        working = parameters * itemsize + examples * (features * itemsize + 8)
        return ModelSize(parameters, state + working, state, model.class_path)

    def __init__(self, *, model: Model, train: Train, options: Options, data: Dataset, seed: int) -> None:
        """Called once per trial, before the first epoch: moves the data to the device (once),
        builds the module from the trial's seed, checks its output on two examples and
        creates the optimizer and the loss."""
        if len(data.x_train) < 1:
            raise ValueError("the training split needs at least one example")
        self.options = options
        self.device = resolve_device(options.device)
        self.dtype = getattr(torch, options.dtype)
        self.task: Literal["classification", "regression"] = getattr(data, "task", "classification")
        self._start(model, train, len(data.x_train), seed)
        self._weight_decay = float(train.weight_decay)
        classification = self.task == "classification"
        target_dtype = torch.int64 if classification else self.dtype

        def to_device(array: np.ndarray, dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype, device=self.device)

        self._x_train, self._y_train = to_device(data.x_train, self.dtype), to_device(data.y_train, target_dtype)
        self._x_val, self._y_val = to_device(data.x_val, self.dtype), to_device(data.y_val, target_dtype)
        self._target_shape = tuple(self._y_train.shape[1:])
        self._rng_states = self._seeded_states(seed)
        with self._own_generators():  # the module's initial weights draw from them, and dropout later
            self.net = model.build().to(device=self.device, dtype=self.dtype)
        self.net.train()
        self._check_output(data)
        self.optimizer = _optimizer(train, self.net)
        if train.loss is not None:
            self.loss_fn = module_class(train.loss.class_path, "train.loss.class_path")(**train.loss.init_args)
        else:
            self.loss_fn = torch.nn.CrossEntropyLoss() if classification else torch.nn.MSELoss()
        self._perm_device = torch.empty(0, dtype=torch.int64, device=self.device)
        self._lagged = self.device.type == "cuda"
        self._losses = LaggedLosses()  # CUDA only

    # -- torch's global generators, the trial's own -------------------------------------------

    def _seeded_states(self, seed: int) -> dict[str, torch.Tensor]:
        """The states torch's generators take when seeded with ``seed`` (the global ones are left as they were)."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return self._generator_states()

    def _generator_states(self) -> dict[str, torch.Tensor]:
        states = {"torch_cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["torch_cuda"] = torch.cuda.get_rng_state(self.device)
        return states

    def _set_generator_states(self, states: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(states["torch_cpu"])
        if "torch_cuda" in states:
            torch.cuda.set_rng_state(states["torch_cuda"], self.device)

    @contextlib.contextmanager
    def _own_generators(self) -> Iterator[None]:
        """Within the block, torch's global generators (from which a module's layers such as
        dropout draw) are this trial's; outside it they are as they were. Two trials, or a
        trial and the conformance suite's twin, in one process never draw from one stream."""
        outside = self._generator_states()
        self._set_generator_states(self._rng_states)
        try:
            yield
        finally:
            self._rng_states = self._generator_states()
            self._set_generator_states(outside)

    def _check_output(self, data: Dataset) -> None:
        """Call the module once on two examples (no gradients; lazy layers take their shape
        here) and refuse an output that does not fit the task."""
        x = self._x_train[:2]
        with torch.no_grad(), self._own_generators():
            self.net.eval()
            try:
                out = self.net(x)
            finally:
                self.net.train()
        name = f"{self.model.class_path} ({type(self.net).__name__})"
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"model.class_path: {name} returned a {type(out).__name__}, not a tensor")
        n = len(x)
        if self.task == "classification":
            expected = (n, data.n_classes)
            why = f"the data have {data.n_classes} classes"
        else:
            expected = (n, *self._target_shape)
            why = f"the targets have shape {tuple(self._y_train.shape[1:])} per example"
            if out.numel() == math.prod(expected) and out.shape[0] == n:  # (n, 1) for one target is fine
                return
        if tuple(out.shape) != expected:
            raise ValueError(
                f"model.class_path: {name} returns shape {tuple(out.shape)} for {n} inputs of shape "
                f"{tuple(x.shape[1:])}; {why}, so it must return {expected}"
            )

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out if self.task == "classification" else out.reshape(len(x), *self._target_shape)

    # -- live settings: the optimizer's param_groups ------------------------------------------

    def _sync_groups(self) -> None:
        """Write the settings in force into every param group: what the next step uses."""
        name = self.train.optimizer
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr
            group["weight_decay"] = self._weight_decay
            if name in ("adam", "adamw"):
                group["betas"] = (self._beta1, self._beta2)
            elif name == "rmsprop":
                group["momentum"], group["alpha"] = self._beta1, self._beta2
            else:
                group["momentum"] = self._beta1

    def _apply_schedule(self) -> None:
        """Called by ``begin_epoch``: the epoch's scheduled rate, into the param groups."""
        super()._apply_schedule()
        self._sync_groups()

    def hyperparameters(self) -> dict[str, float]:
        """The live values in force: ``lr`` (after the schedule's decay), ``momentum``, ``beta2``, ``weight_decay``."""
        return {**super().hyperparameters(), "weight_decay": self._weight_decay}

    def set_hyperparameters(self, **values: float) -> None:
        """Called between steps (a nudge): change any of ``live``, in force from the next
        ``train_step`` (written into the optimizer's param groups). ``weight_decay`` must be
        a finite number >= 0; the rest as ``MiniBatchBackend.set_hyperparameters``. All are
        checked before any is applied."""
        decay = values.pop("weight_decay", None)
        if decay is not None:
            if isinstance(decay, bool) or not isinstance(decay, (int, float, np.integer, np.floating)):
                raise ValueError(f"weight_decay must be a number, got {decay!r}")
            if not (math.isfinite(decay) and decay >= 0):
                raise ValueError(f"weight_decay must be a finite number >= 0, got {decay}")
        super().set_hyperparameters(**values)
        if decay is not None:
            self._weight_decay = float(decay)
        self._sync_groups()

    # -- training ---------------------------------------------------------------------------

    def _order_changed(self) -> None:
        """The epoch's order changed: send it to the device (once per epoch or reshuffle)."""
        self._perm_device = torch.as_tensor(self._perm, dtype=torch.int64, device=self.device)

    def train_step(self) -> float | None:
        """Called ``steps_per_epoch`` times per epoch: one optimizer step on the next
        mini-batch; returns its loss, computed before the update (on CUDA the previous
        step's, or None at first: see ``pending_losses``). Changes the module, the
        optimizer's state and the position in the epoch."""
        start, stop = self._next_rows()
        rows = self._perm_device[start:stop]
        x, y = self._x_train.index_select(0, rows), self._y_train.index_select(0, rows)
        with self._own_generators():
            loss = self.loss_fn(self._outputs(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        if not self._lagged:
            return loss.item()
        return self._losses.push(loss.detach())

    def pending_losses(self) -> list[float]:
        """Losses of steps ``train_step`` has not returned yet (CUDA: the last one), oldest first."""
        return self._losses.drain()

    def evaluate(self, split: Literal["train", "val"]) -> dict[str, float]:
        """Called after an epoch: the loss and ``acc`` (classification) or ``mae``
        (regression, over every target value) of a whole split, in evaluation mode and in
        chunks. Changes nothing (the module goes back to training mode)."""
        if split not in ("train", "val"):
            raise ValueError(f'split must be "train" or "val", got {split!r}')
        x, y = (self._x_train, self._y_train) if split == "train" else (self._x_val, self._y_val)
        second = "acc" if self.task == "classification" else "mae"
        n = len(x)
        if n == 0:
            return {"loss": float("nan"), second: float("nan")}
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        other = torch.zeros((), dtype=torch.float64, device=self.device)
        self.net.eval()
        try:
            with torch.no_grad(), self._own_generators():
                for lo in range(0, n, EVAL_CHUNK):
                    xc, yc = x[lo : lo + EVAL_CHUNK], y[lo : lo + EVAL_CHUNK]
                    out = self._outputs(xc)
                    loss_sum += self.loss_fn(out, yc).double() * len(xc)
                    if second == "acc":
                        other += (out.argmax(dim=1) == yc).sum()
                    else:
                        other += (out - yc).abs().double().sum()
        finally:
            self.net.train()
        per = n if second == "acc" else y.numel()
        return {"loss": loss_sum.item() / n, second: other.item() / per}

    def dead_units(self) -> dict[str, float] | None:
        """Called after an epoch's evaluation: for each activation module of the network
        (``torch.nn.ReLU``, ``GELU``, ``Tanh``...: ``ACTIVATIONS``), named by its path in the
        module (``features.1``; a module called more than once gets ``#2``, ``#3`` for its
        later calls), the fraction of its units (features, or channels) with the same output
        for the first ``DEAD_SAMPLE`` validation examples. None for a network that applies
        its activations as functions (``torch.relu``): nothing to watch."""
        modules = [(name, m) for name, m in self.net.named_modules() if isinstance(m, activation_modules())]
        if not modules or len(self._x_val) < 2:
            return None
        found: dict[str, float] = {}

        def watch(name: str):
            def hook(module, inputs, output) -> None:
                if isinstance(output, torch.Tensor):
                    calls = sum(1 for key in found if key == name or key.startswith(f"{name}#"))
                    found[name if calls == 0 else f"{name}#{calls + 1}"] = dead_fraction(output)

            return hook

        handles = [module.register_forward_hook(watch(name or "net")) for name, module in modules]
        self.net.eval()
        try:
            with torch.no_grad(), self._own_generators():
                self._outputs(self._x_val[:DEAD_SAMPLE])
        finally:
            self.net.train()
            for handle in handles:
                handle.remove()
        return found or None

    # -- checkpoints --------------------------------------------------------------------------

    def state(self) -> BackendState:
        """Called when the loop checkpoints (between steps): the module's ``state_dict``, the
        optimizer's state and torch's generators (``runner.torch_state.capture``), the
        epoch's order and the live settings; host copies throughout."""
        captured = capture(self.net, self.optimizer, rng=False)
        arrays = {**captured.arrays, "perm": self._perm.copy()}
        arrays.update({f"rng/{name}": state.numpy().copy() for name, state in self._rng_states.items()})
        meta = {
            "format": STATE_FORMAT,
            "backend": self.name,
            "class_path": self.model.class_path,
            "optimizer_name": self.train.optimizer,
            "torch": captured.meta,
            **self._order_meta(),
        }
        return BackendState(arrays=arrays, meta=meta)

    def load_state(self, state: BackendState) -> None:
        """Restore a ``state()`` of a backend built with the same config and data (on any
        device): the next step is the one that followed it. Raises ValueError, restoring
        nothing, when the state does not fit (naming the array or parameter)."""
        meta, arrays = state.meta, state.arrays
        if meta.get("format") != STATE_FORMAT or meta.get("backend") != self.name or "class_path" not in meta:
            raise ValueError(f"not a state of a {self.name!r} backend's own module, format {STATE_FORMAT}")
        if meta.get("optimizer_name") != self.train.optimizer:
            raise ValueError(
                f"state is for optimizer {meta.get('optimizer_name')!r}; this trial uses {self.train.optimizer!r}"
            )
        own = {"perm", *(f"rng/{name}" for name in self._rng_states)}
        if not own <= set(arrays) or not isinstance(meta.get("torch"), dict):
            raise ValueError(f"state lacks the epoch's order or the generators' states: {sorted(own - set(arrays))}")
        perm = np.asarray(arrays["perm"])
        order = self._check_order(meta, perm)
        generators = {}
        for name, current in self._rng_states.items():
            saved = np.asarray(arrays[f"rng/{name}"])
            if saved.dtype != np.uint8 or saved.shape != tuple(current.shape):
                raise ValueError(f"rng/{name}: expected uint8 {tuple(current.shape)}, got {saved.dtype} {saved.shape}")
            generators[name] = torch.from_numpy(saved.copy())
        torch_arrays = {k: v for k, v in arrays.items() if k not in own}
        restore(BackendState(arrays=torch_arrays, meta=meta["torch"]), self.net, self.optimizer, rng=False)
        self._rng_states = generators
        self._losses.clear()
        self._restore_order(meta, perm, order)
        self._weight_decay = float(meta["hyperparameters"]["weight_decay"])
        self._sync_groups()


def activation_modules() -> tuple[type, ...]:
    """The module classes whose outputs ``dead_units`` watches: torch's elementwise activations."""
    nn = torch.nn
    return (
        nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
        nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
    )  # fmt: skip


def _optimizer(train: Train, net: torch.nn.Module) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer ``train`` names, over every parameter of ``net``."""
    params = net.parameters()
    common = {"lr": train.lr, "weight_decay": train.weight_decay}
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, momentum=train.momentum, nesterov=train.nesterov, **common)
    if train.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, alpha=train.beta2, eps=train.epsilon, momentum=train.momentum, **common)
    cls = torch.optim.Adam if train.optimizer == "adam" else torch.optim.AdamW
    return cls(params, betas=(train.momentum, train.beta2), eps=train.epsilon, **common)
