"""What the loggers share: a folder of their own inside the run directory, named by a
``folder`` option and reached through real folders only."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

# What runner itself keeps in a run directory (docs/run-directory.md): a logger's folder is none of them.
RUNNERS_OWN = ("trials", "report", "events.jsonl", "status.json", "control.json", "results.json", "experiment.json")


def check_folder(folder: str, example: str) -> None:
    """A ValueError unless ``folder`` names a folder inside the run directory that is not
    runner's own (``example``: the logger's default, shown in the message)."""
    parts = PurePosixPath(folder).parts
    if not parts or PurePosixPath(folder).is_absolute() or ".." in parts:
        raise ValueError(f'folder must be a folder inside the run directory, such as "{example}"; got {folder!r}')
    if parts[0] in RUNNERS_OWN or parts[0].startswith("."):
        raise ValueError(f"folder must not be {parts[0]!r}: runner keeps its own files there")


def real_folder(run_dir: Path, folder: Path, logger: str) -> Path:
    """``folder``, inside ``run_dir``, made where it is missing; every folder from the run
    directory down must be a real one: an OSError names a symbolic link planted on the way,
    and the ``logger`` writes nothing through it."""
    path = run_dir
    for part in folder.relative_to(run_dir).parts:
        path = path / part
        if path.is_symlink():
            raise OSError(f"{path} is a symbolic link: the {logger} logger writes nothing through it")
        path.mkdir(exist_ok=True)
    return folder
