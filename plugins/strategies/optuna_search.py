"""The ``optuna`` strategy: any Optuna sampler (TPE, CMA-ES, GP, QMC, random) asks the trials.

Optuna is an optional extra (``pip install 'panda-caviar[optuna]'``); without it the
strategy is registered as unavailable, with that command. Runner keeps the run: Optuna only
chooses parameters, through its ask-and-tell interface, so trial seeds, executors,
babysitting, snapshots and reports are those of every other strategy.

The search space maps exactly. A float searched on a ``log`` scale is a log-uniform float,
a ``log1m`` float is a log-uniform ``1 - x`` (so 0.9, 0.99 and 0.999 are as far apart as
Optuna sees it), ints keep their scale, and a choice of any JSON values (lists and objects
included) is a categorical over the choices' positions.

A resumed run asks for the same trials as an uninterrupted one. The study lives in memory;
each ask uses a sampler seeded from the experiment's seed and the trial's number, and a
resumed run rebuilds the study from the history (the event log) by replaying every ask in
order, each after the results of the trials asked before it. That is exactly the study of a
run whose trials run one at a time; with several at once, results came in another order,
and the rebuilt study holds the same trials and results, its sampler's own state (CMA-ES)
rebuilt as if they had come in order.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from runner import Choice, Float, History, Int, Param, Space, SpecError, Strategy, TrialResult, bounds, hookimpl

INSTALL = "needs Optuna: pip install 'panda-caviar[optuna]' (or pip install optuna)"
SAMPLERS = {  # name -> the Optuna sampler class's name
    "tpe": "TPESampler",
    "cmaes": "CmaEsSampler",
    "gp": "GPSampler",
    "qmc": "QMCSampler",
    "random": "RandomSampler",
}
EXTRAS = {"cmaes": ("cmaes",), "gp": ("torch", "scipy")}  # what a sampler imports only when it first samples


@dataclass(frozen=True)
class OptunaOptions:
    trials: int = field(default=20, metadata=bounds(ge=1, doc="how many trials to run"))
    sampler: Literal["tpe", "cmaes", "gp", "qmc", "random"] = field(
        default="tpe", metadata=bounds(doc="the Optuna sampler that asks: " + ", ".join(SAMPLERS))
    )
    sampler_options: dict[str, Any] = field(
        default_factory=dict,
        metadata=bounds(
            doc="keyword arguments of the sampler, as Optuna names them (its `seed` is the experiment's): "
            '`{"multivariate": true, "constant_liar": true, "n_startup_trials": 5}` for TPE'
        ),
    )


def optuna_module():
    """Optuna, imported on first use (a second on import), its logging kept to warnings."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # its per-trial warnings would run through the live view
    return optuna


def make_sampler(options: OptunaOptions, seed: int, draw_seed: int | None = None):
    """The sampler the options name, seeded with ``seed``; a TypeError or ValueError for an
    option it does not take. ``draw_seed`` seeds this ask's draws: QMC keeps ``seed`` (its
    sequence, scrambled by the seed, goes on from trial to trial) and draws what its sequence
    does not cover with a random sampler seeded with it; every other sampler takes it as its seed."""
    optuna = optuna_module()
    sampler_class = getattr(optuna.samplers, SAMPLERS[options.sampler])
    kwargs = dict(options.sampler_options)
    if options.sampler == "qmc":
        kwargs["independent_sampler"] = optuna.samplers.RandomSampler(seed=draw_seed if draw_seed is not None else seed)
    elif draw_seed is not None:
        seed = draw_seed
    with warnings.catch_warnings():  # Optuna marks some options experimental; they work as documented
        warnings.simplefilter("ignore")
        return sampler_class(**kwargs, seed=seed)


def settable(sampler: str) -> dict[str, inspect.Parameter]:
    """The sampler's keyword arguments a JSON file can set: not ``seed`` (the experiment's),
    nor those that take a function or another sampler."""
    parameters = inspect.signature(getattr(optuna_module().samplers, SAMPLERS[sampler])).parameters
    return {
        name: p
        for name, p in parameters.items()
        if name != "seed" and not any(word in str(p.annotation) for word in ("Callable", "Sampler"))
    }


class ParamMap:
    """One searched parameter as Optuna sees it: its name, its distribution, and the two
    directions between Optuna's value and the value a trial gets."""

    def __init__(self, param: Param):
        optuna = optuna_module()
        self.param, self.name = param, param.path
        if isinstance(param, Choice):
            self.distribution = optuna.distributions.CategoricalDistribution(list(range(len(param.choices))))
            self.positions: dict[bytes, int] = {}
            for i, choice in enumerate(param.choices):
                self.positions.setdefault(orjson.dumps(choice, option=orjson.OPT_SORT_KEYS), i)
        elif isinstance(param, Int):
            self.distribution = optuna.distributions.IntDistribution(param.low, param.high, log=param.scale == "log")
        elif isinstance(param, Float) and param.scale == "log1m":
            self.name = f"{param.path} (1 - x)"
            self.distribution = optuna.distributions.FloatDistribution(1.0 - param.high, 1.0 - param.low, log=True)
        elif isinstance(param, Float):
            self.distribution = optuna.distributions.FloatDistribution(param.low, param.high, log=param.scale == "log")
        else:
            raise SpecError(f"search.space.{param.path}", f"the optuna strategy cannot search a {type(param).__name__}")

    def to_trial(self, internal: Any) -> Any:
        """The value a trial gets for Optuna's ``internal`` value."""
        param = self.param
        if isinstance(param, Choice):
            return param.choices[internal]
        if isinstance(param, Float) and param.scale == "log1m":
            return min(max(1.0 - internal, param.low), param.high)
        return internal

    def to_optuna(self, value: Any) -> Any:
        """Optuna's value for a value a trial got (the history holds those)."""
        param = self.param
        if isinstance(param, Choice):  # by JSON text: 1, 1.0 and true are three choices
            return self.positions[orjson.dumps(value, option=orjson.OPT_SORT_KEYS)]
        if isinstance(param, Float) and param.scale == "log1m":
            return min(max(1.0 - value, 1.0 - param.high), 1.0 - param.low)
        return value


class OptunaSearch(Strategy):
    """Asks an in-memory Optuna study that follows the history (see the module)."""

    name = "optuna"
    Options = OptunaOptions

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        optuna = optuna_module()
        self.maps = [ParamMap(p) for p in self.space.params]
        self.distributions = {m.name: m.distribution for m in self.maps}
        self.study = optuna.create_study(direction="minimize" if self.mode == "min" else "maximize")
        self.numbers: dict[int, int] = {}  # runner trial id -> the number of its trial in the study
        self.told: set[int] = set()  # runner trial ids whose result the study holds

    @classmethod
    def check(cls, space: Space, options: OptunaOptions, metrics: tuple[str, ...]) -> None:
        """Every parameter maps to an Optuna distribution, and the sampler takes its options."""
        for param in space.params:
            ParamMap(param)
        for module in EXTRAS.get(options.sampler, ()):
            if importlib.util.find_spec(module) is None:
                raise SpecError("search.strategy.sampler", f"{options.sampler} needs {module}: pip install {module}")
        known = settable(options.sampler)
        where = "search.strategy.sampler_options"
        for name in options.sampler_options:
            if name not in known:
                raise SpecError(
                    f"{where}.{name}",
                    f"not an option {options.sampler} takes from a file"
                    + (" (the seed is the experiment's)" if name == "seed" else "")
                    + f"; it takes: {', '.join(known)}",
                )
        try:
            make_sampler(options, seed=0)
        except (TypeError, ValueError) as err:
            raise SpecError(where, f"{options.sampler}: {err}; it takes: {', '.join(known)}") from None

    def planned_trials(self) -> int:
        return self.options.trials

    def ask(self, history: History) -> dict[str, Any] | None:
        index = len(history)
        if index >= self.options.trials:
            return None
        self.catch_up(history)
        return self.sample(index, history)

    def tell(self, history: History, result: TrialResult) -> None:
        self.catch_up(history)

    def sample(self, index: int, history: History, asked: dict[str, Any] | None = None) -> dict[str, Any]:
        """Trial ``index``: the sampler, seeded for it, draws in a probe trial, which ends
        failed (samplers pass over failed trials); the trial itself joins the study with
        the values the run gives it (``asked`` when a resumed run replays it), carrying
        the probe's sampler state (CMA-ES keeps its own there), so a resumed run rebuilds
        exactly the study an uninterrupted one has."""
        optuna = optuna_module()
        self.study.sampler = make_sampler(self.options, self.seed, draw_seed=int(self.rng(index).integers(2**31)))
        probe = self.study.ask(self.distributions)
        if asked is None:
            params = {m.param.path: m.to_trial(probe.params[m.name]) for m in self.maps}
        else:
            params = asked
        attrs = dict(self.study.get_trials(deepcopy=False)[probe.number].system_attrs)
        self.study.tell(probe, state=optuna.trial.TrialState.FAIL)
        self.study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.RUNNING,
                params={m.name: m.to_optuna(params[m.param.path]) for m in self.maps},
                distributions=self.distributions,
                system_attrs=attrs,
            )
        )
        self.numbers[index] = probe.number + 1  # added right after the probe
        return params

    def catch_up(self, history: History) -> None:
        """Bring the study level with the history: results it lacks are told, and trials it
        has not seen (a resumed run's) are replayed in the order they were asked, each after
        the results of the trials asked before it, as a run of one trial at a time has them."""
        for record in history:
            if record.id not in self.numbers:
                self.tell_results(r for r in history if r.id < record.id)
                self.sample(record.id, history, asked=record.params)
        self.tell_results(history)

    def tell_results(self, records) -> None:
        optuna = optuna_module()
        for record in records:
            if record.result is None or record.id in self.told or record.id not in self.numbers:
                continue
            self.told.add(record.id)
            score = record.result.score
            if score is not None and math.isfinite(score):
                self.study.tell(self.numbers[record.id], score)
            else:
                self.study.tell(self.numbers[record.id], state=optuna.trial.TrialState.FAIL)


@hookimpl
def runner_register(registry) -> None:
    """Adds the ``optuna`` strategy, or names it unavailable when Optuna cannot be imported."""
    try:
        found = importlib.util.find_spec("optuna") is not None
    except (ImportError, ValueError):  # ValueError: blocked in sys.modules
        found = False
    if found:
        registry.add_strategy(OptunaSearch)
    else:
        registry.add_unavailable("strategy", "optuna", INSTALL)
