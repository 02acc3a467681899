"""Build one valid request body per function from the agent's ``/system/functions`` answer alone.

Image functions (handler mentions "image") get a JPEG of the model's input height and width;
tensor functions get ``{"inputs": nested list}`` of the input shape and dtype. The payload is
deterministic (seeded per function name) so runs are repeatable.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence

import numpy as np


def function_list(answer: object) -> list[dict]:
    """The list of function records in a ``/system/functions`` answer (list or {"functions": …})."""
    if isinstance(answer, Mapping):
        answer = answer.get("functions", answer)
        if isinstance(answer, Mapping):  # {name: record}
            answer = [{"name": k, **v} for k, v in answer.items()]
    if not isinstance(answer, list):
        raise ValueError(f"/system/functions answered {type(answer).__name__}, expected a list")
    return [dict(rec) for rec in answer]


def _shape(rec: Mapping) -> list[int]:
    shape = rec.get("input_shape") or rec.get("shape") or (rec.get("input") or {}).get("shape")
    if not shape:
        raise ValueError(f"function {rec.get('name')!r} lists no input shape")
    return [int(d) if d and int(d) > 0 else 1 for d in shape]


def _dtype(rec: Mapping) -> str:
    return str(rec.get("dtype") or rec.get("input_dtype") or "float32")


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))


def image_payload(name: str, shape: Sequence[int]) -> tuple[bytes, str]:
    """A JPEG with the model's height, width and channels (batch dimension dropped)."""
    from PIL import Image

    dims = list(shape[1:] if len(shape) == 4 else shape)
    height, width = dims[0], dims[1]
    channels = dims[2] if len(dims) > 2 else 1
    pixels = _rng(name).integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    image = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels[:, :, :3])
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    return buf.getvalue(), "image/jpeg"


def tensor_payload(name: str, shape: Sequence[int], dtype: str) -> tuple[bytes, str]:
    """``{"inputs": nested list}`` of ``shape`` with values valid for ``dtype``."""
    rng = _rng(name)
    if "int" in dtype:
        info = np.iinfo(np.dtype(dtype))
        data = rng.integers(max(info.min, -128), min(info.max, 127) + 1, size=shape).tolist()
    else:
        data = rng.random(size=shape, dtype=np.float32).round(4).tolist()
    return json.dumps({"inputs": data}).encode(), "application/json"


def build_payloads(answer: object) -> dict[str, tuple[bytes, str]]:
    """``{function name: (body, content type)}`` for every function the agent lists."""
    payloads = {}
    for rec in function_list(answer):
        name = rec["name"]
        shape = _shape(rec)
        if "image" in str(rec.get("handler", "")).lower():
            payloads[name] = image_payload(name, shape)
        else:
            payloads[name] = tensor_payload(name, shape, _dtype(rec))
    return payloads
