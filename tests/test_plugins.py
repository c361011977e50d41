"""Loading plugins: entry points, one-off modules, name clashes, classes that break the contract."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from runner.engine.plugin_manager import load_plugins
from runner.errors import PluginError


def plugin_file(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_every_built_in_comes_through_the_entry_point_group():
    plugins = load_plugins()
    assert {e.plugin for e in plugins.registry.entries()} == {
        "numpy",
        "torch",
        "grid",
        "random",
        "coarse-to-fine",
        "panda-nudge",
        "optuna",
        "digits",
        "spirals",
        "files",
        "python",
        "inline",
        "process",
        "ray",
        "median",
        "asha",
        "pbt",
        "tensorboard",
        "mlflow",
    }
    assert all(origin.startswith("panda-caviar ") for origin in plugins.origins.values())
    assert load_plugins(entry_points=False).registry.entries() == []


@pytest.mark.parametrize(
    "body, message",
    [
        (
            "from runner import hookimpl\n@hookimpl\ndef runner_epoch_ended(trial):\n    pass\n",
            "unknown hook 'runner_epoch_ended'",
        ),
        ("raise RuntimeError('boom at import')\n", "failed to load: RuntimeError: boom at import"),
        (
            "from runner import hookimpl\nclass NotAStrategy:\n    name = 'x'\n"
            "@hookimpl\ndef runner_register(registry):\n    registry.add_strategy(NotAStrategy)\n",
            "registered strategy 'x': it must subclass runner.Strategy",
        ),
        (
            "from runner import hookimpl, Backend\nclass B(Backend):\n    name = 'b'\n"
            "@hookimpl\ndef runner_register(registry):\n    registry.add_backend(B)\n",
            "registered backend 'b': its Model must be a dataclass",
        ),
        (
            "from runner import hookimpl\nfrom runner.plugins.strategies.random_search import RandomSearch\n"
            "@hookimpl\ndef runner_register(registry):\n    registry.add_strategy(RandomSearch)\n",
            "strategy \"random\" is registered twice: by plugin 'random' and by plugin 'clash'",
        ),
    ],
)
def test_a_broken_plugin_is_refused_with_its_name(tmp_path, body, message):
    with pytest.raises(PluginError) as info:
        load_plugins([plugin_file(tmp_path, "clash", body)])
    assert message in str(info.value)


def test_an_entry_point_cannot_take_a_built_in_plugins_name(tmp_path, monkeypatch):
    dist = tmp_path / "fake-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[runner]\nrandom = fake_random\n")
    (tmp_path / "fake_random.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"two installed packages name a plugin 'random': .*fake 0.1"):
        load_plugins()
    sys.modules.pop("fake_random", None)
