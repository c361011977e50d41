"""Code an experiment file names by import path: ``"my_cnn:Net"``, ``"torch.nn:HuberLoss"``.

An experiment names a person's own code the way LightningCLI and jsonargparse do: a
``class_path`` (or a data source's ``path``) written ``module:attribute`` (or the dotted
``module.attribute``). The module is looked for first in the experiment file's folder
(``my_cnn.py`` or a package ``my_cnn/`` beside the file), then on ``sys.path``, so a file
next to the experiment works without packaging, and an installed package works too.

The folder is given explicitly (``base_dir=``), or taken from ``experiment_folder``: the
runner sets it while it reads an experiment file and while it builds each trial's backend,
in the driver and in every worker of the process and Ray executors alike, so a plugin's
options dataclass (in its ``check``) and a backend's ``__init__`` can call
``import_object(model.class_path, where="model.class_path")`` and get the same object
everywhere. Every failure is a ``SpecError`` at ``where`` that says what was looked for
and where, with a "did you mean" when a near name exists.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import importlib
import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from runner.errors import SpecError

_NAME = r"[A-Za-z_]\w*"
_REFERENCE = re.compile(rf"(?P<module>{_NAME}(\.{_NAME})*)(:(?P<attr>{_NAME}(\.{_NAME})*))?")
_LOADED: dict[Path, tuple[tuple[int, int], ModuleType]] = {}  # file -> (mtime and size when run, module)
_REFUSAL: contextvars.ContextVar[str | None] = contextvars.ContextVar("runner_code_refusal", default=None)
_FOLDER: contextvars.ContextVar[Path | None] = contextvars.ContextVar("runner_experiment_folder", default=None)


@contextlib.contextmanager
def refusing_code(advice: str) -> Iterator[None]:
    """Within the block, ``import_object`` imports nothing: it raises a SpecError that names
    the import path and gives ``advice``. For an experiment read from a run directory,
    which is data, not code (``runner resume`` without ``--trust-code``)."""
    token = _REFUSAL.set(advice)
    try:
        yield
    finally:
        _REFUSAL.reset(token)


@contextlib.contextmanager
def experiment_folder(folder: Path) -> Iterator[None]:
    """Within the block, ``import_object`` resolves relative modules against ``folder``
    (the experiment file's folder). Called by the runner; nested blocks restore the outer."""
    token = _FOLDER.set(Path(folder))
    try:
        yield
    finally:
        _FOLDER.reset(token)


def split_reference(reference: str, where: str) -> tuple[str, str]:
    """``"pkg.mod:Outer.Inner"`` -> ``("pkg.mod", "Outer.Inner")``; the dotted form
    ``"pkg.mod.Name"`` splits at its last dot. A SpecError for anything else."""
    match = _REFERENCE.fullmatch(reference) if isinstance(reference, str) else None
    if match is None or (match["attr"] is None and "." not in reference):
        raise SpecError(where, f'must be an import path such as "my_module:MyClass", got {reference!r}')
    if match["attr"] is not None:
        return match["module"], match["attr"]
    module, _, attr = reference.rpartition(".")
    return module, attr


def import_object(reference: str, *, where: str, base_dir: Path | None = None) -> Any:
    """The object ``reference`` names: the module from ``base_dir`` (default: the current
    ``experiment_folder``) if it is there, else from ``sys.path``; then the attribute.

    Importing runs the module's code, as Python does; the runner calls this only for what
    the experiment file being started names. A module beside the experiment is run again
    when its file changed, and takes the place of a module of the same name imported from
    elsewhere.
    """
    module_name, attr = split_reference(reference, where)
    advice = _REFUSAL.get()
    if advice is not None:
        raise SpecError(where, f'names code to import, "{reference}"; {advice}')
    folder = base_dir if base_dir is not None else _FOLDER.get()
    module = _import_module(module_name, folder, where)
    value: Any = module
    for depth, part in enumerate(attr.split(".")):
        try:
            value = getattr(value, part)
        except AttributeError:
            owner = ".".join([module_name, *attr.split(".")[:depth]])
            names = [n for n in dir(value) if not n.startswith("_")]
            hint = difflib.get_close_matches(part, names, n=1)
            suggestion = f' (did you mean "{hint[0]}"?)' if hint else ""
            source = getattr(module, "__file__", None)
            shown = f" ({source})" if source and depth == 0 else ""
            raise SpecError(where, f'"{owner}"{shown} has no "{part}"{suggestion}') from None
    return value


def _import_module(name: str, folder: Path | None, where: str) -> ModuleType:
    top = name.split(".")[0]
    local = _local_file(top, folder)
    try:
        if local is None:
            return importlib.import_module(name)
        with _first_on_path(folder):
            module = _load_local(top, local)
            return module if name == top else importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is not None and (name + ".").startswith(err.name + "."):
            raise SpecError(where, _not_found(name, folder)) from None
        raise SpecError(where, f'importing "{name}" failed: {type(err).__name__}: {err}') from None
    except SpecError:
        raise
    except Exception as err:  # the person's module raised while it was imported
        raise SpecError(where, f'importing "{name}" raised {type(err).__name__}: {err}') from None


def _local_file(top: str, folder: Path | None) -> Path | None:
    """``top.py`` or ``top/__init__.py`` in ``folder``, if there is one."""
    if folder is None:
        return None
    for candidate in (folder / f"{top}.py", folder / top / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _load_local(top: str, file: Path) -> ModuleType:
    """The module in ``file`` under the name ``top``, run again when the file changed since it
    was last loaded (or another file of that name was loaded since): a notebook that edits
    its model between two ``runner.run`` calls, or two experiments whose folders each hold a
    ``model.py``, get the file beside the experiment, not a stale copy."""
    key = file.resolve()
    stat = key.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    known = _LOADED.get(key)
    if known is not None and known[0] == stamp and sys.modules.get(top) is known[1]:
        return known[1]
    package = file.name == "__init__.py"
    spec = importlib.util.spec_from_file_location(
        top, key, submodule_search_locations=[str(key.parent)] if package else None
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    previous = {n: m for n, m in sys.modules.items() if n == top or n.startswith(top + ".")}
    for stale in previous:
        del sys.modules[stale]
    sys.modules[top] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[top]
        sys.modules.update(previous)
        raise
    _LOADED[key] = (stamp, module)
    return module


def _not_found(name: str, folder: Path | None) -> str:
    places = f"in {folder} or on sys.path" if folder is not None else "on sys.path"
    message = f'no module "{name}" {places}'
    if folder is not None and folder.is_dir():
        candidates = [p.stem for p in folder.glob("*.py")] + [p.parent.name for p in folder.glob("*/__init__.py")]
        hint = difflib.get_close_matches(name.split(".")[0], candidates, n=1)
        if hint:
            message += f' (did you mean "{hint[0]}"?)'
    return message


@contextlib.contextmanager
def _first_on_path(folder: Path | None) -> Iterator[None]:
    """``folder`` first on ``sys.path`` while the module (and what it imports) loads."""
    if folder is None:
        yield
        return
    entry = str(folder.resolve())
    sys.path.insert(0, entry)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)
