"""The generated parts of the docs: option tables from the dataclasses that define the
options, and copies of example files.

Every section of an experiment file is a frozen dataclass whose fields carry a ``doc``
(``field(default=..., metadata=bounds(ge=1, doc="..."))``): the core's sections
(``checkpoint``, ``divergence``, ``limits``) and the ``Options`` of every plugin in the
registry, with a backend's ``Model`` and ``Train`` sections, and the options hook plugins
declare for the file's ``plugins`` section. A docs page shows one as a
markdown table (key, type, default, bounds, description) between two markers::

    <!-- options: checkpoint -->
    | key | type | default | bounds | description |
    ...
    <!-- /options -->

A fenced block right after ``<!-- file: experiments/digits_cnn.py -->`` shows that file,
whole, as it is in the repository (the README's own-model example). The table of events
between ``<!-- events -->`` and ``<!-- /events -->`` is the catalogue of
``runner.records.event_kinds``, one row per kind (kinds that share a description share a row).

After changing an option, adding a plugin or editing a shown file, regenerate them from the
repository's root folder::

    python -m runner.docs_tables --write

It rewrites every table between markers and every shown file, and appends a marked table for
each section that has none yet (a plugin added later) to the page of its kind.
``python -m runner.docs_tables`` alone checks: it names each part that differs and exits 1.
``tests/test_docs.py`` runs the same check, and also fails for a field without a ``doc``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import orjson

from runner.engine.checkpoints import CheckpointOptions
from runner.engine.divergence import DivergenceOptions
from runner.experiment_file.limits import Limits
from runner.experiment_file.typed import type_hints
from runner.records.event_kinds import EVENTS
from runner.registry import Registry

COMMAND = "python -m runner.docs_tables --write"
MARKER = re.compile(r"<!-- options: (?P<key>\S+) -->\n(?P<table>.*?)<!-- /options -->", re.S)
EVENTS_MARKER = re.compile(r"<!-- events -->\n(?P<table>.*?)<!-- /events -->", re.S)
FILE_MARKER = re.compile(r"<!-- file: (?P<path>\S+) -->\n```(?P<lang>[\w-]*)\n(?P<body>.*?)^```$", re.S | re.M)
HEADER = "| key | type | default | bounds | description |\n|---|---|---|---|---|\n"
NO_OPTIONS = "This section takes no options besides `name`.\n"
CORE = {"checkpoint": CheckpointOptions, "divergence": DivergenceOptions, "limits": Limits}
# Where --write appends the table of a section no page shows yet, by the key's first part.
PAGE_FOR = {
    "checkpoint": "experiment-file.md",
    "divergence": "experiment-file.md",
    "limits": "experiment-file.md",
    "backend": "experiment-file.md",
    "dataset": "experiment-file.md",
    "strategy": "strategies.md",
    "pruner": "pruners.md",
    "executor": "executors.md",
    "logger": "loggers.md",
    "plugins": "experiment-file.md",
}
_NAMES = {int: "integer", float: "number", bool: "boolean", str: "string", type(None): "null"}
_PLURALS = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}
_BOUNDS = (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"))


@dataclass(frozen=True)
class Section:
    """One table: the dataclass it is generated from; None for a plugin unavailable here
    (its table cannot be generated, and is left as it stands)."""

    key: str
    cls: type | None
    title: str
    same_as: str | None = None  # the title of an earlier table of the same dataclass (backends sharing a Model)

    def render(self) -> str:
        """The table between this section's markers: the dataclass's, or a line naming the
        earlier table of the same dataclass."""
        if self.same_as is not None:
            return f"The same options as {self.same_as}, above.\n"
        return render(self.cls)


def sections(registry: Registry) -> dict[str, Section]:
    """Every table the docs must show, by marker key: the core's sections, then each
    registered plugin's ``Options`` (``strategy/random``), a backend's ``Model`` and ``Train``
    (``backend/numpy/model``), the options a hook plugin declared with ``add_options``
    (``plugins/NAME``), and each dataclass nested in a field (``KEY/FIELD``). A
    dataclass met again (a backend sharing another's ``Model``) refers to its first table."""
    found: dict[str, Section] = {}
    first: dict[type, str] = {}  # dataclass -> the title of its first table

    def add(key: str, cls: type | None, title: str) -> None:
        found[key] = Section(key, cls, title, first.get(cls) if cls is not None else None)
        if cls is None or cls in first:
            return
        first[cls] = title
        hints = type_hints(cls)
        for f in dataclasses.fields(cls):
            nested = _dataclasses_in(hints[f.name])
            for inner in nested:
                suffix = f"/{inner.__name__}" if len(nested) > 1 else ""
                add(f"{key}/{f.name}{suffix}", inner, f"{title}: `{f.name}`")

    for key, cls in CORE.items():
        add(key, cls, f"`{key}`")
    for entry in registry.entries():
        key = f"{entry.kind}/{entry.name}"
        obj = entry.obj
        add(key, None if obj is None else obj.Options, f'{entry.kind} "{entry.name}"')
        if entry.kind == "backend":
            for part in ("model", "train"):
                cls = None if obj is None else getattr(obj, part.title())
                add(f"{key}/{part}", cls, f'backend "{entry.name}": `{part}`')
            own = None if obj is None else obj.for_model({"class_path": "module:Class"})
            if own is not None and own is not obj:  # a backend that also trains a person's own module
                for part in ("model", "train"):
                    title = f'backend "{entry.name}" with a `class_path`: `{part}`'
                    add(f"{key}/own/{part}", getattr(own, part.title()), title)
    for declared in registry.options():  # a hook plugin's options, under the file's "plugins" section
        add(f"plugins/{declared.name}", declared.cls, f'`plugins.{declared.name}` (plugin "{declared.plugin}")')
    return found


def render(cls: type) -> str:
    """The markdown table of dataclass ``cls``: one row per field, in declaration order."""
    fields = [f for f in dataclasses.fields(cls) if f.init]
    if not fields:
        return NO_OPTIONS
    hints = type_hints(cls)
    rows = [
        f"| `{f.name}` | {_cell(type_name(hints[f.name]))} | {_cell(default_text(f))} | "
        f"{_cell(bounds_text(f.metadata.get('bounds')))} | {_cell(f.metadata.get('doc') or '')} |\n"
        for f in fields
    ]
    return HEADER + "".join(rows)


def missing_docs(registry: Registry) -> list[str]:
    """``KEY.FIELD`` for every field of every table whose metadata has no ``doc``."""
    return [
        f"{section.key}.{f.name} ({section.cls.__module__}.{section.cls.__qualname__})"
        for section in sections(registry).values()
        if section.cls is not None and section.same_as is None
        for f in dataclasses.fields(section.cls)
        if f.init and not f.metadata.get("doc")
    ]


def type_name(tp: Any) -> str:
    """A field's annotation as the JSON it accepts: ``integer``, ``list of strings``,
    one of the values of a ``Literal``, ``string or null``."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return "any"
    if origin is Literal:
        names = [f"`{orjson.dumps(a).decode()}`" for a in args]
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_PLURALS.get(args[0]) or type_name(args[0])}"
        return f"list of {len(args)} items"
    if origin in (dict, Mapping) or tp is dict:
        return "object" if not args or args[1] is Any else f"object of {_PLURALS.get(args[1]) or type_name(args[1])}"
    if dataclasses.is_dataclass(tp):
        return "object"
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def default_text(f: dataclasses.Field) -> str:
    """The default as JSON (``required`` when there is none)."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return "its defaults"
    return f"`{_json(value)}`"


def bounds_text(rule: Mapping[str, Any] | None) -> str:
    """``≥ 0``, ``> 0, < 1``; empty when there are none."""
    rule = rule or {}
    return ", ".join(f"{symbol} {_json(rule[key])}" for key, symbol in _BOUNDS if rule.get(key) is not None)


def tables_in(text: str) -> dict[str, str]:
    """The marked tables of a page, by key."""
    return {m["key"]: m["table"] for m in MARKER.finditer(text)}


def pages(root: Path) -> list[Path]:
    """The README and the markdown pages under ``root/docs``."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def shown_files(text: str) -> list[tuple[str, str]]:
    """``(path, block)`` for each fenced block that shows a file of the repository."""
    return [(m["path"], m["body"]) for m in FILE_MARKER.finditer(text)]


def file_text(root: Path, path: str) -> str | None:
    """The text a block showing ``path`` must hold (ending in a newline); None if there is no such file."""
    file = root / path
    if not file.is_file():
        return None
    text = file.read_text()
    return text if text.endswith("\n") else text + "\n"


def events_table() -> str:
    """The table of ``runner.records.event_kinds.EVENTS``, in the catalogue's order."""
    rows: list[tuple[list[str], str]] = []
    for kind in EVENTS.values():
        if rows and rows[-1][1] == kind.doc:
            rows[-1][0].append(kind.name)
        else:
            rows.append(([kind.name], kind.doc))
    lines = ["| event | fields |", "|---|---|"]
    lines += ["| " + ", ".join(f"`{name}`" for name in names) + f" | {doc} |" for names, doc in rows]
    return "\n".join(lines) + "\n"


def check(root: Path, registry: Registry) -> list[str]:
    """What differs between the pages' tables and the generated ones, one line each;
    empty when every table is current."""
    wanted = sections(registry)
    problems, shown = [], set()
    for page in pages(root):
        for key, table in tables_in(page.read_text()).items():
            name = page.relative_to(root)
            if key in shown:
                problems.append(f"{name}: the table {key} is shown twice")
            shown.add(key)
            section = wanted.get(key)
            if section is None:
                problems.append(f"{name}: no section {key} (not a core section or a registered plugin's)")
            elif section.cls is not None and table != section.render():
                problems.append(f"{name}: the table {key} differs from {section.cls.__qualname__}'s fields")
    for key, section in wanted.items():
        if key not in shown and section.cls is not None:
            problems.append(f"no page shows the table {key} ({section.cls.__qualname__})")
    events = [(page, m["table"]) for page in pages(root) for m in EVENTS_MARKER.finditer(page.read_text())]
    if len(events) != 1:
        problems.append(f"the table of events must be shown once, between <!-- events --> markers; found {len(events)}")
    problems += [
        f"{p.relative_to(root)}: the table of events differs from runner.records.event_kinds"
        for p, t in events
        if t != events_table()
    ]
    for page in pages(root):
        for path, block in shown_files(page.read_text()):
            expected = file_text(root, path)
            if expected is None:
                problems.append(f"{page.relative_to(root)}: shows {path}, which does not exist")
            elif block != expected:
                problems.append(f"{page.relative_to(root)}: its copy of {path} differs from the file")
    return problems


def write(root: Path, registry: Registry) -> list[Path]:
    """Rewrite every marked table and shown file, and append the missing tables; return the
    pages changed."""
    wanted = sections(registry)
    changed, shown = [], set()
    for page in pages(root):
        text = page.read_text()

        def table(match: re.Match) -> str:
            section = wanted.get(match["key"])
            shown.add(match["key"])
            if section is None or section.cls is None:
                return match[0]
            return f"<!-- options: {match['key']} -->\n{section.render()}<!-- /options -->"

        def copy(match: re.Match) -> str:
            expected = file_text(root, match["path"])
            if expected is None:
                return match[0]
            return f"<!-- file: {match['path']} -->\n```{match['lang']}\n{expected}```"

        new = FILE_MARKER.sub(copy, MARKER.sub(table, text))
        new = EVENTS_MARKER.sub(lambda _: f"<!-- events -->\n{events_table()}<!-- /events -->", new)
        if new != text:
            page.write_text(new)
            changed.append(page)
    for key, section in wanted.items():
        if key in shown or section.cls is None:
            continue
        page = root / "docs" / PAGE_FOR[key.split("/")[0]]
        block = f"\n### {section.title}\n\n<!-- options: {key} -->\n{section.render()}<!-- /options -->\n"
        page.write_text(page.read_text().rstrip("\n") + "\n" + block)
        changed.append(page)
    return list(dict.fromkeys(changed))


def _dataclasses_in(tp: Any) -> list[type]:
    if dataclasses.is_dataclass(tp):
        return [tp]
    return [t for arg in get_args(tp) for t in _dataclasses_in(arg)]


def _json(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
        return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m[1] == "-" else "") + m[2], text)
    if isinstance(value, tuple):
        return "[" + ", ".join(_json(v) for v in value) + "]"
    return orjson.dumps(value).decode()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.docs_tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite them (default: check them)")
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository's root folder (default: .)")
    args = parser.parse_args(argv)
    if not (args.root / "docs").is_dir():
        parser.error(f"no docs/ folder in {args.root.resolve()}: run it from the repository's root, or give --root")
    from runner.engine.plugin_manager import load_plugins

    registry = load_plugins().registry
    undocumented = missing_docs(registry)
    if args.write:
        for page in write(args.root, registry):
            print(f"rewrote {page}")
    problems = [f"field without a doc: {name}" for name in undocumented] + check(args.root, registry)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems and not args.write:
        print(f"regenerate them with: {COMMAND}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
