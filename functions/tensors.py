"""Tensors as ``.npy`` bytes: how a request batch travels through Redis to a worker; and the
one strict reader of client JSON bodies.

``.npy`` keeps shape and dtype exactly and, loaded with ``allow_pickle=False``, never runs
client-supplied pickle data (object arrays are refused instead of unpickled).
"""

from __future__ import annotations

import functools
import io
from typing import Any

import numpy as np
import orjson

from functions.errors import BadInput

NPY_MAGIC = b"\x93NUMPY"
JSON_MAX_DEPTH = 1024  # orjson's own limit: deeper bodies are refused before any recursion
JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def parse_json(body: bytes, what: str = "body") -> Any:
    """A client's JSON document, read strictly by orjson: no NaN/Infinity, no number beyond
    float64 (``1e999``, a 400-digit integer), no nesting deeper than ``JSON_MAX_DEPTH``, valid
    UTF-8 only. Anything else is BadInput naming the problem (never a RecursionError or a
    ValueError from Python's own reader, which answered 500)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        detail = str(exc)
        if "depth limit" in detail:
            problem = f"is nested deeper than {JSON_MAX_DEPTH} levels"
        elif "infinity" in detail:
            problem = "holds a number out of range (beyond float64, e.g. 1e999 or 10**400)"
        elif not body:
            problem = "is empty"
        else:
            problem = "is not valid JSON"
        raise BadInput(f"{what} {problem} ({detail})") from exc


def json_type(value: Any) -> str:
    """``value``'s JSON type, for error messages ("an object", "a number", "null", ...)."""
    if value is None:
        return "null"
    return JSON_TYPES.get(type(value), "a number")


def npy_parts(a: np.ndarray) -> tuple[bytes, memoryview]:
    """``a`` (a plain numeric array) as ``.npy`` in two pieces, the format's header and the
    array's own memory, uncopied: written with one ``os.pwritev`` they make the file without
    the two copies of ``header + a.tobytes()`` (~0.45 ms for a 588 KiB tensor here, most of it
    page faults on freshly allocated buffers)."""
    a = np.ascontiguousarray(a)
    if a.dtype.hasobject:
        raise ValueError("object arrays cannot be sent as .npy without pickle")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(a))
    return header.getvalue(), memoryview(a.reshape(-1)).cast("B")


def to_npy(a: np.ndarray) -> bytes:
    """Serialise ``a`` (a plain numeric array) as ``.npy`` bytes: the format's header, then
    the array's memory as is (``np.save`` into a buffer costs ~40x a copy on large inputs)."""
    header, data = npy_parts(a)
    return header + data


@functools.lru_cache(maxsize=256)
def _npy_header(head: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) of a ``.npy`` header, by numpy's own reader."""
    fh = io.BytesIO(head)
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        found = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        found = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if fh.tell() != len(head):
        raise ValueError("the header's length field does not match the header")
    return found


def from_npy(b: bytes | memoryview, copy: bool = False) -> np.ndarray:
    """Parse ``.npy`` bytes; anything else (garbage, object/pickle arrays, ``.npz``) is BadInput.

    The header is parsed by numpy's own reader; the array is a read-only view of the buffer
    (``np.frombuffer``: no copy; reading it through ``np.load`` goes chunk by chunk, ~50x
    slower on large inputs), or a writable copy with ``copy``. A view lives as long as
    whoever owns the buffer keeps it unchanged: the interpreter copies its input anyway."""
    if bytes(b[: len(NPY_MAGIC)]) != NPY_MAGIC:
        raise BadInput("body is not a .npy array (it does not start with the \\x93NUMPY magic)")
    # the header alone, so that neither BytesIO copies the data nor numpy's literal_eval runs
    # again for the shape a function gets on every call (45 us each)
    size_field = 4 if b[6:7] in (b"\x02", b"\x03") else 2
    start = len(NPY_MAGIC) + 2 + size_field
    head = bytes(b[: start + int.from_bytes(bytes(b[8 : 8 + size_field]), "little")])
    try:
        shape, fortran, dtype = _npy_header(head)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise BadInput(f"body is not a valid .npy array ({exc})") from exc
    if dtype.hasobject:
        raise BadInput(".npy body holds pickled Python objects, which are refused")
    count = int(np.prod(shape, dtype=np.int64))
    offset = len(head)
    if len(b) - offset != count * dtype.itemsize:
        raise BadInput(
            f"body is not a valid .npy array (its header promises {count * dtype.itemsize} "
            f"bytes of data, the body holds {len(b) - offset})"
        )
    a = np.frombuffer(b, dtype=dtype, count=count, offset=offset)
    a = a.reshape(shape[::-1]).transpose() if fortran else a.reshape(shape)
    return a.copy() if copy else a
