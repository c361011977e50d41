"""The registry: where plugins add backends, strategies, pruners, datasets, executors and
loggers by name, and the options a plugin that only implements hooks takes from the
experiment file.

Filled once per run by the ``runner_register`` hook::

    @hookimpl
    def runner_register(registry):
        registry.add_strategy(MyStrategy)
        registry.add_options("my_logger", Options)  # the experiment's "plugins": {"my_logger": {...}}

Each addition remembers the plugin that made it, so ``runner plugins`` can say who
provides what and a clash between two plugins names them both.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from runner.errors import PluginError, SpecError

Kind = Literal["backend", "strategy", "pruner", "dataset", "executor", "logger"]
KINDS: tuple[Kind, ...] = ("backend", "strategy", "pruner", "dataset", "executor", "logger")


@dataclass(frozen=True)
class Entry:
    kind: Kind
    name: str
    obj: Any  # a class (backends, strategies, executors) or a DatasetPlugin instance; None if unavailable
    plugin: str  # the name of the plugin that registered it
    unavailable: str | None = None  # why it cannot be used here, and how to fix that


@dataclass(frozen=True)
class OptionsEntry:
    """Options a plugin declared with ``Registry.add_options``."""

    name: str  # the key under the experiment file's "plugins" section
    cls: type  # a dataclass, built like every plugin's Options (``runner.experiment_file.typed.build``)
    plugin: str  # the name of the plugin that declared it


class Registry:
    def __init__(self) -> None:
        self._entries: dict[Kind, dict[str, Entry]] = {k: {} for k in KINDS}
        self._options: dict[str, OptionsEntry] = {}
        self.provider = "?"  # set by the plugin manager while one plugin registers

    def add_backend(self, cls: type) -> None:
        from runner.backend import Backend, TrainConfig

        self._check_class("backend", cls, Backend, Model=None, Train=TrainConfig, Options=None)
        self._add("backend", cls)

    def add_strategy(self, cls: type) -> None:
        from runner.strategy import Strategy

        self._check_class("strategy", cls, Strategy, Options=None)
        self._add("strategy", cls)

    def add_pruner(self, cls: type) -> None:
        from runner.pruner import Pruner

        self._check_class("pruner", cls, Pruner, Options=None)
        self._add("pruner", cls)

    def add_dataset(self, dataset: Any) -> None:
        """Add a dataset plugin (a ``DatasetPlugin`` instance or class)."""
        from runner.data import DataOptions, DatasetPlugin

        dataset = dataset() if isinstance(dataset, type) else dataset
        self._check_class("dataset", type(dataset), DatasetPlugin, Options=DataOptions)
        self._add("dataset", dataset)

    def add_executor(self, cls: type) -> None:
        from runner.executor import Executor

        self._check_class("executor", cls, Executor, Options=None)
        self._add("executor", cls)

    def add_logger(self, name: str, options: type | None = None) -> None:
        """Declare a logger: a plugin whose hooks (``runner_event``, ...) write the run somewhere
        else (TensorBoard, MLflow) when an experiment names it under ``"loggers"``, or
        ``runner start --logger NAME``. ``options`` is its frozen dataclass of options (none:
        it takes none), given beside the name: ``{"name": "mlflow", "tracking_uri": "..."}``.
        Its hooks read them with ``experiment.logger(name)``, which is None when the
        experiment does not name it: a logger's hooks do nothing then."""
        from runner.backend import NoOptions

        options = options or NoOptions
        _check_options(f"plugin {self.provider!r} registered logger {name!r}: its options", options)
        self._add("logger", LoggerEntry(name, options))

    def add_options(self, name: str, cls: type) -> None:
        """Declare the options a plugin takes from the experiment file, under
        ``"plugins": {name: {...}}``: ``cls`` is a dataclass whose fields carry types,
        defaults and ``runner.bounds``, like every plugin's ``Options``. The file is checked
        against it before anything runs; hooks read the built instance with
        ``experiment.options(name)`` or ``trial.options(name)`` (its defaults where the file
        does not name ``name``). For a plugin that only implements hooks: a backend, strategy,
        dataset or executor takes its options in its own section."""
        if not isinstance(name, str) or not name.strip():
            raise PluginError(f"plugin {self.provider!r} declared options without a name: {name!r}")
        _check_options(f"plugin {self.provider!r} declared options {name!r}: they", cls)
        existing = self._options.get(name)
        if existing is not None:
            raise PluginError(
                f'options "{name}" are declared twice: by plugin {existing.plugin!r} and by plugin {self.provider!r}'
            )
        self._options[name] = OptionsEntry(name, cls, self.provider)

    def options(self) -> list[OptionsEntry]:
        """Every ``add_options`` declaration, by name."""
        return [entry for _, entry in sorted(self._options.items())]

    def options_class(self, name: str, path: str = "") -> type:
        """The dataclass declared as options ``name``; a SpecError naming ``path`` if no
        plugin declared it (with the nearest declared name)."""
        if name in self._options:
            return self._options[name].cls
        hint = difflib.get_close_matches(name, list(self._options), n=1)
        suggestion = f' (did you mean "{hint[0]}"?)' if hint else ""
        if not self._options:
            raise SpecError(
                path,
                f'no plugin loaded declares options "{name}", nor any others: is the plugin that takes '
                "them installed, or loaded as a one-off (--plugin FILE.py)?",
            )
        declared = ", ".join(sorted(self._options))
        raise SpecError(path, f'no plugin loaded declares options "{name}"{suggestion}; declared: {declared}')

    def add_unavailable(self, kind: Kind, name: str, reason: str) -> None:
        """Name something this plugin provides but cannot here, and say why and how to get it
        (``backend "torch": needs PyTorch: pip install 'panda-caviar[torch]'``): ``runner plugins``
        lists it, and an experiment asking for it stops with ``reason`` before anything runs."""
        self._add(kind, _Named(name), unavailable=reason)

    def get(self, kind: Kind, name: str, path: str = "") -> Any:
        """The object registered as ``name``; a SpecError naming ``path`` if there is none,
        or if it is unavailable here (with the reason)."""
        entries = self._entries[kind]
        if name in entries:
            entry = entries[name]
            if entry.unavailable:
                raise SpecError(path, f'{kind} "{name}" is not available here: {entry.unavailable}')
            return entry.obj
        hint = difflib.get_close_matches(name, list(entries), n=1)
        suggestion = f' (did you mean "{hint[0]}"?)' if hint else ""
        available = ", ".join(sorted(entries)) or "none"
        raise SpecError(path, f'unknown {kind} "{name}"{suggestion}; available: {available}')

    def names(self, kind: Kind) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self) -> list[Entry]:
        return [e for kind in KINDS for _, e in sorted(self._entries[kind].items())]

    def _check_class(self, kind: Kind, cls: Any, base: type, **sections: type | None) -> None:
        """Refuse, naming the plugin, a class that does not fit its kind's contract."""
        where = f"plugin {self.provider!r} registered {kind} {getattr(cls, 'name', cls)!r}"
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"{where}: it must subclass runner.{base.__name__}")
        for attribute, required_base in sections.items():
            section = getattr(cls, attribute, None)
            if not dataclasses.is_dataclass(section):
                raise PluginError(f"{where}: its {attribute} must be a dataclass")
            if required_base is not None and not issubclass(section, required_base):
                raise PluginError(f"{where}: its {attribute} must subclass runner.{required_base.__name__}")

    def _add(self, kind: Kind, obj: Any, unavailable: str | None = None) -> None:
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {self.provider!r} registered a {kind} without a name: {obj!r}")
        existing = self._entries[kind].get(name)
        if existing is not None:
            raise PluginError(
                f'{kind} "{name}" is registered twice: by plugin {existing.plugin!r} and by plugin {self.provider!r}'
            )
        self._entries[kind][name] = Entry(kind, name, None if unavailable else obj, self.provider, unavailable)


def _check_options(what: str, cls: Any) -> None:
    """Options must be a frozen dataclass: one instance is shared by every hook call."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise PluginError(f"{what} must be a dataclass, got {cls!r}")
    if not cls.__dataclass_params__.frozen:
        raise PluginError(f"{what} must be frozen: @dataclass(frozen=True)")


@dataclass(frozen=True)
class _Named:
    name: str


@dataclass(frozen=True)
class LoggerEntry:
    """A logger as ``Registry.add_logger`` declared it: its name and its options' dataclass."""

    name: str
    Options: type  # (named as every plugin's options class is)


class UnknownOptions(KeyError):
    """Asked for options that no plugin loaded declared."""

    def __str__(self) -> str:
        return str(self.args[0])


class PluginOptions(Mapping):
    """The options of each plugin that declared some (``Registry.add_options``), built from
    an experiment's ``plugins`` section: plugin options name -> its dataclass instance.
    Read-only; a name nobody declared is a KeyError (``UnknownOptions``) that lists the
    declared ones."""

    def __init__(self, built: Mapping[str, Any] | None = None):
        self._built = dict(built or {})

    def __getitem__(self, name: str) -> Any:
        try:
            return self._built[name]
        except KeyError:
            declared = ", ".join(sorted(self._built)) or "none"
            raise UnknownOptions(
                f"no options named {name!r} (declared: {declared}); a plugin declares its options "
                "with registry.add_options(name, Options) in runner_register"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._built)

    def __len__(self) -> int:
        return len(self._built)

    def __repr__(self) -> str:
        return f"PluginOptions({self._built!r})"
