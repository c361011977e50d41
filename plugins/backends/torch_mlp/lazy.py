"""Import PyTorch when it is first used, not when the plugin is registered.

Every ``runner`` command loads every plugin; importing torch takes about a second, which
``runner status``, ``runner nudge`` or ``runner report`` should not pay. ``lazy_import``
returns a stand-in at once, which runs the import on first attribute access.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def available(name: str) -> bool:
    """True if ``name`` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: present in sys.modules as None (blocked)
        return False


class LazyModule(ModuleType):
    """Stands in for a module until one of its attributes is first read, which imports it.

    It stays out of ``sys.modules`` until then, so a library that looks there for the
    module (matplotlib checks ``sys.modules["torch"].Tensor`` for every array it plots)
    does not set off the import. Once imported, the module's names are copied in, so later
    reads are plain attribute reads."""

    def __getattr__(self, attribute: str):  # called only for names not already copied in
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        return getattr(module, attribute)


def lazy_import(name: str) -> ModuleType:
    """``name``, imported on first use; the module itself if it is imported already."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    if not available(name):
        raise ImportError(f"No module named {name!r}", name=name)
    return LazyModule(name)
