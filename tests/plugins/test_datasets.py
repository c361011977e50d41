"""The built-in dataset plugins, loaded and prepared exactly as the core does it.

Options are built with ``runner.experiment_file.typed.build(Options, {...}, "data")`` and every dataset goes
through ``runner.data.prepare``. Files are real files written into ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from runner.data import DataOptions, RawData, prepare
from runner.errors import SpecError
from runner.experiment_file.typed import build
from runner.plugins.datasets import digits, files, python_source, spirals
from runner.registry import Registry

NPZ = files.NpzDataset()
CSV = files.CsvDataset()


def load(plugin, data: dict, *, seed: int = 0, base_dir: Path | str = "."):
    """Build the options from ``data`` as the core does, then load and prepare."""
    options = build(plugin.Options, data, "data")
    raw = plugin.load(options, seed=seed, base_dir=Path(base_dir))
    return prepare(plugin.name, raw, options, seed=seed)


def load_raw(plugin, data: dict, *, base_dir: Path | str = ".") -> RawData:
    options = build(plugin.Options, data, "data")
    return plugin.load(options, seed=0, base_dir=Path(base_dir))


def spec_error(plugin, data: dict, base_dir: Path | str = ".") -> str:
    """The str of the SpecError that building and loading ``data`` raises."""
    with pytest.raises(SpecError) as info:
        load(plugin, data, base_dir=base_dir)
    return str(info.value)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------
# Registration and options
# --------------------------------------------------------------------------------------


def test_modules_register_their_datasets():
    registry = Registry()
    for module in (digits, spirals, files, python_source):
        registry.provider = module.__name__
        module.runner_register(registry=registry)
    assert registry.names("dataset") == ["csv", "digits", "npz", "python", "spirals"]
    for name in registry.names("dataset"):
        plugin = registry.get("dataset", name)
        assert plugin.name == name
        assert issubclass(plugin.Options, DataOptions)


@pytest.mark.parametrize(
    "plugin",
    [digits.DigitsDataset(), spirals.SpiralsDataset(), NPZ, CSV, python_source.PythonDataset()],
    ids=lambda p: p.name,
)
def test_every_option_has_a_one_line_doc(plugin):
    for f in dataclasses.fields(plugin.Options):
        doc = f.metadata.get("doc")
        assert doc and "\n" not in doc, f"{plugin.name}.{f.name} has no one-line doc"


def test_option_names():
    names = lambda plugin: [f.name for f in dataclasses.fields(plugin.Options)]  # noqa: E731
    base = ["val_fraction", "standardize", "task"]
    assert names(digits.DigitsDataset()) == base + ["shape"]
    assert names(spirals.SpiralsDataset()) == base + ["classes", "points_per_class", "noise"]
    assert names(NPZ) == base + ["path", "x", "y", "x_val", "y_val"]
    assert names(CSV) == base + ["path", "target", "header", "delimiter", "val_path"]
    assert names(python_source.PythonDataset()) == base + ["path", "args"]


@pytest.mark.parametrize(
    "plugin, data, where, problem",
    [
        (NPZ, {}, "data.path", "is required"),
        (NPZ, {"path": ""}, "data.path", "must name a file"),
        (NPZ, {"path": "a.npz", "x": ""}, "data.x", "must name an array"),
        (CSV, {"path": " "}, "data.path", "must name a file"),
        (CSV, {"path": "a.csv", "delimiter": ";;"}, "data.delimiter", "single character"),
        (CSV, {"path": "a.csv", "delimiter": ""}, "data.delimiter", "single character"),
        (CSV, {"path": "a.csv", "target": "label", "header": False}, "data.target", '"header": true'),
        (CSV, {"path": "a.csv", "header": "yes"}, "data.header", "must be a boolean"),
        (spirals.SpiralsDataset(), {"classes": 1}, "data.classes", "must be >= 2, got 1"),
        (spirals.SpiralsDataset(), {"points_per_class": 1}, "data.points_per_class", "must be >= 2"),
        (spirals.SpiralsDataset(), {"noise": -0.1}, "data.noise", "must be >= 0"),
        (digits.DigitsDataset(), {"val_fraction": 1.0}, "data.val_fraction", "must be < 1"),
        (digits.DigitsDataset(), {"colour": True}, "data.colour", "unknown key"),
        (digits.DigitsDataset(), {"shape": "square"}, "data.shape", 'must be one of "flat", "image"'),
        (
            digits.DigitsDataset(),
            {"standardize": "channels"},
            "data.standardize",
            'must be a boolean or one of "feature", "channel", "none", got string "channels"',
        ),
        (digits.DigitsDataset(), {"standardize": 1}, "data.standardize", "must be a boolean or one of"),
        (digits.DigitsDataset(), {"task": "ranking"}, "data.task", 'must be one of "classification", "regression"'),
        (python_source.PythonDataset(), {}, "data.path", "is required"),
        (python_source.PythonDataset(), {"path": "m:f", "args": [1]}, "data.args", "must be an object"),
    ],
)
def test_bad_options_name_the_key(plugin, data, where, problem):
    with pytest.raises(SpecError) as info:
        build(plugin.Options, data, "data")
    assert info.value.path == where
    assert str(info.value).startswith(f"{where}: ")
    assert problem in str(info.value)


# --------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_raw() -> RawData:
    plugin = digits.DigitsDataset()
    return plugin.load(build(plugin.Options, {}, "data"), seed=0, base_dir=Path("."))


def prepare_digits(raw: RawData, seed: int = 0, **options):
    return prepare("digits", raw, build(DataOptions, options, "data"), seed=seed)


def test_digits_loads_all_examples(digits_raw):
    assert digits_raw.x.shape == (1797, 64)
    assert digits_raw.y.shape == (1797,)
    assert digits_raw.x_val is None and digits_raw.y_val is None
    assert digits_raw.x.min() == 0 and digits_raw.x.max() == 16


def test_digits_are_scikit_learns_exactly_without_importing_it(digits_raw, monkeypatch):
    """Read from scikit-learn's bundled file, the data are ``load_digits``'s bit for bit;
    where the file is missing, ``load_digits`` itself gives them."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    bunch = load_digits()
    assert digits_raw.x.dtype == np.float64 and digits_raw.y.dtype == np.int64
    assert np.array_equal(digits_raw.x, bunch.data) and np.array_equal(digits_raw.y, bunch.target)
    probe = (
        "import sys; from runner.plugins.datasets.digits import read_digits; "
        "read_digits(); print('sklearn' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"
    monkeypatch.setattr(digits.importlib.util, "find_spec", lambda name: None)
    x, y = digits.read_digits()
    assert np.array_equal(x, bunch.data) and np.array_equal(y, bunch.target)


def test_digits_stratified_split(digits_raw):
    ds = prepare_digits(digits_raw)
    assert ds.classes == tuple(str(d) for d in range(10))
    assert ds.x_train.shape[1] == ds.x_val.shape[1] == 64
    assert len(ds.x_train) + len(ds.x_val) == 1797
    assert len(ds.x_val) == pytest.approx(0.2 * 1797, abs=10)
    totals = np.bincount(digits_raw.y, minlength=10)
    in_val = np.bincount(ds.y_val, minlength=10)
    in_train = np.bincount(ds.y_train, minlength=10)
    assert (in_train + in_val == totals).all()
    assert (in_val > 0).all() and (in_train > 0).all()
    for c in range(10):
        assert abs(in_val[c] - 0.2 * totals[c]) <= 0.5 + 1e-9  # rounded per class
        assert in_val[c] / totals[c] == pytest.approx(0.2, abs=0.01)


def test_digits_split_is_a_partition(digits_raw):
    ds = prepare_digits(digits_raw, standardize=False)
    rows = lambda a: {r.tobytes() for r in a}  # noqa: E731
    assert len(rows(ds.x_train) & rows(ds.x_val)) <= 1  # digits has a few duplicate images, never many
    assert sorted(rows(ds.x_train) | rows(ds.x_val)) == sorted(rows(digits_raw.x))


def test_digits_split_depends_on_the_seed_only(digits_raw):
    a = prepare_digits(digits_raw, seed=7)
    b = prepare_digits(digits_raw, seed=7)
    c = prepare_digits(digits_raw, seed=8)
    for field in ("x_train", "y_train", "x_val", "y_val"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.y_val, c.y_val) or not np.array_equal(a.x_val, c.x_val)
    assert len(a.x_val) == len(c.x_val)  # the same class counts, other examples


def test_digits_standardized_with_training_statistics_only(digits_raw):
    ds = prepare_digits(digits_raw)
    raw = prepare_digits(digits_raw, standardize=False)
    constant = raw.x_train.std(axis=0) == 0
    assert constant.any()  # some border pixels are always 0 in the training split
    assert np.allclose(ds.x_train.mean(axis=0), 0, atol=1e-12)
    assert np.allclose(ds.x_train.std(axis=0)[~constant], 1)
    assert (ds.x_train[:, constant] == 0).all()
    # The validation split is scaled with the training mean and std, not its own.
    mean, std = raw.x_train.mean(axis=0), raw.x_train.std(axis=0)
    std[std == 0] = 1
    assert np.allclose(ds.x_val, (raw.x_val - mean) / std)
    assert not np.allclose(ds.x_val.mean(axis=0), 0, atol=1e-6)
    assert not np.allclose(ds.x_val.std(axis=0)[~constant], 1, atol=1e-6)


def test_digits_without_standardization_keeps_pixel_values(digits_raw):
    ds = prepare_digits(digits_raw, standardize=False)
    assert ds.x_train.dtype == np.float64 and ds.y_train.dtype == np.int64
    assert ds.x_train.min() == 0 and ds.x_train.max() == 16


# --------------------------------------------------------------------------------------
# The core's prepare, on edge cases a dataset can produce
# --------------------------------------------------------------------------------------


def test_standardize_keeps_constant_columns_at_zero():
    # runner/data.py promises "constant columns stay 0"; a constant that is not exactly
    # representable (0.1) must not turn into a column of ones through rounding noise.
    x = np.column_stack([np.full(200, 0.1), np.arange(200.0)])
    y = np.arange(200) % 2
    ds = prepare("t", RawData(x, y), DataOptions(), seed=0)
    assert (ds.x_train[:, 0] == 0).all()
    assert (ds.x_val[:, 0] == 0).all()


def test_prepare_gives_one_dimensional_labels():
    # Dataset.y_train is documented as shape (m_train,); labels saved as a column (n, 1)
    # must come out 1-D or be refused, never as (m, 1) (which broadcasts silently).
    x = np.arange(40.0)[:, None]
    y = (np.arange(40) % 2)[:, None]
    try:
        ds = prepare("t", RawData(x, y), DataOptions(), seed=0)
    except SpecError:
        return
    assert ds.y_train.shape == (len(ds.x_train),)
    assert ds.y_val.shape == (len(ds.x_val),)


# --------------------------------------------------------------------------------------
# spirals
# --------------------------------------------------------------------------------------


def test_spirals_shapes_and_classes():
    raw = load_raw(spirals.SpiralsDataset(), {"classes": 4, "points_per_class": 50})
    assert raw.x.shape == (200, 2) and raw.y.shape == (200,)
    assert np.bincount(raw.y).tolist() == [50, 50, 50, 50]
    assert np.linalg.norm(raw.x, axis=1).max() == pytest.approx(1.0)
    ds = load(spirals.SpiralsDataset(), {"classes": 4, "points_per_class": 50})
    assert ds.classes == ("0", "1", "2", "3") and ds.n_features == 2
    assert len(ds.x_val) == 40 and np.bincount(ds.y_val).tolist() == [10, 10, 10, 10]


def test_spirals_defaults():
    ds = load(spirals.SpiralsDataset(), {})
    assert ds.n_classes == 3 and len(ds.x_train) + len(ds.x_val) == 300


def test_spirals_same_seed_same_data():
    plugin = spirals.SpiralsDataset()
    options = build(plugin.Options, {}, "data")
    a = plugin.load(options, seed=3, base_dir=Path("."))
    b = plugin.load(options, seed=3, base_dir=Path("."))
    c = plugin.load(options, seed=4, base_dir=Path("."))
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.allclose(a.x, c.x)
    assert np.array_equal(a.y, c.y)


def test_spirals_without_noise_lie_on_the_arms():
    plugin = spirals.SpiralsDataset()
    options = build(plugin.Options, {"noise": 0, "classes": 2, "points_per_class": 5}, "data")
    a = plugin.load(options, seed=1, base_dir=Path("."))
    b = plugin.load(options, seed=2, base_dir=Path("."))
    assert np.array_equal(a.x, b.x)  # no noise: the seed does not matter
    radius = np.linspace(0, 1, 5)
    theta = np.linspace(np.pi, np.pi + 4, 5)  # arm 1 of 2 starts half a turn on
    assert np.allclose(a.x[5:], np.column_stack([radius * np.sin(theta), radius * np.cos(theta)]))


# --------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------


def blobs(n: int = 60, features: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    return rng.normal(size=(n, features)) + y[:, None], y


def test_npz_without_validation_split(tmp_path):
    x, y = blobs()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load(NPZ, {"path": "d.npz", "standardize": False}, base_dir=tmp_path)  # relative to base_dir
    assert len(ds.x_train) == 48 and len(ds.x_val) == 12
    assert np.bincount(ds.y_val).tolist() == [4, 4, 4]
    assert ds.classes == ("0", "1", "2")


def test_npz_with_validation_split(tmp_path):
    x, y = blobs()
    xv, yv = blobs(9, seed=1)
    np.savez(tmp_path / "d.npz", x=x, y=y, x_val=xv, y_val=yv)
    ds = load(NPZ, {"path": str(tmp_path / "d.npz"), "standardize": False})
    assert np.array_equal(ds.x_train, x) and np.array_equal(ds.y_train, y)
    assert np.array_equal(ds.x_val, xv) and np.array_equal(ds.y_val, yv)


def test_npz_custom_names_and_string_labels(tmp_path):
    x, y = blobs()
    names = np.array(["cat", "dog", "emu"])
    np.savez(tmp_path / "d.npz", feats=x, labels=names[y], vf=x[:6], vl=names[y[:6]])
    ds = load(NPZ, {"path": "d.npz", "x": "feats", "y": "labels", "x_val": "vf", "y_val": "vl"}, base_dir=tmp_path)
    assert ds.classes == ("cat", "dog", "emu")
    assert np.array_equal(ds.y_train, y) and len(ds.x_val) == 6


def test_npz_validation_arrays_can_be_ignored(tmp_path):
    x, y = blobs()
    np.savez(tmp_path / "d.npz", x=x, y=y, x_val=x[:3], y_val=y[:3])
    ds = load(NPZ, {"path": "d.npz", "x_val": ""}, base_dir=tmp_path)
    assert len(ds.x_train) + len(ds.x_val) == 60


def test_npz_column_labels_and_images_are_accepted(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((30, 4, 4))
    y = (np.arange(30) % 2)[:, None]
    np.savez(tmp_path / "d.npz", x=images, y=y)
    ds = load(NPZ, {"path": "d.npz"}, base_dir=tmp_path)
    assert ds.n_features == 16
    assert ds.y_train.shape == (len(ds.x_train),)


def test_npz_missing_file(tmp_path):
    message = spec_error(NPZ, {"path": "nope.npz"}, tmp_path)
    assert message.startswith("data.path: no such file: ")
    assert str(tmp_path / "nope.npz") in message


def test_npz_missing_keys_name_the_keys_present(tmp_path):
    x, y = blobs()
    np.savez(tmp_path / "d.npz", features=x, y=y)
    message = spec_error(NPZ, {"path": "d.npz"}, tmp_path)
    assert message.startswith('data.x: no array "x" in ')
    assert 'arrays present: "features", "y"' in message
    message = spec_error(NPZ, {"path": "d.npz", "x": "features", "y": "labels"}, tmp_path)
    assert message.startswith('data.y: no array "labels" in ')


def test_npz_half_a_validation_split(tmp_path):
    x, y = blobs()
    np.savez(tmp_path / "d.npz", x=x, y=y, x_val=x[:5])
    message = spec_error(NPZ, {"path": "d.npz"}, tmp_path)
    assert message.startswith('data.y_val: no array "y_val"')
    np.savez(tmp_path / "e.npz", x=x, y=y)
    message = spec_error(NPZ, {"path": "e.npz", "x_val": "vx", "y_val": "vy"}, tmp_path)
    assert message.startswith('data.x_val: no array "vx"')


def test_npz_object_arrays_are_refused(tmp_path):
    x, _ = blobs()
    labels = np.array([{"a": 1}] * 60, dtype=object)
    np.savez(tmp_path / "d.npz", x=x, y=labels)
    message = spec_error(NPZ, {"path": "d.npz"}, tmp_path)
    assert message.startswith('data.y: array "y" in ')
    assert "object array" in message


def test_npz_mismatched_lengths(tmp_path):
    x, y = blobs()
    np.savez(tmp_path / "d.npz", x=x, y=y[:50])
    message = spec_error(NPZ, {"path": "d.npz"}, tmp_path)
    assert message.startswith('data.y: array "y" has 50 labels but "x" has 60 rows')
    np.savez(tmp_path / "e.npz", x=x, y=y, x_val=x[:5], y_val=y[:4])
    message = spec_error(NPZ, {"path": "e.npz"}, tmp_path)
    assert message.startswith('data.y_val: array "y_val" has 4 labels but "x_val" has 5 rows')
    np.savez(tmp_path / "f.npz", x=x, y=y, x_val=x[:5, :2], y_val=y[:5])
    message = spec_error(NPZ, {"path": "f.npz"}, tmp_path)
    assert message.startswith('data.x_val: array "x_val" has rows of shape (2,) but "x" has (3,)')


@pytest.mark.parametrize(
    "arrays, where, problem",
    [
        ({"x": np.array([["a", "b"]] * 4), "y": np.arange(4)}, "data.x", "must be numeric, got dtype <U1"),
        ({"x": np.array([[1.0, np.nan]] * 4), "y": np.arange(4)}, "data.x", "NaN or infinite values (first in row 0)"),
        ({"x": np.ones((4, 2)), "y": np.ones((4, 3))}, "data.y", "one-hot"),
        ({"x": np.ones((4, 2)), "y": np.array([0, 1, np.inf, 0])}, "data.y", "NaN or infinite labels"),
        ({"x": np.float64(1.0), "y": np.arange(4)}, "data.x", "one row per example"),
        (
            {"x": np.ones((4, 2)), "y": np.arange(4), "x_val": np.ones((2, 2)), "y_val": np.array(["a", "b"])},
            "data.y_val",
            'strings but labels in "y" are numbers',
        ),
    ],
)
def test_npz_bad_arrays(tmp_path, arrays, where, problem):
    np.savez(tmp_path / "d.npz", **arrays)
    message = spec_error(NPZ, {"path": "d.npz"}, tmp_path)
    assert message.startswith(f"{where}: ")
    assert problem in message


def test_npz_not_an_archive(tmp_path):
    write(tmp_path / "d.npz", "a,b\n1,2\n")
    message = spec_error(NPZ, {"path": "d.npz"}, tmp_path)
    assert message.startswith("data.path: ") and "is not a .npz archive" in message
    np.save(tmp_path / "e.npy", np.ones(3))
    message = spec_error(NPZ, {"path": "e.npy"}, tmp_path)
    assert message.startswith("data.path: ") and "single array (.npy)" in message
    (tmp_path / "dir.npz").mkdir()
    assert spec_error(NPZ, {"path": "dir.npz"}, tmp_path).startswith("data.path: not a file: ")


# --------------------------------------------------------------------------------------
# csv
# --------------------------------------------------------------------------------------


def csv_text(rows: list[list], header: list[str] | None = None, delimiter: str = ",") -> str:
    lines = [delimiter.join(header)] if header else []
    lines += [delimiter.join(str(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def table(n: int = 30, labels=("a", "b", "c")) -> tuple[list[list], np.ndarray]:
    """Rows of two numeric features and a label; the expected features array."""
    rows = [[i * 0.5, (i % 7) - 3, labels[i % len(labels)]] for i in range(n)]
    return rows, np.array([[r[0], r[1]] for r in rows], dtype=float)


def test_csv_header_and_last_column(tmp_path):
    rows, x = table()
    write(tmp_path / "d.csv", csv_text(rows, ["f1", "f2", "label"]))
    raw = load_raw(CSV, {"path": "d.csv"}, base_dir=tmp_path)
    assert np.array_equal(raw.x, x)
    assert raw.y.tolist() == [r[2] for r in rows]
    ds = load(CSV, {"path": "d.csv"}, base_dir=tmp_path)
    assert ds.classes == ("a", "b", "c") and ds.n_features == 2
    assert np.bincount(ds.y_val).tolist() == [2, 2, 2]


def test_csv_named_target_in_the_middle(tmp_path):
    rows, _ = table(labels=(3, 1, 2))
    moved = [[r[0], r[2], r[1]] for r in rows]
    write(tmp_path / "d.csv", csv_text(moved, ["f1", "kind", "f2"]))
    raw = load_raw(CSV, {"path": "d.csv", "target": "kind"}, base_dir=tmp_path)
    assert raw.y.dtype == np.int64 and raw.y[:3].tolist() == [3, 1, 2]
    assert np.array_equal(raw.x, np.array([[r[0], r[2]] for r in moved], dtype=float))
    ds = load(CSV, {"path": "d.csv", "target": "kind"}, base_dir=tmp_path)
    assert ds.classes == ("1", "2", "3")


def test_csv_numeric_labels_sort_as_numbers(tmp_path):
    rows = [[i, [2, 10, 1.0][i % 3]] for i in range(12)]
    write(tmp_path / "d.csv", csv_text(rows, ["f", "y"]))
    ds = load(CSV, {"path": "d.csv"}, base_dir=tmp_path)
    assert ds.classes == ("1", "2", "10")  # "1.0" and "1" are one class; 10 after 2


def test_csv_without_header_and_other_delimiter(tmp_path):
    rows, x = table()
    text = "\n\n" + csv_text(rows, delimiter=";").replace("\n", "\n\n", 3)  # blank lines are skipped
    write(tmp_path / "d.csv", text)
    raw = load_raw(CSV, {"path": "d.csv", "header": False, "delimiter": ";"}, base_dir=tmp_path)
    assert np.array_equal(raw.x, x) and len(raw.y) == 30


def test_csv_quoted_fields_spaces_and_bom(tmp_path):
    text = '\ufeff"width", height , "class"\n1.5, 2 , "big, red"\n0.5,1, small\n2.5,3,"big, red"\n0,1,small\n'
    write(tmp_path / "d.csv", text)
    raw = load_raw(CSV, {"path": "d.csv", "target": "class"}, base_dir=tmp_path)
    assert raw.x.tolist() == [[1.5, 2], [0.5, 1], [2.5, 3], [0, 1]]
    assert raw.y.tolist() == ["big, red", "small", "big, red", "small"]


def test_csv_separate_validation_file(tmp_path):
    rows, x = table()
    val_rows, xv = table(9)
    write(tmp_path / "train.csv", csv_text(rows, ["f1", "f2", "label"]))
    write(tmp_path / "val.csv", csv_text(val_rows, ["f1", "f2", "label"]))
    ds = load(CSV, {"path": "train.csv", "val_path": "val.csv", "standardize": False}, base_dir=tmp_path)
    assert np.array_equal(ds.x_train, x) and np.array_equal(ds.x_val, xv)
    assert ds.y_val.tolist() == [0, 1, 2] * 3


def test_csv_labels_judged_over_both_files(tmp_path):
    write(tmp_path / "train.csv", csv_text([[1, 1], [2, 2], [3, 1]], ["f", "y"]))
    write(tmp_path / "val.csv", csv_text([[1, "x"]], ["f", "y"]))
    raw = load_raw(CSV, {"path": "train.csv", "val_path": "val.csv"}, base_dir=tmp_path)
    assert raw.y.tolist() == ["1", "2", "1"] and raw.y_val.tolist() == ["x"]


@pytest.mark.parametrize(
    "text, options, where, problem",
    [
        ("a,b,y\n1,2,x\n3,oops,y\n", {}, "data.path", 'line 3, column 2 ("b"): "oops" is not a number'),
        ("a,b,y\n1,,x\n", {}, "data.path", 'line 2, column 2 ("b"): an empty field is not a number'),
        ("1,2,x\n3,inf,y\n", {"header": False}, "data.path", 'line 2, column 2: "inf" is not a finite number'),
        ("a,b,y\n1,2,x\n3,4\n", {}, "data.path", "line 3: expected 3 columns (as in the header, line 1), found 2"),
        ("1,2,x\n\n3,4,5,y\n", {"header": False}, "data.path", "line 3: expected 3 columns (as in line 1), found 4"),
        ("a,b,y\n1,2,x\n", {"target": "label"}, "data.target", 'no column "label" in'),
        ("a,b,a\n1,2,x\n", {"target": "a"}, "data.target", 'column "a" appears 2 times'),
        ("", {}, "data.path", "is empty"),
        ("\n\n", {"header": False}, "data.path", "is empty"),
        ("a,b,y\n", {}, "data.path", "has a header (line 1) but no data rows"),
        ("y\n1\n2\n", {}, "data.path", "has a single column"),
        ("a,b,y\n1,2,\n", {}, "data.path", 'line 2, column 3 ("y"): the label is empty'),
        ('a,b,y\n1,2,"x\n', {}, "data.path", "line 2: unexpected end of data"),
        ('a,b,y\n1,"2"3,x\n', {}, "data.path", "line 2: ',' expected after '\"'"),
    ],
)
def test_csv_bad_files(tmp_path, text, options, where, problem):
    write(tmp_path / "d.csv", text)
    message = spec_error(CSV, {"path": "d.csv", **options}, tmp_path)
    assert message.startswith(f"{where}: ")
    assert problem in message
    if where == "data.path":
        assert str(tmp_path / "d.csv") in message


def test_csv_unknown_target_lists_the_columns(tmp_path):
    write(tmp_path / "d.csv", "a,b,y\n1,2,x\n")
    message = spec_error(CSV, {"path": "d.csv", "target": "Y"}, tmp_path)
    assert message.endswith('columns: "a", "b", "y"')


def test_csv_missing_files(tmp_path):
    message = spec_error(CSV, {"path": "d.csv"}, tmp_path)
    assert message.startswith(f"data.path: no such file: {tmp_path / 'd.csv'}")
    write(tmp_path / "d.csv", "a,y\n1,x\n2,y\n")
    message = spec_error(CSV, {"path": "d.csv", "val_path": "v.csv"}, tmp_path)
    assert message.startswith(f"data.val_path: no such file: {tmp_path / 'v.csv'}")


def test_csv_validation_file_must_match(tmp_path):
    write(tmp_path / "d.csv", "a,b,y\n1,2,x\n2,3,y\n")
    write(tmp_path / "v.csv", "a,c,y\n1,2,x\n")
    message = spec_error(CSV, {"path": "d.csv", "val_path": "v.csv"}, tmp_path)
    assert message.startswith("data.val_path: ") and "needs the same header" in message
    write(tmp_path / "v.csv", "a,b,y\n1,zz,x\n")
    message = spec_error(CSV, {"path": "d.csv", "val_path": "v.csv"}, tmp_path)
    assert message.startswith("data.val_path: ") and 'line 2, column 2 ("b"): "zz" is not a number' in message
    write(tmp_path / "d.csv", "1,2,x\n2,3,y\n")
    write(tmp_path / "v.csv", "1,x\n")
    message = spec_error(CSV, {"path": "d.csv", "val_path": "v.csv", "header": False}, tmp_path)
    assert message.startswith("data.val_path: ") and "has 2 columns but" in message


def test_csv_not_utf8(tmp_path):
    (tmp_path / "d.csv").write_bytes(b"a,y\n1,\xff\xfe\n")
    message = spec_error(CSV, {"path": "d.csv"}, tmp_path)
    assert message.startswith("data.path: ") and "is not UTF-8 text" in message
