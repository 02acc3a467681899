"""Does XNNPACK run the whole model? The builder checks every file it writes.

TFLite applies XNNPACK (its default CPU delegate) when it opens a model: the delegate takes
over the partitions of the graph it supports, each becoming one ``DELEGATE`` node, and the
rest runs on TFLite's built-in kernels, often several times slower. A graph with a tensor
whose shape is only known at run time (a batch dimension left open by the conversion) is
refused whole. This reads the interpreter's nodes, finds the operators a delegate partition
replaced, and times the model with and without the delegate.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtime import RUNTIME, LoadedModel, load_model

# Whether the runtime's default XNNPACK delegate has int8 kernels. ai-edge-litert's has, so a
# full-integer model runs whole on XNNPACK; tflite-runtime 2.14 (its last release) was built
# without them, so there the same model runs on TFLite's built-in int8 kernels instead.
QUANTISED_XNNPACK = RUNTIME == "ai-edge-litert"


def allowed_outside(dtype: str) -> tuple[str, ...] | None:
    """Operators that may stay off XNNPACK in a model of this storage dtype in this runtime;
    None when the model is not expected on XNNPACK at all (nothing is checked).

    Float models: none. Full-integer int8, where the runtime has XNNPACK's int8 kernels: the
    final SOFTMAX (XNNPACK has no int8 softmax); elsewhere it runs on TFLite's int8 kernels.
    Dynamic-range int8: XNNPACK has no kernel for a convolution with int8 weights and float
    activations (tflite-runtime's does not delegate them; ai-edge-litert's only some).
    """
    if dtype == "int8-full":
        return ("SOFTMAX",) if QUANTISED_XNNPACK else None
    return None if dtype == "int8" else ()


@dataclass(frozen=True)
class Delegation:
    """How much of a model the default delegate runs, and what that is worth."""

    ops: int  # the model's operators
    outside: dict[str, int] = field(default_factory=dict)  # op name -> how many run outside
    partitions: int = 0  # delegate partitions (1 when fully delegated)
    dynamic_input: tuple[int, ...] | None = None  # the input's shape signature, if it has -1
    exec_s: float = 0.0  # warm exec, median, with the default delegate
    builtin_exec_s: float = 0.0  # the same without it (TFLite's built-in kernels)

    @property
    def full(self) -> bool:
        return not self.outside

    def beyond(self, allowed: tuple[str, ...]) -> dict[str, int]:
        """The operators outside the delegate that are not in ``allowed``."""
        return {op: n for op, n in self.outside.items() if op not in allowed}

    def to_record(self) -> dict[str, Any]:
        return {
            "ops": self.ops,
            "outside": self.outside,
            "partitions": self.partitions,
            "exec_s": self.exec_s,
            "builtin_exec_s": self.builtin_exec_s,
        }

    def problem(self) -> str:
        """Why the model is not fully delegated, naming the operators left outside."""
        left = sum(self.outside.values())
        names = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in self.outside.items())
        text = f"{left} of {self.ops} ops run outside the XNNPACK delegate ({names})"
        if self.dynamic_input is not None:
            text += f"; the input's shape {list(self.dynamic_input)} has a dynamic dimension"
        return text


def summary(record: dict[str, Any]) -> str:
    """One line from a catalog record's ``delegation``: ops on XNNPACK, exec with and without."""
    done = record["ops"] - sum(record["outside"].values())
    return (
        f"{done}/{record['ops']} ops on XNNPACK, exec {record['exec_s'] * 1e3:.2f} ms "
        f"(without XNNPACK {record['builtin_exec_s'] * 1e3:.2f} ms)"
    )


def undelegated_ops(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The model's operators that no ``DELEGATE`` node replaced.

    A partition is a closed set of nodes: walking back from a delegate node's outputs through
    the nodes that produce them, stopping at its inputs, visits exactly the nodes it replaced.
    """
    model_ops = [op for op in ops if op["op_name"] != "DELEGATE"]
    producer = {t: op["index"] for op in model_ops for t in op["outputs"]}
    by_index = {op["index"]: op for op in model_ops}
    replaced: set[int] = set()
    for node in ops:
        if node["op_name"] != "DELEGATE":
            continue
        boundary = set(int(t) for t in node["inputs"])
        todo = [int(t) for t in node["outputs"]]
        while todo:
            tensor = todo.pop()
            index = producer.get(tensor)
            if tensor in boundary or index is None or index in replaced:
                continue
            replaced.add(index)
            todo.extend(int(t) for t in by_index[index]["inputs"] if t >= 0)
    return [op for op in model_ops if op["index"] not in replaced]


def _exec_s(model: LoadedModel, batch: np.ndarray, runs: int) -> float:
    model.predict(batch)  # the first invoke prepares the delegate's buffers
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.predict(batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def check(path: str | Path, runs: int = 3) -> Delegation:
    """Open ``path`` as a worker would (one thread, default delegate) and report."""
    model = load_model(path)
    try:
        ops = model.ops()
        outside = undelegated_ops(ops)
        signature = model.input_signature()
        batch = model.input.random(np.random.default_rng(0))
        exec_s = _exec_s(model, batch, runs)
    finally:
        model.close()
    builtin = load_model(path, delegate=False)
    try:
        builtin_exec_s = _exec_s(builtin, batch, runs)
    finally:
        builtin.close()
    return Delegation(
        ops=sum(op["op_name"] != "DELEGATE" for op in ops),
        outside=dict(Counter(op["op_name"] for op in outside)),
        partitions=sum(op["op_name"] == "DELEGATE" for op in ops),
        dynamic_input=signature if -1 in signature else None,
        exec_s=exec_s,
        builtin_exec_s=builtin_exec_s,
    )
