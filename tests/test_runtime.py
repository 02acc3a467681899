"""Interpreter smoke tests: every test model loads and runs through ``agent.runtime``.

Marked ``runtime``: the README's test command runs them a second time in an environment where
the interpreter comes from ai-edge-litert instead of tflite-runtime.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from agent import runtime

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
