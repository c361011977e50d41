"""The experiment file: JSON read with orjson, validated into frozen dataclasses.

Validation happens before anything runs and names the JSON path of every problem
(``search.space.train.lr.low: must be > 0 for scale "log", got 0``). Plugin-defined
sections (``model``, ``train``, each plugin's options, and under ``plugins`` the options of
plugins that only implement hooks) are checked against the dataclasses the plugins declare,
and every searched parameter is checked at its extreme values, so a typo in a dotted path
or a choice the backend rejects is caught up front.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from runner.engine.checkpoints import CheckpointOptions
from runner.engine.divergence import DivergenceOptions
from runner.errors import SpecError, join_path
from runner.experiment_file.limits import Limits, check_experiment
from runner.experiment_file.space import Space
from runner.experiment_file.typed import build, convert, describe
from runner.imports import experiment_folder
from runner.inputs import EXPERIMENT_FILE, InputError, duplicate_key, read_bytes
from runner.registry import Kind, PluginOptions, Registry
from runner.trial import default_mode

TOP_LEVEL = (
    "$schema",
    "name",
    "description",
    "seed",
    "data",
    "backend",
    "model",
    "train",
    "search",
    "checkpoint",
    "divergence",
    "executor",
    "loggers",
    "limits",
    "plugins",
)
SEARCHABLE_SECTIONS = ("model", "train", "backend")
SEARCH_KEYS = ("metric", "mode", "pruner", "space", "strategy")
DEFAULT_PLUGINS = {"backend": "numpy", "search.strategy": "random", "executor": "inline"}  # for a section left out
DEFAULT_METRIC = "val_loss"
SEED_LIMIT = 2**63  # a seed is >= 0 and < SEED_LIMIT


@dataclass(frozen=True)
class PluginRef:
    """A section naming a plugin: ``{"name": "random", "trials": 20}``."""

    name: str
    options: Any  # the plugin's Options dataclass, built and checked
    raw: dict[str, Any]  # the section as written, "name" included


@dataclass(frozen=True)
class Search:
    strategy: PluginRef
    metric: str
    mode: Literal["min", "max"]
    space: Space
    pruner: PluginRef | None = None  # none: every trial trains to its end


@dataclass(frozen=True)
class ExperimentSpec:
    """A validated experiment file."""

    name: str
    description: str
    seed: int
    data: PluginRef
    backend: PluginRef
    model: Any  # the backend's Model dataclass
    train: Any  # the backend's Train dataclass
    search: Search
    checkpoint: CheckpointOptions
    divergence: DivergenceOptions
    executor: PluginRef
    limits: Limits
    raw: dict[str, Any]  # the file as read, for the run directory and for resume
    base_dir: Path  # the experiment file's folder; relative data paths and import paths resolve against it
    backend_class: type  # the class that trains this model section (``Backend.for_model``)
    plugins: PluginOptions = field(default_factory=PluginOptions)  # the "plugins" section, built
    loggers: tuple[PluginRef, ...] = ()  # the "loggers" section: each logger named, with its options

    def logger(self, name: str) -> Any:
        """The options of the logger ``name`` if the experiment names it under ``loggers``
        (``Registry.add_logger``), else None."""
        return next((ref.options for ref in self.loggers if ref.name == name), None)

    def options(self, name: str) -> Any:
        """The options that a plugin declared as ``name`` (``Registry.add_options``), as the
        file's ``plugins.<name>`` section set them, or their defaults where the file does not
        name it. A KeyError if no plugin loaded declared ``name``."""
        return self.plugins[name]

    def trial_config(self, params: dict[str, Any]) -> dict[str, Any]:
        """The base config (model, train and backend sections, as written) with ``params`` applied.

        Raises SpecError for a path that does not name a searchable key.
        """
        config = {
            "model": copy.deepcopy(self.raw.get("model", {})),
            "train": copy.deepcopy(self.raw["train"]),
            "backend": copy.deepcopy(self.backend.raw),
        }
        set_paths(config, params, "search.space")
        return config


def set_paths(config: dict[str, Any], params: dict[str, Any], where: str) -> None:
    """Set each dotted path of ``params`` (``train.lr``) in ``config``'s sections, in place;
    a SpecError (under ``where``) for a path that names no searchable key."""
    for path, value in params.items():
        check_searchable(path, where)
        section, *keys = path.split(".")
        node = config.setdefault(section, {} if section != "backend" else {"name": DEFAULT_PLUGINS["backend"]})
        if isinstance(node, str) and section == "backend":  # the shorthand "backend": "torch"
            node = config[section] = {"name": node}
        if not isinstance(node, dict):
            raise SpecError(section, "must be an object")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise SpecError(join_path(where, path), f"{key} is not an object that holds options")
        node[keys[-1]] = value


def read_json(path: Path) -> Any:
    """Parse an experiment file (or a run's ``experiment.json``): a regular file of at most
    ``inputs.EXPERIMENT_FILE`` bytes, valid JSON, no key written twice in one object. A
    SpecError says what is wrong (where the syntax breaks; the dotted path of a duplicate key)."""
    try:
        data = read_bytes(path, EXPERIMENT_FILE)
    except InputError as err:
        if err.kind == "missing":
            raise SpecError("", f"no such file: {path}") from None
        if err.kind == "folder":
            raise SpecError("", f"is a directory, not an experiment file: {path}") from None
        raise SpecError("", err.problem, source=str(err.path)) from None
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise SpecError(
            "", f"not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})", source=str(path)
        ) from None
    duplicate = duplicate_key(data)
    if duplicate is not None:
        raise SpecError(join_path(*duplicate), "duplicate key", source=str(path))
    return raw


def load(
    path: str | Path,
    registry: Registry,
    *,
    seed: int | None = None,
    base_dir: Path | None = None,
    start_from: dict[str, Any] | None = None,
    loggers: tuple[str, ...] = (),
) -> ExperimentSpec:
    """Read and validate an experiment file. ``seed`` overrides the file's seed; relative
    paths in it resolve against ``base_dir`` (default: the file's folder). ``start_from``
    (dotted path -> value: an earlier run's best config) is set in the file's model, train
    and backend sections first, so the run's ``experiment.json`` holds it. Then the size
    of the data and of every trial's model are checked against the file's ``limits``
    (``runner.experiment_file.limits``), before any data are loaded."""
    path = Path(path)
    raw = read_json(path)
    try:
        base_dir = base_dir or path.resolve().parent
        return load_document(raw, registry, seed=seed, base_dir=base_dir, start_from=start_from, loggers=loggers)
    except SpecError as err:
        raise err.in_file(str(path)) from None


def load_document(
    raw: Any,
    registry: Registry,
    *,
    base_dir: Path,
    seed: int | None = None,
    start_from: dict[str, Any] | None = None,
    loggers: tuple[str, ...] = (),
) -> ExperimentSpec:
    """``load`` for an experiment already parsed from JSON (``runner.run`` given a dict):
    ``start_from`` set in it, ``loggers`` added to it (``--logger``), validated, checked
    against its ``limits``; relative paths in it resolve against ``base_dir``."""
    if start_from and isinstance(raw, dict):
        raw = copy.deepcopy(raw)
        set_paths(raw, start_from, "--from")
    if loggers and isinstance(raw, dict):
        raw = with_loggers(raw, loggers)
    spec = parse(raw, registry, base_dir=base_dir, seed=seed)
    check_experiment(spec, registry)
    return spec


def parse(raw: Any, registry: Registry, *, base_dir: Path = Path("."), seed: int | None = None) -> ExperimentSpec:
    """Validate the parsed JSON of an experiment file against the registered plugins. Import
    paths it names (a ``model.class_path``) resolve against ``base_dir`` first."""
    with experiment_folder(base_dir):
        return _parse(raw, registry, base_dir=base_dir, seed=seed)


def _parse(raw: Any, registry: Registry, *, base_dir: Path, seed: int | None) -> ExperimentSpec:
    if not isinstance(raw, dict):
        raise SpecError("", "an experiment file must hold a JSON object")
    for key in raw:
        if key not in TOP_LEVEL:
            raise SpecError(
                key, "unknown section; known sections: " + ", ".join(k for k in TOP_LEVEL if k != "$schema")
            )
    for required in ("data", "train"):
        if required not in raw:
            raise SpecError(required, "is required")

    name = convert(str, raw.get("name", "experiment"), "name")
    if not name.strip():
        raise SpecError("name", "must not be empty")
    description = convert(str, raw.get("description", ""), "description")
    if seed is None:
        seed = convert(int, raw.get("seed", 0), "seed")
    if not 0 <= seed < SEED_LIMIT:
        raise SpecError("seed", f"must be >= 0 and < 2**63, got {seed}")

    data = _plugin_ref(raw["data"], "dataset", "data", registry)
    backend = _plugin_ref(raw.get("backend", {"name": DEFAULT_PLUGINS["backend"]}), "backend", "backend", registry)
    backend_cls = registry.get("backend", backend.name).for_model(raw.get("model", {}))
    model = build(backend_cls.Model, raw.get("model", {}), "model")
    train = build(backend_cls.Train, raw["train"], "train")
    search = _search(raw.get("search", {}), registry)
    task = getattr(data.options, "task", "classification")  # a dataset whose options lack it: classification
    if task not in backend_cls.tasks:
        raise SpecError(
            "data.task",
            f'backend "{backend.name}" does not train "{task}"; it trains {", ".join(backend_cls.tasks)}',
        )
    reported = ["train_loss", *(f"val_{m}" for m in backend_cls.metrics_for(task))]
    if search.metric not in reported:
        raise SpecError(
            "search.metric",
            f'backend "{backend.name}" does not report "{search.metric}"; it reports {", ".join(reported)}',
        )
    registry.get("strategy", search.strategy.name).check(search.space, search.strategy.options, tuple(reported))
    if search.pruner is not None:
        registry.get("pruner", search.pruner.name).check(search.pruner.options, train.epochs)
    checkpoint = build(CheckpointOptions, raw.get("checkpoint", {}), "checkpoint")
    divergence = build(DivergenceOptions, raw.get("divergence", {}), "divergence")
    executor = _plugin_ref(raw.get("executor", {"name": DEFAULT_PLUGINS["executor"]}), "executor", "executor", registry)
    limits = build(Limits, raw.get("limits", {}), "limits")
    plugin_options = _plugin_options(raw.get("plugins", {}), registry)
    loggers = _loggers(raw.get("loggers", []), registry)

    spec = ExperimentSpec(
        name=name,
        description=description,
        seed=seed,
        data=data,
        backend=backend,
        model=model,
        train=train,
        search=search,
        checkpoint=checkpoint,
        divergence=divergence,
        executor=executor,
        limits=limits,
        raw=raw,
        base_dir=base_dir,
        backend_class=backend_cls,
        plugins=plugin_options,
        loggers=loggers,
    )
    for param in search.space:
        for value in param.extremes():
            try:
                trial_sections(spec, {param.path: value})
            except SpecError as err:
                shown = orjson.dumps(value).decode()
                raise SpecError(
                    join_path("search.space", param.path), f"the value {shown} is not accepted: {err}"
                ) from None
    return spec


def trial_sections(spec: ExperimentSpec, params: dict[str, Any]) -> tuple[Any, Any, Any]:
    """The backend's (model, train, options) dataclasses for a trial with ``params``."""
    config = spec.trial_config(params)
    backend_cls = spec.backend_class
    options = {k: v for k, v in config["backend"].items() if k != "name"}
    with experiment_folder(spec.base_dir):
        return (
            build(backend_cls.Model, config["model"], "model"),
            build(backend_cls.Train, config["train"], "train"),
            build(backend_cls.Options, options, "backend"),
        )


def _search(raw: Any, registry: Registry) -> Search:
    if not isinstance(raw, dict):
        raise SpecError("search", "must be an object")
    for key in raw:
        if key not in SEARCH_KEYS:
            raise SpecError(join_path("search", key), f"unknown key; known keys: {', '.join(SEARCH_KEYS)}")
    strategy = _plugin_ref(
        raw.get("strategy", {"name": DEFAULT_PLUGINS["search.strategy"]}), "strategy", "search.strategy", registry
    )
    pruner = None if raw.get("pruner") is None else _plugin_ref(raw["pruner"], "pruner", "search.pruner", registry)
    metric = convert(str, raw.get("metric", DEFAULT_METRIC), "search.metric")
    mode = convert(str, raw.get("mode", default_mode(metric)), "search.mode")
    if mode not in ("min", "max"):
        raise SpecError("search.mode", f'must be "min" or "max", got "{mode}"')
    space = Space.parse(raw.get("space", {}), "search.space")
    for param in space:
        check_searchable(param.path)
    return Search(strategy=strategy, metric=metric, mode=mode, space=space, pruner=pruner)


def check_searchable(path: str, where: str = "search.space") -> None:
    """A searched path must name a key of the model, train or backend section (not the backend's name)."""
    section = path.split(".")[0]
    if section not in SEARCHABLE_SECTIONS or "." not in path:
        raise SpecError(
            join_path(where, path), "must be a dotted path into the model, train or backend section, such as train.lr"
        )
    if path == "backend.name":
        raise SpecError(join_path(where, path), "the backend cannot be searched: run one experiment per backend")


def _plugin_options(raw: Any, registry: Registry) -> PluginOptions:
    """The ``plugins`` section: for every options declaration (``Registry.add_options``), its
    dataclass built from ``plugins.<name>`` (from ``{}``, its defaults, where the file does not
    name it). A name no plugin declared is refused, with the nearest declared one."""
    if not isinstance(raw, dict):
        raise SpecError("plugins", f'must be an object such as {{"my_logger": {{"every": 2}}}}, got {describe(raw)}')
    for name in raw:
        registry.options_class(name, join_path("plugins", name))
    return PluginOptions(
        {
            entry.name: build(entry.cls, raw.get(entry.name, {}), join_path("plugins", entry.name))
            for entry in registry.options()
        }
    )


def _loggers(raw: Any, registry: Registry) -> tuple[PluginRef, ...]:
    """The ``loggers`` section: a list of loggers, each a name or ``{"name": ..., options}``,
    none twice."""
    if not isinstance(raw, list):
        raise SpecError("loggers", f'must be a list such as ["tensorboard"], got {describe(raw)}')
    loggers = tuple(_plugin_ref(item, "logger", f"loggers[{i}]", registry) for i, item in enumerate(raw))
    for i, ref in enumerate(loggers):
        if any(other.name == ref.name for other in loggers[:i]):
            raise SpecError(f"loggers[{i}]", f'names logger "{ref.name}" a second time')
    return loggers


def with_loggers(raw: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """A copy of the experiment ``raw`` whose ``loggers`` also name ``names`` (``runner start
    --logger``), those it names already left as they are."""
    listed = raw.get("loggers", [])
    if not isinstance(listed, list):  # (parse refuses it, naming the section)
        return raw
    named = {item if isinstance(item, str) else item.get("name") for item in listed if isinstance(item, str | dict)}
    return {**raw, "loggers": [*listed, *(name for name in dict.fromkeys(names) if name not in named)]}


def _plugin_ref(raw: Any, kind: Kind, path: str, registry: Registry) -> PluginRef:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise SpecError(path, f'must be an object such as {{"name": "..."}}, got {orjson.dumps(raw).decode()}')
    if "name" not in raw:
        raise SpecError(
            join_path(path, "name"), f"is required: which {kind} to use ({', '.join(registry.names(kind))})"
        )
    name = convert(str, raw["name"], join_path(path, "name"))
    cls = registry.get(kind, name, join_path(path, "name"))
    options = build(cls.Options, {k: v for k, v in raw.items() if k != "name"}, path)
    return PluginRef(name=name, options=options, raw=dict(raw))  # "name" included, even for the shorthand
