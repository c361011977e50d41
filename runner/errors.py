"""Errors the CLI turns into a clear message and an exit code, never a traceback."""

from __future__ import annotations


class RunnerError(Exception):
    """Base of every error the runner reports to a person. ``exit_code`` is the CLI's."""

    exit_code = 1

    def __init__(self, message: str = "", *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class SpecError(RunnerError):
    """Bad input in an experiment file: names the JSON path and the rule broken.

    ``str(err)`` reads ``search.space.train.lr.low: must be > 0 for scale "log"``.
    """

    exit_code = 2

    def __init__(self, path: str, message: str, *, source: str | None = None):
        self.path = path
        self.message = message
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.path}: " if self.path else ""
        prefix = f"{self.source}: " if self.source else ""
        return f"{prefix}{where}{self.message}"

    def in_file(self, source: str) -> SpecError:
        """The same error, told which file it came from."""
        return SpecError(self.path, self.message, source=source)


class PluginError(RunnerError):
    """A plugin could not be loaded, or two plugins claim the same name."""

    exit_code = 2


def join_path(*parts: str | int) -> str:
    """Join JSON path parts: ``join_path("search", "space", "train.lr")``."""
    return ".".join(str(p) for p in parts if p != "")
