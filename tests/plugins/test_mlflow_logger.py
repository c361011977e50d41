"""The mlflow logger: the run as MLflow's own client reads it back (a parent run, a nested run
per trial: params, exact values and steps, states, artifacts), from the driver whatever the
executor, with a rollback, a retried trial, a SIGKILL and a resume leaving one point per
step; a tracking URI of one's own; its options' refusals."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from runner.engine.plugin_manager import load_plugins
from runner.errors import SpecError
from runner.experiment_file.spec import parse
from runner.records.events import read_run
from tests.conftest import QUICK, deep_update
from tests.plugins.logger_plugins import (
    assert_nothing_written_through_a_link,
    curves_in_log,
    logged_experiment,
    run_file_of,
    steered_run,
)
from tests.test_resume import resume, start

pytest.importorskip("mlflow")
pytest.importorskip("sqlalchemy")

from mlflow.artifacts import download_artifacts
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from mlflow.utils.file_utils import path_to_local_file_uri, path_to_local_sqlite_uri

# SQLAlchemy 2.1 warns about a loader MLflow's store still uses: MLflow's to mend, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

LOGGED = logged_experiment("mlflow")
CURVES = ("train_loss", "val_loss", "val_acc", "lr", "momentum", "beta2")


def client_of(run_dir: Path) -> MlflowClient:
    """A client of the default store, in the run directory."""
    return MlflowClient(tracking_uri=path_to_local_sqlite_uri(str(run_dir / "mlflow" / "mlflow.db")))


def runs_of(client: MlflowClient, experiment: str = "logged") -> tuple:
    """The experiment's one parent run and its nested runs by trial (deleted runs left out)."""
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    [parent] = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) + 1 == len(found)
    by_trial = {int(r.data.tags["runner.trial"]): r for r in trials}
    assert len(by_trial) == len(trials), "a trial has two runs"
    return parent, by_trial


def assert_histories_are_the_log(run_dir: Path, trials: int, client: MlflowClient | None = None) -> dict:
    """Every metric of every trial's run holds each step once, with the log's exact value."""
    client = client or client_of(run_dir)
    events = read_run(run_dir)
    _, runs = runs_of(client)
    assert sorted(runs) == list(range(trials))
    for trial, run in runs.items():
        for name, points in curves_in_log(events, trial, CURVES).items():
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
            assert history == sorted(points.items()), (trial, name)
    return runs


def artifact(run_id: str, path: str, tracking_uri: str, tmp_path: Path):
    local = download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(tmp_path), tracking_uri=tracking_uri)
    return orjson.loads(Path(local).read_bytes())


def test_the_run_and_each_trial_are_mlflow_runs_of_its_settings_curves_state_and_artifacts(tmp_path):
    run = run_file_of(tmp_path, LOGGED)
    client = client_of(run.run_dir)
    runs = assert_histories_are_the_log(run.run_dir, 3, client)
    uri = client.tracking_uri
    parent, _ = runs_of(client)
    assert parent.info.run_name == run.run_dir.name and parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert (tags["runner.strategy"], tags["runner.metric"], tags["runner.mode"]) == ("random", "val_acc", "max")
    assert tags["runner.run_dir"] == str(run.run_dir) and tags["runner.best_trial"] == str(run.board[0].trial)
    params = parent.data.params  # the file's settings but those searched
    assert params["train.epochs"] == "4" and params["data.name"] == "spirals" and params["seed"] == "0"
    assert params["model.batch_norm"] == "true" and params["checkpoint.min_interval"] == "0"
    assert "train.lr" not in params and "model.hidden" not in params and "search.metric" not in params
    assert parent.data.metrics == {"best/val_acc": run.board[0].score}
    assert artifact(parent.info.run_id, "results.json", uri, tmp_path / "p") == orjson.loads(
        (run.run_dir / "results.json").read_bytes()
    )
    checkpoints = [e for e in run.events if e["event"] == "checkpoint" and e["best"]]
    for result in run.board:
        trial_run = runs[result.trial]
        assert trial_run.info.run_name == f"t{result.trial:03d}" and trial_run.info.status == "FINISHED"
        assert trial_run.data.params == {"model.hidden": orjson.dumps(result.params["model.hidden"]).decode(),
                                         "train.lr": repr(result.params["train.lr"])}  # fmt: skip
        assert trial_run.data.tags["runner.state"] == "completed"
        assert trial_run.data.metrics["best/val_acc"] == result.score
        [newest] = [e for e in checkpoints if e["trial"] == result.trial][-1:]
        meta = artifact(trial_run.info.run_id, "best_snapshot.json", uri, tmp_path / f"t{result.trial}")
        assert meta["score"] == result.score and meta["best"] == result.best and meta["metric"] == "val_acc"
        assert meta["snapshot"] == {k: newest[k] for k in ("path", "epoch", "step", "reason", "rollbacks")}
        assert (run.run_dir / meta["snapshot"]["path"]).is_file()


def test_a_rollback_leaves_one_point_per_step_the_path_taken_and_nudges_and_rollbacks_are_tags(tmp_path):
    run = steered_run(tmp_path, LOGGED)
    [trial] = assert_histories_are_the_log(run.run_dir, 1).values()  # epochs 3 and 4 once: as trained again
    lr = run.board[0].params["train.lr"]
    assert trial.data.tags["runner.nudges"] == f"step 2: plugin: lr {lr:g} → 0.002 (slower)"
    assert trial.data.tags["runner.rollbacks"] == (
        "step 3: plugin: from epoch 4 back to epoch 2 (back to before epoch 3); lr 0.002 → 0.002"
    )
    client = client_of(run.run_dir)
    everything = client.search_runs([trial.info.experiment_id], run_view_type=ViewType.ALL)
    [deleted] = [r for r in everything if r.info.lifecycle_stage == "deleted"]  # the path left, until mlflow gc
    assert deleted.info.run_name == "t000" and deleted.data.tags["runner.trial"] == "0"


def test_trials_in_worker_processes_and_a_retried_trial_are_logged_once_by_the_driver(tmp_path):
    from tests.plugins.test_executors import start as start_with_a_death

    experiment = deep_update(LOGGED, {"executor": {"name": "process", "workers": 2}})
    proc, run_dir = start_with_a_death(tmp_path, experiment, trial=1, epoch=2)
    assert proc.returncode == 0, proc.stderr
    assert [e["trial"] for e in read_run(run_dir) if e["event"] == "trial_retry"] == [1]
    runs = assert_histories_are_the_log(run_dir, 3)
    assert {run.info.status for run in runs.values()} == {"FINISHED"}


# Holds the killed run's trial 1 until the logger has written trial 0 whole (it runs on a thread
# of its own), so that the kill finds trial 0's MLflow run ended; a resume does not wait.
WAIT_FOR_TRIAL_0 = """
import os, time
from pathlib import Path
from runner import hookimpl

@hookimpl
def runner_trial_start(trial):
    if trial.id != 1 or not os.environ.get("RUNNER_TEST_KILL"):
        return
    from mlflow.tracking import MlflowClient
    for _ in range(600):
        for saved in Path(__file__).parent.glob("killed/*/mlflow/runs.json"):
            client = MlflowClient(tracking_uri="sqlite:///" + str(saved.with_name("mlflow.db")))
            ended = "tags.`runner.state` = 'completed' and attributes.status = 'FINISHED'"  # (set last)
            if client.search_runs(["1"], filter_string=ended):
                return
        time.sleep(0.1)
"""


@pytest.mark.parametrize("wiped", [False, True], ids=["as-left", "folder-deleted"])
def test_after_a_sigkill_and_a_resume_each_step_shows_once_with_the_value_it_ended_with(tmp_path, wiped):
    """Whatever the killed driver had passed on to MLflow, or with its folder deleted: the
    trials that ended keep their MLflow run, the others are written again from the log."""
    (tmp_path / "wait.py").write_text(WAIT_FOR_TRIAL_0)
    proc, run_dir = start(tmp_path, "killed", LOGGED, kill="step:20", plugins=[tmp_path / "wait.py"])
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [e["trial"] for e in read_run(run_dir) if e["event"] == "trial_complete"] == [0]
    if wiped:  # (before any client here opens the store: MLflow keeps a store open per URI)
        shutil.rmtree(run_dir / "mlflow")
    else:
        before = runs_of(client_of(run_dir))
        assert before[0].info.status == "RUNNING" and before[1][0].info.status == "FINISHED"
    resumed, _ = resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr
    runs = assert_histories_are_the_log(run_dir, 3)
    parent, _ = runs_of(client_of(run_dir))
    assert parent.info.status == "FINISHED" and {run.info.status for run in runs.values()} == {"FINISHED"}
    best = orjson.loads((run_dir / "results.json").read_bytes())["best"]
    assert parent.data.metrics == {"best/val_acc": best["score"]}
    if not wiped:  # the same runs, the trial that had ended as it was
        assert parent.info.run_id == before[0].info.run_id and runs[0].info.run_id == before[1][0].info.run_id
    for run in runs.values():  # one best score each, though the replay passed each trial_complete on again
        assert len(client_of(run_dir).get_metric_history(run.info.run_id, "best/val_acc")) == 1


def test_a_tracking_uri_and_an_experiment_name_of_ones_own(tmp_path):
    """Two runs into one store outside the run directory, in one MLflow experiment."""
    uri = path_to_local_sqlite_uri(str(tmp_path / "store" / "mlflow.db"))
    for folder in ("store", "a", "b"):
        (tmp_path / folder).mkdir()
    logger = {
        "name": "mlflow",
        "tracking_uri": uri,
        "experiment_name": "shared",
        "artifact_location": path_to_local_file_uri(str(tmp_path / "store" / "artifacts")),
    }
    experiment = deep_update(LOGGED, {"loggers": [logger], "search": {"strategy": {"trials": 1}}})
    first = run_file_of(tmp_path / "a", experiment)
    second = run_file_of(tmp_path / "b", deep_update(experiment, {"seed": 1}))
    client = MlflowClient(tracking_uri=uri)
    found = client.search_runs([client.get_experiment_by_name("shared").experiment_id])
    parents = {r.info.run_name: r for r in found if "mlflow.parentRunId" not in r.data.tags}
    assert sorted(parents) == sorted([first.run_dir.name, second.run_dir.name]) and len(found) == 4
    for run in (first, second):
        assert sorted(p.name for p in (run.run_dir / "mlflow").iterdir()) == ["runs.json"]  # no store there
        saved = orjson.loads((run.run_dir / "mlflow" / "runs.json").read_bytes())
        assert saved["tracking_uri"] == uri and saved["parent_run_id"] == parents[run.run_dir.name].info.run_id
        [trial] = [r for r in found if r.data.tags.get("mlflow.parentRunId") == saved["parent_run_id"]]
        assert trial.info.artifact_uri.startswith(logger["artifact_location"])
        history = [(m.step, m.value) for m in client.get_metric_history(trial.info.run_id, "val_loss")]
        assert history == sorted(curves_in_log(run.events, 0, CURVES)["val_loss"].items())


def test_the_options_and_their_refusals():
    registry = load_plugins().registry
    spec = parse(deep_update(QUICK, {"loggers": ["mlflow", "tensorboard"]}), registry)
    options = spec.logger("mlflow")
    assert (options.folder, options.tracking_uri, options.experiment_name, options.artifacts) == (
        "mlflow",
        None,
        None,
        True,
    )
    refused = {
        '{"name": "mlflow", "tracking_uri": "mlruns"}': 'tracking_uri must be a URI, such as "sqlite:///PATH/mlflow.db"',
        '{"name": "mlflow", "tracking_uri": ""}': "tracking_uri must be a URI",
        '{"name": "mlflow", "folder": "../out"}': 'folder must be a folder inside the run directory, such as "mlflow"',
        '{"name": "mlflow", "folder": "results.json"}': "folder must not be 'results.json'",
        '{"name": "mlflow", "experiment_name": " "}': "experiment_name must not be empty",
        '{"name": "mlflow", "artifact_location": ""}': "artifact_location must not be empty",
        '{"name": "mlflow", "artifacts": "yes"}': "must be",
        '{"name": "mlflow", "uri": "sqlite:///x.db"}': "uri",
    }
    for text, message in refused.items():
        with pytest.raises(SpecError) as err:
            parse({**QUICK, "loggers": [orjson.loads(text)]}, registry)
        assert err.value.path.startswith("loggers[0]") and message in err.value.message, (text, err.value)


def test_the_mlflow_logger_writes_nothing_through_a_link_planted_in_the_run_directory(tmp_path):
    assert_nothing_written_through_a_link(
        tmp_path, deep_update(LOGGED, {"search": {"strategy": {"trials": 1}}}), "mlflow"
    )


def test_states_as_mlflow_statuses_an_interruption_and_a_resume_that_goes_back(tmp_path):
    """Without training: a trial pruned (KILLED), one diverged (FAILED), one suspended
    (SCHEDULED), one interrupted (the run and it KILLED); the resume's replay, then the
    interrupted trial going on from an epoch before the last it logged (one point per step),
    and the suspended one going on."""
    from runner.plugins.loggers.mlflow_logger import Options, RunLog

    space = [SimpleNamespace(path="train.lr")]
    search = SimpleNamespace(metric="val_loss", mode="min", strategy=SimpleNamespace(name="grid"), space=space)
    spec = SimpleNamespace(name="states", description="", search=search, raw={"seed": 3, "train": {"lr": 0.1}})
    experiment = SimpleNamespace(run_dir=tmp_path, spec=spec)
    t = iter(range(1_800_000_000, 1_800_001_000))

    def event(kind, **fields):
        return {"t": float(next(t)), "event": kind, **fields}

    def epochs(trial, losses, first=0):
        return [event("epoch_end", trial=trial, epoch=first + i, val_loss=v) for i, v in enumerate(losses)]

    def ended(trial, state, score):
        return event("trial_complete", trial=trial, state=state, params={"train.lr": 0.1}, score=score, best={})

    log = [event("experiment_start", runner_version="0")]
    for trial, state in ((0, "pruned"), (1, "diverged")):
        log += [event("trial_start", trial=trial, params={"train.lr": 0.1}, seed=trial), *epochs(trial, [0.5])]
        log += [ended(trial, state, 0.5)]
    log += [event("trial_start", trial=2, params={}, seed=2), *epochs(2, [0.9]), event("trial_suspend", trial=2)]
    log += [event("trial_start", trial=3, params={}, seed=3), *epochs(3, [0.8, 0.7, 0.6])]
    log += [event("interrupted", trial=3, epoch=3, step=30)]
    logged = RunLog(experiment, Options())
    for e in log:
        logged.write(e, False)
    client = client_of(tmp_path)
    parent, runs = runs_of(client, "states")
    assert parent.info.status == "KILLED" and parent.data.params == {"seed": "3"}  # train.lr is searched
    assert {n: r.info.status for n, r in runs.items()} == {0: "KILLED", 1: "FAILED", 2: "SCHEDULED", 3: "KILLED"}
    assert [runs[n].data.tags["runner.state"] for n in (0, 1, 2)] == ["pruned", "diverged", "suspended"]

    resumed = RunLog(experiment, Options())  # runner resume: the log again, then trial 3 from epoch 1
    for e in log:
        resumed.write(e, True)
    going_on = [event("resume"), event("trial_resume", trial=3, epoch=1), *epochs(3, [0.4, 0.3], first=1)]
    for e in [*going_on, event("trial_resume", trial=2, epoch=1)]:  # its strategy goes on with trial 2
        resumed.write(e, False)
    assert client.get_run(parent.info.run_id).info.status == "RUNNING"  # going on again
    resumed.write(event("experiment_complete", trials=4, best_trial=0, stopped_early=False), False)
    after, runs_after = runs_of(client, "states")
    assert after.info.run_id == parent.info.run_id and after.info.status == "FINISHED"
    assert {n: runs_after[n].info.run_id for n in (0, 1)} == {n: runs[n].info.run_id for n in (0, 1)}  # kept
    assert runs_after[3].info.status == "RUNNING" and runs_after[2].info.status == "RUNNING"
    assert runs_after[2].data.tags["runner.state"] == "running"
    history = sorted((m.step, m.value) for m in client.get_metric_history(runs_after[3].info.run_id, "val_loss"))
    assert history == [(1, 0.8), (2, 0.4), (3, 0.3)]
    assert len(client.get_metric_history(runs_after[0].info.run_id, "val_loss")) == 1  # not written again
