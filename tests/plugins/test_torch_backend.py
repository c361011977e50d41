"""The Torch backend: the NumPy reference's results, PyTorch's arithmetic; optional like its extra."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import orjson
import pytest

from runner.plugins.backends.mlp_family import Model, Train
from runner.plugins.backends.numpy_mlp.backend import NumpyBackend
from runner.plugins.backends.numpy_mlp.backend import Options as NumpyOptions
from runner.testing import Driver
from tests.conftest import QUICK, ROOT, deep_update

torch = pytest.importorskip("torch")
from runner.plugins.backends.torch_mlp.backend import Options, TorchBackend  # noqa: E402

OPTIMIZERS = {"gd": 0.05, "momentum": 0.05, "rmsprop": 1e-3, "adam": 1e-3}


@pytest.fixture(scope="module")
def digits(plugins_module):
    from runner.data import prepare

    plugin = plugins_module.registry.get("dataset", "digits")
    return prepare("digits", plugin.load(plugin.Options(), seed=0, base_dir="."), plugin.Options(), seed=0)


@pytest.fixture(scope="module")
def plugins_module():
    from runner.engine.plugin_manager import load_plugins

    return load_plugins()


def both(data, optimizer: str, batch_norm: bool, dtype: str):
    model = Model(hidden=(32, 16), batch_norm=batch_norm)
    train = Train(epochs=3, optimizer=optimizer, lr=OPTIMIZERS[optimizer], batch_size=64, lr_decay=0.1)
    reference = NumpyBackend(model=model, train=train, options=NumpyOptions(dtype=dtype), data=data, seed=5)
    torched = TorchBackend(model=model, train=train, options=Options(device="cpu", dtype=dtype), data=data, seed=5)
    return reference, torched


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batch_norm"])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("dtype, epochs, rtol", [("float32", 2, 1e-3), ("float64", 3, 1e-10)])
def test_the_same_weights_and_batches_give_the_numpy_reference_losses(
    digits, optimizer, batch_norm, dtype, epochs, rtol
):
    """Same seed: the same initial weights and batches. In float32 the adaptive optimizers
    with batch norm amplify rounding (gradients near zero divided by their own RMS), so the
    tolerance is 1e-3 over 2 epochs; in float64 the two agree to 1e-10 over 3 epochs."""
    reference, torched = both(digits, optimizer, batch_norm, dtype)
    assert all(np.array_equal(v, torched.params[k].detach().numpy()) for k, v in reference.params.items())
    steps = epochs * reference.steps_per_epoch
    expected, got = Driver(reference).run(steps), Driver(torched).run(steps)
    np.testing.assert_allclose(got, expected, rtol=rtol)
    for split in ("train", "val"):
        a, b = reference.evaluate(split), torched.evaluate(split)
        assert b["loss"] == pytest.approx(a["loss"], rel=rtol)
        assert abs(a["acc"] - b["acc"]) <= (0 if dtype == "float64" else 2 / len(digits.y_val))
    for name, value in reference.running.items():  # batch-norm running statistics
        loose = dtype == "float32"  # statistics of the drifted activations: looser than the losses
        np.testing.assert_allclose(
            torched.running[name].numpy(), value, rtol=1e-2 if loose else rtol, atol=1e-3 if loose else 1e-9
        )


def test_a_nudge_is_in_force_at_the_next_step_as_with_numpy(digits):
    reference, torched = both(digits, "momentum", True, "float64")
    drivers = Driver(reference), Driver(torched)
    for driver in drivers:
        driver.run(10)
        driver.backend.set_hyperparameters(lr=0.2, momentum=0.5)
    np.testing.assert_allclose(drivers[1].run(30), drivers[0].run(30), rtol=1e-10)
    assert torched.hyperparameters() == reference.hyperparameters()


# Run in a fresh interpreter: the digits and a new Torch backend built there, the snapshot
# read with pickle refused, 20 steps trained from it; their losses written out as JSON.
CONTINUE_ELSEWHERE = """
import pickle, sys
import orjson
from runner.engine.snapshot_files import read_snapshot
from runner.data import prepare
from runner.engine.plugin_manager import load_plugins
from runner.testing import Driver
from tests.plugins.test_torch_backend import both

plugin = load_plugins().registry.get("dataset", "digits")
digits = prepare("digits", plugin.load(plugin.Options(), seed=0, base_dir="."), plugin.Options(), seed=0)
_, fresh = both(digits, "adam", True, "float32")

def refuse(*args, **kwargs):
    raise AssertionError("the snapshot was unpickled")

pickle.load = pickle.loads = refuse
state, _ = read_snapshot(sys.argv[1])
fresh.load_state(state)
sys.stdout.buffer.write(orjson.dumps([float(x) for x in Driver(fresh, epoch=0, step=7).run(20)]))
"""


def test_the_state_moves_between_processes_without_pickle(digits, tmp_path):
    """A snapshot of a Torch trial is the runner's .npz: arrays and JSON, nothing unpickled;
    another process continues from it exactly."""
    from runner.engine.snapshot_files import write_snapshot

    _, torched = both(digits, "adam", True, "float32")
    driver = Driver(torched)
    driver.run(7)
    assert 7 < torched.steps_per_epoch < 7 + 20, "the 20 steps after the snapshot begin a new epoch"
    write_snapshot(tmp_path / "s.safetensors", torched.state(), {"reason": "test"})
    expected = [float(x) for x in driver.run(20)]
    elsewhere = subprocess.run(
        [sys.executable, "-c", CONTINUE_ELSEWHERE, str(tmp_path / "s.safetensors")],
        capture_output=True,
        cwd=ROOT,
        timeout=300,
    )
    assert elsewhere.returncode == 0, elsewhere.stderr.decode()
    assert orjson.loads(elsewhere.stdout) == expected  # 7 steps into epoch 0, as saved


def test_the_device_option_is_checked_before_anything_runs(write_experiment, tmp_path):
    changes = {"backend": {"name": "torch", "device": "tpu"}}
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "validate", write_experiment(changes)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and 'backend.device: must be "auto", "cpu", "cuda", "cuda:N" or "mps"' in proc.stderr
    if not torch.cuda.is_available():
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "runner",
                "validate",
                write_experiment({"backend": {"name": "torch", "device": "cuda"}}),
            ],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2 and "this machine has no CUDA device" in proc.stderr


WITHOUT_TORCH = "import sys; sys.modules['torch'] = None; from runner.cli import main; main()"


def test_without_torch_the_backend_is_listed_unavailable_and_asking_for_it_stops_early(tmp_path):
    listed = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, "plugins", "--json"], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    [row] = [r for r in orjson.loads(listed.stdout) if r["plugin"] == "torch"]
    assert row["registers"] == [
        "backend torch (unavailable: needs PyTorch: pip install 'panda-caviar[torch]' (or pip install torch))"
    ]
    exp = tmp_path / "exp.json"
    exp.write_bytes(orjson.dumps(deep_update(QUICK, {"backend": {"name": "torch"}})))
    started = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, "start", str(exp), "--out", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
    )
    assert started.returncode == 2
    assert "backend \"torch\" is not available here: needs PyTorch: pip install 'panda-caviar[torch]'" in started.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing ran


def test_a_torch_experiment_runs_end_to_end(write_experiment, tmp_path):
    from tests.conftest import run_file

    done = run_file(write_experiment({"backend": {"name": "torch", "device": "auto"}}), tmp_path)
    assert [r.state for r in done.board] == ["completed", "completed"]
    start = next(e for e in done.events if e["event"] == "trial_start")
    assert start["config"]["backend"] == {"name": "torch", "device": "auto", "dtype": "float32"}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_losses_come_a_step_late_and_all_arrive(digits):
    model, train = Model(hidden=(32,)), Train(epochs=1, optimizer="adam", lr=1e-3)
    gpu = TorchBackend(model=model, train=train, options=Options(device="cuda"), data=digits, seed=5)
    cpu = TorchBackend(model=model, train=train, options=Options(device="cpu"), data=digits, seed=5)
    gpu.begin_epoch(0)
    first = gpu.train_step()
    assert first is None and gpu._x_train.device.type == "cuda"
    rest = [gpu.train_step() for _ in range(gpu.steps_per_epoch - 1)] + gpu.pending_losses()
    np.testing.assert_allclose(rest, Driver(cpu).run(cpu.steps_per_epoch), rtol=1e-4)
