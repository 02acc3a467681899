"""Cut a built model into K stage files (``brulee models build --stages K``).

Layer-wise loading (EdgeCaffe, MemA) loads and runs a model a piece at a time, so a model
larger than the free memory can still run, and loading overlaps execution. A TFLite file has
one interpreter, so the pieces are separate files: the Keras model is cut where exactly one
tensor crosses (the output of the layer before the cut is the only value later layers read:
between residual or dense blocks, never inside one), each piece converted on its own with a
fixed input shape. The cuts are chosen so the stages are as balanced by weight bytes as the
boundaries allow.

Every stage set is checked before it is written: chaining the stages on a seeded input gives
the whole model's output within float tolerance, and each stage runs whole on XNNPACK where
the whole model does (:mod:`models.delegation`). The manifest (``NAME.stages/manifest.json``)
names the stage files (relative to the models directory, as a function's ``file`` is), their
input and output shapes and dtypes, and their bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
STAGEABLE_DTYPES = ("float32", "float16")
# Chaining re-orders nothing, but XNNPACK fuses differently across a cut: float32 noise only.
ATOL, RTOL = 1e-4, 1e-3
# Layers whose output a following BatchNormalization folds into at conversion: a cut there
# would keep the two apart (a bigger, slower stage), so it is not a boundary.
_FOLDED = ("Conv2D", "DepthwiseConv2D", "Dense", "SeparableConv2D")


class StagingFailed(RuntimeError):
    """A stage set that does not reproduce the whole model or is not delegated like it."""


def stages_dir(out: str | os.PathLike, name: str) -> Path:
    return Path(out) / f"{name}.stages"


def boundaries(model) -> list[int]:
    """Indices of the layers after which exactly one tensor — that layer's output — crosses.

    ``model.layers`` of a functional Keras model is in topological order; a cut after layer
    ``i`` is clean when no layer before ``i`` is read by a layer after ``i``.
    """
    position = {id(layer): i for i, layer in enumerate(model.layers)}
    last_use: dict[int, int] = {}
    for i, layer in enumerate(model.layers):
        for node in layer._inbound_nodes:
            parents = node.inbound_layers
            for parent in parents if isinstance(parents, list) else [parents]:
                j = position.get(id(parent))
                if j is not None:
                    last_use[j] = max(last_use.get(j, -1), i)
    cuts, reach = [], -1  # reach: the furthest layer read by layers before i
    for i in range(len(model.layers) - 1):
        clean = reach <= i and i > 0 and last_use.get(i, -1) > i
        layer = model.layers[i]
        folded = type(layer).__name__ in _FOLDED and type(model.layers[i + 1]).__name__ == (
            "BatchNormalization"
        )
        if clean and not folded and len(layer.output.shape) >= 2:
            cuts.append(i)
        reach = max(reach, last_use.get(i, -1))
    return cuts


def _weight_bytes(layer) -> int:
    return sum(int(np.prod(w.shape)) * 4 for w in layer.weights)


def balanced_cuts(weights: list[int], candidates: list[int], k: int) -> list[int]:
    """``k - 1`` cut positions (layer indices among ``candidates``; a cut after layer i) that
    minimise the largest stage's bytes, ``weights[i]`` being layer i's bytes."""
    if k - 1 > len(candidates):
        raise ValueError(
            f"{k} stages need {k - 1} single-tensor boundaries; the model has {len(candidates)}"
        )
    prefix = np.concatenate([[0], np.cumsum(weights)])
    ends = [*candidates, len(weights) - 1]  # a stage ends after one of these layers

    def size(start_end: int, end: int) -> int:  # bytes of layers (start_end, end]
        return int(prefix[end + 1] - prefix[start_end + 1])

    # best[s][e]: the smallest "largest stage" for s+1 stages covering layers 0..ends[e]
    best = [[(size(-1, e), [e]) for e in ends]]
    for _ in range(1, k):
        row = []
        for e_i, e in enumerate(ends):
            options = [
                (max(best[-1][p_i][0], size(ends[p_i], e)), [*best[-1][p_i][1], e])
                for p_i in range(e_i)
                if best[-1][p_i] is not None
            ]
            row.append(min(options) if options else None)
        best.append(row)
    return best[-1][-1][1][:-1]


def _stage_models(tf, model, cuts: list[int]) -> list:
    """Keras models for each stage, sharing the whole model's layers (and weights)."""
    edges = [model.input, *(model.layers[c].output for c in cuts), model.output]
    return [tf.keras.Model(a, b) for a, b in zip(edges, edges[1:], strict=False)]


def build_stages(spec, out: Path, k: int, record: dict[str, Any], allow_partial: bool) -> dict:
    """Cut ``spec``'s model (already built into ``out`` as ``record``) into ``k`` stage files
    and write its manifest; StagingFailed names the model and the stage that failed."""
    from models.build import _tf, keras_model, to_tflite

    if spec.dtype not in STAGEABLE_DTYPES:
        raise ValueError(
            f"{spec.name}: --stages needs a float model ({', '.join(STAGEABLE_DTYPES)}); a "
            f"{spec.dtype} model would be requantised at every cut"
        )
    tf = _tf()
    model = keras_model(spec)
    weights = [_weight_bytes(layer) for layer in model.layers]
    cuts = balanced_cuts(weights, boundaries(model), k)
    target = stages_dir(out, spec.name)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{spec.name}.stages."))
    try:
        stages, keras_stages = [], _stage_models(tf, model, cuts)
        for i, (stage, cut) in enumerate(zip(keras_stages, [*cuts, None], strict=True)):
            data = to_tflite(stage, tuple(stage.input_shape[1:]), spec)
            path = tmp / f"stage-{i + 1}.tflite"
            path.write_bytes(data)
            os.chmod(path, 0o644)
            stages.append(
                {
                    "file": f"{target.name}/{path.name}",
                    "after": model.layers[cut].name if cut is not None else None,
                    "file_bytes": len(data),
                    **_checked(spec, path, i + 1, allow_partial),
                }
            )
        manifest = {
            "model": spec.name,
            "whole": record["file"],
            "whole_sha256": record["sha256"],
            "whole_bytes": record["file_bytes"],
            **spec.key(),
            "stages_count": k,
            "max_abs_diff": _chain_diff(spec, out / record["file"], tmp, stages, keras_stages),
            "stages": stages,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _checked(spec, path: Path, number: int, allow_partial: bool) -> dict[str, Any]:
    """The stage's signature; StagingFailed if XNNPACK leaves operators of it outside that it
    should take (the same rule as a whole model's, :func:`models.build.build_one`)."""
    from models.build import describe
    from models.delegation import allowed_outside, check

    delegation = check(path)
    allowed = allowed_outside(spec.dtype)
    if allowed is not None and not allow_partial:
        if delegation.beyond(allowed + spec.arch.off_xnnpack):
            raise StagingFailed(f"{spec.name}: stage {number}: {delegation.problem()}")
    signature = describe(path)
    return {k: v for k, v in signature.items() if not k.endswith("quantization")}


def _chain_diff(spec, whole: Path, tmp: Path, stages: list[dict], keras_stages: list) -> float:
    """Largest absolute difference between the whole model's output and the chained stages'
    on a seeded input; StagingFailed naming the first stage whose output is off (each stage
    is also compared with its Keras counterpart, relative to the activations' magnitude)."""
    from agent.runtime import load_model
    from models.build import representative_inputs

    x = representative_inputs(spec, count=1)[0].astype(np.float32)
    whole_model = load_model(whole)
    try:
        expected = whole_model.predict(x)
    finally:
        whole_model.close()
    value = x
    for i, stage in enumerate(stages):
        loaded = load_model(tmp / Path(stage["file"]).name)
        try:
            reference = keras_stages[i](value, training=False).numpy()
            value = loaded.predict(value)
        finally:
            loaded.close()
        off = float(np.max(np.abs(value - reference)))
        if not np.isfinite(off) or off > ATOL + RTOL * float(np.max(np.abs(reference))):
            raise StagingFailed(
                f"{spec.name}: stage {i + 1} of {len(stages)} does not reproduce its part of "
                f"the model (off by {off:.3g})"
            )
    if value.shape != expected.shape or not np.allclose(value, expected, atol=ATOL, rtol=RTOL):
        diff = float(np.max(np.abs(value - expected))) if value.shape == expected.shape else -1
        raise StagingFailed(
            f"{spec.name}: chaining its {len(stages)} stages does not give the whole model's "
            f"output (stage {len(stages)} ends off by {diff:.3g}, tolerance {ATOL})"
        )
    return float(np.max(np.abs(value - expected)))


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """A stage manifest; ValueError naming the file if it is not one."""
    try:
        doc = json.loads(Path(path).read_text())
        if not doc["stages"]:
            raise KeyError("stages")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a stage manifest ({exc})") from exc
    return doc


def up_to_date(spec, out: Path, k: int, record: dict[str, Any]) -> bool:
    """Whether ``out`` holds ``spec``'s k stages, cut from the whole model as built now."""
    path = stages_dir(out, spec.name) / MANIFEST
    try:
        doc = read_manifest(path)
    except ValueError:
        return False
    return (
        doc.get("whole_sha256") == record["sha256"]
        and doc.get("stages_count") == k
        and all((out / s["file"]).is_file() for s in doc["stages"])
    )
