"""How big an experiment may get: the ``limits`` section, and the estimates checked against it.

A spec whose model or data cannot fit in memory (a hidden layer of a billion units, ten
million spiral arms) is refused when the file is read, with the JSON path, before any data
are generated or any array is allocated, so ``runner start`` makes no run directory for it.
The core knows no backend and no dataset; it asks the plugins:

- the dataset plugin's ``estimate(options, base_dir=...)`` says, from its options alone
  (and, for files, what their size and headers tell), how many bytes loading it takes and,
  where it can tell, how many examples, features and classes the data has (``DataSize``);
- the backend's ``estimate(model=..., train=..., options=..., examples=..., features=...,
  classes=...)`` says how many parameters one trial's model has and how many bytes a trial
  holds (``ModelSize``).

A plugin whose ``estimate`` returns None (the default) is not checked. The model is checked for every
trial the search space can make, at its largest (each parameter at the extreme, or the
choice, that makes the model biggest), so a trial cannot blow up in the middle of a
search; where the data's shape is only known once it is loaded (a CSV file's columns and
classes) the model is checked again then, still before any model is built or any run
directory made.

The defaults are far above every example (the largest, ``digits_babysit.json``, has 170
thousand parameters and is estimated at 20 MB) and far below what would only fail after
minutes of swapping: ``max_parameters`` 1e9 (4 GB of float32 weights, before gradients and
optimizer moments), ``max_array_bytes`` 16e9 (16 GB, a workstation's memory). Raise them in
the file: ``"limits": {"max_parameters": 2e9, "max_array_bytes": 64e9}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from runner.errors import SpecError, join_path
from runner.experiment_file.typed import bounds

if TYPE_CHECKING:
    from runner.data import Dataset
    from runner.experiment_file.spec import ExperimentSpec
    from runner.registry import Registry

#: Float64 copies of the features the core's ``prepare`` holds at its peak (converted,
#: split, standardized), and int64 copies of the labels (codes, split, cast).
PREPARED_FEATURE_COPIES = 3
PREPARED_LABEL_COPIES = 3


@dataclass(frozen=True)
class Limits:
    """The ``limits`` section: how big an experiment may get before it is refused."""

    max_parameters: float = field(
        default=1e9,
        metadata=bounds(gt=0, doc="largest number of trainable parameters of one trial's model"),
    )
    max_array_bytes: float = field(
        default=16e9,
        metadata=bounds(
            gt=0,
            doc="largest estimated memory, in bytes, of the arrays of the data while loading, and of one trial "
            "(its data, model, optimizer state and the snapshots it keeps in memory)",
        ),
    )


@dataclass(frozen=True)
class DataSize:
    """A dataset plugin's estimate of its data, made from its options before anything is
    loaded or generated. ``bytes``: the memory the plugin's ``load`` takes (the arrays it
    returns and whatever it reads them from). ``examples`` (training and validation
    together), ``features`` and ``classes``: exact or an upper bound, None when only
    loading can tell."""

    bytes: int
    examples: int | None = None
    features: int | None = None
    classes: int | None = None
    detail: str = ""  # how the estimate comes about, for a message: "300,000,000 examples of 2 features"


@dataclass(frozen=True)
class ModelSize:
    """A backend's estimate of one trial. ``bytes``: what a trial holds while it trains
    (parameters, gradients, optimizer state, a batch's activations, its own copy of the
    data); ``state_bytes``: one ``state()``, of which the loop keeps ``checkpoint.memory``
    copies in memory besides."""

    parameters: int
    bytes: int
    state_bytes: int = 0
    detail: str = ""  # how the model is made, for a message: "layers 64 -> 1000000000 -> 10"


def check_experiment(spec: ExperimentSpec, registry: Registry) -> None:
    """Called when an experiment file is read (``spec.load``), before any data are loaded:
    the data's estimate, then every trial's model with the data's shape as far as it is
    known (a lower bound where it is not). Raises SpecError naming the JSON path; changes
    nothing."""
    dataset = registry.get("dataset", spec.data.name, "data.name")
    size = dataset.estimate(spec.data.options, base_dir=spec.base_dir)
    if size is None:
        return
    _check_data(spec.limits, size)
    known = None not in (size.examples, size.features, size.classes)
    _check_models(spec, size.examples or 1, size.features or 1, size.classes or 2, known=known)


def check_loaded(spec: ExperimentSpec, data: Dataset) -> None:
    """Called once the data are loaded and prepared, before any trial builds its model (and
    before ``runner start`` makes the run directory): every trial's model, now with the
    data's true shape. Raises SpecError naming the JSON path; changes nothing."""
    _check_models(spec, len(data.x_train) + len(data.x_val), data.n_features, data.n_classes)


def prepared_bytes(examples: int, features: int) -> int:
    """The bytes the core's ``prepare`` holds at its peak for data of this shape."""
    return examples * (features * 8 * PREPARED_FEATURE_COPIES + 8 * PREPARED_LABEL_COPIES)


def _check_data(limits: Limits, size: DataSize) -> None:
    total = size.bytes
    if size.examples is not None and size.features is not None:
        total += prepared_bytes(size.examples, size.features)
    if total > limits.max_array_bytes:
        detail = f" ({size.detail})" if size.detail else ""
        raise SpecError(
            "data",
            f"loading the data would take about {_bytes(total)} of memory{detail}, over "
            f"limits.max_array_bytes = {_bytes(limits.max_array_bytes)}; make the data smaller, or raise "
            '"limits": {"max_array_bytes": ...} if this machine has the memory',
        )


def _check_models(spec: ExperimentSpec, examples: int, features: int, classes: int, *, known: bool = True) -> None:
    """Every trial the search space can make, at its largest, against both limits, for data
    of this shape (``known`` False: a lower bound of it)."""
    shape = {"examples": examples, "features": features, "classes": classes}
    estimates: dict[bytes, ModelSize | None] = {}

    def model_size(params: dict[str, Any]) -> ModelSize | None:
        """The backend's estimate, once per trial (building a trial's sections costs)."""
        key = orjson.dumps(params, option=orjson.OPT_SORT_KEYS)
        if key not in estimates:
            estimates[key] = _model_size(spec, params, shape)
        return estimates[key]

    if model_size({}) is None:
        return  # the backend makes no estimate
    kept = examples * (features + 1) * 8  # the prepared Dataset every trial trains on

    def parameters(params: dict[str, Any]) -> int:
        return model_size(params).parameters

    def trial_bytes(params: dict[str, Any]) -> int:
        model = model_size(params)
        return kept + model.bytes + model.state_bytes * (spec.checkpoint.memory + 1)

    limits = spec.limits
    for measure, limit, name in (
        (parameters, limits.max_parameters, "max_parameters"),
        (trial_bytes, limits.max_array_bytes, "max_array_bytes"),
    ):
        params = _largest(spec, measure)
        if measure(params) > limit:
            model = model_size(params)
            message = _too_big(model, measure(params), limit, name, shape, known)
            raise SpecError(_blame(spec, params, measure), message)


def _model_size(spec: ExperimentSpec, params: dict[str, Any], shape: dict[str, int]) -> ModelSize | None:
    """The backend's estimate for the trial with ``params`` (None: the backend makes none)."""
    from runner.experiment_file.spec import trial_sections  # spec imports this module

    model, train, options = trial_sections(spec, params)
    return spec.backend_class.estimate(model=model, train=train, options=options, **shape)


def _largest(spec: ExperimentSpec, measure) -> dict[str, Any]:
    """The searched values that make ``measure`` largest, one parameter after another (each
    at the candidate that gives the most with those chosen before it)."""
    chosen: dict[str, Any] = {}
    for param in spec.search.space:
        best = None
        for value in param.extremes():
            try:
                amount = measure({**chosen, param.path: value})
            except SpecError:  # a combination the backend refuses: no trial has it
                continue
            if best is None or amount > best[0]:
                best = (amount, value)
        if best is not None:
            chosen[param.path] = best[1]
    return chosen


def _blame(spec: ExperimentSpec, params: dict[str, Any], measure) -> str:
    """The JSON path to name for trials over a limit: the searched parameter whose choice
    adds the most (``search.space.model.hidden``), else the model section itself."""
    worst = measure(params)
    path, drop = "model", 0
    for param in spec.search.space:
        if param.path not in params:
            continue
        smallest = worst
        for value in param.extremes():
            try:
                smallest = min(smallest, measure({**params, param.path: value}))
            except SpecError:
                continue
        if worst - smallest > drop:
            path, drop = join_path("search.space", param.path), worst - smallest
    return path


def _too_big(model: ModelSize, amount: int, limit: float, name: str, shape: dict[str, int], known: bool) -> str:
    """The message for trials over ``limits.<name>``."""
    detail = f" ({model.detail})" if model.detail else ""
    data = f"{'' if known else 'at least '}{shape['features']:,} features and {shape['classes']:,} classes"
    if name == "max_parameters":
        what = f"the model would have {amount:,} parameters{detail} for data of {data}"
        shown = f"{limit:,.0f}"
    else:
        what = (
            f"one trial would hold about {_bytes(amount)} of arrays: the data, a model of {model.parameters:,} "
            f"parameters{detail} with its optimizer state and the snapshots it keeps in memory"
        )
        shown = _bytes(limit)
    return f'{what}, over limits.{name} = {shown}; make it smaller, or raise "limits": {{"{name}": ...}}'


def _bytes(amount: float) -> str:
    """A number of bytes for people: ``16.0 GB``, ``2.5 MB``."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if amount >= size:
            return f"{amount / size:.1f} {unit}"
    return f"{int(amount)} bytes"
