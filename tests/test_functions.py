"""Function handlers and the stack file, against the real test models and interpreter."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from agent.runtime import load_model
from functions.handlers import BadInput, conform, handler_for, make_handler
from functions.stack import Function, load_stack, model_path, parse_memory, zero_config
from functions.tensors import from_npy, to_npy
from models.catalog import load_catalog, write_catalog


def _image_bytes(fmt: str, size=(100, 70), mode="RGB") -> bytes:
    x = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3).astype(np.uint8)
    img = Image.fromarray(x, "RGB").convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _json(x) -> bytes:
    return json.dumps({"inputs": np.asarray(x).tolist()}).encode()


# --- tensors ---------------------------------------------------------------------------------


def test_npy_round_trip_keeps_shape_and_dtype():
    a = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    b = from_npy(to_npy(a))
    assert b.dtype == a.dtype and b.shape == a.shape and (a == b).all()


def test_npy_reads_what_numpy_writes_and_numpy_reads_ours():
    """The fast reader/writer speak numpy's format: Fortran order, version 2 headers, 0-d."""
    for a in (np.asfortranarray(np.arange(12.0).reshape(3, 4)), np.float32(3.5).reshape(())):
        buf = io.BytesIO()
        np.save(buf, a)
        assert (from_npy(buf.getvalue()) == a).all() and from_npy(buf.getvalue()).shape == a.shape
        assert (np.load(io.BytesIO(to_npy(a))) == a).all()
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.arange(5), version=(2, 0))
    assert from_npy(buf.getvalue()).tolist() == [0, 1, 2, 3, 4]


def test_npy_refuses_pickles_and_garbage():
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BadInput, match="pickled"):
        from_npy(buf.getvalue())
    with pytest.raises(BadInput, match="not a .npy"):
        from_npy(b"\x80\x04K\x01.")  # a bare pickle stream
    with pytest.raises(BadInput, match="not a valid .npy"):
        from_npy(to_npy(np.zeros((4, 4), np.float32))[:-10])


# --- digits through the real interpreter ------------------------------------------------------


def test_digits_handler_reaches_accuracy_on_held_out_digits(test_models, test_catalog):
    from models.digits import load_split

    rec = test_catalog["digits-cnn"]
    assert handler_for(rec) == "digits"
    handler = make_handler("digits", rec)
    model = load_model(test_models / rec["file"])
    _, _, x_test, y_test = load_split()
    predicted = []
    for i, x in enumerate(x_test):
        # alternate JSON without a batch dimension and .npy with one, as clients would send
        if i % 2:
            batch = handler.decode(_json(x), "application/json; charset=utf-8")
        else:
            batch = handler.decode(to_npy(x[None]), "application/x-npy")
        batch = from_npy(to_npy(batch))  # the trip through Redis
        out = handler.encode(model.predict(batch))
        json.dumps(out)
        assert len(out["outputs"][0]) == 10
        predicted.append(out["classes"][0])
    accuracy = float(np.mean(np.array(predicted) == y_test))
    assert len(predicted) == len(y_test) > 300
    assert accuracy >= 0.9, accuracy


# --- images through the real interpreter ------------------------------------------------------


@pytest.mark.parametrize("fmt,ctype", [("PNG", "image/png"), ("JPEG", "image/jpeg")])
def test_image_handler_gives_top_k_classes(test_models, test_catalog, fmt, ctype):
    rec = test_catalog["mobilenet-micro"]
    assert handler_for(rec) == "image"
    handler = make_handler("image", rec, top_k=3)
    batch = handler.decode(_image_bytes(fmt), ctype)
    assert batch.shape == (1, 64, 64, 3) and batch.dtype == np.float32
    assert -1.0 <= batch.min() < batch.max() <= 1.0  # 'tf' mode scales to [-1, 1]
    output = load_model(test_models / rec["file"]).predict(batch)
    result = handler.encode(output)
    classes = [o["class"] for o in result["outputs"]]
    scores = [o["score"] for o in result["outputs"]]
    assert len(classes) == 3 and len(set(classes)) == 3
    assert scores == sorted(scores, reverse=True)
    assert classes[0] == int(output.argmax())
    assert scores == pytest.approx([float(output[0, c]) for c in classes])
    json.dumps(result)


def test_image_normalisation_follows_keras_modes():
    img = Image.new("RGB", (5, 4), (200, 100, 50))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    rgb = np.array([200, 100, 50], np.float32)
    expected = {
        "tf": rgb / 127.5 - 1,
        "torch": (rgb / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
        "caffe": rgb[::-1] - [103.939, 116.779, 123.68],
        "raw": rgb,
    }
    for mode, want in expected.items():
        rec = {"input_shape": [1, 2, 3, 3], "input_dtype": "float32", "preprocess": mode}
        batch = make_handler("image", rec).decode(buf.getvalue(), "image/png")
        assert batch.shape == (1, 2, 3, 3)
        np.testing.assert_allclose(batch[0, 1, 2], want, rtol=1e-5, err_msg=mode)
    rec = {"input_shape": [1, 2, 2, 3], "input_dtype": "uint8", "preprocess": "raw"}
    batch = make_handler("image", rec).decode(buf.getvalue(), "image/png")
    assert batch.dtype == np.uint8 and batch[0, 0, 0].tolist() == [200, 100, 50]


def test_labels_option_names_classes(test_catalog):
    rec = test_catalog["tiny-cnn"]
    labels = [f"c{i}" for i in range(10)]
    out = make_handler("image", rec, top_k=2, labels=labels).encode(np.eye(10)[[7]])
    assert out["outputs"][0] == {"class": 7, "score": 1.0, "label": "c7"}


# --- bad input --------------------------------------------------------------------------------


@pytest.fixture()
def image(test_catalog):
    return make_handler("image", test_catalog["mobilenet-micro"])


@pytest.fixture()
def tensor(test_catalog):
    return make_handler("tensor", test_catalog["tiny-cnn"])


def test_wrong_content_type_is_400_naming_it(image, tensor):
    with pytest.raises(BadInput, match="wrong content type 'text/plain'") as err:
        image.decode(b"hello", "text/plain")
    assert err.value.status == 400 and "image/jpeg" in str(err.value)
    with pytest.raises(BadInput, match="wrong content type 'image/png'"):
        tensor.decode(_image_bytes("PNG"), "image/png")
    with pytest.raises(BadInput, match=r"wrong content type '\(none\)'"):
        tensor.decode(b"{}", "")


def test_corrupt_or_other_images_are_400(image):
    png = _image_bytes("PNG")
    for body in (b"\x89PNG\r\n\x1a\n" + b"\0" * 50, png[: len(png) // 2], b"not an image"):
        with pytest.raises(BadInput, match="corrupt or unreadable image") as err:
            image.decode(body, "image/png")
        assert err.value.status == 400
    with pytest.raises(BadInput, match="GIF is not JPEG or PNG"):
        image.decode(_image_bytes("GIF"), "image/png")


def test_body_over_limit_is_413(test_catalog):
    handler = make_handler("tensor", test_catalog["digits-cnn"], max_bytes=100)
    with pytest.raises(BadInput, match="over the 100-byte limit") as err:
        handler.decode(_json(np.zeros((8, 8, 1))), "application/json")
    assert err.value.status == 413


def test_wrong_shape_names_expected_and_got(tensor):
    with pytest.raises(BadInput, match=r"takes \[1, 32, 32, 3\].*got \[1, 8, 8, 1\]"):
        tensor.decode(_json(np.zeros((1, 8, 8, 1))), "application/json")
    with pytest.raises(BadInput, match=r"got \[2, 32, 32, 3\]"):
        tensor.decode(to_npy(np.zeros((2, 32, 32, 3), np.float32)), "application/x-npy")


def test_dtype_rules():
    shape, f32, u8 = (1, 2), np.dtype("float32"), np.dtype("uint8")
    assert conform(np.array([1, 2]), shape, f32).dtype == f32  # int -> float: accepted
    assert conform(np.array([[0.5, 1.5]]), shape, f32).dtype == f32  # float64 -> float32
    assert conform(np.array([3, 255]), shape, u8).tolist() == [[3, 255]]
    with pytest.raises(BadInput, match="wrong dtype: the model takes uint8, got float64"):
        conform(np.array([0.5, 1.0]), shape, u8)
    with pytest.raises(BadInput, match=r"outside uint8 range"):
        conform(np.array([3, 256]), shape, u8)
    with pytest.raises(BadInput, match="inputs must be numbers"):
        conform(np.array(["a", "b"]), shape, f32)


def test_bad_json_bodies(tensor):
    cases = {
        b"{not json": "not valid JSON",
        b"\xff\xfe": "not valid JSON",
        b"[1, 2]": "must be an object",
        b'{"input": []}': "must be an object",
        b'{"inputs": [[1, 2], [3]]}': "rectangular",
        b'{"inputs": [["a"]]}': "inputs must be numbers",
    }
    for body, problem in cases.items():
        with pytest.raises(BadInput, match=problem):
            tensor.decode(body, "application/json")


def test_bad_handler_configuration(test_catalog):
    with pytest.raises(ValueError, match="unknown handler 'audio'"):
        make_handler("audio", test_catalog["tiny-cnn"])
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['topk'\]"):
        make_handler("image", test_catalog["tiny-cnn"], topk=3)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        make_handler("image", {"input_shape": [1, 10], "input_dtype": "float32"})
    with pytest.raises(ValueError, match="no usable input_shape"):
        make_handler("tensor", {})


# --- model paths ------------------------------------------------------------------------------


def test_model_path_refuses_escapes(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (tmp_path / "secret.tflite").write_bytes(b"x")
    (models / "link.tflite").symlink_to(tmp_path / "secret.tflite")
    (models / "ok.tflite").write_bytes(b"x")
    assert model_path(models, "ok.tflite") == (models / "ok.tflite").resolve()
    for bad, problem in [
        ("/etc/passwd", "absolute path"),
        ("../secret.tflite", "'..'"),
        ("sub/../../secret.tflite", "'..'"),
        ("link.tflite", "outside the model dir"),
        ("", "empty"),
    ]:
        with pytest.raises(ValueError, match=problem):
            model_path(models, bad)


# --- stack file and zero configuration ----------------------------------------------------------


def test_example_stack_file_loads(test_models, test_catalog):
    from pathlib import Path

    stack = Path(__file__).resolve().parents[1] / "functions" / "stack.yml"
    functions = load_stack(stack, test_models, test_catalog)
    digits = functions["digits"]
    assert (digits.model, digits.handler) == ("digits-cnn", "digits")
    micro = functions["mobilenet-micro"].describe()
    assert micro == {
        "name": "mobilenet-micro",
        "model": "mobilenet-micro",
        "handler": "image",
        "input_shape": [1, 64, 64, 3],
        "input_dtype": "float32",
        "content_types": ["image/jpeg", "image/png"],
        "memory": 8 << 20,
    }
    assert functions["mobilenetv2-mini"].model == "mobilenetv2-mini"  # model defaults to name


@pytest.mark.parametrize(
    "text,problem",
    [
        ("functions: [a, b]", "'functions:' mapping"),
        ("functions: {f: {model: nope}}", "function 'f': model 'nope' is not in the catalog"),
        ("functions: {f: {model: tiny-cnn, modle: x}}", r"'f': unknown key\(s\) \['modle'\]"),
        ("functions: {f: {model: tiny-cnn, handler: audio}}", "function 'f': unknown handler"),
        ("functions: {f: {model: vector, handler: image}}", "1 or 3 channels"),
        ("functions: {f: {model: tiny-cnn, memory: lots}}", "'f': memory 'lots' is not a size"),
        ("functions: {f: {model: tiny-cnn, file: ../x.tflite}}", "function 'f': model file"),
        ("functions: {f: {model: tiny-cnn, options: [1]}}", "options must be a mapping"),
        ("functions: {f: {model: tiny-cnn, options: {k: 1}}}", r"unknown option\(s\) \['k'\]"),
        ("functions: {f: tiny-cnn}", "function 'f' must be a mapping"),
        ("functions: {'../f': {model: tiny-cnn}}", "function name '../f'"),
        ("fucntions: {}", "'functions:' mapping"),
        ("functions: {}\nextra: 1", r"unknown top-level key\(s\) \['extra'\]"),
        ("functions: {f: [", "not valid YAML"),
    ],
)
def test_stack_file_errors_name_the_problem(tmp_path, test_models, test_catalog, text, problem):
    path = tmp_path / "stack.yml"
    path.write_text(text)
    vector = {"file": "tiny-cnn.tflite", "input_shape": [1, 10], "input_dtype": "float32"}
    with pytest.raises(ValueError, match=problem) as err:
        load_stack(path, test_models, {**test_catalog, "vector": vector})
    assert str(path) in str(err.value)


def test_missing_stack_file(tmp_path, test_models, test_catalog):
    with pytest.raises(ValueError, match="cannot read stack file"):
        load_stack(tmp_path / "none.yml", test_models, test_catalog)


def test_parse_memory():
    assert parse_memory(None) is None
    assert parse_memory(1234) == 1234
    assert parse_memory("64Mi") == 64 << 20
    assert parse_memory("100MB") == 100_000_000
    assert parse_memory("1.5G") == 1_500_000_000
    for bad in (0, -5, "-1Mi", "ten", True):
        with pytest.raises(ValueError, match="memory"):
            parse_memory(bad)


def test_zero_config_serves_every_model_and_uncatalogued_files(tmp_path, test_models):
    catalog = load_catalog(test_models)
    functions = zero_config(test_models)
    assert set(functions) == set(catalog)
    assert functions["digits-cnn"].handler == "digits"
    assert functions["mobilenet-micro"].handler == "image"
    assert all(isinstance(f, Function) for f in functions.values())

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(test_models / "digits-cnn.tflite", models)
    shutil.copy(test_models / "tiny-cnn.tflite", models / "mystery.tflite")
    (models / "broken.tflite").write_bytes(b"not a flatbuffer")
    write_catalog(models, {"digits-cnn": catalog["digits-cnn"]})
    found = zero_config(models)
    assert set(found) == {"digits-cnn", "mystery"}  # broken.tflite skipped with a warning
    mystery = found["mystery"]
    # no catalog entry: shape from the interpreter, tensor handler (normalisation unknown)
    assert mystery.handler == "tensor" and mystery.file == "mystery.tflite"
    assert mystery.describe()["input_shape"] == [1, 32, 32, 3]
    handler = make_handler(mystery.handler, mystery.record)
    batch = handler.decode(_json(np.zeros((32, 32, 3))), "application/json")
    out = load_model(model_path(models, mystery.file)).predict(batch)
    assert len(handler.encode(out)["outputs"][0]) == 10
