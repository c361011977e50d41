"""The mlflow logger: the run as an MLflow run, with a nested run per trial.

``"loggers": ["mlflow"]`` (or ``runner start --logger mlflow``) writes, by default, to an
MLflow store inside the run directory (``RUN_DIR/mlflow/mlflow.db``, a SQLite file, and
``RUN_DIR/mlflow/artifacts``), or to the ``tracking_uri`` given:

- the run: one MLflow run named as the run directory, in the MLflow experiment named as the
  experiment file (``experiment_name``). Params: the file's settings that the search does not
  vary; tags ``runner.*``: its strategy, metric, mode and run directory. When it ends: its
  state, ``best/<metric>`` and ``results.json`` as an artifact;
- each trial: a run nested in it (tag ``mlflow.parentRunId``), named ``tNNN``. Params: its
  searched values. Per epoch (the step is the epochs it has completed): ``train_loss``, the
  validation metrics and the live settings. Tags ``runner.nudges`` and ``runner.rollbacks``:
  a line for each (at the step of the first epoch it shapes). When it ends: its state (tag
  ``runner.state``, and MLflow's status), ``best/<metric>`` and ``best_snapshot.json``.

Each metric holds one point per step, the trial's history as it is now: MLflow cannot drop a
point, so when a rollback, a retry or a resume takes a trial back to an epoch that its MLflow
run has gone past, the run is deleted (MLflow keeps it as deleted until ``mlflow gc``) and
written again, with the same name, up to that epoch. A resume first passes on again all the
log keeps: ``runs.json``, in the logger's folder, names the run it goes on with; the trials
whose MLflow run ended are kept as they are, the others are written anew from the log.
The logger runs in the driver, on the run's events (``runner_event``), so trials in worker
processes or on Ray are logged alike. Needs ``pip install 'panda-caviar[mlflow]'``.
"""

from __future__ import annotations

import importlib.util
import logging
import numbers
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from runner import bounds, hookimpl
from runner.plugins.loggers.folders import check_folder, real_folder

NAME = "mlflow"
INSTALL = "needs mlflow-skinny and SQLAlchemy: pip install 'panda-caviar[mlflow]'"
NOT_SCALARS = ("t", "trial", "epoch", "step", "seconds")  # the epoch_end fields that are not curves
# runner's end states as MLflow's run statuses (the state itself is the tag runner.state)
STATUS = {"completed": "FINISHED", "pruned": "KILLED", "stopped": "KILLED", "diverged": "FAILED", "failed": "FAILED"}
ENDED = ("FINISHED", "FAILED", "KILLED")
PARENT = "mlflow.parentRunId"
RUNS_FILE = "runs.json"  # in the logger's folder: the MLflow run a resume goes on with
TEXT_LIMIT = 5000  # characters kept of the nudges and rollbacks tags (MLflow takes 8000)
PARAM_LIMIT = 6000  # characters of a param's value (MLflow's limit)
URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
NOT_IN_NAMES = re.compile(r"[^\w\-. /]")  # what MLflow refuses in a metric's or a param's name
LEFT_OUT = ("$schema", "name", "description", "search", "loggers")  # of the file's sections, as params


@dataclass(frozen=True)
class Options:
    """The run as an MLflow run, each trial nested in it: params, curves per epoch, state, artifacts."""

    folder: str = field(
        default="mlflow",
        metadata=bounds(
            doc="the folder, inside the run directory, that holds the default store (mlflow.db, artifacts/) "
            "and runs.json, which names the MLflow run a resume goes on with"
        ),
    )
    tracking_uri: str | None = field(
        default=None,
        metadata=bounds(
            doc='where to write, such as "sqlite:///PATH/mlflow.db" or "http://HOST:5000"; null: the folder'
        ),
    )
    experiment_name: str | None = field(
        default=None,
        metadata=bounds(doc="the MLflow experiment the run goes in, made if missing; null: the experiment file's name"),
    )
    artifact_location: str | None = field(
        default=None,
        metadata=bounds(
            doc="where an MLflow experiment made by the logger keeps artifacts; null: the folder's artifacts/ with "
            "the default store, else the store's default"
        ),
    )
    artifacts: bool = field(
        default=True, metadata=bounds(doc="log results.json on the run and best_snapshot.json on each trial")
    )

    def __post_init__(self) -> None:
        check_folder(self.folder, NAME)
        if self.tracking_uri is not None and not URI.match(self.tracking_uri):
            raise ValueError(
                'tracking_uri must be a URI, such as "sqlite:///PATH/mlflow.db" or "http://HOST:5000"; '
                f"got {self.tracking_uri!r}"
            )
        for name in ("experiment_name", "artifact_location"):
            if getattr(self, name) is not None and not getattr(self, name).strip():
                raise ValueError(f"{name} must not be empty (leave it out for the default)")


@dataclass
class TrialRun:
    """One trial as its MLflow run should hold it: the history as it is now (kept in memory
    while it trains), and what of it the MLflow run holds already."""

    trial: int
    start_ms: int
    params: dict[str, str]
    points: dict[int, dict[str, tuple[float, int]]] = field(default_factory=dict)  # step -> name -> (value, ms)
    nudges: list[tuple[int, str]] = field(default_factory=list)  # (step, text)
    rollbacks: list[tuple[int, str]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)  # set when it ends or is suspended
    status: str = "RUNNING"
    end_ms: int | None = None
    best_snapshot: dict[str, Any] | None = None  # the newest checkpoint event with best true
    ending: dict[str, Any] | None = None  # the trial_complete event, once it came
    run_id: str | None = None  # None: not written yet
    logged: int = 0  # the last step the MLflow run holds
    stale: bool = False  # the MLflow run holds a step the trial went back before: written again
    written: dict[str, str] = field(default_factory=dict)  # tags and status the MLflow run holds

    def go_back(self, epochs: int) -> None:
        """The trial goes on from ``epochs`` completed: the points past them, and the nudges
        that shaped the epochs it trains again, are no longer its history."""
        self.points = {step: values for step, values in self.points.items() if step <= epochs}
        self.nudges = [(step, text) for step, text in self.nudges if step <= epochs]
        if self.logged > epochs:
            self.stale = True

    def text_tags(self) -> dict[str, str]:
        return {"runner.nudges": _lines(self.nudges), "runner.rollbacks": _lines(self.rollbacks)}


class RunLog:
    """What the logger writes for one run: its MLflow run, and a TrialRun per trial."""

    def __init__(self, experiment: Any, options: Options):
        from mlflow.tracking import MlflowClient
        from mlflow.utils.file_utils import path_to_local_file_uri, path_to_local_sqlite_uri

        self.run_dir, self.options, self.spec = Path(experiment.run_dir), options, experiment.spec
        self.folder = self.run_dir / options.folder
        self.metric = experiment.spec.search.metric
        artifacts = options.artifact_location
        if options.tracking_uri is None:  # the default store: in the run directory, through real folders only
            real_folder(self.run_dir, self.folder / "artifacts", NAME)
            db = self.folder / "mlflow.db"
            if db.is_symlink():
                raise OSError(f"{db} is a symbolic link: the {NAME} logger writes nothing through it")
            self.uri = path_to_local_sqlite_uri(str(db))
            artifacts = artifacts or path_to_local_file_uri(str(self.folder / "artifacts"))
        else:
            self.uri = options.tracking_uri
        self.artifact_location = artifacts
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = self.parent = ""
        self.trials: dict[int, TrialRun] = {}
        self.done: set[int] = set()  # trials whose MLflow run has ended: later events of theirs pass
        self.deferred = False  # a replay's trials wait for the first live event to be written

    # --- events ---------------------------------------------------------------------

    def write(self, event: dict[str, Any], replayed: bool) -> None:
        kind, trial = event["event"], event.get("trial")
        if kind == "experiment_start":
            self.start(event)
            return
        if not replayed and self.deferred:  # the replay is over: what it rebuilt is written, once
            self.deferred = False
            for run in list(self.trials.values()):
                self.sync(run)
        if trial in self.done:
            return
        run = self.trials.get(trial) if trial is not None else None
        if kind == "trial_start":
            if run is None:
                params = {_name(path): _param(value) for path, value in (event.get("params") or {}).items()}
                self.trials[trial] = run = TrialRun(trial, _ms(event), params)
                run.tags["runner.seed"] = str(event.get("seed"))
            else:  # started again from scratch
                run.go_back(0)
        elif run is None:
            if kind == "interrupted" and not replayed:  # between trials: the run stops
                self.set_parent_status("KILLED", event)
            elif kind == "experiment_complete" and not replayed:
                self.complete(event)
            return
        elif kind == "trial_resume":
            run.go_back(event["epoch"])
            run.status, run.end_ms = "RUNNING", None
            if "runner.state" in run.tags:  # (a suspended trial that goes on)
                run.tags["runner.state"] = "running"
        elif kind == "epoch_end":
            step = event["epoch"] + 1
            run.points[step] = {
                _name(name): (float(value), _ms(event))
                for name, value in event.items()
                if name not in NOT_SCALARS and isinstance(value, numbers.Real) and not isinstance(value, bool)
            }
        elif kind == "checkpoint" and event.get("best"):
            run.best_snapshot = {k: event.get(k) for k in ("path", "epoch", "step", "reason", "rollbacks")}
        elif kind == "nudge":
            changes = ", ".join(f"{k} {c['old']:g} → {c['new']:g}" for k, c in event["changes"].items())
            text = f"{event['source']}: {changes}" + (f" ({event['reason']})" if event.get("reason") else "")
            run.nudges.append((event["epoch"] + 1, text))  # at the step of the first epoch it sets
        elif kind == "rollback":
            run.go_back(event["to_epoch"])
            text = (
                f"{event['source']}: from epoch {event['from_epoch']} back to epoch {event['to_epoch']}"
                f" ({event.get('reason') or event['snapshot']}); lr {event.get('lr_before')} → {event.get('lr_after')}"
            )
            run.rollbacks.append((event["to_epoch"] + 1, text))  # at the first epoch trained again
        elif kind == "trial_suspend":
            run.status, run.tags["runner.state"] = "SCHEDULED", "suspended"  # waits for its strategy to go on
        elif kind == "interrupted":
            if replayed:  # the resume goes on with it (trial_resume)
                return
            run.status, run.end_ms = "KILLED", _ms(event)
            self.set_parent_status("KILLED", event)
        elif kind == "trial_complete":
            run.status, run.end_ms, run.ending = STATUS.get(event["state"], "FAILED"), _ms(event), event
            run.tags.update({"runner.state": event["state"], "runner.reason": str(event.get("reason") or "")})
            self.sync(run)  # a replay's too: a trial that ended is written whole, once
            self.trials.pop(trial)
            self.done.add(trial)
            return
        else:
            return
        if replayed:
            self.deferred = True
        else:
            self.sync(run)

    def start(self, event: dict[str, Any]) -> None:
        """The run's MLflow run: the one ``runs.json`` names, if its store still has it (a
        resume), else a new one."""
        from mlflow.exceptions import MlflowException

        saved = self.saved()
        if saved.get("tracking_uri") == self.uri and saved.get("parent_run_id"):
            try:
                found = self.client.get_run(saved["parent_run_id"])
            except MlflowException:  # its store was deleted or replaced: a new run
                found = None
            if found is not None and found.info.lifecycle_stage == "active":
                self.experiment_id, self.parent = found.info.experiment_id, found.info.run_id
                self.set_parent_status("RUNNING", event)
                self.keep_ended_trials()
                return
        self.experiment_id = self.mlflow_experiment()
        tags = {
            "runner.run_dir": str(self.run_dir),
            "runner.strategy": self.spec.search.strategy.name,
            "runner.metric": self.metric,
            "runner.mode": self.spec.search.mode,
            "runner.version": str(event.get("runner_version")),
        }
        if self.spec.description:
            tags["mlflow.note.content"] = self.spec.description
        parent = self.client.create_run(
            self.experiment_id, start_time=_ms(event), tags=tags, run_name=self.run_dir.name
        )
        self.parent = parent.info.run_id
        searched = {param.path for param in self.spec.search.space}
        fixed = {path: value for path, value in _flat(self.spec.raw, LEFT_OUT).items() if path not in searched}
        self.log_batch(self.parent, params=fixed)
        self.save({"tracking_uri": self.uri, "experiment_id": self.experiment_id, "parent_run_id": self.parent})

    def save(self, document: dict[str, str]) -> None:
        """``runs.json``, replaced whole (a new file renamed over it), in a real folder."""
        folder = real_folder(self.run_dir, self.folder, NAME)
        fd, temporary = tempfile.mkstemp(prefix=f".{RUNS_FILE}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
            os.replace(temporary, folder / RUNS_FILE)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def saved(self) -> dict[str, Any]:
        path = self.folder / RUNS_FILE
        if path.is_symlink() or not path.is_file():
            return {}
        try:
            return orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            return {}

    def mlflow_experiment(self) -> str:
        name = self.options.experiment_name or self.spec.name
        found = self.client.get_experiment_by_name(name)
        if found is None:
            return self.client.create_experiment(name, artifact_location=self.artifact_location)
        if found.lifecycle_stage != "active":
            self.client.restore_experiment(found.experiment_id)
        return found.experiment_id

    def keep_ended_trials(self) -> None:
        """On a resume: a trial's MLflow run that ended stays (its events pass); one that had
        not ended is deleted, and the replay writes it again from the log."""
        from mlflow.entities import ViewType

        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.{PARENT} = '{self.parent}'",
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1000,
                page_token=token,
            )
            for found in page:
                trial = found.data.tags.get("runner.trial")
                ended = found.info.status in ENDED and found.data.tags.get("runner.state") in STATUS
                if ended and trial is not None and int(trial) not in self.done:
                    self.done.add(int(trial))
                else:
                    self.client.delete_run(found.info.run_id)
            token = page.token
            if not token:
                break

    def complete(self, event: dict[str, Any]) -> None:
        """The run ended: its best score, its leaderboard, FINISHED."""
        for run in list(self.trials.values()):  # (suspended trials that never went on)
            self.sync(run)
        results = self.run_dir / "results.json"
        document = orjson.loads(results.read_bytes()) if results.is_file() and not results.is_symlink() else {}
        best = document.get("best") or {}
        metrics = {f"best/{self.metric}": best["score"]} if best.get("score") is not None else {}
        tags = {"runner.best_trial": str(event.get("best_trial")), "runner.stopped_early": str(event["stopped_early"])}
        self.log_batch(self.parent, metrics=metrics, tags=tags, ms=_ms(event))
        if self.options.artifacts and document:
            self.client.log_artifact(self.parent, str(results))
        self.client.set_terminated(self.parent, "FINISHED", end_time=_ms(event))

    def set_parent_status(self, status: str, event: dict[str, Any]) -> None:
        if status in ENDED:
            self.client.set_terminated(self.parent, status, end_time=_ms(event))
        else:
            self.client.update_run(self.parent, status=status)

    # --- writing --------------------------------------------------------------------

    def sync(self, run: TrialRun) -> None:
        """Make ``run``'s MLflow run hold what ``run`` holds: a new one if it has none or went
        past the trial's history, then the points it lacks, the tags and the status."""
        if run.stale and run.run_id is not None:
            self.client.delete_run(run.run_id)
            run.run_id = None
        if run.run_id is None:
            name = f"t{run.trial:03d}"
            tags = {PARENT: self.parent, "runner.trial": str(run.trial)}
            created = self.client.create_run(self.experiment_id, start_time=run.start_ms, tags=tags, run_name=name)
            run.run_id, run.logged, run.stale, run.written = created.info.run_id, 0, False, {"status": "RUNNING"}
            self.log_batch(run.run_id, params=run.params)
        metrics = [
            (name, value, ms, step)
            for step in sorted(run.points)
            if step > run.logged
            for name, (value, ms) in run.points[step].items()
        ]
        tags = {k: v for k, v in {**run.tags, **run.text_tags()}.items() if run.written.get(k, "") != v}
        if run.ending is not None and run.ending.get("score") is not None:
            metrics.append((f"best/{self.metric}", float(run.ending["score"]), run.end_ms, 0))
        self.log_batch(run.run_id, metrics=metrics, tags=tags)
        run.written.update(tags)
        run.logged = max(run.points, default=0)
        if run.ending is not None and self.options.artifacts:
            self.client.log_dict(run.run_id, self.best_snapshot(run), "best_snapshot.json")
        if run.written["status"] != run.status:
            if run.status in ENDED:
                self.client.set_terminated(run.run_id, run.status, end_time=run.end_ms)
            else:
                self.client.update_run(run.run_id, status=run.status)
            run.written["status"] = run.status

    def best_snapshot(self, run: TrialRun) -> dict[str, Any]:
        """What ``best_snapshot.json`` holds: the trial's best score and metrics, and its best
        snapshot file (relative to the run directory; null if none was written)."""
        ending = run.ending or {}
        return {
            "trial": run.trial,
            "run_dir": str(self.run_dir),
            "metric": self.metric,
            "score": ending.get("score"),
            "best": ending.get("best"),
            "snapshot": run.best_snapshot,
        }

    def log_batch(self, run_id: str, *, metrics=(), params=None, tags=None, ms: int = 0) -> None:
        """Within MLflow's limits on one call: 1000 metrics, 100 params, 100 tags."""
        from mlflow.entities import Metric, Param, RunTag

        if isinstance(metrics, dict):
            metrics = [(name, float(value), ms, 0) for name, value in metrics.items()]
        metrics = [Metric(name, value, ms, step) for name, value, ms, step in metrics]
        params = [Param(k, v) for k, v in (params or {}).items()]
        tags = [RunTag(k, v) for k, v in (tags or {}).items()]
        while metrics or params or tags:
            self.client.log_batch(run_id, metrics=metrics[:1000], params=params[:100], tags=tags[:100])
            metrics, params, tags = metrics[1000:], params[100:], tags[100:]


def _ms(event: dict[str, Any]) -> int:
    return int(event["t"] * 1000)


def _param(value: Any) -> str:
    """A value as an MLflow param: text as it is, anything else as JSON (lists, true, 0.01)."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text[:PARAM_LIMIT]


def _name(name: str) -> str:
    """A name as MLflow takes it: each character it refuses becomes ``_``."""
    return NOT_IN_NAMES.sub("_", name)


def _flat(section: dict[str, Any], left_out: tuple[str, ...] = (), prefix: str = "") -> dict[str, str]:
    """A JSON object's leaves by dotted path, as params."""
    out: dict[str, str] = {}
    for key, value in section.items():
        if key in left_out:
            continue
        if isinstance(value, dict):
            out.update(_flat(value, (), f"{prefix}{key}."))
        else:
            out[_name(f"{prefix}{key}")] = _param(value)
    return out


def _lines(texts: list[tuple[int, str]]) -> str:
    """``step N: text`` a line, the newest kept where they are too long for a tag."""
    text = "\n".join(f"step {step}: {line}" for step, line in texts)
    return text if len(text) <= TEXT_LIMIT else "…" + text[-TEXT_LIMIT + 1 :]


_RUNS: dict[Path, RunLog] = {}  # run directory -> what is open for it (a process may run several)


@hookimpl
def runner_event(experiment, event, replayed):
    options = experiment.logger(NAME)
    if options is None:
        return
    key, kind = Path(experiment.run_dir), event["event"]
    if kind == "experiment_start" or key not in _RUNS:  # (a resume's replay starts with it)
        _quiet()
        _RUNS[key] = RunLog(experiment, options)
    _RUNS[key].write(event, replayed)
    if kind == "experiment_complete" and not replayed:
        _RUNS.pop(key)


def _quiet() -> None:
    """No usage reports sent from the run (set MLFLOW_DISABLE_TELEMETRY=false to allow them),
    and no notes from MLflow's database set-up on the console."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


@hookimpl
def runner_register(registry):
    if importlib.util.find_spec("mlflow") is None or importlib.util.find_spec("sqlalchemy") is None:
        registry.add_unavailable("logger", NAME, INSTALL)
        return
    registry.add_logger(NAME, Options)
