"""The command line: ``runner start``, ``resume``, ``nudge``, ``status``, ``dashboard``, ``report``,
``validate``, ``schema``, ``plugins``.

Exit codes: 0 success; 1 a failure during the run; 2 bad input (a message, no traceback);
130 interrupted.

Where each command lives: ``group.py`` the ``runner`` group itself; ``run.py`` start and resume;
``control.py`` nudge and status; ``dashboard.py`` dashboard; ``info.py`` report, validate,
plugins and schema. ``options.py`` holds the options and argument helpers they share,
``errors.py`` how an error becomes a message and an exit code.
"""

from runner.cli import control, dashboard, info, run  # noqa: F401  (importing a command module registers its commands)
from runner.cli.group import main

__all__ = ["main"]
