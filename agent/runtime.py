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
class Quantization:
    """How a quantised tensor stores real values: ``real = scale * (stored - zero_point)``."""

    dtype: np.dtype
    scale: float
    zero_point: int

    def quantize(self, x: np.ndarray) -> np.ndarray:
        info = np.iinfo(self.dtype)
        q = np.round(np.asarray(x, dtype=np.float32) / self.scale) + self.zero_point
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (q.astype(np.float32) - self.zero_point) * np.float32(self.scale)

    def to_record(self) -> dict[str, Any]:
        return {"dtype": self.dtype.name, "scale": self.scale, "zero_point": self.zero_point}


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of a model input or output (batch dimension included).

    For a quantised tensor (a full-integer model's int8 input or output) ``dtype`` is float32,
    the values callers exchange, and ``quantization`` how the interpreter stores them.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    quantization: Quantization | None = None

    def random(self, rng: np.random.Generator) -> np.ndarray:
        """A random tensor that fits this spec (for smoke tests, profiling and ``--random``)."""
        if np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            return rng.integers(
                info.min, info.max, size=self.shape, endpoint=True, dtype=self.dtype
            )
        return rng.random(self.shape, dtype=np.float32).astype(self.dtype)


def _spec(detail: dict) -> TensorSpec:
    shape = tuple(int(d) for d in detail["shape"])
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail.get("quantization") or (0.0, 0)
    if dtype.kind in "iu" and scale:
        quantization = Quantization(dtype, float(scale), int(zero_point))
        return TensorSpec(detail["name"], shape, np.dtype(np.float32), quantization)
    return TensorSpec(detail["name"], shape, dtype)


class LoadedModel:
    """A ready-to-serve interpreter for one ``.tflite`` file with a single input and output.

    ``load_model`` builds the interpreter and allocates its tensors; ``predict`` runs one batch.
    Interpreters are not thread-safe: one LoadedModel serves one thread at a time. A quantised
    input or output (full-integer models) is quantised and dequantised here, so callers always
    exchange real values. ``delegate=False`` runs TFLite's built-in kernels, no XNNPACK.
    """

    def __init__(
        self, path: str | os.PathLike, num_threads: int = 1, delegate: bool = True
    ) -> None:
        self.path = Path(path)
        resolver = _module.OpResolverType
        # model_path lets the runtime mmap the file instead of copying it into the heap.
        self._interpreter = Interpreter(
            model_path=str(self.path),
            num_threads=num_threads,
            experimental_op_resolver_type=(
                resolver.AUTO if delegate else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            ),
        )
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
        if self.input.quantization is not None:
            batch = self.input.quantization.quantize(batch)
        self._interpreter.set_tensor(self._input["index"], batch)
        self._interpreter.invoke()
        output = self._interpreter.get_tensor(self._output["index"])
        if self.output.quantization is not None:
            return self.output.quantization.dequantize(output)
        return output.copy()

    def input_signature(self) -> tuple[int, ...]:
        """The input's shape as the file declares it: -1 marks a dimension left dynamic."""
        return tuple(int(d) for d in self._input["shape_signature"])

    def ops(self) -> list[dict[str, Any]]:
        """The interpreter's nodes (``index``, ``op_name``, ``inputs``, ``outputs``): the
        model's operators, then one ``DELEGATE`` node per partition a delegate took over."""
        return self._interpreter._get_ops_details()

    def close(self) -> None:
        """Drop the interpreter so its arena and the file mapping can be released."""
        self._interpreter = None  # type: ignore[assignment]


def load_model(path: str | os.PathLike, num_threads: int = 1, delegate: bool = True) -> LoadedModel:
    """Load ``path`` into a ready interpreter (tensors allocated)."""
    return LoadedModel(path, num_threads=num_threads, delegate=delegate)
