"""Tensors as ``.npy`` bytes: how a request batch travels through Redis to a worker.

``.npy`` keeps shape and dtype exactly and, loaded with ``allow_pickle=False``, never runs
client-supplied pickle data (object arrays are refused instead of unpickled).
"""

from __future__ import annotations

import io

import numpy as np

from functions.errors import BadInput

NPY_MAGIC = b"\x93NUMPY"


def to_npy(a: np.ndarray) -> bytes:
    """Serialise ``a`` (a plain numeric array) as ``.npy`` bytes."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def from_npy(b: bytes) -> np.ndarray:
    """Parse ``.npy`` bytes; anything else (garbage, object/pickle arrays, ``.npz``) is BadInput."""
    if not b.startswith(NPY_MAGIC):
        raise BadInput("body is not a .npy array (it does not start with the \\x93NUMPY magic)")
    try:
        a = np.lib.format.read_array(io.BytesIO(b), allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise BadInput(".npy body holds pickled Python objects, which are refused") from exc
        raise BadInput(f"body is not a valid .npy array ({exc})") from exc
    except (OSError, EOFError, SyntaxError) as exc:
        raise BadInput(f"body is not a valid .npy array ({exc})") from exc
    return a
