"""Data keep their shape; standardization per feature or per channel; regression targets;
the ``python`` data source (issue 16, part 4).

Every test goes through the core's ``runner.data.prepare``, as the runner does, with options
built by ``runner.experiment_file.typed.build`` from JSON-like dicts.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
import warnings
from pathlib import Path

import numpy as np
import orjson
import pytest

from runner.data import DataOptions, Dataset, RawData, prepare
from runner.engine.plugin_manager import load_plugins
from runner.errors import SpecError
from runner.experiment_file.spec import parse
from runner.experiment_file.typed import build
from runner.plugins.backends.numpy_mlp import Model, NumpyBackend, Options, Train
from runner.plugins.datasets import digits, files, python_source
from runner.testing import Driver, small_dataset

NPZ, CSV, PYTHON = files.NpzDataset(), files.CsvDataset(), python_source.PythonDataset()


def options(**values) -> DataOptions:
    return build(DataOptions, values, "data")


def blobs(n: int = 100, shape: tuple[int, ...] = (2, 20), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of inputs of per-example ``shape``, apart in their mean."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, *shape)) + y.reshape(-1, *([1] * len(shape)))
    return x, y


def spec_error(call) -> SpecError:
    with pytest.raises(SpecError) as info:
        call()
    return info.value


# --------------------------------------------------------------------------------------
# Shapes are kept
# --------------------------------------------------------------------------------------


def test_inputs_keep_their_shape_through_prepare():
    x, y = blobs(100, (2, 20))
    ds = prepare("t", RawData(x, y), options(), seed=0)
    assert ds.x_train.shape == (80, 2, 20) and ds.x_val.shape == (20, 2, 20)
    assert ds.input_shape == (2, 20) and ds.n_features == 40
    assert ds.x_train.dtype == np.float64 and ds.x_train.flags.c_contiguous
    raw = prepare("t", RawData(x, y), options(standardize=False), seed=0)
    rows = {r.tobytes() for r in np.concatenate([raw.x_train, raw.x_val])}
    assert rows == {r.tobytes() for r in x}  # each example whole, none mixed with another


def test_one_dimensional_inputs_are_one_feature_per_example():
    x = np.arange(40.0)
    ds = prepare("t", RawData(x, np.arange(40) % 2), options(), seed=0)
    assert ds.x_train.shape == (32, 1) and ds.input_shape == (1,) and ds.n_features == 1


def test_validation_inputs_must_have_the_training_shape():
    x, y = blobs(20, (2, 20))
    xv, yv = blobs(6, (4, 10))
    err = spec_error(lambda: prepare("t", RawData(x, y, xv, yv), options(), seed=0))
    assert err.path == "data"
    assert "(4, 10)" in err.message and "(2, 20)" in err.message


def test_the_numpy_backend_flattens_and_trains_as_on_flat_data():
    x, y = blobs(90, (2, 20))
    shaped = prepare("t", RawData(x, y), options(), seed=0)
    flat = prepare("t", RawData(x.reshape(90, 40), y), options(), seed=0)
    assert shaped.x_train.shape[1:] == (2, 20) and flat.x_train.shape[1:] == (40,)

    def losses(data: Dataset) -> list[float]:
        backend = NumpyBackend(
            model=Model(hidden=(8,)),
            train=Train(epochs=2, batch_size=16, lr=0.05),
            options=Options(dtype="float64"),
            data=data,
            seed=3,
        )
        return [*Driver(backend).run(12), backend.evaluate("val")["loss"]]

    assert losses(shaped) == losses(flat)


def test_the_conformance_suite_data_is_a_valid_dataset():
    ds = small_dataset()
    assert ds.task == "classification" and ds.input_shape == (5,) and ds.n_targets == ds.n_classes == 3


# --------------------------------------------------------------------------------------
# Standardization
# --------------------------------------------------------------------------------------


def channel_data(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, 5) inputs: channels of different scales, channel 2 constant at 0.1."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 3, 5)) * np.array([1.0, 10.0, 1.0])[:, None] + np.array([5.0, -3.0, 0.0])[:, None]
    x[:, 2, :] = 0.1  # not exactly representable: a naive std would be rounding noise, not 0
    return x, np.arange(n) % 2


def test_per_channel_standardization():
    x, y = channel_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a constant channel is no division by zero
        ds = prepare("t", RawData(x, y), options(standardize="channel"), seed=0)
    raw = prepare("t", RawData(x, y), options(standardize=False), seed=0)
    axes = (0, 2)
    assert np.allclose(ds.x_train[:, :2].mean(axis=axes), 0, atol=1e-12)
    assert np.allclose(ds.x_train[:, :2].std(axis=axes), 1)
    assert (ds.x_train[:, 2] == 0).all() and (ds.x_val[:, 2] == 0).all()
    # One mean and std per channel, of the training split: not per element.
    assert not np.allclose(ds.x_train[:, :2].mean(axis=0), 0, atol=1e-3)
    mean = raw.x_train[:, :2].mean(axis=axes, keepdims=True)
    std = raw.x_train[:, :2].std(axis=axes, keepdims=True)
    assert np.allclose(ds.x_val[:, :2], (raw.x_val[:, :2] - mean) / std)


@pytest.mark.parametrize("spelling", [True, "feature"])
def test_per_feature_standardization_of_shaped_inputs(spelling):
    x, y = channel_data()
    ds = prepare("t", RawData(x, y), options(standardize=spelling), seed=0)
    raw = prepare("t", RawData(x, y), options(standardize="none"), seed=0)
    assert np.allclose(ds.x_train[:, :2].mean(axis=0), 0, atol=1e-12)  # every element of the (3, 5) shape
    assert np.allclose(ds.x_train[:, :2].std(axis=0), 1)
    assert (ds.x_train[:, 2] == 0).all() and (ds.x_val[:, 2] == 0).all()
    mean, std = raw.x_train[:, :2].mean(axis=0), raw.x_train[:, :2].std(axis=0)
    assert np.allclose(ds.x_val[:, :2], (raw.x_val[:, :2] - mean) / std)


def test_the_spellings_of_standardize_agree():
    x, y = channel_data()
    same = lambda a, b: all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("x_train", "x_val"))  # noqa: E731
    run = lambda value: prepare("t", RawData(x, y), options(standardize=value), seed=0)  # noqa: E731
    assert same(run(True), run("feature")) and same(run(False), run("none"))
    assert not same(run("feature"), run("channel"))


@pytest.mark.parametrize("shape", [(), (12,)])
def test_per_channel_needs_a_channel_axis_and_one_after_it(shape):
    x = np.random.default_rng(0).normal(size=(40, *shape))
    err = spec_error(lambda: prepare("t", RawData(x, np.arange(40) % 2), options(standardize="channel"), seed=0))
    assert err.path == "data.standardize"
    assert "(N, C, L, ...)" in err.message and str((40, *(shape or (1,)))) in err.message


# --------------------------------------------------------------------------------------
# Regression
# --------------------------------------------------------------------------------------


def regression_data(n: int = 50, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(n, 3)) * 4 + 7
    y = x @ rng.normal(size=(3, k or 1)) + 0.25
    return x, (y[:, 0] if k is None else y)


@pytest.mark.parametrize("k", [None, 3])
def test_regression_keeps_float_targets(k):
    x, y = regression_data(50, k)
    ds = prepare("t", RawData(x, y), options(task="regression"), seed=0)
    assert ds.task == "regression" and ds.classes == () and ds.n_classes == 0
    assert ds.n_targets == (1 if k is None else k)
    assert ds.y_train.dtype == np.float64 and ds.y_train.shape == (40, *(() if k is None else (k,)))
    assert len(ds.y_val) == 10
    # Each example keeps its own target (inputs standardized, targets not).
    raw = prepare("t", RawData(x, y), options(task="regression", standardize=False), seed=0)
    rows = {r.tobytes(): t for r, t in zip(x, y)}
    for xs, ys in ((raw.x_train, raw.y_train), (raw.x_val, raw.y_val)):
        assert all(np.array_equal(rows[r.tobytes()], t) for r, t in zip(xs, ys))
    assert np.array_equal(ds.y_train, raw.y_train) and np.allclose(ds.x_train.mean(axis=0), 0)


def test_regression_integer_targets_become_floats_not_classes():
    x = np.arange(30.0)
    y = np.arange(30) * 3
    ds = prepare("t", RawData(x, y), options(task="regression"), seed=0)
    assert ds.y_train.dtype == np.float64 and ds.classes == () and len(ds.y_val) == 6
    assert sorted(np.concatenate([ds.y_train, ds.y_val])) == list(map(float, y))


def test_regression_split_is_seeded_and_random():
    x, y = regression_data(200)
    a, b, c = (prepare("t", RawData(x, y), options(task="regression"), seed=s) for s in (5, 5, 6))
    assert np.array_equal(a.y_val, b.y_val) and not np.array_equal(a.y_val, c.y_val)
    assert len(a.y_val) == len(c.y_val) == 40
    # Every target is its own value, so a stratified split (one class each) would keep none out.
    assert len(np.unique(y)) == 200


def test_regression_with_its_own_validation_split():
    x, y = regression_data(30, 2)
    xv, yv = regression_data(7, 2)
    ds = prepare("t", RawData(x, y, xv, yv), options(task="regression", standardize=False), seed=0)
    assert np.array_equal(ds.y_train, y) and np.array_equal(ds.y_val, yv) and ds.n_targets == 2
    err = spec_error(lambda: prepare("t", RawData(x, y, xv, yv[:, :1]), options(task="regression"), seed=0))
    assert err.path == "data" and "(7, 1)" in err.message and "(30, 2)" in err.message


@pytest.mark.parametrize(
    "y, problem",
    [
        (np.array(["a", "b"] * 10), 'targets must be numbers for task "regression", got dtype <U1'),
        (np.r_[np.ones(19), np.nan], "targets contain NaN or infinite values (first in example 19)"),
        (np.r_[np.ones(5), np.inf, np.ones(14)], "targets contain NaN or infinite values (first in example 5)"),
        (np.ones((20, 2, 2)), "targets must have shape (n,) or (n, k), got shape (20, 2, 2)"),
    ],
)
def test_bad_regression_targets_name_the_path(y, problem):
    err = spec_error(lambda: prepare("t", RawData(np.ones((20, 2)), y), options(task="regression"), seed=0))
    assert err.path == "data" and problem in err.message


def test_classification_is_as_before():
    x, y = blobs(40, (3,))
    ds = prepare("t", RawData(x, np.array(["no", "yes"])[y]), options(), seed=0)
    assert ds.task == "classification" and ds.classes == ("no", "yes") and ds.n_targets == 2
    assert ds.y_train.dtype == np.int64 and np.bincount(ds.y_val).tolist() == [4, 4]
    err = spec_error(lambda: prepare("t", RawData(x, np.zeros(40)), options(), seed=0))
    assert "needs at least 2 classes, found 1" in err.message
    assert Dataset("d", x, y, x, y, ("0", "1")).task == "classification"  # the old constructor still works


# --------------------------------------------------------------------------------------
# Built-in datasets
# --------------------------------------------------------------------------------------


def test_digits_as_images():
    plugin = digits.DigitsDataset()
    image = build(plugin.Options, {"shape": "image"}, "data")
    flat = build(plugin.Options, {}, "data")
    ds = prepare("digits", plugin.load(image, seed=0, base_dir=Path(".")), image, seed=0)
    assert len(ds.x_train) + len(ds.x_val) == 1797
    assert ds.input_shape == (1, 8, 8) and ds.n_features == 64 and ds.n_classes == 10
    ref = prepare("digits", plugin.load(flat, seed=0, base_dir=Path(".")), flat, seed=0)
    assert ref.input_shape == (64,)
    assert np.array_equal(ds.x_train.reshape(len(ds.x_train), -1), ref.x_train)  # the same pixels, row by row
    assert plugin.estimate(image, base_dir=Path(".")) == plugin.estimate(flat, base_dir=Path("."))
    channel = build(plugin.Options, {"shape": "image", "standardize": "channel"}, "data")
    ds = prepare("digits", plugin.load(channel, seed=0, base_dir=Path(".")), channel, seed=0)
    assert ds.x_train.mean() == pytest.approx(0, abs=1e-12) and ds.x_train.std() == pytest.approx(1)


def test_npz_keeps_the_stored_shape(tmp_path):
    x, y = blobs(50, (2, 20))
    np.savez(tmp_path / "d.npz", x=x, y=y)
    opts = build(NPZ.Options, {"path": "d.npz"}, "data")
    size = NPZ.estimate(opts, base_dir=tmp_path)
    assert (size.examples, size.features) == (50, 40)
    ds = prepare("npz", NPZ.load(opts, seed=0, base_dir=tmp_path), opts, seed=0)
    assert ds.x_train.shape == (40, 2, 20) and ds.input_shape == (2, 20) and ds.n_features == 40


def test_npz_regression_targets(tmp_path):
    x, y = regression_data(30, 2)
    np.savez(tmp_path / "d.npz", x=x, y=y, x_val=x[:5], y_val=y[:5, :1])
    opts = build(NPZ.Options, {"path": "d.npz", "task": "regression"}, "data")
    err = spec_error(lambda: NPZ.load(opts, seed=0, base_dir=tmp_path))
    assert err.path == "data.y_val" and "(5, 1)" in err.message
    np.savez(tmp_path / "e.npz", x=x, y=y)
    opts = build(NPZ.Options, {"path": "e.npz", "task": "regression"}, "data")
    ds = prepare("npz", NPZ.load(opts, seed=0, base_dir=tmp_path), opts, seed=0)
    assert ds.y_train.shape == (24, 2) and ds.n_targets == 2
    np.savez(tmp_path / "s.npz", x=x, y=np.array(["a"] * 30))
    opts = build(NPZ.Options, {"path": "s.npz", "task": "regression"}, "data")
    err = spec_error(lambda: NPZ.load(opts, seed=0, base_dir=tmp_path))
    assert err.path == "data.y" and 'numbers for task "regression"' in err.message


def test_csv_regression_targets(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,t\n" + "".join(f"{i},{i % 3},{i * 0.5}\n" for i in range(20)))
    opts = build(CSV.Options, {"path": "d.csv", "task": "regression"}, "data")
    ds = prepare("csv", CSV.load(opts, seed=0, base_dir=tmp_path), opts, seed=0)
    assert ds.classes == () and sorted(np.concatenate([ds.y_train, ds.y_val])) == [i * 0.5 for i in range(20)]
    (tmp_path / "e.csv").write_text("a,b,t\n1,2,3.5\n4,5,tall\n")
    opts = build(CSV.Options, {"path": "e.csv", "task": "regression"}, "data")
    err = spec_error(lambda: CSV.load(opts, seed=0, base_dir=tmp_path))
    assert err.path == "data.path" and 'line 3, column 3 ("t"): "tall" is not a number' in err.message


# --------------------------------------------------------------------------------------
# The python data source
# --------------------------------------------------------------------------------------


@pytest.fixture
def source(tmp_path):
    """Write a module of data functions beside the experiment; return (folder, module name).
    A fresh module name each time: a module is imported once per process."""
    name = f"my_data_{uuid.uuid4().hex[:8]}"

    def write(code: str) -> tuple[Path, str]:
        (tmp_path / f"{name}.py").write_text("import numpy as np\n\n" + textwrap.dedent(code))
        return tmp_path, name

    yield write
    sys.modules.pop(name, None)


def load_python(folder: Path, data: dict) -> Dataset:
    opts = build(PYTHON.Options, data, "data")
    assert PYTHON.estimate(opts, base_dir=folder) is None
    return prepare("python", PYTHON.load(opts, seed=0, base_dir=folder), opts, seed=0)


FUNCTIONS = """
def load(n=60, shape=(2, 20)):
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, *shape)) + y.reshape(-1, *([1] * len(shape)))
    return x, y

def with_val(n=60):
    x, y = load(n)
    return x, y, x[:9] + 1, y[:9]

def regression(k=2):
    x, _ = load(40, (4,))
    return x, x[:, :k] * 2.0
"""


def test_python_source_with_arrays(source):
    folder, module = source(FUNCTIONS)
    ds = load_python(folder, {"path": f"{module}:load", "args": {"n": 90}})
    assert ds.x_train.shape == (72, 2, 20) and ds.n_classes == 3 and ds.name == "python"
    ds = load_python(folder, {"path": f"{module}:with_val", "standardize": False})
    assert len(ds.x_train) == 60 and len(ds.x_val) == 9 and ds.input_shape == (2, 20)
    ds = load_python(folder, {"path": f"{module}:regression", "args": {"k": 3}, "task": "regression"})
    assert ds.n_targets == 3 and ds.classes == () and ds.y_train.dtype == np.float64


def test_python_source_with_tensors(source):
    pytest.importorskip("torch")
    folder, module = source(
        """
        import torch

        def load(val=False):
            torch.manual_seed(0)
            y = torch.arange(50) % 2
            x = torch.randn(50, 3, 4, requires_grad=True) + y[:, None, None]
            return (x, y, x[:10] * 2, y[:10]) if val else (x, y)
        """
    )
    ds = load_python(folder, {"path": f"{module}:load"})
    assert ds.x_train.shape == (40, 3, 4) and ds.classes == ("0", "1")
    ds = load_python(folder, {"path": f"{module}:load", "args": {"val": True}, "standardize": "channel"})
    assert len(ds.x_train) == 50 and len(ds.x_val) == 10 and ds.input_shape == (3, 4)


BAD = """
def lengths():
    return np.ones((10, 2)), np.arange(9)

def strings():
    return np.array([["a", "b"]] * 10), np.arange(10) % 2

def string_targets():
    return np.ones((10, 2)), np.array(["low", "high"] * 5)

def three():
    return np.ones((10, 2)), np.arange(10), np.ones(10)

def a_dict():
    return {"x": np.ones((10, 2)), "y": np.arange(10)}

def lists():
    return [[1.0, 2.0]] * 10, [0, 1] * 5

def objects():
    return np.array([{"a": 1}] * 10, dtype=object), np.arange(10) % 2

def nan():
    x = np.ones((10, 2)); x[4, 1] = np.nan
    return x, np.arange(10) % 2

def raises(n=1):
    raise ValueError(f"no data for n={n}")

def val_shape():
    return np.ones((10, 2)), np.arange(10) % 2, np.ones((4, 3)), np.arange(4) % 2

NOT_A_FUNCTION = 3
"""


@pytest.mark.parametrize(
    "function, extra, message",
    [
        ("lengths", {}, "inputs x have 10 examples but labels y 9"),
        ("strings", {}, "returned unusable data: inputs x must be numeric, got dtype <U1"),
        ("string_targets", {"task": "regression"}, 'targets y must be numbers for task "regression", got dtype <U4'),
        ("three", {}, "{ref} returned 3 items; expected (x, y) or (x, y, x_val, y_val)"),
        ("a_dict", {}, "{ref} returned a dict; expected a tuple (x, y) or (x, y, x_val, y_val)"),
        ("lists", {}, "{ref} returned x as a list of 10 items; expected a NumPy array or a torch tensor"),
        ("objects", {}, "{ref} returned x as an object array"),
        ("nan", {}, "inputs x contain NaN or infinite values (first in example 4)"),
        ("raises", {"args": {"n": 7}}, "{ref} raised ValueError: no data for n=7"),
        ("val_shape", {}, "validation inputs x_val have examples of shape (3,) but inputs x (2,)"),
        ("NOT_A_FUNCTION", {}, "{ref} is a int, not a function"),
    ],
)
def test_python_source_refuses_what_it_cannot_use(source, function, extra, message):
    folder, module = source(BAD)
    ref = f"{module}:{function}"
    err = spec_error(lambda: load_python(folder, {"path": ref, **extra}))
    assert err.path == "data.path"
    assert message.format(ref=ref) in err.message


def test_python_source_missing_module_or_function(source):
    folder, module = source(FUNCTIONS)
    err = spec_error(lambda: load_python(folder, {"path": f"{module}x:load"}))
    assert err.path == "data.path" and f'no module "{module}x"' in err.message and f'"{module}"' in err.message
    err = spec_error(lambda: load_python(folder, {"path": f"{module}:lod"}))
    assert err.path == "data.path" and 'has no "lod" (did you mean "load"?)' in err.message
    err = spec_error(lambda: load_python(folder, {"path": "not a path"}))
    assert err.path == "data.path"
    # Found when the file is read (runner validate), before anything is loaded; nothing is called.
    opts = build(PYTHON.Options, {"path": f"{module}:lod"}, "data")
    assert 'has no "lod"' in spec_error(lambda: PYTHON.estimate(opts, base_dir=folder)).message
    opts = build(PYTHON.Options, {"path": f"{module}:load", "args": {"n": "not a number"}}, "data")
    assert PYTHON.estimate(opts, base_dir=folder) is None


# --------------------------------------------------------------------------------------
# The spec: a backend trains the tasks it lists
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", pytest.param("torch", marks=pytest.mark.torch)])
def test_the_spec_refuses_a_task_the_backend_does_not_train(backend):
    registry = load_plugins().registry
    raw = {
        "data": {"name": "spirals", "task": "regression"},
        "backend": backend,
        "train": {"epochs": 1},
        "search": {"strategy": {"name": "grid"}},
    }
    err = spec_error(lambda: parse(raw, registry))
    assert err.path == "data.task"
    assert f'backend "{backend}" does not train "regression"; it trains classification' in err.message
    raw["data"]["task"] = "classification"
    assert parse(raw, registry).data.options.task == "classification"


# --------------------------------------------------------------------------------------
# End to end: runner start with the python source
# --------------------------------------------------------------------------------------


def test_runner_start_with_a_python_source(source, tmp_path):
    folder, module = source(FUNCTIONS)
    experiment = {
        "name": "py",
        "data": {"name": "python", "path": f"{module}:load", "args": {"n": 90}, "standardize": "channel"},
        "model": {"hidden": [8]},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.01},
        "search": {"strategy": {"name": "random", "trials": 1}},
    }
    exp = folder / "exp.json"
    exp.write_bytes(orjson.dumps(experiment))

    def start() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "runner", "start", str(exp), "--plain", "--out", str(tmp_path / "runs")],
            capture_output=True, text=True, timeout=300, cwd=tmp_path.parent,
        )  # fmt: skip

    done = start()
    assert done.returncode == 0, done.stderr
    [run_dir] = (tmp_path / "runs").iterdir()
    results = orjson.loads((run_dir / "results.json").read_bytes())
    assert results["counts"] == {"completed": 1}

    experiment["data"]["path"] = f"{module}:lod"
    exp.write_bytes(orjson.dumps(experiment))
    bad = start()
    assert bad.returncode == 2
    assert f'data.path: "{module}"' in bad.stderr and 'has no "lod" (did you mean "load"?)' in bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout
    assert len(list((tmp_path / "runs").iterdir())) == 1  # no run directory for the refused file
