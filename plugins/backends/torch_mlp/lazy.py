"""Import PyTorch when it is first used, not when the plugin is registered.

Every ``runner`` command loads every plugin; importing torch takes about a second, which
``runner status`` or ``runner nudge`` should not pay. ``lazy_import`` returns the module at
once and runs its import on first attribute access (``importlib.util.LazyLoader``).
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


def lazy_import(name: str) -> ModuleType:
    """``name``, imported on first use; the module itself if it is imported already."""
    if name in sys.modules and sys.modules[name] is not None:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ImportError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
