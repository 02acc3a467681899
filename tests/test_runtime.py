"""Interpreter smoke tests: every test model loads and runs through ``agent.runtime``.

Marked ``runtime``: the README's test command runs them a second time in an environment where
the interpreter comes from ai-edge-litert instead of tflite-runtime.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from agent import runtime
from models.delegation import QUANTISED_XNNPACK, allowed_outside, check

pytestmark = pytest.mark.runtime


def test_runtime_is_the_one_asked_for():
    wanted = os.environ.get("BRULEE_RUNTIME")
    assert runtime.RUNTIME == (wanted or "tflite-runtime")
    assert runtime.runtime_version().startswith(runtime.RUNTIME + " ")


def test_every_test_model_loads_and_runs(test_models, test_catalog):
    rng = np.random.default_rng(0)
    assert len(test_catalog) >= 5
    for name, rec in test_catalog.items():
        model = runtime.load_model(test_models / rec["file"])
        assert list(model.input.shape) == rec["input_shape"], name
        assert model.input.dtype.name == rec["input_dtype"], name
        out = model.predict(model.input.random(rng))
        assert list(out.shape) == rec["output_shape"], name
        assert np.isfinite(out).all(), name
        # softmax heads: one probability distribution per batch row
        np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-3, err_msg=name)


def test_same_input_same_output(test_models, test_catalog):
    rec = test_catalog["mobilenet-micro"]
    model = runtime.load_model(test_models / rec["file"])
    x = model.input.random(np.random.default_rng(1))
    np.testing.assert_array_equal(model.predict(x), model.predict(x))


def test_wrong_shape_and_dtype_are_named(test_models, test_catalog):
    model = runtime.load_model(test_models / test_catalog["tiny-cnn"]["file"])
    with pytest.raises(ValueError, match=r"input shape \(1, 8, 8, 3\) does not match"):
        model.predict(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="input dtype float64 does not match"):
        model.predict(np.zeros(model.input.shape, np.float64))


def test_not_a_model_is_refused(tmp_path):
    bogus = tmp_path / "bogus.tflite"
    bogus.write_bytes(b"this is not a flatbuffer" * 10)
    with pytest.raises(ValueError):
        runtime.load_model(bogus)


def test_every_test_model_runs_whole_on_xnnpack(test_models, test_catalog):
    for name, rec in test_catalog.items():
        delegation = check(test_models / rec["file"], runs=1)
        assert delegation.full and delegation.partitions == 1, (name, delegation.problem())


def test_quantised_models_in_this_runtime(dtype_models):
    full = check(dtype_models / "digits-cnn-int8-full.tflite", runs=1)
    if QUANTISED_XNNPACK:  # ai-edge-litert: XNNPACK's int8 kernels run all but the softmax
        assert full.outside == {"SOFTMAX": 1} and full.partitions == 1, full.problem()
        assert allowed_outside("int8-full") == ("SOFTMAX",)
    else:  # tflite-runtime 2.14: no int8 kernels in its XNNPACK, TFLite's own run it all
        assert full.partitions == 0 and sum(full.outside.values()) == full.ops
        assert allowed_outside("int8-full") is None  # the builder does not insist
    assert check(dtype_models / "digits-cnn-fp16.tflite", runs=1).full
    hybrid = check(dtype_models / "digits-cnn-int8.tflite", runs=1)
    if runtime.RUNTIME == "tflite-runtime":  # no hybrid (int8 weight, float data) convolution
        assert "CONV_2D" in hybrid.outside
    # int8 in the file, real values at the runtime's boundary
    model = runtime.load_model(dtype_models / "digits-cnn-int8-full.tflite")
    assert model.input.quantization.dtype == np.int8 and model.input.dtype == np.float32
    out = model.predict(model.input.random(np.random.default_rng(0)))
    assert out.dtype == np.float32 and abs(float(out.sum()) - 1.0) < 0.05
