"""Build real Keras architectures and convert them to TFLite (``brulee models build``).

TensorFlow is imported lazily: it is only needed here, on the machine that builds models, never
on a device. Weights are random with a fixed seed unless ``weights="imagenet"`` (which needs
internet for Keras to fetch them). Building the same architecture, seed and dtype twice gives a
byte-identical file: Keras' global state is cleared before each model and every random draw is
seeded.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.catalog import load_catalog, sha256_file, write_catalog
from models.zoo import Architecture

# int8: dynamic-range quantisation (int8 weights, float activations, float input and output).
# int8-full: full-integer quantisation (int8 weights and activations, int8 input and output,
# calibrated on a representative dataset), run by XNNPACK's quantised kernels.
DTYPES = ("float32", "float16", "int8", "int8-full")
WEIGHTS = ("random", "imagenet")
_DTYPE_SUFFIX = {"float32": "", "float16": "-fp16", "int8": "-int8", "int8-full": "-int8-full"}
# 2: static input shapes (a fixed batch), so no shape arithmetic is left for run time and the
# whole graph goes to XNNPACK; full-integer int8.
BUILDER_VERSION = 2  # bump when a change to this file changes the bytes it writes
CALIBRATION_SAMPLES = 100  # representative inputs for full-integer quantisation


@dataclass(frozen=True)
class BuildSpec:
    """One model to build: an architecture, a variant (weight seed) and a storage dtype."""

    arch: Architecture
    variant: int = 0
    dtype: str = "float32"
    seed: int = 0
    weights: str = "random"
    batch: int = 1

    @property
    def name(self) -> str:
        suffix = f"-v{self.variant}" if self.variant else ""
        batch = f"-b{self.batch}" if self.batch != 1 else ""
        return f"{self.arch.name}{suffix}{batch}{_DTYPE_SUFFIX[self.dtype]}"

    @property
    def weight_seed(self) -> int:
        """A seed of its own per architecture and variant, derived from the base seed."""
        key = f"{self.seed}:{self.arch.name}:{self.variant}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:4], "big")

    def key(self) -> dict[str, Any]:
        """What decides the file's bytes; an existing model with the same key is not rebuilt."""
        return {
            "architecture": self.arch.name,
            "variant": self.variant,
            "seed": self.seed,
            "dtype": self.dtype,
            "weights": self.weights,
            "batch": self.batch,
            "builder_version": BUILDER_VERSION,
        }


def plan(
    archs: Iterable[Architecture],
    variants: int = 1,
    dtypes: Iterable[str] = ("float32",),
    seed: int = 0,
    weights: str = "random",
    batch: int = 1,
) -> list[BuildSpec]:
    """Every (architecture, variant, dtype) to build, validated."""
    dtypes = list(dtypes)
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise ValueError(f"unknown dtype {bad[0]!r}; valid dtypes: {', '.join(DTYPES)}")
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; valid: {', '.join(WEIGHTS)}")
    if variants < 1:
        raise ValueError("--variants must be at least 1")
    if batch < 1:
        raise ValueError("--batch must be at least 1")
    if weights == "imagenet" and variants > 1:
        raise ValueError(
            "--variants > 1 needs random weights: pretrained variants would be identical"
        )
    return [
        BuildSpec(a, v, d, seed, "random" if a.trained else weights, batch)
        for a in archs
        for v in range(variants)
        for d in dtypes
    ]


def _tf():
    # Keras 3 (TF >= 2.16) converts differently; where the tf-keras package is installed,
    # TensorFlow's legacy switch keeps Keras 2 behaviour (TF 2.15 is Keras 2 already).
    if importlib.util.find_spec("tf_keras") is not None:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def _tiny_cnn(tf, arch: Architecture):
    layers = tf.keras.layers
    return tf.keras.Sequential(
        [
            layers.Input(arch.input_shape, name="image"),
            layers.Conv2D(16, 3, activation="relu", name="conv1"),
            layers.MaxPooling2D(name="pool1"),
            layers.Conv2D(32, 3, activation="relu", name="conv2"),
            layers.GlobalAveragePooling2D(name="gap"),
            layers.Dense(arch.classes, activation="softmax", name="predictions"),
        ],
        name="tiny_cnn",
    )


def _digits_cnn(tf, arch: Architecture):
    """A small CNN trained on scikit-learn's bundled digits (8x8 grey levels 0..16)."""
    from models.digits import load_split

    layers = tf.keras.layers
    model = tf.keras.Sequential(
        [
            layers.Input(arch.input_shape, name="digit"),
            layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            layers.MaxPooling2D(name="pool"),
            layers.Flatten(name="flatten"),
            layers.Dense(64, activation="relu", name="dense"),
            layers.Dense(arch.classes, activation="softmax", name="predictions"),
        ],
        name="digits_cnn",
    )
    x_train, y_train, _, _ = load_split()
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=25, batch_size=64, shuffle=True, verbose=0)
    return model


def _keras_model(tf, spec: BuildSpec):
    arch = spec.arch
    if arch.keras == "tiny_cnn":
        return _tiny_cnn(tf, arch)
    if arch.keras == "digits_cnn":
        return _digits_cnn(tf, arch)
    ctor = getattr(tf.keras.applications, arch.keras)
    weights = None if spec.weights == "random" else spec.weights
    return ctor(
        weights=weights,
        input_shape=arch.input_shape,
        classes=arch.classes,
        classifier_activation="softmax",
        **arch.kwargs,
    )


def representative_inputs(spec: BuildSpec, count: int = CALIBRATION_SAMPLES) -> list:
    """Inputs that full-integer quantisation calibrates activation ranges on: digits from the
    training split for the digits model; otherwise seeded random pixels normalised the way the
    architecture's image handler normalises a photo (so the ranges match what it will see)."""
    import numpy as np

    from functions.handlers import normalise

    arch = spec.arch
    if arch.preprocess == "digits":
        from models.digits import load_split

        x_train = load_split()[0]
        samples = [x_train[i : i + spec.batch] for i in range(0, count * spec.batch, spec.batch)]
        return [s for s in samples if len(s) == spec.batch]
    rng = np.random.default_rng(spec.weight_seed)
    shape = (spec.batch, *arch.input_shape)
    return [
        normalise(rng.integers(0, 256, shape).astype(np.float32), arch.preprocess)
        for _ in range(count)
    ]


def convert(spec: BuildSpec, open_batch: bool = False) -> bytes:
    """Construct the Keras model for ``spec`` and return its TFLite flatbuffer.

    The model is converted through a function of a fixed input shape (``spec.batch`` rows): a
    Keras model's own signature leaves the batch dimension open, and the shape arithmetic that
    leaves in graphs with a ``Reshape`` (SHAPE, STRIDED_SLICE, PACK at run time) keeps XNNPACK
    off the whole model. ``open_batch`` converts from that signature instead, as builder
    version 1 did (the baseline of ``benchmarks/zoo_delegation.py`` and the tests).
    """
    tf = _tf()
    model = keras_model(spec)
    if open_batch:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        return _finish(tf, converter, spec)
    return to_tflite(model, spec.arch.input_shape, spec)


def keras_model(spec: BuildSpec):
    """The Keras model of ``spec``, with its seeded weights (the same weights every time)."""
    tf = _tf()
    tf.keras.backend.clear_session()  # resets layer-name counters, which end up in the file
    tf.keras.utils.set_random_seed(spec.weight_seed)
    tf.config.experimental.enable_op_determinism()
    return _keras_model(tf, spec)


def to_tflite(model, input_shape: tuple[int, ...], spec: BuildSpec) -> bytes:
    """Convert a Keras model (a whole model or one stage of it) taking ``spec.batch`` rows of
    ``input_shape`` through a function of that fixed shape, in ``spec.dtype``."""
    tf = _tf()
    signature = tf.TensorSpec((spec.batch, *input_shape), tf.float32, name="input")
    run = tf.function(lambda x: model(x, training=False), input_signature=[signature])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [run.get_concrete_function()], model
    )
    return _finish(tf, converter, spec)


def _finish(tf, converter, spec: BuildSpec) -> bytes:
    """Apply ``spec.dtype``'s optimisations to ``converter`` and convert."""
    if spec.dtype == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif spec.dtype == "int8":
        # Dynamic-range quantisation: int8 weights, float input and output.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif spec.dtype == "int8-full":
        samples = representative_inputs(spec)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([s] for s in samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with _quiet_stderr():
        return converter.convert()


@contextlib.contextmanager
def _quiet_stderr():
    """Hold back the converter's C++ chatter (it writes to fd 2); replay it only on failure."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def describe(path: Path) -> dict[str, Any]:
    """Input and output signature of a built file as the serving runtime presents it: a
    quantised tensor's dtype is the float32 its callers exchange, and ``*_quantization`` says
    how the file stores it (None when it is not quantised)."""
    from agent.runtime import load_model

    model = load_model(path)
    try:
        return {
            f"{side}_{field}": value
            for side, spec in (("input", model.input), ("output", model.output))
            for field, value in (
                ("shape", list(spec.shape)),
                ("dtype", spec.dtype.name),
                ("quantization", spec.quantization and spec.quantization.to_record()),
            )
        }
    finally:
        model.close()


def _up_to_date(record: dict[str, Any] | None, spec: BuildSpec, out: Path) -> bool:
    if record is None or any(record.get(k) != v for k, v in spec.key().items()):
        return False
    path = out / record["file"]
    return (
        path.exists()
        and path.stat().st_size == record["file_bytes"]
        and sha256_file(path) == record["sha256"]
    )


class NotDelegated(RuntimeError):
    """Models that XNNPACK does not run whole; the message names each model and its ops."""


def build_one(spec: BuildSpec, out: Path, allow_partial: bool = False) -> dict[str, Any]:
    """Build ``spec`` into ``out`` (atomically) and return its catalog record.

    The file is checked before it takes its place: a model that should run whole on XNNPACK
    and leaves operators outside it (beyond those its architecture declares in
    ``off_xnnpack``) is NotDelegated, and not written, unless ``allow_partial``.
    """
    from models.delegation import allowed_outside, check

    data = convert(spec)
    path = out / f"{spec.name}.tflite"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{spec.name}.", suffix=".tflite")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        delegation = check(tmp)
        allowed = allowed_outside(spec.dtype)
        checked = allowed is not None and not allow_partial
        if checked and delegation.beyond(allowed + spec.arch.off_xnnpack):
            raise NotDelegated(f"{spec.name}: {delegation.problem()}")
        signature = describe(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; devices serve models as another user
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return {
        "name": spec.name,
        "file": path.name,
        "task": spec.arch.task,
        "preprocess": spec.arch.preprocess,
        **spec.key(),
        **signature,
        "file_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "delegation": delegation.to_record(),
    }


def build(
    specs: list[BuildSpec],
    out: str | os.PathLike,
    progress: bool = True,
    allow_partial: bool = False,
    stages: int = 1,
    jobs: int = 1,
) -> Iterator[tuple[str, bool]]:
    """Build what is missing or stale; yields ``(name, built)``, ``built`` False if skipped.

    The catalog is rewritten after each model, so an interrupted build keeps what it finished.
    Models that are not delegated as they should be are left out and, once the others are
    built, raised together as NotDelegated. ``stages`` > 1 also cuts each model into that
    many stage files (:mod:`models.stages`), kept while the whole model is unchanged.

    ``jobs`` > 1 converts that many models at a time, each in a worker process of its own
    (``0``: one per CPU); the catalog, the stage files and what is yielded stay with this
    process, in the order of ``specs``, and the files are the same bytes as with one job.
    """
    from tqdm import tqdm

    from models import stages as staging

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = load_catalog(out)
    failures = []
    fresh = [i for i, s in enumerate(specs) if not _up_to_date(records.get(s.name), s, out)]
    jobs = min(jobs if jobs > 0 else os.cpu_count() or 1, len(fresh))
    # disable=None: tqdm draws only on a terminal.
    bar = tqdm(total=len(specs), unit="model", disable=None if progress else True, desc="building")
    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        pending = {}
        if jobs > 1:
            pool = _pool(jobs, stack)
            pending = {i: pool.submit(build_one, specs[i], out, allow_partial) for i in fresh}
        for i, spec in enumerate(specs):
            bar.set_postfix_str(spec.name)
            built = i in fresh
            try:
                if built:
                    if i in pending:
                        records[spec.name] = pending[i].result()
                    else:
                        records[spec.name] = build_one(spec, out, allow_partial)
                    write_catalog(out, records)
                if stages > 1 and not staging.up_to_date(spec, out, stages, records[spec.name]):
                    staging.build_stages(spec, out, stages, records[spec.name], allow_partial)
                    built = True
            except (NotDelegated, staging.StagingFailed) as exc:
                failures.append(str(exc))
                continue
            finally:
                bar.update()
            yield spec.name, built
    if failures:
        raise NotDelegated("\n".join(failures))


def _pool(jobs: int, stack: contextlib.ExitStack):
    """``jobs`` worker processes, spawned (TensorFlow is not safe to fork once imported);
    leaving ``stack`` cancels what has not started and waits for what has."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
    stack.callback(pool.shutdown, wait=True, cancel_futures=True)
    return pool
