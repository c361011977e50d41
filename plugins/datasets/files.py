"""The "npz" and "csv" datasets: a user's own data, read from files.

``npz`` reads arrays from a NumPy ``.npz`` archive (``np.savez``): features of any per-example
shape (kept: an (N, 2, 20) array stays (N, 2, 20)), labels and, when the archive has them,
a validation split. ``csv`` reads a delimited text file whose columns are numeric features
plus one target column (numbers or strings), optionally with a separate validation file.
With ``task: "regression"`` the targets must be numbers: (N,) or (N, k) in an archive, one
column in a CSV file. Relative paths are resolved against the experiment file's
folder. Every problem with the files is reported as a ``SpecError`` naming the option
(``data.path``, ``data.x``, ...) and, for CSV files, the line and column.

Neither loader changes the files it reads; the core's ``prepare`` encodes the labels,
splits (when no validation split is given) and standardizes.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, ClassVar

import numpy as np

from runner import DataOptions, DatasetPlugin, DataSize, RawData, SpecError, bounds, hookimpl, join_path
from runner.inputs import DATA_FILE, InputError, check_regular, open_binary

DATA = "data"  # where the data section sits in an experiment file
#: Bytes of memory per byte of CSV text while it is read: each cell is a Python string (about
#: 60 bytes) until the columns become float64 arrays. Measured at about 10 for numbers
#: written with six decimals; short cells cost more, so CSV suits small data (npz big data).
CSV_MEMORY_FACTOR = 12


# --------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NpzOptions(DataOptions):
    """Where the archive is and which arrays in it hold what."""

    path: str = field(
        metadata=bounds(doc="the .npz file; a relative path is resolved against the experiment file's folder")
    )
    x: str = field(default="x", metadata=bounds(doc="name of the array of features, one row per example"))
    y: str = field(
        default="y",
        metadata=bounds(
            doc="name of the array of labels (numbers or strings), one per example; "
            "for regression, numeric targets of shape (N,) or (N, k)"
        ),
    )
    x_val: str = field(
        default="x_val",
        metadata=bounds(
            doc='name of the validation features, used with y_val when both are in the file; "" ignores them'
        ),
    )
    y_val: str = field(
        default="y_val",
        metadata=bounds(
            doc='name of the validation labels, used with x_val when both are in the file; "" ignores them'
        ),
    )

    def check(self, path: str) -> None:
        """Called by ``build`` after the fields are checked: reject empty names."""
        _check_path(self.path, join_path(path, "path"))
        for key in ("x", "y"):
            if not getattr(self, key):
                raise SpecError(join_path(path, key), "must name an array in the file, got an empty string")


@dataclass(frozen=True, kw_only=True)
class CsvOptions(DataOptions):
    """Where the file is and how to read it."""

    path: str = field(
        metadata=bounds(doc="the CSV file; a relative path is resolved against the experiment file's folder")
    )
    target: str = field(
        default="", metadata=bounds(doc='name of the label column (needs a header); "" means the last column')
    )
    header: bool = field(default=True, metadata=bounds(doc="whether the first line holds column names"))
    delimiter: str = field(
        default=",", metadata=bounds(doc='the single character between fields, such as "," or ";" or "\\t"')
    )
    val_path: str = field(
        default="",
        metadata=bounds(
            doc='a CSV file with the same columns holding the validation split; "" splits the data by val_fraction'
        ),
    )

    def check(self, path: str) -> None:
        """Called by ``build`` after the fields are checked: reject options that cannot work together."""
        _check_path(self.path, join_path(path, "path"))
        if len(self.delimiter) != 1 or self.delimiter in '"\r\n':
            raise SpecError(
                join_path(path, "delimiter"),
                'must be a single character other than a quote or a line break, such as "," or ";" or "\\t", '
                f"got {self.delimiter!r}",
            )
        if self.target and not self.header:
            raise SpecError(
                join_path(path, "target"),
                'names a column, which needs "header": true; leave target empty to use the last column',
            )


def _check_path(value: str, where: str) -> None:
    if not value.strip():
        raise SpecError(where, "must name a file, got an empty string")


def _resolve(value: str, base_dir: Path | str, where: str) -> Path:
    """The file ``value`` names, relative to ``base_dir``; a SpecError at ``where`` if it is
    not a regular file (missing, a folder, a FIFO, a device). Opens nothing."""
    given = Path(value).expanduser()
    file = given if given.is_absolute() else Path(base_dir) / given
    try:
        check_regular(file)
    except InputError as err:
        if err.kind == "missing":
            hint = (
                ""
                if given.is_absolute()
                else f" (relative paths are resolved against the experiment file's folder, {base_dir})"
            )
            raise SpecError(where, f"no such file: {file}{hint}") from None
        if err.kind == "folder":
            raise SpecError(where, f"not a file: {file}") from None
        raise SpecError(where, str(err)) from None
    return file


def _file_bytes(file: Path, where: str) -> int:
    """The size of the regular file ``file``; a SpecError at ``where`` if it is over the
    data-file limit (``RUNNER_MAX_DATA_FILE_BYTES``)."""
    try:
        return check_regular(file, DATA_FILE).st_size
    except InputError as err:
        raise SpecError(where, str(err)) from None


@contextmanager
def _data_file(file: Path, where: str) -> Iterator[BinaryIO]:
    """``file`` open for reading as a regular file of at most ``inputs.DATA_FILE`` bytes
    (``RUNNER_MAX_DATA_FILE_BYTES``); a SpecError at ``where`` if it is not one, or grows
    past the limit while it is read."""
    try:
        with open_binary(file, DATA_FILE) as handle:
            yield handle
    except InputError as err:
        raise SpecError(where, str(err)) from None


# --------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------


class NpzDataset(DatasetPlugin):
    """Arrays from a ``.npz`` archive written by ``np.savez(path, x=..., y=...)``."""

    name: ClassVar[str] = "npz"
    Options: ClassVar[type] = NpzOptions

    def estimate(self, options: NpzOptions, *, base_dir: Path) -> DataSize:
        """Called when the experiment file is read, before ``load``: the arrays' shapes from
        their headers (nothing is read or decompressed) and the bytes ``load`` holds, each
        array as stored plus the features as float64. A file that is no regular file, or is
        over the data-file limit, is refused here (SpecError at ``data.path``)."""
        where = join_path(DATA, "path")
        file = _resolve(options.path, base_dir, where)
        size = _file_bytes(file, where)
        names = [options.x, options.y] + ([options.x_val, options.y_val] if options.x_val and options.y_val else [])
        layout = _npz_layout(file, where, names)
        if options.x not in layout:
            return DataSize(size, detail=f"{file}: {size:,} bytes")
        stored = sum(math.prod(shape) * dtype.itemsize for shape, dtype in layout.values())
        features_shapes = [layout[options.x][0]]
        if options.x_val in layout and options.y_val in layout:
            features_shapes.append(layout[options.x_val][0])
        as_float = sum(math.prod(shape) * 8 for shape in features_shapes)  # load's float64 copies
        examples = sum(shape[0] if shape else 1 for shape in features_shapes)
        features = math.prod(features_shapes[0][1:])  # 1 for a single column given as a 1-D array
        detail = f"{examples:,} examples of {features:,} features"
        return DataSize(stored + as_float, examples, features, None, detail)

    def load(self, options: NpzOptions, *, seed: int, base_dir: Path) -> RawData:
        """Read the features and labels (and the validation arrays when both are present).

        Called once per experiment, in the driver, before the first trial. Only reads the
        file (never unpickles: object arrays are refused); ``seed`` is unused.
        """
        where = join_path(DATA, "path")
        file = _resolve(options.path, base_dir, where)
        with _open_npz(file, where) as archive:
            present = list(archive.files)

            def missing(key: str) -> SpecError:
                names = ", ".join(f'"{n}"' for n in present) or "none"
                name = getattr(options, key)
                return SpecError(join_path(DATA, key), f'no array "{name}" in {file}; arrays present: {names}')

            for key in ("x", "y"):
                if getattr(options, key) not in present:
                    raise missing(key)
            use_val = bool(options.x_val) and bool(options.y_val)
            has_x_val = use_val and options.x_val in present
            has_y_val = use_val and options.y_val in present
            if use_val and has_x_val != has_y_val:
                raise missing("y_val" if has_x_val else "x_val")
            if use_val and not has_x_val:
                # Names the user chose (not the defaults) must be in the file.
                for key in ("x_val", "y_val"):
                    if getattr(options, key) != key:
                        raise missing(key)

            x = _npz_features(archive, options, "x", file)
            y = _npz_labels(archive, options, "y", file)
            _same_length(x, y, options, "x", "y", file)
            if not has_x_val:
                return RawData(x=x, y=y)
            x_val = _npz_features(archive, options, "x_val", file)
            y_val = _npz_labels(archive, options, "y_val", file)
            _same_length(x_val, y_val, options, "x_val", "y_val", file)
        if x_val.shape[1:] != x.shape[1:]:
            raise SpecError(
                join_path(DATA, "x_val"),
                f'array "{options.x_val}" has rows of shape {x_val.shape[1:]} '
                f'but "{options.x}" has {x.shape[1:]} in {file}',
            )
        if options.task == "regression" and y_val.shape[1:] != y.shape[1:]:
            raise SpecError(
                join_path(DATA, "y_val"),
                f'array "{options.y_val}" has targets of shape {y_val.shape} but "{options.y}" has {y.shape} '
                f"in {file}; each example needs as many targets",
            )
        if (y.dtype.kind == "U") != (y_val.dtype.kind == "U"):
            kinds = {True: "strings", False: "numbers"}
            raise SpecError(
                join_path(DATA, "y_val"),
                f'labels in "{options.y_val}" are {kinds[y_val.dtype.kind == "U"]} but labels in "{options.y}" are '
                f"{kinds[y.dtype.kind == 'U']} in {file}; both must be of one kind",
            )
        return RawData(x=x, y=y, x_val=x_val, y_val=y_val)


def _npz_layout(file: Path, where: str, names: list[str]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The shape and dtype of each array of ``names`` in the archive, from its ``.npy``
    header alone (no array is read or decompressed); {} when the file cannot be read this
    way (``load`` then says what is wrong with it)."""
    layout = {}
    with _data_file(file, where) as handle:
        try:
            with zipfile.ZipFile(handle) as archive:
                present = set(archive.namelist())
                for name in names:
                    if f"{name}.npy" not in present:
                        continue
                    with archive.open(f"{name}.npy") as member:
                        version = np.lib.format.read_magic(member)
                        read = (
                            np.lib.format.read_array_header_1_0
                            if version == (1, 0)
                            else np.lib.format.read_array_header_2_0
                        )
                        shape, _, dtype = read(member)
                    layout[name] = (tuple(shape), np.dtype(dtype))
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            return {}
    return layout


@contextmanager
def _open_npz(file: Path, where: str):
    """The open archive, after checking that the file is a zip archive; read through
    ``_data_file`` (a regular file within the data-file limit), never unpickled."""
    with _data_file(file, where) as handle:
        magic = handle.read(6)
        if magic.startswith(b"\x93NUMPY"):
            raise SpecError(
                where,
                f"{file} holds a single array (.npy), not a .npz archive; write one with np.savez(path, x=..., y=...)",
            )
        if not magic.startswith(b"PK"):
            raise SpecError(where, f"{file} is not a .npz archive; write one with np.savez(path, x=..., y=...)")
        handle.seek(0)
        try:
            archive = np.load(handle, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise SpecError(where, f"cannot read {file} as a .npz archive: {err}") from None
        with archive:
            yield archive


def _npz_array(archive, options: NpzOptions, key: str, file: Path) -> np.ndarray:
    name = getattr(options, key)
    where = join_path(DATA, key)
    try:
        return archive[name]
    except ValueError as err:
        if "pickle" in str(err):
            raise SpecError(
                where,
                f'array "{name}" in {file} is an object array (dtype object), which cannot be read without '
                "unpickling; save numbers or strings instead, e.g. np.asarray(a, dtype=float)",
            ) from None
        raise SpecError(where, f'cannot read array "{name}" in {file}: {err}') from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise SpecError(where, f'cannot read array "{name}" in {file}: {err}') from None


def _npz_features(archive, options: NpzOptions, key: str, file: Path) -> np.ndarray:
    """Features as float64, one example per entry of the first axis, each of the stored shape."""
    a = _npz_array(archive, options, key, file)
    name, where = getattr(options, key), join_path(DATA, key)
    if a.ndim == 0:
        raise SpecError(where, f'array "{name}" in {file} must have one row per example, got a single value')
    if a.size == 0:
        raise SpecError(where, f'array "{name}" in {file} is empty (shape {a.shape})')
    if a.dtype.kind not in "biuf":
        raise SpecError(where, f'array "{name}" in {file} must be numeric, got dtype {a.dtype}')
    a = a.astype(np.float64)
    bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
    if bad.any():
        raise SpecError(
            where, f'array "{name}" in {file} contains NaN or infinite values (first in row {int(np.argmax(bad))})'
        )
    return a


def _npz_labels(archive, options: NpzOptions, key: str, file: Path) -> np.ndarray:
    """Labels as a 1-D array of numbers or str (an (n, 1) column is flattened); for
    regression, numeric targets of shape (n,) or (n, k) as stored."""
    a = _npz_array(archive, options, key, file)
    name, where = getattr(options, key), join_path(DATA, key)
    if options.task == "regression":
        if a.ndim not in (1, 2) or 0 in a.shape[1:]:
            raise SpecError(
                where, f'array "{name}" in {file} must hold targets of shape (n,) or (n, k), got shape {a.shape}'
            )
        if a.dtype.kind not in "iuf":
            raise SpecError(
                where, f'array "{name}" in {file} must hold numbers for task "regression", got dtype {a.dtype}'
            )
        bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
        if bad.any():
            raise SpecError(
                where,
                f'array "{name}" in {file} contains NaN or infinite targets (first in row {int(np.argmax(bad))})',
            )
        return a
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        hint = " (one-hot labels? save np.argmax(y, axis=1))" if a.ndim == 2 else ""
        raise SpecError(
            where, f'array "{name}" in {file} must hold one label per example (1-D), got shape {a.shape}{hint}'
        )
    if a.dtype.kind == "S":
        try:
            a = np.char.decode(a, "utf-8")
        except UnicodeDecodeError as err:
            raise SpecError(where, f'array "{name}" in {file} holds bytes that are not UTF-8 text: {err}') from None
    if a.dtype.kind not in "biufU":
        raise SpecError(where, f'array "{name}" in {file} must hold numbers or strings, got dtype {a.dtype}')
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise SpecError(
            where,
            f'array "{name}" in {file} contains NaN or infinite labels (first at {int(np.argmax(~np.isfinite(a)))})',
        )
    return a


def _same_length(x: np.ndarray, y: np.ndarray, options: NpzOptions, kx: str, ky: str, file: Path) -> None:
    if len(x) != len(y):
        raise SpecError(
            join_path(DATA, ky),
            f'array "{getattr(options, ky)}" has {len(y)} labels '
            f'but "{getattr(options, kx)}" has {len(x)} rows in {file}; '
            "they must have one label per example",
        )


# --------------------------------------------------------------------------------------
# csv
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    """One CSV file as read: its header (or None) and its data rows with their line numbers."""

    file: Path
    where: str
    header: list[str] | None
    lines: list[int]
    rows: list[list[str]]
    width: int

    def column(self, c: int) -> str:
        """How a message names column ``c`` (0-based): its number and, with a header, its name."""
        return f'column {c + 1} ("{self.header[c]}")' if self.header else f"column {c + 1}"


class CsvDataset(DatasetPlugin):
    """A delimited text file: numeric feature columns and one target column."""

    name: ClassVar[str] = "csv"
    Options: ClassVar[type] = CsvOptions

    def estimate(self, options: CsvOptions, *, base_dir: Path) -> DataSize:
        """Called when the experiment file is read, before ``load``: the memory reading the
        files takes, ``CSV_MEMORY_FACTOR`` times their size (every cell is a Python string
        until the columns are converted); the shape is known once they are read. A file
        that is no regular file, or is over the data-file limit, is refused here."""
        files = [(options.path, join_path(DATA, "path"))]
        if options.val_path:
            files.append((options.val_path, join_path(DATA, "val_path")))
        size = sum(_file_bytes(_resolve(value, base_dir, where), where) for value, where in files)
        detail = f"{CSV_MEMORY_FACTOR} times the {size:,} bytes of CSV text"
        return DataSize(CSV_MEMORY_FACTOR * size, detail=detail)

    def load(self, options: CsvOptions, *, seed: int, base_dir: Path) -> RawData:
        """Read the file (and the validation file, when ``val_path`` is set).

        Called once per experiment, in the driver, before the first trial. Only reads the
        files; ``seed`` is unused.
        """
        table = _read_csv(_resolve(options.path, base_dir, join_path(DATA, "path")), options, join_path(DATA, "path"))
        target = _target_index(table, options)
        x, labels = _split_columns(table, target)
        regression = options.task == "regression"
        if not options.val_path:
            return RawData(x=x, y=_targets(table, target, labels) if regression else _labels(labels))
        where = join_path(DATA, "val_path")
        val = _read_csv(_resolve(options.val_path, base_dir, where), options, where)
        if table.header is not None and val.header != table.header:
            raise SpecError(
                where,
                f"{val.file} has columns {', '.join(val.header or [])} but {table.file} has "
                f"{', '.join(table.header)}; the validation file needs the same header",
            )
        if val.width != table.width:
            raise SpecError(where, f"{val.file} has {val.width} columns but {table.file} has {table.width}")
        x_val, val_labels = _split_columns(val, target)
        if regression:
            return RawData(x=x, y=_targets(table, target, labels), x_val=x_val, y_val=_targets(val, target, val_labels))
        y_all = _labels(labels + val_labels)
        return RawData(x=x, y=y_all[: len(labels)], x_val=x_val, y_val=y_all[len(labels) :])


def _read_csv(file: Path, options: CsvOptions, where: str) -> _Table:
    """Every non-blank row of ``file``, with fields stripped; checks that all rows are equally long."""
    header: list[str] | None = None
    header_line = 0
    lines: list[int] = []
    rows: list[list[str]] = []
    reader = None
    try:
        with _data_file(file, where) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter=options.delimiter, skipinitialspace=True, strict=True)
            for row in reader:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # a blank line
                cells = [cell.strip() for cell in row]
                if options.header and header is None:
                    header, header_line = cells, line
                    continue
                lines.append(line)
                rows.append(cells)
    except UnicodeDecodeError as err:
        raise SpecError(where, f"{file} is not UTF-8 text: {err}") from None
    except csv.Error as err:
        raise SpecError(where, f"{file}, line {reader.line_num if reader else 1}: {err} (unbalanced quotes?)") from None
    if header is None and not rows:
        raise SpecError(where, f"{file} is empty")
    if not rows:
        raise SpecError(where, f"{file} has a header (line {header_line}) but no data rows")
    if header is not None:
        width, ref = len(header), f"the header, line {header_line}"
    else:
        width, ref = len(rows[0]), f"line {lines[0]}"
    for n, cells in zip(lines, rows):
        if len(cells) != width:
            raise SpecError(where, f"{file}, line {n}: expected {width} columns (as in {ref}), found {len(cells)}")
    if width < 2:
        raise SpecError(where, f"{file} has a single column; it needs at least one feature column besides the target")
    return _Table(file=file, where=where, header=header, lines=lines, rows=rows, width=width)


def _target_index(table: _Table, options: CsvOptions) -> int:
    """The 0-based index of the label column."""
    if not options.target:
        return table.width - 1
    assert table.header is not None  # CsvOptions.check requires a header for a named target
    found = [c for c, name in enumerate(table.header) if name == options.target]
    if not found:
        columns = ", ".join(f'"{name}"' for name in table.header)
        raise SpecError(join_path(DATA, "target"), f'no column "{options.target}" in {table.file}; columns: {columns}')
    if len(found) > 1:
        raise SpecError(
            join_path(DATA, "target"),
            f'column "{options.target}" appears {len(found)} times in the header of {table.file}',
        )
    return found[0]


def _split_columns(table: _Table, target: int) -> tuple[np.ndarray, list[str]]:
    """Features (float64, one row per data row) and the raw label strings."""
    features = [c for c in range(table.width) if c != target]
    labels = []
    for n, cells in zip(table.lines, table.rows):
        if not cells[target]:
            raise SpecError(table.where, f"{table.file}, line {n}, {table.column(target)}: the label is empty")
        labels.append(cells[target])
    try:
        x = np.array([[cells[c] for c in features] for cells in table.rows], dtype=np.float64)
        if np.isfinite(x).all():
            return x, labels
    except ValueError:
        pass
    # NumPy refused a cell (or found NaN or inf): read cell by cell, naming the first bad one.
    x = np.empty((len(table.rows), len(features)), dtype=np.float64)
    for i, (n, cells) in enumerate(zip(table.lines, table.rows)):
        for j, c in enumerate(features):
            try:
                value = float(cells[c])
            except ValueError:
                shown = f'"{cells[c]}"' if cells[c] else "an empty field"
                raise SpecError(
                    table.where,
                    f"{table.file}, line {n}, {table.column(c)}: {shown} is not a number; "
                    "every column except the target must be numeric",
                ) from None
            if not math.isfinite(value):
                raise SpecError(
                    table.where, f'{table.file}, line {n}, {table.column(c)}: "{cells[c]}" is not a finite number'
                )
            x[i, j] = value
    return x, labels


def _targets(table: _Table, target: int, values: list[str]) -> np.ndarray:
    """Regression targets as float64, one per data row; a SpecError naming the line and
    column of the first that is not a finite number."""
    y = np.empty(len(values), dtype=np.float64)
    for i, (n, cell) in enumerate(zip(table.lines, values)):
        try:
            y[i] = float(cell)
        except ValueError:
            raise SpecError(
                table.where,
                f'{table.file}, line {n}, {table.column(target)}: "{cell}" is not a number; '
                'task "regression" needs numeric targets',
            ) from None
        if not math.isfinite(y[i]):
            raise SpecError(
                table.where, f'{table.file}, line {n}, {table.column(target)}: "{cell}" is not a finite number'
            )
    return y


def _labels(values: list[str]) -> np.ndarray:
    """Labels as int64 when every one is a whole number, else float64 when all are numbers, else str."""
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        return np.array(values, dtype=str)
    if not all(math.isfinite(v) for v in numbers):
        return np.array(values, dtype=str)
    if all(v.is_integer() and abs(v) < 2**53 for v in numbers):
        return np.array(numbers, dtype=np.int64)
    return np.array(numbers, dtype=np.float64)


@hookimpl
def runner_register(registry) -> None:
    """Add the "npz" and "csv" datasets; called once per run when the plugin manager is built."""
    registry.add_dataset(NpzDataset())
    registry.add_dataset(CsvDataset())
