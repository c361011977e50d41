"""A person's own ``torch.nn.Module``, named by ``model.class_path``, with every babysitting feature."""

from __future__ import annotations

import signal
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import orjson
import pytest

from runner.engine.plugin_manager import load_plugins
from runner.errors import SpecError
from runner.experiment_file.spec import load, trial_sections
from runner.testing import BackendConformance
from tests.conftest import deep_update
from tests.test_control_live import LiveRun
from tests.test_resume import assert_same, outcome, runner

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch

# A 1-D CNN on inputs of shape (2, 20), with dropout (it draws from torch's generator, so a
# resume must restore that too). CNN_SHAPES names a file that records each input's shape.
CNN = textwrap.dedent("""
    import os
    import torch.nn as nn

    if os.environ.get("CNN_IMPORTED"):
        with open(os.environ["CNN_IMPORTED"], "a") as f:
            f.write("imported\\n")

    class Net(nn.Module):
        def __init__(self, channels: int = 4, n_classes: int = 3, dropout: float = 0.2):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv1d(2, channels, kernel_size=3, padding=1),
                nn.BatchNorm1d(channels),
                nn.ReLU(),
                nn.Dropout(dropout),
            )
            self.head = nn.Linear(channels * 20, n_classes)

        def forward(self, x):
            if os.environ.get("CNN_SHAPES"):
                with open(os.environ["CNN_SHAPES"], "a") as f:
                    f.write(f"{tuple(x.shape)}\\n")
            return self.head(self.features(x).flatten(1))

    class Regressor(nn.Module):
        def __init__(self, outputs: int = 1):
            super().__init__()
            self.linear = nn.Linear(40, outputs)

        def forward(self, x):
            return self.linear(x.flatten(1))

    def not_a_module():
        raise AssertionError("never called")
""")

# A one-off plugin: SIGKILLs the process that runs trial KILL_TRIAL right after its
# KILL_STEP-th training step (and, with KILL_DRIVER, the driver that started that worker).
KILLER = textwrap.dedent("""
    import os, signal
    from pathlib import Path
    from runner import hookimpl
    from runner.plugins.backends.torch_module.backend import ModuleBackend

    TRIAL, STEP = int(os.environ.get("KILL_TRIAL", "-1")), int(os.environ.get("KILL_STEP", "0"))
    DRIVER = Path(__file__).with_name("driver.pid")
    current, steps = [None], [0]
    real = ModuleBackend.train_step

    def train_step(self):
        loss = real(self)
        if current[0] == TRIAL:
            steps[0] += 1
            if steps[0] == STEP:
                if os.environ.get("KILL_DRIVER"):  # (a worker's parent is the warm forkserver)
                    os.kill(int(DRIVER.read_text()), signal.SIGKILL)
                os.kill(os.getpid(), signal.SIGKILL)
        return loss

    ModuleBackend.train_step = train_step

    @hookimpl
    def runner_trial_start(trial):
        current[0] = trial.id

    @hookimpl
    def runner_experiment_start(experiment):  # called in the driver
        DRIVER.write_text(str(os.getpid()))
""")

EXPERIMENT = {
    "name": "cnn",
    "seed": 3,
    "data": {"name": "npz", "path": "data.npz"},
    "backend": {"name": "torch", "device": "cpu"},
    "model": {"class_path": "cnn:Net", "init_args": {"channels": 4}},
    "train": {"epochs": 3, "batch_size": 16, "optimizer": "adam", "lr": 0.01, "weight_decay": 0.001},
    "checkpoint": {"min_interval": 0, "keep": 10},
    "search": {
        "strategy": {"name": "grid"},
        "metric": "val_acc",
        "space": {"model.init_args.channels": {"choices": [3, 4]}},
    },
}


def write_project(folder: Path, experiment: dict | None = None) -> Path:
    """The person's folder: cnn.py, data.npz of (120, 2, 20) inputs in 3 classes, exp.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cnn.py").write_text(CNN)
    rng = np.random.default_rng(0)
    y = rng.integers(3, size=120)
    x = rng.normal(size=(120, 2, 20))
    x[np.arange(120), y % 2, 5 + 5 * y] += 3.0  # each class lights one spot of one channel
    np.savez(folder / "data.npz", x=x, y=y)
    (folder / "killer.py").write_text(KILLER)
    exp = folder / "exp.json"
    exp.write_bytes(orjson.dumps(experiment or EXPERIMENT))
    return exp


def start(folder: Path, experiment: dict | None = None, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    exp = write_project(folder, experiment)
    proc = runner("start", exp, "--out", folder / "runs", "--plain", "--plugin", folder / "killer.py", env=env)
    [run_dir] = (folder / "runs").iterdir()
    return proc, run_dir


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    proc, run_dir = start(tmp_path_factory.mktemp("cnn"))
    assert proc.returncode == 0, proc.stderr
    return outcome(run_dir)


def test_an_own_cnn_trains_end_to_end_and_inputs_keep_their_shape(tmp_path):
    shapes = tmp_path / "shapes.txt"
    proc, run_dir = start(tmp_path / "project", CNN_SHAPES=str(shapes))
    assert proc.returncode == 0, proc.stderr
    results = orjson.loads((run_dir / "results.json").read_bytes())
    assert [t["state"] for t in results["trials"]] == ["completed", "completed"]
    assert results["best"]["best"]["val_acc"] > 0.6  # learnable: a spot per class
    seen = set(shapes.read_text().split("\n")) - {""}
    assert seen == {"(2, 2, 20)", "(16, 2, 20)", "(24, 2, 20)"}  # the check on two, batches, validation
    events = [orjson.loads(line) for line in (run_dir / "events.jsonl").read_bytes().splitlines()]
    [config] = [e["config"] for e in events if e["event"] == "trial_start" and e["trial"] == 1]
    assert config["model"] == {"class_path": "cnn:Net", "init_args": {"channels": 4}}


def test_kill_9_mid_epoch_then_resume_equals_the_uninterrupted_run_bit_for_bit(tmp_path, uninterrupted):
    proc, run_dir = start(tmp_path / "project", KILL_TRIAL="1", KILL_STEP="8")  # trial 1, epoch 1's 2nd step
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    marker = tmp_path / "imported.txt"
    refused = runner(
        "resume", run_dir, "--plain", "--plugin", tmp_path / "project" / "killer.py", env={"CNN_IMPORTED": str(marker)}
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert not marker.exists(), "without --trust-code, the code the run names is not imported"
    assert 'model.class_path: names code to import, "cnn:Net"' in refused.stderr
    assert f"runner resume {run_dir} --plugin {tmp_path / 'project' / 'killer.py'} --trust-code" in refused.stderr
    resumed = runner("resume", run_dir, "--plain", "--plugin", tmp_path / "project" / "killer.py", "--trust-code")
    assert resumed.returncode == 0, resumed.stderr
    done = outcome(run_dir)
    assert_same(done, uninterrupted, epochs=3)  # parameters, BN buffers, Adam's moments and step, RNG
    arrays = done["finals"]["t001"][1]
    assert {"module/features.0.weight", "module/features.1.running_mean", "rng/torch_cpu", "perm"} <= set(arrays)
    assert any(name.startswith("optimizer/") and name.endswith("exp_avg_sq") for name in arrays)


def test_with_the_process_executor_a_killed_run_resumes_to_the_same_result(tmp_path):
    """Against an uninterrupted run on the same executor: a worker trains with its share of
    the cores, and torch's sums over another number of threads may round differently."""
    experiment = deep_update(EXPERIMENT, {"executor": {"name": "process", "workers": 2}})
    proc, run_dir = start(tmp_path / "whole", experiment)
    assert proc.returncode == 0, proc.stderr
    uninterrupted = outcome(run_dir)
    proc, run_dir = start(tmp_path / "project", experiment, KILL_TRIAL="1", KILL_STEP="8", KILL_DRIVER="1")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    resumed = runner("resume", run_dir, "--plain", "--plugin", tmp_path / "project" / "killer.py", "--trust-code")
    assert resumed.returncode == 0, resumed.stderr
    assert "t001 continues from" in resumed.stdout
    assert_same(outcome(run_dir), uninterrupted, epochs=3)


def test_a_nudge_through_the_control_file_lands_at_the_next_step(tmp_path):
    write_project(tmp_path)
    changes = {
        "data": {"name": "npz", "path": "data.npz", "classes": None, "points_per_class": None},
        "backend": EXPERIMENT["backend"],
        "model": {"class_path": "cnn:Net", "init_args": {"channels": 4}, "hidden": None, "batch_norm": None},
        "train": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 16},
    }
    run = LiveRun(tmp_path, changes)
    assert set(run.document()) >= {"lr", "momentum", "beta2", "weight_decay"}  # the module backend's settings
    document = run.document()
    document["lr"], document["weight_decay"] = 0.002, 0.01
    run.write(document)
    nudge = run.until(lambda: run.find("nudge", source="control"))[0]
    assert nudge["changes"]["lr"] == {"old": 0.01, "new": 0.002}
    assert nudge["changes"]["weight_decay"] == {"old": 0.0, "new": 0.01}
    later = run.until(lambda: [e for e in run.find("epoch_end") if e["step"] > nudge["step"]])
    assert later[0]["lr"] == 0.002
    assert run.stop() == 0


# -- in process: the backend itself ------------------------------------------------------------


def spec_for(tmp_path: Path, changes: dict | None = None):
    exp = write_project(tmp_path, deep_update(EXPERIMENT, changes or {}))
    plugins = load_plugins()
    return plugins, load(exp, plugins.registry)


def backend_for(tmp_path: Path, changes: dict | None = None, params: dict | None = None):
    from runner.engine.experiment import load_dataset
    from runner.imports import experiment_folder

    plugins, spec = spec_for(tmp_path, changes)
    model, train, options = trial_sections(spec, params or {})
    with experiment_folder(spec.base_dir):
        return spec.backend_class(model=model, train=train, options=options, data=load_dataset(spec, plugins), seed=7)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop"])
def test_a_nudge_is_one_assignment_to_the_param_groups_in_force_at_the_next_step(tmp_path, optimizer):
    backend = backend_for(tmp_path, {"train": {"optimizer": optimizer}})
    backend.begin_epoch(0)
    backend.train_step()
    backend.set_hyperparameters(lr=0.0, momentum=0.5, beta2=0.9, weight_decay=0.0)
    [group] = backend.optimizer.param_groups
    assert group["lr"] == 0.0 and group["weight_decay"] == 0.0
    expected = {"sgd": ("momentum", 0.5), "adam": ("betas", (0.5, 0.9)), "adamw": ("betas", (0.5, 0.9))}
    key, value = expected.get(optimizer, ("alpha", 0.9))
    assert group[key] == value
    before = [p.detach().clone() for p in backend.net.parameters()]
    backend.train_step()
    after = list(backend.net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # lr 0 from this very step: nothing moved
    assert backend.hyperparameters() == {"lr": 0.0, "momentum": 0.5, "beta2": 0.9, "weight_decay": 0.0}


def test_the_schedule_decays_the_rate_in_the_param_groups(tmp_path):
    backend = backend_for(tmp_path, {"train": {"lr": 0.1, "lr_decay": 0.5, "lr_schedule": "step", "lr_step_epochs": 1}})
    backend.begin_epoch(2)
    assert backend.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)


def test_regression_with_mse_reports_loss_and_mae(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 2, 20))
    target = x.reshape(60, -1)[:, :3].sum(axis=1)
    write_project(tmp_path)
    np.savez(tmp_path / "reg.npz", x=x, y=target)
    changes = {
        "data": {"name": "npz", "path": "reg.npz", "task": "regression", "standardize": False},
        "model": {"class_path": "cnn:Regressor", "init_args": {"channels": None}},
        "search": {"metric": "val_mae", "space": None},
    }
    backend = backend_for(tmp_path, changes)
    metrics = backend.evaluate("val")
    assert set(metrics) == {"loss", "mae"}
    with torch.no_grad():
        out = backend.net(backend._x_val).reshape(-1)
        expected_mae = (out - backend._y_val).abs().mean().item()
        expected_mse = ((out - backend._y_val) ** 2).mean().item()
    assert metrics["mae"] == pytest.approx(expected_mae, rel=1e-6)
    assert metrics["loss"] == pytest.approx(expected_mse, rel=1e-6)


def test_an_output_of_the_wrong_shape_names_the_class_and_the_shape_it_must_return(tmp_path):
    with pytest.raises(ValueError, match=r"returns shape \(2, 5\) .* 3 classes, so it must return \(2, 3\)"):
        backend_for(tmp_path, {"model": {"init_args": {"n_classes": 5}}})


@pytest.mark.parametrize(
    ("model", "path", "message"),
    [
        ({"class_path": "cnnn:Net"}, "model.class_path", 'no module "cnnn" in .* \\(did you mean "cnn"\\?\\)'),
        ({"class_path": "cnn:Nett"}, "model.class_path", 'has no "Nett" \\(did you mean "Net"\\?\\)'),
        ({"class_path": "cnn:not_a_module"}, "model.class_path", "not a subclass of torch.nn.Module"),
        ({"class_path": "os:system"}, "model.class_path", "not a subclass of torch.nn.Module"),
        ({"class_path": "cnn Net"}, "model.class_path", "must be an import path"),
        (
            {"class_path": "cnn:Net", "init_args": {"chanels": 4}},
            "model.init_args.chanels",
            'takes no argument .chanels. \\(did you mean "channels"\\?\\)',
        ),
    ],
)
def test_a_wrong_model_section_is_exit_2_with_the_json_path(tmp_path, model, path, message):
    with pytest.raises(SpecError) as caught:
        spec_for(tmp_path, {"model": {"init_args": {}, **model}})
    assert caught.value.path == path
    assert __import__("re").search(message, caught.value.message), caught.value.message
    exp = tmp_path / "exp.json"
    proc = runner("validate", exp)
    assert proc.returncode == 2 and path in proc.stderr and "Traceback" not in proc.stderr


def test_a_searched_init_arg_the_class_refuses_is_caught_before_anything_runs(tmp_path):
    with pytest.raises(SpecError) as caught:
        spec_for(tmp_path, {"search": {"space": {"model.init_args.dropout": {"choices": [0.1, 2]}}}})
    assert caught.value.path == "search.space.model.init_args.dropout"
    assert "the value 2 is not accepted" in caught.value.message
    assert "dropout probability has to be between 0 and 1" in caught.value.message


# The conformance suite every backend passes, on its own module (importable from tests/).
class TestModuleBackendConformance(BackendConformance):
    model = {"class_path": "tests.plugins.test_torch_module:TinyNet", "init_args": {"width": 8}}
    train = {"epochs": 2, "batch_size": 16, "optimizer": "adam", "lr": 0.01}
    options = {"device": "cpu"}

    @property
    def backend_cls(self):
        from runner.plugins.backends.torch_module.backend import ModuleBackend

        return ModuleBackend


class TinyNet(torch.nn.Module):
    """For the conformance suite: an MLP with batch norm and dropout on 5 features, 3 classes."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(5, width),
            torch.nn.BatchNorm1d(width),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(width, 3),
        )

    def forward(self, x):
        return self.layers(x)


def test_limits_count_the_modules_parameters_exactly_without_allocating_them(tmp_path):
    # Net(channels=4): conv 2*4*3+4, batch norm 4+4, linear 4*20*3+3 = 279 parameters.
    spec_for(tmp_path, {"limits": {"max_parameters": 279}, "search": {"space": None}})
    with pytest.raises(SpecError) as caught:
        spec_for(tmp_path, {"limits": {"max_parameters": 278}, "search": {"space": None}})
    assert "279" in caught.value.message and "cnn:Net" in caught.value.message
