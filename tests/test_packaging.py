"""The package as people install it: one import package ``runner`` with the built-ins inside
it as ``runner.plugins``, no top-level ``plugins``, one version, a license."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import zipfile

import pytest

import runner
from tests.conftest import ROOT
from tests.test_cli import runner as run_cli

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

DIST = "panda-caviar"


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def source_packages() -> set[str]:
    """Every folder with an ``__init__.py`` under runner/ and plugins/, by its import name."""
    found = {
        ".".join(("runner", *p.parent.relative_to(ROOT / "runner").parts))
        for p in (ROOT / "runner").rglob("__init__.py")
    }
    found |= {
        ".".join(("runner", "plugins", *p.parent.relative_to(ROOT / "plugins").parts))
        for p in (ROOT / "plugins").rglob("__init__.py")
    }
    return {name.rstrip(".") for name in found}


def test_every_package_folder_is_listed_for_installation():
    assert set(pyproject()["tool"]["setuptools"]["packages"]) == source_packages()


def test_the_built_wheel_holds_runner_alone_with_its_plugins_inside(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("runner", "plugins"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(tmp_path)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [wheel] = tmp_path.glob("*.whl")
    assert wheel.name.startswith(f"panda_caviar-{runner.__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"runner", f"panda_caviar-{runner.__version__}.dist-info"}
    assert "runner/plugins/backends/numpy_mlp/network.py" in names
    static = {path.name for path in (ROOT / "runner" / "dashboard" / "static").iterdir()}
    assert {f"runner/dashboard/static/{name}" for name in static} <= set(names)  # the page, served from the install
    assert {"index.html", "dashboard.js", "uPlot.iife.min.js", "uPlot.LICENSE"} <= static
    assert f"panda_caviar-{runner.__version__}.dist-info/licenses/LICENSE" in names
    entry_points = zipfile.ZipFile(wheel).read(f"panda_caviar-{runner.__version__}.dist-info/entry_points.txt").decode()
    modules = [line.split(" = ")[1] for line in entry_points.splitlines() if " = " in line and "cli:main" not in line]
    assert modules and all(module.startswith("runner.plugins.") for module in modules)


def test_one_version_everywhere():
    assert importlib.metadata.version(DIST) == runner.__version__
    proc = run_cli("--version")
    assert proc.stdout.strip() == f"runner, version {runner.__version__}"
    assert "version" in pyproject()["project"]["dynamic"]


def test_the_license_is_shipped_and_named():
    project = pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert pyproject()["build-system"]["requires"][0] == "setuptools>=77"
