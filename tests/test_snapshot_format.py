"""Snapshot files are standard safetensors files whose every byte is checked on reading,
written and read without pickle; runs made with the older ``.npz`` snapshots still load."""

from __future__ import annotations

import pickle
import re
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import orjson
import pytest

from runner.backend import BackendState
from runner.engine.snapshot_files import (
    PARALLEL_CRC_BYTES,
    CorruptSnapshot,
    read_snapshot,
    snapshot_files,
    write_snapshot,
)
from runner.engine.snapshot_format import UnstorableArray, checksum

safetensors_numpy = pytest.importorskip("safetensors.numpy")

META = {"trial": 3, "epoch": 2, "step": 40, "reason": "epoch", "best": True, "metrics": {"val_acc": 0.5}, "loop": {}}


def every_kind() -> dict[str, np.ndarray]:
    """Arrays of every dtype a snapshot stores, and the awkward shapes and layouts."""
    rng = np.random.default_rng(0)
    return {
        "param/W1": rng.standard_normal((5, 7)),
        "param/b1": rng.standard_normal(7).astype(np.float32),
        "half": rng.standard_normal(3).astype(np.float16),
        "perm": rng.permutation(11),
        "int32": np.arange(-3, 3, dtype=np.int32),
        "int16": np.arange(4, dtype=np.int16),
        "int8": np.arange(-2, 2, dtype=np.int8),
        "bits/bf16": np.arange(6, dtype=np.uint16),
        "uint8": np.arange(9, dtype=np.uint8),
        "uint32": np.arange(2, dtype=np.uint32),
        "uint64": np.array([2**64 - 1], dtype=np.uint64),
        "mask": np.array([True, False, True]),
        "step": np.array(17, dtype=np.int64),  # 0-d
        "empty": np.zeros((0, 4)),
        "transposed": np.arange(12.0).reshape(3, 4).T,  # not C-contiguous
        "big_endian": np.arange(5, dtype=">f8"),
    }


def test_a_snapshot_round_trips_every_dtype_exactly_and_any_safetensors_reader_opens_it(tmp_path):
    arrays = every_kind()
    path = tmp_path / "s.safetensors"
    write_snapshot(path, BackendState(arrays, {"rng": {"state": "123456789012345678901234567890"}}), META)
    state, meta = read_snapshot(path)
    assert meta == META and state.meta == {"rng": {"state": "123456789012345678901234567890"}}
    assert sorted(state.arrays) == sorted(arrays)
    for name, a in arrays.items():
        got = state.arrays[name]
        assert got.shape == a.shape and got.dtype == a.dtype.newbyteorder("<") and np.array_equal(got, a), name
        assert got.flags.writeable, f"{name}: a backend may keep and train on what it loaded"
    by_library = safetensors_numpy.load_file(str(path))
    assert sorted(by_library) == sorted(arrays)
    for name, a in arrays.items():
        assert np.array_equal(by_library[name], a) and by_library[name].shape == a.shape, name
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        metadata = f.metadata()
    assert metadata["format"] == "runner.snapshot" and metadata["version"] == "1"
    assert orjson.loads(metadata["runner"])["epoch"] == 2


def test_arrays_are_laid_out_aligned_to_their_item_size(tmp_path):
    path = tmp_path / "s.safetensors"
    write_snapshot(path, BackendState(every_kind(), {}), META)
    data = path.read_bytes()
    (length,) = struct.unpack_from("<Q", data)
    assert (8 + length) % 8 == 0
    header = orjson.loads(data[8 : 8 + length])
    sizes = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "I16": 2, "U16": 2}
    for name, entry in header.items():
        if name != "__metadata__":
            assert entry["data_offsets"][0] % sizes.get(entry["dtype"], 1) == 0, name


@pytest.mark.parametrize("size", ["small", "large"])
def test_every_flipped_byte_and_every_truncation_is_refused(tmp_path, size):
    """Small: every byte of the file, flipped in turn. Large (over the size whose CRC-32 is
    computed alongside the write, then the header written again): the header's bytes, and
    the first, middle and last bytes of the arrays."""
    arrays = {"w": np.linspace(0, 1, 6), "n": np.arange(3, dtype=np.int32), "flag": np.array(True)}
    if size == "large":
        arrays["big"] = np.random.default_rng(1).standard_normal(PARALLEL_CRC_BYTES // 8 + 5)
    path = tmp_path / "s.safetensors"
    write_snapshot(path, BackendState(arrays, {}), META)
    good = path.read_bytes()
    (length,) = struct.unpack_from("<Q", good)
    if size == "small":
        positions = range(len(good))
    else:
        data = 8 + length
        positions = [*range(data), data, data + (len(good) - data) // 2, len(good) - 1]
    for position in positions:
        damaged = bytearray(good)
        damaged[position] ^= 0xFF
        path.write_bytes(bytes(damaged))
        with pytest.raises(CorruptSnapshot):
            read_snapshot(path)
    for cut in (0, 7, 8, 8 + length // 2, 8 + length, len(good) - 1):
        path.write_bytes(good[:cut])
        with pytest.raises(CorruptSnapshot):
            read_snapshot(path)
    path.write_bytes(good + bytes(8))  # bytes past the arrays' end: not a safetensors file
    with pytest.raises(CorruptSnapshot, match="bytes of arrays where the header says"):
        read_snapshot(path)
    path.write_bytes(good)
    assert np.array_equal(read_snapshot(path)[0].arrays["w"], arrays["w"])


@pytest.mark.parametrize(
    "shape", [[2**62, 4], [True, 8], [2**64 - 1, 0], [-1, 3], [2.0, 4], "ab"], ids=lambda s: repr(s)
)
def test_a_header_with_a_shape_no_array_has_is_damaged_not_a_crash(tmp_path, shape):
    """The header is rewritten with a bad shape and a checksum that matches it: what is
    wrong must still be said as a damaged file (scans skip those), never another error."""
    path = tmp_path / "s.safetensors"
    write_snapshot(path, BackendState({"w": np.arange(8.0)}, {}), META)
    data = path.read_bytes()
    (length,) = struct.unpack_from("<Q", data)
    header = orjson.loads(data[8 : 8 + length])
    header["w"]["shape"] = shape
    metadata = header.pop("__metadata__")
    arrays = data[8 + length :]
    metadata["checksum"] = checksum(orjson.dumps(header), metadata["runner"], zlib.crc32(arrays))
    body = orjson.dumps({**header, "__metadata__": metadata})
    body += b" " * (-len(body) % 8)
    path.write_bytes(struct.pack("<Q", len(body)) + body + arrays)
    with pytest.raises(CorruptSnapshot, match=r"its header is damaged \(array 'w'\)"):
        read_snapshot(path)


def test_a_safetensors_file_that_is_not_a_runner_snapshot_is_refused_by_name(tmp_path):
    path = tmp_path / "weights.safetensors"
    safetensors_numpy.save_file({"w": np.ones(3)}, str(path), metadata={"author": "someone"})
    with pytest.raises(CorruptSnapshot, match="not one of runner's snapshots"):
        read_snapshot(path)


def test_pickle_is_never_used_to_write_or_read(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle was used")

    for name in ("dump", "dumps", "load", "loads"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(pickle, "Pickler", forbidden)
    path = tmp_path / "s.safetensors"
    write_snapshot(path, BackendState(every_kind(), {}), META)
    read_snapshot(path)
    legacy = tmp_path / "e00001-s000000001-n000001.npz"
    write_legacy_npz(legacy, BackendState({"w": np.ones(2)}, {}), META)
    read_snapshot(legacy)


@pytest.mark.parametrize(
    "name, array, says",
    [
        ("z", np.ones(2, dtype=np.complex128), "array 'z': a snapshot cannot store dtype complex128"),
        ("o", np.array([object()], dtype=object), "array 'o': a snapshot cannot store dtype object"),
        ("s", np.array(["text"]), "array 's': a snapshot cannot store dtype <U4"),
        ("__metadata__", np.ones(1), "cannot have an array named '__metadata__'"),
    ],
)
def test_an_array_a_snapshot_cannot_hold_is_refused_by_name_and_nothing_is_left(tmp_path, name, array, says):
    with pytest.raises(UnstorableArray, match=says.replace("(", r"\(")):
        write_snapshot(tmp_path / "s.safetensors", BackendState({"fine": np.ones(2), name: array}, {}), META)
    assert list(tmp_path.iterdir()) == []


def write_legacy_npz(path: Path, state: BackendState, meta: dict) -> None:
    """A snapshot as runner 0.2 wrote it: an .npz with a ``__meta__`` member holding the
    metadata and a SHA-256 of the layout and metadata."""
    import hashlib

    document = {**meta, "backend": state.meta}
    digest = hashlib.sha256()
    for name in sorted(state.arrays):
        a = state.arrays[name]
        digest.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
    digest.update(orjson.dumps(document, option=orjson.OPT_SORT_KEYS))
    meta_bytes = orjson.dumps({**document, "checksum": digest.hexdigest()})
    np.savez(path, **state.arrays, __meta__=np.frombuffer(meta_bytes, dtype=np.uint8))


def test_a_legacy_npz_snapshot_loads_and_a_damaged_one_is_refused(tmp_path):
    arrays = {"param/W1": np.arange(6.0).reshape(2, 3), "perm": np.arange(4)}
    path = tmp_path / "e00001-s000000004-n000007.npz"
    write_legacy_npz(path, BackendState(arrays, {"k": 1}), META)
    assert snapshot_files(tmp_path) == [path]
    state, meta = read_snapshot(path)
    assert meta == META and state.meta == {"k": 1}
    assert all(np.array_equal(state.arrays[k], v) for k, v in arrays.items())
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    members["__meta__.npy"] = members["__meta__.npy"].replace(b'"epoch":2', b'"epoch":9')
    with zipfile.ZipFile(path, "w") as z:
        for member, data in members.items():
            z.writestr(member, data)
    with pytest.raises(CorruptSnapshot, match="checksum mismatch"):
        read_snapshot(path)


OLD_RUN = Path(__file__).parent / "fixtures" / "runner-0.2-run"


def test_a_run_interrupted_under_runner_0_2_resumes_from_its_npz_snapshots_bit_for_bit(tmp_path):
    """tests/fixtures/runner-0.2-run was made by runner 0.2.0 (commit ab7381c): a random
    search of 3 trials, 6 epochs each, interrupted with Ctrl-C in trial 1's 5th epoch, whose
    snapshots are ``.npz`` files. Resumed now, it ends exactly as the same experiment run
    from the start by this version does."""
    run_dir = tmp_path / "old"
    shutil.copytree(OLD_RUN, run_dir)
    resumed = runner("resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    events = [orjson.loads(line) for line in (run_dir / "events.jsonl").read_bytes().splitlines()]
    [resume] = [e for e in events if e["event"] == "resume"]
    assert resume["trials"] == {"1": str(run_dir / "trials" / "t001" / "e00004-s000000013-n000010.npz")}
    new_files = [Path(e["path"]).suffix for e in events[events.index(resume) :] if e["event"] == "checkpoint"]
    assert new_files and set(new_files) == {".safetensors"}

    fresh = runner("start", run_dir / "experiment.json", "--out", tmp_path / "fresh", "--plain")
    assert fresh.returncode == 0, fresh.stderr
    [fresh_dir] = (tmp_path / "fresh").iterdir()

    def outcome(folder: Path) -> list[tuple]:
        trials = orjson.loads((folder / "results.json").read_bytes())["trials"]
        timeless = ({k: v for k, v in t["final"].items() if k != "seconds"} for t in trials)
        return [(t["trial"], t["state"], t["params"], t["epochs"], t["score"], f) for t, f in zip(trials, timeless)]

    assert outcome(run_dir) == outcome(fresh_dir) and len(outcome(run_dir)) == 3
    replayed = runner("replay", run_dir, "--trial", 1, "--out", tmp_path / "replays")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "t001: identical to the original, bit for bit" in replayed.stdout
    assert re.search(r"[1-9]\d* snapshot files", replayed.stdout), "the .npz files were compared with the new ones"


def runner(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runner", *map(str, args)], capture_output=True, text=True, timeout=300
    )
