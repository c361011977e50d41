"""Builds a fresh plugin manager for each run: built-ins, installed plugins, one-off modules.

Built-in plugins are not special: they are listed under ``[project.entry-points.runner]``
in this project's pyproject.toml and load through the same path as any installed package's
plugins. ``--plugin path/to/file.py`` (or ``--plugin package.module``) adds a one-off.
``RUNNER_TRACE_PLUGINS=1`` prints every hook call to stderr.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import shlex
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pluggy

from runner import hookspecs
from runner.errors import PluginError
from runner.registry import Registry

GROUP = "runner"
TRACE_ENV = "RUNNER_TRACE_PLUGINS"


@dataclass
class Plugins:
    """A run's plugin manager, the registry its plugins filled, and where each came from."""

    manager: pluggy.PluginManager
    registry: Registry
    origins: dict[str, str] = field(default_factory=dict)  # plugin name -> "package 1.0" or a path
    extra: list[str] = field(default_factory=list)  # the one-off plugins asked for (files as absolute paths)

    @property
    def hook(self):
        return self.manager.hook


def load_plugins(extra: Iterable[str] = (), *, entry_points: bool = True) -> Plugins:
    """A new manager with every installed plugin and the ``extra`` ones, registry filled.

    ``extra`` items are paths to ``.py`` files or importable module names. Raises
    PluginError naming the plugin when one fails to import, implements an unknown hook, or
    registers a name another plugin already took.
    """
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    origins: dict[str, str] = {}
    if entry_points:
        for ep in importlib.metadata.entry_points(group=GROUP):
            dist = getattr(ep, "dist", None)
            origin = f"{dist.name} {dist.version}" if dist else ep.value
            if ep.name in origins:
                if origins[ep.name] == origin:
                    continue  # the same distribution seen twice on sys.path
                raise PluginError(
                    f"two installed packages name a plugin {ep.name!r}: {origins[ep.name]} and {origin}; uninstall one"
                )
            module = _import(ep.name, ep.load)
            origins[ep.name] = origin
            _register(pm, module, ep.name)
    refs = []
    for ref in extra:
        name, module = _load_extra(ref)
        origins[name] = ref
        refs.append(str(Path(ref).resolve()) if _is_file_ref(ref) else ref)
        _register(pm, module, name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        name = pm.get_name(err.plugin) or err.plugin
        raise PluginError(f"plugin {name!r}: {err}") from None
    if os.environ.get(TRACE_ENV, "") not in ("", "0"):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    return Plugins(pm, collect_registry(pm), origins, refs)


def collect_registry(pm: pluggy.PluginManager) -> Registry:
    """Call ``runner_register`` plugin by plugin, in load order (installed ones first), so the
    registry knows who added what and a clash names the later plugin as the intruder."""
    registry = Registry()
    for name, call in each_plugin(pm, "runner_register"):
        registry.provider = name
        call(registry=registry)
    registry.provider = "?"
    return registry


def each_plugin(pm: pluggy.PluginManager, hook: str) -> Iterator[tuple[str, pluggy.HookCaller]]:
    """Each plugin that implements ``hook``, in load order, with a caller of ``hook`` for that
    plugin alone (traced like any hook call): for telling apart what each plugin did or
    where one failed."""
    plugins = pm.list_name_plugin()
    for name, plugin in plugins:
        if hook in hooks_of(pm, plugin):
            yield name, pm.subset_hook_caller(hook, remove_plugins=[p for _, p in plugins if p is not plugin])


def hooks_of(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """Names of the hooks ``plugin`` implements, in contract order."""
    implemented = {caller.name for caller in pm.get_hookcallers(plugin) or []}
    return [name for name in vars(hookspecs) if name.startswith("runner_") and name in implemented]


def _register(pm: pluggy.PluginManager, module: object, name: str) -> None:
    if pm.has_plugin(name):
        raise PluginError(f"two plugins are named {name!r}; rename the one-off module")
    try:
        pm.register(module, name=name)
    except (pluggy.PluginValidationError, ValueError) as err:
        raise PluginError(f"plugin {name!r} cannot be registered: {err}") from None


def _is_file_ref(ref: str) -> bool:
    return ref.endswith(".py") or os.sep in ref


def plugin_name(ref: str) -> str:
    """The name a one-off plugin registers under: a file's stem, or the module's dotted name."""
    return Path(ref).stem if _is_file_ref(ref) else ref


def _load_extra(ref: str) -> tuple[str, ModuleType]:
    path = Path(ref)
    if _is_file_ref(ref):
        if path.suffix != ".py":
            raise PluginError(f"--plugin {ref}: a plugin file is a Python file whose name ends in .py")
        if not path.is_file():
            raise PluginError(f"--plugin {ref}: no such file")
        name = plugin_name(ref)
        spec = importlib.util.spec_from_file_location(f"runner_plugin_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclass type hints resolve through sys.modules
        _import(ref, lambda: spec.loader.exec_module(module))
        return name, module
    return ref, _import(ref, lambda: importlib.import_module(ref))


def _import(name: str, load):
    try:
        return load()
    except Exception as err:  # a broken plugin must name itself, not crash the CLI
        raise PluginError(f"plugin {name!r} failed to load: {type(err).__name__}: {err}") from err


def recorded_one_offs(start: dict, where: str) -> list[str]:
    """The ``--plugin`` arguments a run was started with, as its ``experiment_start`` event
    records them. Read as data: a run directory names code, it never loads it."""
    refs = start.get("plugin_files", [])
    if not isinstance(refs, list) or not all(isinstance(ref, str) for ref in refs):
        raise PluginError(f"{where}: experiment_start.plugin_files must be a list of strings")
    return refs


def missing_one_offs(recorded: Iterable[str], given: Iterable[str]) -> list[str]:
    """Those of the ``recorded`` one-off plugins that no ``given`` one stands for (by name:
    the same module, or a file with the same stem, from wherever it is now)."""
    names = {plugin_name(ref) for ref in given}
    return [ref for ref in recorded if plugin_name(ref) not in names]


def plugin_args(refs: Iterable[str]) -> str:
    """``refs`` as the ``--plugin`` arguments a person would type, quoted for a shell."""
    return " ".join(f"--plugin {shlex.quote(ref)}" for ref in refs)
