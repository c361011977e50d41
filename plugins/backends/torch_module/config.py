"""The ``model`` and ``train`` sections for a person's own ``torch.nn.Module``.

``model`` names the class by import path and its keyword arguments::

    "model": {"class_path": "my_cnn:Net", "init_args": {"channels": 16}}

The module is looked for beside the experiment file first, then on ``sys.path``
(``runner.import_object``). The class and its arguments are checked when the experiment
file is read, for the file's values and for the extremes of every searched
``model.init_args.NAME``, so a wrong path, a class that is not a module, or an argument
the class does not take stops the run before anything trains. ``train`` adds to the MLP
family's (batch size, learning rate and its schedule, momentum, beta2) the optimizers of
``torch.optim``, weight decay, Nesterov momentum and a loss of the person's choice.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from runner import SpecError, bounds, import_object, join_path
from runner.plugins.backends.mlp_family import Train as MLPTrain
from runner.plugins.backends.torch_mlp.lazy import lazy_import

torch = lazy_import("torch")

_META_SIZES: dict[tuple[type, bytes], tuple[int, int] | Exception | None] = {}


def module_class(class_path: str, where: str) -> type:
    """The ``torch.nn.Module`` subclass ``class_path`` names. Nothing else is ever called:
    an import path to a function or to a class of another kind is refused here."""
    cls = import_object(class_path, where=where)
    if not (inspect.isclass(cls) and issubclass(cls, torch.nn.Module)):
        raise SpecError(where, f'"{class_path}" is {_kind(cls)}, not a subclass of torch.nn.Module')
    return cls


def checked_class(class_path: str, init_args: dict[str, Any], path: str) -> type:
    """The module class a section at ``path`` names (its ``class_path``), with its
    ``init_args`` bound to the constructor; SpecErrors name ``path.class_path`` or ``path.init_args.NAME``."""
    cls = module_class(class_path, join_path(path, "class_path"))
    check_init_args(cls, init_args, join_path(path, "init_args"))
    return cls


def check_init_args(cls: type, init_args: dict[str, Any], where: str) -> None:
    """``init_args`` must bind to ``cls``'s constructor: no unknown name, no required one missing."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # a class whose signature Python cannot read: let the call tell
        return
    parameters = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    named = [n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for name in init_args:
        if name not in parameters and not takes_any:
            hint = difflib.get_close_matches(name, named, n=1)
            suggestion = f' (did you mean "{hint[0]}"?)' if hint else ""
            takes = ", ".join(named) or "no arguments"
            raise SpecError(
                join_path(where, name), f"{cls.__name__} takes no argument {name!r}{suggestion}; it takes: {takes}"
            )
    for name, parameter in parameters.items():
        required = parameter.default is inspect.Parameter.empty and parameter.kind in (
            parameter.POSITIONAL_OR_KEYWORD,
            parameter.KEYWORD_ONLY,
        )
        if required and name not in init_args:
            raise SpecError(join_path(where, name), f"is required: {cls.__name__}() has no default for it")


def _kind(value: Any) -> str:
    if inspect.isclass(value):
        return f"the class {value.__module__}.{value.__qualname__}"
    if callable(value):
        return f"a {type(value).__name__}"
    return f"a {type(value).__name__} value"


@dataclass(frozen=True)
class Model:
    """The ``model`` section: a person's ``torch.nn.Module`` subclass and its arguments."""

    class_path: str = field(
        metadata=bounds(
            doc='your torch.nn.Module subclass as "module:Class"; the module is looked for beside the '
            "experiment file first, then on sys.path"
        )
    )
    init_args: dict[str, Any] = field(
        default_factory=dict,
        metadata=bounds(doc="keyword arguments of the class; each is searchable as model.init_args.NAME"),
    )

    def check(self, path: str) -> None:
        """Called when the section is built: the class exists, is a module, takes these
        arguments and accepts their values (it is built on PyTorch's "meta" device, which
        allocates no memory, so a constructor that refuses a value stops the run before
        anything trains)."""
        cls = checked_class(self.class_path, self.init_args, path)
        refusal = self.size_on_meta(cls)
        if isinstance(refusal, Exception):
            raise SpecError(
                join_path(path, "init_args"),
                f"{cls.__name__}(...) refused these arguments: {type(refusal).__name__}: {refusal}",
            )

    def size_on_meta(self, cls: type | None = None) -> tuple[int, int] | Exception | None:
        """``(parameters, buffer values)`` of the module built on the "meta" device; the
        ValueError or TypeError its constructor raised; None when it cannot be built there.
        Remembered per class and arguments: a trial's sections are checked again in every
        process, and the module file changed gives a new class."""
        cls = cls or module_class(self.class_path, "model.class_path")
        key = (cls, orjson.dumps(self.init_args, option=orjson.OPT_SORT_KEYS))
        if key not in _META_SIZES:
            try:
                with torch.device("meta"):
                    net = cls(**self.init_args)
                _META_SIZES[key] = (
                    sum(p.numel() for p in net.parameters()),
                    sum(b.numel() for b in net.buffers()),
                )
            except (ValueError, TypeError) as err:
                _META_SIZES[key] = err
            except Exception:  # a constructor that cannot run on the meta device: the trial builds it for real
                _META_SIZES[key] = None
        return _META_SIZES[key]

    def build(self) -> torch.nn.Module:
        """A new instance, with the class resolved as when the section was checked."""
        return module_class(self.class_path, "model.class_path")(**self.init_args)


@dataclass(frozen=True)
class Loss:
    """``train.loss``: a loss module of your choice instead of the task's default."""

    class_path: str = field(
        metadata=bounds(
            doc="a torch.nn.Module subclass whose forward(output, target) returns the mean loss, "
            'such as "torch.nn:HuberLoss"'
        )
    )
    init_args: dict[str, Any] = field(default_factory=dict, metadata=bounds(doc="keyword arguments of the loss class"))

    def check(self, path: str) -> None:
        """Called when the section is built: the class exists, is a module and takes these arguments."""
        checked_class(self.class_path, self.init_args, path)


@dataclass(frozen=True)
class Train(MLPTrain):
    """The ``train`` section: mini-batches, a ``torch.optim`` optimizer, its schedule and the loss."""

    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = field(
        default="sgd", metadata=bounds(doc="torch.optim.SGD, Adam, AdamW or RMSprop")
    )
    lr: float = field(default=0.01, metadata=bounds(gt=0, doc="base learning rate, before the schedule's decay"))
    momentum: float = field(
        default=0.9,
        metadata=bounds(ge=0, lt=1, doc='momentum of "sgd" and "rmsprop"; beta1 of "adam" and "adamw"'),
    )
    beta2: float = field(
        default=0.999,
        metadata=bounds(ge=0, lt=1, doc='beta2 of "adam" and "adamw"; the smoothing constant alpha of "rmsprop"'),
    )
    nesterov: bool = field(default=False, metadata=bounds(doc='Nesterov momentum for "sgd" (needs momentum > 0)'))
    weight_decay: float = field(
        default=0.0,
        metadata=bounds(ge=0, doc='L2 penalty (decoupled for "adamw"); a live setting like lr and momentum'),
    )
    loss: Loss | None = field(
        default=None,
        metadata=bounds(
            doc="a loss module; default: cross-entropy for classification, mean squared error for regression"
        ),
    )

    def check(self, path: str) -> None:
        """Nesterov momentum needs momentum; the schedule's own rule holds too."""
        super().check(path)
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise SpecError(join_path(path, "nesterov"), 'needs optimizer "sgd" with momentum > 0')
