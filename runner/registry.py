"""The registry: where plugins add backends, strategies, datasets and executors by name.

Filled once per run by the ``runner_register`` hook::

    @hookimpl
    def runner_register(registry):
        registry.add_strategy(MyStrategy)

Each addition remembers the plugin that made it, so ``runner plugins`` can say who
provides what and a clash between two plugins names them both.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Literal

from runner.errors import PluginError, SpecError

Kind = Literal["backend", "strategy", "dataset", "executor"]
KINDS: tuple[Kind, ...] = ("backend", "strategy", "dataset", "executor")


@dataclass(frozen=True)
class Entry:
    kind: Kind
    name: str
    obj: Any  # a class (backends, strategies, executors) or a DatasetPlugin instance; None if unavailable
    plugin: str  # the name of the plugin that registered it
    unavailable: str | None = None  # why it cannot be used here, and how to fix that


class Registry:
    def __init__(self) -> None:
        self._entries: dict[Kind, dict[str, Entry]] = {k: {} for k in KINDS}
        self.provider = "?"  # set by the plugin manager while one plugin registers

    def add_backend(self, cls: type) -> None:
        from runner.backend import Backend, TrainConfig

        self._check_class("backend", cls, Backend, Model=None, Train=TrainConfig, Options=None)
        self._add("backend", cls)

    def add_strategy(self, cls: type) -> None:
        from runner.strategy import Strategy

        self._check_class("strategy", cls, Strategy, Options=None)
        self._add("strategy", cls)

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


@dataclass(frozen=True)
class _Named:
    name: str
