"""One place that gives the rest of brulee a TFLite interpreter, whichever package provides it.

``tflite-runtime`` (last release 2.14, Python <= 3.11, NumPy 1) is the package the product card
names; ``ai-edge-litert`` is its maintained successor for newer Pythons. Both expose the same
``Interpreter`` class. ``BRULEE_RUNTIME=tflite-runtime|ai-edge-litert`` forces one of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

import numpy as np

# (distribution name, module holding Interpreter), in order of preference.
_CANDIDATES = (
    ("tflite-runtime", "tflite_runtime.interpreter"),
    ("ai-edge-litert", "ai_edge_litert.interpreter"),
)


class RuntimeNotFound(ImportError):
    """Neither interpreter package is installed."""


def _select() -> tuple[str, Any]:
    forced = os.environ.get("BRULEE_RUNTIME", "").strip()
    candidates = [c for c in _CANDIDATES if not forced or c[0] == forced]
    if forced and not candidates:
        names = ", ".join(c[0] for c in _CANDIDATES)
        raise RuntimeNotFound(f"BRULEE_RUNTIME={forced!r} is not one of: {names}")
    errors = []
    for dist, module in candidates:
        try:
            return dist, import_module(module)
        except ImportError as exc:
            errors.append(f"{dist}: {exc}")
    raise RuntimeNotFound(
        "no TFLite interpreter package is installed (" + "; ".join(errors) + "). "
        "Install tflite-runtime (Python < 3.12) or ai-edge-litert."
    )


RUNTIME, _module = _select()
Interpreter = _module.Interpreter


def runtime_version() -> str:
    """Version of the interpreter package in use, e.g. ``tflite-runtime 2.14.0``."""
    try:
        return f"{RUNTIME} {metadata.version(RUNTIME)}"
    except metadata.PackageNotFoundError:  # pragma: no cover - vendored or source builds
        return RUNTIME


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of a model input or output (batch dimension included)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    def random(self, rng: np.random.Generator) -> np.ndarray:
        """A random tensor that fits this spec (for smoke tests, profiling and ``--random``)."""
        if np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            return rng.integers(
                info.min, info.max, size=self.shape, endpoint=True, dtype=self.dtype
            )
        return rng.random(self.shape, dtype=np.float32).astype(self.dtype)


def _spec(detail: dict) -> TensorSpec:
    return TensorSpec(
        detail["name"], tuple(int(d) for d in detail["shape"]), np.dtype(detail["dtype"])
    )


class LoadedModel:
    """A ready-to-serve interpreter for one ``.tflite`` file with a single input and output.

    ``load_model`` builds the interpreter and allocates its tensors; ``predict`` runs one batch.
    Interpreters are not thread-safe: one LoadedModel serves one thread at a time.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int = 1) -> None:
        self.path = Path(path)
        # model_path lets the runtime mmap the file instead of copying it into the heap.
        self._interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self.input = _spec(self._input)
        self.output = _spec(self._output)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on ``batch`` (matching ``self.input``); returns a copy of the output."""
        batch = np.asarray(batch)
        if tuple(batch.shape) != self.input.shape:
            raise ValueError(
                f"input shape {tuple(batch.shape)} does not match the model's {self.input.shape}"
            )
        if batch.dtype != self.input.dtype:
            raise ValueError(
                f"input dtype {batch.dtype} does not match the model's {self.input.dtype}"
            )
        self._interpreter.set_tensor(self._input["index"], batch)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"]).copy()

    def close(self) -> None:
        """Drop the interpreter so its arena and the file mapping can be released."""
        self._interpreter = None  # type: ignore[assignment]


def load_model(path: str | os.PathLike, num_threads: int = 1) -> LoadedModel:
    """Load ``path`` into a ready interpreter (tensors allocated)."""
    return LoadedModel(path, num_threads=num_threads)
