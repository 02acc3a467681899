"""The catalog: what a model directory holds (``catalog.json`` next to the ``.tflite`` files).

Each record says which file a model is, how it was built (so the builder can skip what is
already there) and what its tensors look like (so the agent can serve it without opening it).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

CATALOG_NAME = "catalog.json"
CATALOG_VERSION = 1

# Fields every record carries; ``models.build`` fills them, tests check them.
RECORD_FIELDS = (
    "name",
    "file",
    "architecture",
    "task",
    "variant",
    "seed",
    "weights",
    "dtype",
    "preprocess",
    "input_shape",
    "input_dtype",
    "output_shape",
    "output_dtype",
    "input_quantization",
    "output_quantization",
    "file_bytes",
    "sha256",
    "delegation",
)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_catalog(directory: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Records of ``directory/catalog.json`` by model name; empty when there is no catalog."""
    path = Path(directory) / CATALOG_NAME
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    return {rec["name"]: rec for rec in doc.get("models", [])}


def write_catalog(directory: str | os.PathLike, records: dict[str, dict[str, Any]]) -> Path:
    """Write the catalog atomically (a reader never sees half a file)."""
    directory = Path(directory)
    doc = {"version": CATALOG_VERSION, "models": [records[k] for k in sorted(records)]}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".catalog.", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    target = directory / CATALOG_NAME
    os.replace(tmp, target)
    return target
