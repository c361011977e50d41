"""The public API, and the built-in plugins held to it.

A plugin may import, from runner: a name in ``runner.__all__`` from ``runner``; a name in
the ``__all__`` of a module in ``runner.PUBLIC_MODULES``; anything in its own package,
``runner.plugins``. Every built-in is read (``ast``, imports inside functions included) and
any other import fails the test, named by file and line: the built-ins are written as a
third party's would be.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import runner
from tests.conftest import ROOT

PLUGINS = ROOT / "plugins"
OWN_PACKAGE = "runner.plugins"
IMPORTERS = {"import_module", "lazy_import", "__import__"}  # calls that import a module named by a string


def public_names(module: str) -> set[str] | None:
    """What a plugin may import from ``module``; None: the module is not public."""
    if module == "runner":
        return set(runner.__all__)
    if module in runner.PUBLIC_MODULES:
        return set(importlib.import_module(module).__all__)
    return None


def is_own(module: str) -> bool:
    return module == OWN_PACKAGE or module.startswith(OWN_PACKAGE + ".")


def check_module(module: str, names: list[str]) -> str | None:
    """Why importing ``names`` from ``module`` (empty: the module itself) is not allowed; None if it is."""
    if module.split(".")[0] != "runner" or is_own(module):  # not runner's, or the plugins' own
        return None
    allowed = public_names(module)
    if allowed is None:
        return f"{module} is not a public module"
    private = [name for name in names if name not in allowed]
    if private:
        return f"not in {module}.__all__: {', '.join(private)}"
    return None


def private_imports(source: str, filename: str) -> list[str]:
    """Every import of ``source`` from runner that a third-party plugin may not make, as
    ``file:line: the import (why)``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            why = check_module(node.module, [alias.name for alias in node.names])
            shown = f"from {node.module} import {', '.join(alias.name for alias in node.names)}"
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
            why = next((w for m in modules if (w := check_module(m, [])) is not None), None)
            shown = f"import {', '.join(modules)}"
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) in IMPORTERS
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            why = check_module(node.args[0].value, [])
            shown = ast.unparse(node)
        else:
            continue
        if why is not None:
            found.append(f"{filename}:{node.lineno}: {shown} ({why})")
    return found


def plugin_files() -> list[Path]:
    return sorted(PLUGINS.rglob("*.py"))


def test_the_built_in_plugins_import_only_the_public_api():
    files = plugin_files()
    assert len(files) > 20, "plugins/ not found"
    found = [problem for path in files for problem in private_imports(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, "built-in plugins import what a third party may not:\n" + "\n".join(found)


def test_the_check_finds_private_imports_wherever_they_are():
    source = textwrap.dedent(
        """
        import runner
        import runner.report
        import runner.experiment_file.spec
        from runner import TrialRecord, hookimpl
        from runner import PUBLIC_MODULES
        from runner.executor import RemoteExecutor
        from runner.report import figures
        from runner.plugins.backends.mlp_family import Train
        from . import sibling
        import numpy

        def later():
            from runner.execution.worker import run_job
            torch = lazy_import("runner.execution.remote")
            return importlib.import_module("runner.report")
        """
    )
    assert private_imports(source, "p.py") == [
        "p.py:4: import runner.experiment_file.spec (runner.experiment_file.spec is not a public module)",
        "p.py:6: from runner import PUBLIC_MODULES (not in runner.__all__: PUBLIC_MODULES)",
        "p.py:8: from runner.report import figures (not in runner.report.__all__: figures)",
        "p.py:14: from runner.execution.worker import run_job (runner.execution.worker is not a public module)",
        "p.py:15: lazy_import('runner.execution.remote') (runner.execution.remote is not a public module)",
    ]


@pytest.mark.parametrize("name", runner.PUBLIC_MODULES)
def test_each_public_module_says_so_and_every_public_name_exists(name):
    module = importlib.import_module(name)
    assert module.__doc__ and "This module is public" in module.__doc__, f"{name}: its docstring must say it is public"
    assert module.__all__, f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it lacks: {missing}"


def test_every_name_runner_exports_exists():
    assert [name for name in runner.__all__ if not hasattr(runner, name)] == []
    assert all(name.startswith("runner.") for name in runner.PUBLIC_MODULES)


def test_the_docs_list_the_public_modules_and_their_names():
    plugins_page = (ROOT / "docs" / "plugins.md").read_text()
    assert [m for m in runner.PUBLIC_MODULES if f"`{m}`" not in plugins_page] == [], "docs/plugins.md"
    api = (ROOT / "docs" / "api.md").read_text()
    missing = [
        f"{name}.{n}"
        for name in runner.PUBLIC_MODULES
        for n in importlib.import_module(name).__all__
        if f"`{n}`" not in api and f"`{n}(" not in api
    ]
    assert not missing, "not in docs/api.md: " + ", ".join(missing)


def loaded_after(imports: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has loaded after ``import`` of ``imports``."""
    checked = subprocess.run(
        [sys.executable, "-c", f"import sys, {imports}; print(*[m for m in {modules!r} if m in sys.modules])"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert checked.returncode == 0, checked.stderr
    return checked.stdout.split()


def test_the_public_api_keeps_imports_light():
    """``import runner`` loads no spec parsing; the executor kit and the figure helpers load on first use."""
    assert loaded_after("runner", ("runner.experiment_file.spec", "runner.engine.checkpoints")) == []
    heavy = ("runner.execution.remote", "runner.execution.worker", "matplotlib", "torch")
    assert loaded_after("runner.executor, runner.report, runner.inputs, runner.torch_state", heavy) == []
