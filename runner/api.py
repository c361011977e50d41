"""The Python API: ``runner.run`` starts a run from a script or a notebook.

It is ``runner start`` without the command line: the same run directory (event log,
``status.json``, ``results.json``, ``experiment.json``, the control file that ``runner
nudge`` and a person's editor change while trials train), made by the same function,
``start_run``, which the CLI's ``start`` calls too::

    import runner

    result = runner.run("experiments/spirals_quick.json", seed=1)
    print(result.best.params, result.best.score, result.run_dir)

Bad input raises ``runner.SpecError`` naming the JSON path; Ctrl-C leaves a run that
``runner resume RUN_DIR`` continues, then raises KeyboardInterrupt saying so.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from runner.control.file import FILE_NAME as CONTROL_FILE
from runner.data import Dataset
from runner.engine.experiment import load_dataset, misfit
from runner.engine.interrupt import Interrupted, graceful_interrupts
from runner.engine.loop import run_experiment
from runner.engine.plugin_manager import Plugins, load_plugins
from runner.engine.snapshot_files import read_snapshot, trial_folder
from runner.engine.snapshot_storage import trial_snapshot
from runner.errors import RunnerError, SpecError, join_path
from runner.experiment_file.spec import ExperimentSpec, load, load_document, trial_sections
from runner.imports import experiment_folder
from runner.records.files import create_run_dir, run_lock
from runner.records.results import best_of, best_of_run, leaderboard
from runner.trial import TrialResult
from runner.views.console import notifier, terminal
from runner.views.live import LiveView
from runner.views.progress import leaderboard_table


@dataclass(frozen=True)
class RunResult:
    """A finished run, as ``runner.run`` returns it (``results.json`` holds the same)."""

    run_dir: Path
    """The run directory: ``events.jsonl``, ``status.json``, ``results.json``,
    ``experiment.json``, ``control.json`` and ``trials/tNNN/`` with each trial's snapshots.
    ``runner report``, ``runner status`` and ``runner resume`` take it."""
    leaderboard: tuple[TrialResult, ...]
    """Every trial, best first by ``metric`` under ``mode``; trials without a finite score
    last, by id: the order of ``results.json``'s ``trials``. Each ``TrialResult`` has
    ``trial`` (its id), ``state``, ``params``, ``score``, ``best`` and ``final`` (metrics),
    ``epochs``, ``seconds`` and ``reason``."""
    best: TrialResult | None
    """The best trial that completed its training (``results.json``'s ``best``); when none
    did, the best scored trial in any state; None when no trial has a score."""
    best_folder: Path | None
    """The best trial's folder, ``run_dir/trials/tNNN`` (its snapshot files); None when
    there is no best trial or it wrote no snapshot file."""
    metric: str
    """What trials are ranked by (``search.metric``, such as ``val_acc``)."""
    mode: str
    """``"max"`` or ``"min"``: whether a higher or a lower ``metric`` is better."""

    @classmethod
    def of(cls, run_dir: Path, board: Iterable[TrialResult], metric: str, mode: str) -> RunResult:
        """The result of a run whose trials ended as ``board`` (in any order)."""
        ranked = tuple(leaderboard(list(board), mode))
        best = best_of(list(ranked))
        folder = trial_folder(run_dir, best.trial) if best is not None else None
        return cls(run_dir, ranked, best, folder if folder is not None and folder.is_dir() else None, metric, mode)


def run(
    experiment: str | os.PathLike | Mapping[str, Any],
    *,
    out: str | os.PathLike = "checkpoints",
    plugins: Iterable[str | os.PathLike] = (),
    seed: int | None = None,
    base_dir: str | os.PathLike | None = None,
    loggers: Iterable[str] = (),
    quiet: bool = True,
) -> RunResult:
    """Run an experiment as ``runner start`` does, and return its results.

    ``experiment`` is the path of an experiment file, or a dict holding one (as
    ``json.load`` would give it). ``out`` is the folder the run directory is made in.
    ``plugins`` are one-off plugins, as ``--plugin`` takes them: ``.py`` files or importable
    module names (the installed plugins are always loaded). ``seed`` overrides the
    experiment's seed. Relative paths in the experiment (a data file) resolve against
    ``base_dir``: by default the file's folder, or for a dict the current directory.
    ``loggers`` are logger names (``["tensorboard"]``) added to the experiment's ``loggers``
    with their default options, as ``--logger`` adds them. ``quiet=False`` prints what
    ``runner start --plain`` prints.

    Raises ``runner.SpecError`` for a bad experiment (its message names the JSON path),
    ``runner.RunnerError`` for other bad input (a plugin that does not load, an output
    folder that cannot be made), TypeError for arguments of the wrong type. A run whose
    every trial failed returns all the same (each ``state`` is ``"failed"``, the reasons are
    in the event log). On Ctrl-C, the running trials save a snapshot and the run stops;
    then KeyboardInterrupt is raised, its message naming ``runner resume RUN_DIR``.
    """
    if isinstance(experiment, (str, os.PathLike)):
        experiment = Path(experiment)
    elif not isinstance(experiment, Mapping):
        raise TypeError(
            f"runner.run: experiment must be the path of an experiment file or a dict holding one, "
            f"got {type(experiment).__name__}"
        )
    if isinstance(plugins, (str, os.PathLike)):
        raise TypeError(f"runner.run: plugins must be a list of plugin files or modules, such as [{str(plugins)!r}]")
    refs = tuple(os.fspath(p) for p in plugins)
    logger_names = () if isinstance(loggers, str) else tuple(loggers)
    if isinstance(loggers, str) or not all(isinstance(name, str) for name in logger_names):
        raise TypeError(f"runner.run: loggers must be a list of logger names, such as ['tensorboard'], got {loggers!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"runner.run: seed must be an integer or None, got {type(seed).__name__}")
    started: list[Path] = []
    try:
        return start_run(
            experiment,
            out=Path(out),
            plugin_refs=refs,
            seed=seed,
            base_dir=None if base_dir is None else Path(base_dir),
            loggers=logger_names,
            console=None if quiet else terminal(),
            on_run_dir=started.append,
        )
    except Interrupted as stopped:  # its message says how to go on: runner resume RUN_DIR
        raise KeyboardInterrupt(str(stopped)) from None
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, the last durable snapshots stay
        if not started or not (started[0] / "events.jsonl").is_file():
            raise
        raise KeyboardInterrupt(
            f"stopped at once (a second Ctrl-C); continue from the last snapshots with: runner resume {started[0]}"
        ) from None


def start_run(
    experiment: Path | Mapping[str, Any],
    *,
    out: Path,
    plugin_refs: tuple[str, ...] = (),
    seed: int | None = None,
    base_dir: Path | None = None,
    from_run: Path | None = None,
    weights: bool = False,
    loggers: tuple[str, ...] = (),
    console: Console | None = None,
    plain: bool = True,
    poll: bool = False,
    on_run_dir: Callable[[Path], None] = lambda run_dir: None,
) -> RunResult:
    """What ``runner start`` and ``runner.run`` do: load the plugins, validate the experiment
    and load its data (``prepare``), make the run directory, hold it, and run every trial
    (``runner.engine.loop.run_experiment``) while Ctrl-C asks for a clean stop.

    ``from_run`` starts from the best trial of an earlier run (``runner start --from``), and
    with ``weights`` from its weights and optimizer state too (``--weights``): a RunnerError
    (exit 2) names the first array that does not fit this experiment's model. ``loggers``
    are added to the experiment's ``loggers`` (``--logger``), with their default options.
    ``console`` is where a person follows the run (None: nothing is printed), with a live
    table unless ``plain``. ``on_run_dir`` is told the run directory as soon as it exists.
    Raises ``Interrupted`` after Ctrl-C, once the run directory can be resumed.
    """
    say = _printer(console)
    origin, start_from = None, None
    if from_run is not None:
        best = best_of_run(from_run)
        origin = {
            "run_dir": str(from_run.resolve()),
            "trial": best["trial"],
            "params": best["params"],
            "score": best["score"],
        }
        start_from = {
            f"{section}.{key}": value
            for section in ("model", "train")
            for key, value in best["config"].get(section, {}).items()
            if (section, key) != ("train", "epochs")
        }
        shown = "".join(f", {k}={v}" for k, v in best["params"].items())
        say(f"starting from t{best['trial']:03d} of {from_run}: its model and train config{shown}")
        if weights:
            origin["weights"] = weights_of(from_run, best["trial"])
            say(f"and from its weights and optimizer state: {origin['weights']['snapshot']}")
    elif weights:
        raise RunnerError("--weights starts from the weights of --from RUN_DIR's best trial: give --from", exit_code=2)
    try:
        plugins, spec, dataset = prepare(
            experiment, plugin_refs, seed=seed, base_dir=base_dir, start_from=start_from, loggers=loggers
        )
    except SpecError as err:
        if origin is None:
            raise
        raise SpecError(
            err.path,
            f"{err.message} (with the config of t{origin['trial']:03d} from --from {from_run} set in it)",
            source=err.source,
        ) from None
    if origin is not None and "weights" in origin:
        check_weights(spec, dataset, origin)
    run_dir = create_run_dir(out, spec.name)
    on_run_dir(run_dir)
    say(f"run directory: {run_dir}")
    say(f"control file:  {run_dir / CONTROL_FILE}  (edit it, or: runner nudge {run_dir} lr=...)")
    view = LiveView(console, live=False if plain else None) if console is not None else None
    with run_lock(run_dir), _interrupts(), view or nullcontext():
        board = run_experiment(
            spec,
            plugins,
            dataset,
            run_dir,
            poll=poll,
            notify=notifier(console) if console is not None else lambda message: None,
            origin=origin,
            watchers=[view.observe] if view is not None else [],
        )
    result = RunResult.of(run_dir, board, spec.search.metric, spec.search.mode)
    if console is not None:
        show_results(console, result.leaderboard, result.metric, run_dir)
    return result


def weights_of(from_run: Path, trial: int) -> dict[str, Any]:
    """The snapshot file ``--weights`` starts from: the trial's best, else its newest; where
    it is and what it holds (epoch). A RunnerError (exit 2) if the trial has none."""
    found = trial_snapshot(Path(from_run), trial, "best") or trial_snapshot(Path(from_run), trial, "last")
    if found is None:
        raise RunnerError(f"t{trial:03d} of {from_run} has no snapshot file to take its weights from", exit_code=2)
    path, _, meta = found
    return {"path": str(path.resolve()), "snapshot": str(path.relative_to(from_run)), "epoch": meta["epoch"]}


def check_weights(spec: ExperimentSpec, dataset: Dataset, origin: dict[str, Any]) -> None:
    """Before the run directory exists: the ``--weights`` snapshot must fit the model this
    experiment builds (its base config); a RunnerError (exit 2) names the first array that
    does not."""
    saved, _ = read_snapshot(Path(origin["weights"]["path"]))
    model, train, options = trial_sections(spec, {})
    with experiment_folder(spec.base_dir):
        backend = spec.backend_class(model=model, train=train, options=options, data=dataset, seed=0)
    why = misfit(backend.state(), saved)
    if why is None:
        try:
            backend.load_state(saved)
        except ValueError as err:  # the backend's own check: the data's size, its optimizer, ...
            why = str(err)
    if why is not None:
        raise RunnerError(
            f"--weights: the weights of t{origin['trial']:03d} of {origin['run_dir']} do not fit this experiment's "
            f"model: {why}",
            exit_code=2,
        )


def prepare(
    experiment: Path | Mapping[str, Any],
    plugin_refs: tuple[str, ...] = (),
    *,
    seed: int | None = None,
    base_dir: Path | None = None,
    start_from: dict[str, Any] | None = None,
    loggers: tuple[str, ...] = (),
) -> tuple[Plugins, ExperimentSpec, Dataset]:
    """The plugins, the validated experiment and its data, before any run directory exists
    (``runner validate`` stops here). ``experiment`` is a file, or a dict holding one whose
    relative paths resolve against ``base_dir`` (default: the current directory). A
    SpecError names the JSON path (and the file)."""
    plugins = load_plugins(plugin_refs)
    for name in loggers:  # named on the command line: not the file's fault
        plugins.registry.get("logger", name, "--logger")
    if isinstance(experiment, Mapping):
        source = None
        folder = (base_dir or Path.cwd()).resolve()
        document = _json_document(experiment, "")
        spec = load_document(
            document, plugins.registry, seed=seed, base_dir=folder, start_from=start_from, loggers=loggers
        )
    else:
        source = str(experiment)
        folder = None if base_dir is None else base_dir.resolve()
        spec = load(experiment, plugins.registry, seed=seed, base_dir=folder, start_from=start_from, loggers=loggers)
    try:
        dataset = load_dataset(spec, plugins)
    except SpecError as err:
        raise (err.in_file(source) if source else err) from None
    return plugins, spec, dataset


def _json_document(value: Any, path: str) -> Any:
    """A copy of an experiment given as Python values, as JSON would hold it (tuples become
    lists); a SpecError naming the path of a value JSON cannot hold."""
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise SpecError(join_path(path, str(key)), f"keys must be strings, got {type(key).__name__} {key!r}")
        return {key: _json_document(item, join_path(path, key)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_document(item, join_path(path, i)) for i, item in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(path, f"must be a finite number, got {value}")
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise SpecError(
        path,
        f"must be a JSON value (an object, a list, a string, a number, true, false or null), "
        f"got {type(value).__name__}",
    )


def _interrupts():
    """Ctrl-C and SIGTERM ask the run to stop cleanly; signal handlers can only be set from
    the main thread, so a run started on another one stops only when told by its control
    file (``runner nudge --stop``)."""
    if threading.current_thread() is threading.main_thread():
        return graceful_interrupts()
    return nullcontext()


def show_results(console: Console, board: Iterable[TrialResult], metric: str, run_dir: Path) -> None:
    """The end of a run on the console: the leaderboard, and where the results are."""
    console.print(leaderboard_table(list(board), metric))
    console.print(f"results: {run_dir / 'results.json'}", highlight=False, soft_wrap=True, markup=False)


def _printer(console: Console | None) -> Callable[[str], None]:
    """A line of plain text (never markup) on ``console``; nothing without one."""
    if console is None:
        return lambda line: None
    return lambda line: console.print(line, soft_wrap=True, markup=False)
