"""A full-integer model (int8 input and output) served as a function: clients send and get
real values; the runtime quantises the input and dequantises the output at the interpreter."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from agent.runtime import Interpreter, load_model
from functions.handlers import handler_for, make_handler
from functions.tensors import from_npy, to_npy
from models.catalog import load_catalog
from models.digits import load_split
from tests.agent_fixtures import running_agent

pytestmark = pytest.mark.timeout(180)
FULL = "digits-cnn-int8-full"


def test_the_file_holds_int8_tensors_and_the_runtime_exchanges_floats(dtype_models):
    path = dtype_models / f"{FULL}.tflite"
    raw = Interpreter(model_path=str(path))
    assert raw.get_input_details()[0]["dtype"] == np.int8
    assert raw.get_output_details()[0]["dtype"] == np.int8
    model = load_model(path)
    assert model.input.dtype == np.float32 and model.input.quantization.dtype == np.int8
    x = load_split()[2][:1]
    out = model.predict(x)
    assert out.dtype == np.float32 and out.shape == (1, 10)
    assert abs(float(out.sum()) - 1.0) < 0.05  # a dequantised softmax
    # close to the float model's answer on the same digit
    reference = load_model(dtype_models / "digits-cnn.tflite").predict(x)
    np.testing.assert_allclose(out, reference, atol=0.08)
    # the quantisation is exact where it should be: the grid's own values come back
    q = model.input.quantization
    grid = q.dequantize(np.arange(-128, 128, dtype=np.int8))
    assert np.array_equal(q.quantize(grid), np.arange(-128, 128, dtype=np.int8))


def test_the_digits_handler_serves_the_full_integer_model(dtype_models):
    rec = load_catalog(dtype_models)[FULL]
    assert handler_for(rec) == "digits"
    handler = make_handler("digits", rec)
    model = load_model(dtype_models / rec["file"])
    _, _, x_test, y_test = load_split()
    classes = []
    for x in x_test:
        batch = from_npy(to_npy(handler.decode(to_npy(x), "application/x-npy")))
        assert batch.dtype == np.float32
        classes.append(handler.encode(model.predict(batch))["classes"][0])
    assert np.mean(np.array(classes) == y_test) >= 0.9


def test_full_integer_function_through_the_real_agent(dtype_models):
    _, _, x_test, y_test = load_split()
    local = {n: load_model(dtype_models / f"{n}.tflite") for n in (FULL, "digits-cnn")}
    with running_agent(dtype_models, 64 << 20, workers=1) as agent:
        answers = []
        for x in x_test[:40]:
            r = requests.post(
                f"{agent['url']}/function/{FULL}", json={"inputs": x.tolist()}, timeout=60
            )
            assert r.status_code == 200, r.text
            answers.append(r.json())
        r = requests.post(
            f"{agent['url']}/function/{FULL}",
            data=to_npy(x_test[:1]),
            headers={"Content-Type": "application/x-npy"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        bad = requests.post(
            f"{agent['url']}/function/{FULL}", json={"inputs": [[1, 2]]}, timeout=60
        )
        assert bad.status_code == 400 and "wrong shape" in bad.text
    for x, answer in zip(x_test, answers, strict=False):
        # the worker's answer is the in-process one, dequantised floats included
        expected = local[FULL].predict(x[None])
        np.testing.assert_allclose(answer["outputs"], expected, rtol=1e-6, atol=1e-7)
        assert answer["classes"] == [int(np.argmax(expected))]
    accuracy = np.mean([a["classes"][0] for a in answers] == y_test[:40])
    assert accuracy >= 0.85, accuracy
