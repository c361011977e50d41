"""The bytes of a snapshot file: safetensors, with runner's metadata and a checksum inside.

A snapshot file is a standard `safetensors <https://github.com/huggingface/safetensors>`_
file, which any safetensors reader opens (``safetensors.numpy.load_file``,
``safetensors.torch.load_file``) and no reader unpickles:

- 8 bytes: the header's length N, a little-endian unsigned 64-bit integer;
- N bytes: the header, JSON padded with spaces to a multiple of 8 bytes. One entry per
  array, ``{"dtype": "F32", "shape": [64, 10], "data_offsets": [begin, end]}``, and
  ``"__metadata__"``, whose string values are ``format`` (``"runner.snapshot"``),
  ``version`` (``"1"``), ``runner`` (the snapshot's metadata as one JSON document: trial,
  epoch, step, reason, hyperparameters, metrics, the loop's state, the backend's own meta)
  and ``checksum``;
- the arrays' bytes, little-endian, C order, one after another, largest items first (so
  every array is aligned in the file).

``checksum`` is the SHA-256 of each array's name, dtype and shape, the metadata document and
the CRC-32 of all the arrays' bytes: with the header's own structure checked as it is read,
it covers every byte of the file. It is written and read here, by hand rather than with the
safetensors package: ``safetensors.numpy.save`` builds the whole file in memory first, which
made a durable write of an 8 MB state cost 2.3 times a raw write (the aim is 1.5); these
functions write each array from its own memory and read every array as a view into the one
buffer the file was read into. tests/test_snapshot_format.py checks both ways against the
safetensors package.

Snapshots written by runner 0.2 and earlier are ``.npz`` files (``decode_npz``); they
still load, so older runs resume.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

FORMAT, VERSION = "runner.snapshot", "1"
METADATA = "__metadata__"
LEGACY_META_KEY = "__meta__"  # the metadata array of a ``.npz`` snapshot
MAX_HEADER = 100_000_000  # bytes of header at most, as safetensors' own readers bound it

#: safetensors dtype codes of the NumPy dtypes a snapshot may hold (stored little-endian).
DTYPES: dict[str, np.dtype] = {
    code: np.dtype(name)
    for code, name in {
        "BOOL": "bool",
        "U8": "u1",
        "I8": "i1",
        "U16": "<u2",
        "I16": "<i2",
        "F16": "<f2",
        "U32": "<u4",
        "I32": "<i4",
        "F32": "<f4",
        "U64": "<u8",
        "I64": "<i8",
        "F64": "<f8",
    }.items()
}
_CODES = {dtype: code for code, dtype in DTYPES.items()}


class CorruptSnapshot(Exception):
    """A snapshot file is truncated, damaged or not a snapshot."""


class UnstorableArray(ValueError):
    """A backend's state holds an array a snapshot cannot store (complex numbers, text,
    Python objects), or uses the name reserved for the metadata."""


@dataclass(frozen=True)
class Encoded:
    """A snapshot ready to write: ``head(crc)`` (the length and header, whose size does not
    depend on ``crc``), then ``arrays`` in order. ``crc`` is ``crc32(arrays)``."""

    arrays: list[np.ndarray]
    nbytes: int
    _entries: bytes  # the header's array entries, as JSON
    _text: str  # the metadata document, as JSON

    def head(self, crc: int) -> bytes:
        digest = checksum(self._entries, self._text, crc)
        metadata = orjson.dumps({"format": FORMAT, "version": VERSION, "runner": self._text, "checksum": digest})
        separator = b',"' if self._entries != b"{}" else b'"'
        body = self._entries[:-1] + separator + METADATA.encode() + b'":' + metadata + b"}"
        return struct.pack("<Q", len(body) + (-len(body) % 8)) + body + b" " * (-len(body) % 8)


def encode(arrays: dict[str, np.ndarray], document: dict[str, Any]) -> Encoded:
    """``arrays`` and the metadata ``document`` laid out as a snapshot file, the arrays as
    they are (no copy, unless one is not C-contiguous little-endian already). UnstorableArray
    names an array of a dtype safetensors has no code for."""
    ordered = sorted(((name, _storable(name, a)) for name, a in arrays.items()), key=lambda item: -item[1].itemsize)
    entries, offset = {}, 0
    for name, a in ordered:
        entries[name] = {"dtype": _CODES[a.dtype], "shape": a.shape, "data_offsets": (offset, offset + a.nbytes)}
        offset += a.nbytes
    return Encoded([a for _, a in ordered], offset, orjson.dumps(entries), orjson.dumps(document).decode())


def crc32(arrays: list[np.ndarray]) -> int:
    """The CRC-32 of the arrays' bytes, one after another (zlib lets other threads run)."""
    crc = 0
    for a in arrays:
        if a.nbytes:
            crc = zlib.crc32(a, crc)
    return crc


def decode(buffer: bytearray | bytes, where: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays (views into ``buffer``) and metadata document of a snapshot file's bytes;
    CorruptSnapshot, naming ``where``, unless every byte checks out."""
    if len(buffer) < 8:
        raise CorruptSnapshot(f"{where}: truncated ({len(buffer)} bytes)")
    (length,) = struct.unpack_from("<Q", buffer)
    if length > min(MAX_HEADER, len(buffer) - 8):
        raise CorruptSnapshot(f"{where}: truncated or not a safetensors file (a header of {length:,} bytes)")
    try:
        header = orjson.loads(memoryview(buffer)[8 : 8 + length])
        metadata = header.pop(METADATA, None)
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
            raise CorruptSnapshot(f"{where}: a safetensors file, but not one of runner's snapshots")
        text, stored = metadata["runner"], metadata["checksum"]
        if metadata.get("version") != VERSION:
            raise CorruptSnapshot(
                f"{where}: snapshot format version {metadata.get('version')!r}; this runner reads {VERSION!r}"
            )
        document = orjson.loads(text)
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise CorruptSnapshot(f"{where}: its header is damaged") from None
    data = memoryview(buffer)[8 + length :]
    entries = _entries(header, len(data), where)
    if checksum(orjson.dumps(header), text, zlib.crc32(data)) != stored or not isinstance(document, dict):
        raise CorruptSnapshot(f"{where}: checksum mismatch, the file is damaged")
    arrays = {
        name: np.frombuffer(data, dtype, count=math.prod(shape), offset=begin).reshape(shape)
        for name, dtype, shape, (begin, _) in entries
    }
    return arrays, document


def checksum(entries: bytes, text: str, crc: int) -> str:
    """SHA-256 over the header's array entries (as JSON), the metadata's JSON text and the
    arrays' CRC-32."""
    digest = hashlib.sha256(entries)
    digest.update(text.encode())
    digest.update(crc.to_bytes(4, "little"))
    return digest.hexdigest()


def _storable(name: str, a: np.ndarray) -> np.ndarray:
    """``a`` as safetensors stores it: C-contiguous and little-endian."""
    if name == METADATA:
        raise UnstorableArray(
            f"a backend's state cannot have an array named {METADATA!r} (safetensors keeps it for metadata)"
        )
    a = np.asarray(a)
    if a.dtype not in _CODES:
        if a.dtype.byteorder != ">" or a.dtype.newbyteorder("<") not in _CODES:
            raise UnstorableArray(
                f"array {name!r}: a snapshot cannot store dtype {a.dtype} (numbers and booleans only)"
            )
        a = a.astype(a.dtype.newbyteorder("<"))
    return a if a.flags.c_contiguous else a.copy(order="C")  # (np.ascontiguousarray makes a 0-d array 1-d)


def _entries(header: dict, size: int, where: str) -> list[tuple[str, np.dtype, tuple[int, ...], tuple[int, int]]]:
    """The header's arrays, checked: known dtypes, shapes that fit their byte ranges, and
    ranges that tile the data section exactly, in file order."""
    entries = []
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = DTYPES[entry["dtype"]], tuple(entry["shape"]), entry["data_offsets"]
            valid = all(type(n) is int and n >= 0 for n in (*shape, begin, end))  # (not True, not 2.0)
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid or end - begin != dtype.itemsize * math.prod(shape):  # (Python ints: no overflow)
            raise CorruptSnapshot(f"{where}: its header is damaged (array {name!r})")
        entries.append((name, dtype, shape, (begin, end)))
    entries.sort(key=lambda entry: entry[3])
    position = 0
    for _, _, _, (begin, end) in entries:
        if begin != position:
            raise CorruptSnapshot(f"{where}: its header is damaged (arrays overlap or leave gaps)")
        position = end
    if position != size:
        raise CorruptSnapshot(
            f"{where}: truncated or damaged ({size:,} bytes of arrays where the header says {position:,})"
        )
    return entries


def decode_npz(buffer: bytearray | bytes, where: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and metadata document of a snapshot written by runner 0.2 or earlier: an
    ``.npz`` file whose ``__meta__`` member holds the document with a SHA-256 of the
    arrays' layout and the metadata (zip's own CRC-32 covers each member's bytes). Read
    with ``allow_pickle=False``."""
    try:
        with np.load(io.BytesIO(buffer), allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception as err:  # zipfile, OSError, ValueError: all mean the file is unusable
        raise CorruptSnapshot(f"{where}: cannot be read ({type(err).__name__}: {err})") from None
    raw = arrays.pop(LEGACY_META_KEY, None)
    if raw is None:
        raise CorruptSnapshot(f"{where}: has no metadata")
    try:
        document = orjson.loads(raw.tobytes())
        stored = document.pop("checksum")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise CorruptSnapshot(f"{where}: its metadata is damaged") from None
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(f"{name}:{arrays[name].dtype.str}:{arrays[name].shape};".encode())
    digest.update(orjson.dumps(document, option=orjson.OPT_SORT_KEYS))
    if digest.hexdigest() != stored:
        raise CorruptSnapshot(f"{where}: checksum mismatch, the file is damaged")
    return arrays, document
