"""The zoo builder: real Keras architectures converted to TFLite, reproducibly."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from agent.cli import main
from agent.runtime import load_model
from models.build import build, plan
from models.catalog import RECORD_FIELDS, load_catalog, sha256_file
from models.zoo import SETS, resolve


def _build(names, out, **kw):
    return dict(build(plan(resolve(names=names), **kw), out, progress=False))


def test_same_seed_builds_byte_identical_files(tmp_path):
    names = ["tiny-cnn", "mobilenet-micro"]
    _build(names, tmp_path / "a")
    _build(names, tmp_path / "b")
    for name in names:
        a = (tmp_path / "a" / f"{name}.tflite").read_bytes()
        b = (tmp_path / "b" / f"{name}.tflite").read_bytes()
        assert a == b, name
    _build(["tiny-cnn"], tmp_path / "c", seed=1)
    assert (tmp_path / "c" / "tiny-cnn.tflite").read_bytes() != (
        tmp_path / "a" / "tiny-cnn.tflite"
    ).read_bytes()


def test_build_is_idempotent(tmp_path):
    assert _build(["tiny-cnn"], tmp_path) == {"tiny-cnn": True}
    mtime = (tmp_path / "tiny-cnn.tflite").stat().st_mtime_ns
    assert _build(["tiny-cnn"], tmp_path) == {"tiny-cnn": False}
    assert (tmp_path / "tiny-cnn.tflite").stat().st_mtime_ns == mtime
    # a damaged file is noticed and rebuilt
    (tmp_path / "tiny-cnn.tflite").write_bytes(b"damaged")
    assert _build(["tiny-cnn"], tmp_path) == {"tiny-cnn": True}
    assert sha256_file(tmp_path / "tiny-cnn.tflite") == load_catalog(tmp_path)["tiny-cnn"]["sha256"]


def test_variants_and_dtypes(tmp_path):
    built = _build(["tiny-cnn"], tmp_path, variants=2, dtypes=["float32", "float16", "int8"])
    assert set(built) == {
        "tiny-cnn",
        "tiny-cnn-fp16",
        "tiny-cnn-int8",
        "tiny-cnn-v1",
        "tiny-cnn-v1-fp16",
        "tiny-cnn-v1-int8",
    }
    files = {n: (tmp_path / f"{n}.tflite").read_bytes() for n in built}
    assert len(set(files.values())) == 6  # every variant and dtype is a distinct model
    # quantised weights take less room
    assert len(files["tiny-cnn-int8"]) < len(files["tiny-cnn-fp16"]) < len(files["tiny-cnn"])
    catalog = load_catalog(tmp_path)
    assert catalog["tiny-cnn-v1"]["variant"] == 1 and catalog["tiny-cnn-int8"]["dtype"] == "int8"
    # all still run, with float input and output
    for name in built:
        model = load_model(tmp_path / f"{name}.tflite")
        assert model.predict(model.input.random(np.random.default_rng(0))).shape == (1, 10)


def test_catalog_records_are_complete_and_true(test_models, test_catalog):
    assert set(test_catalog) == set(SETS["test"])
    sizes = []
    for name, rec in test_catalog.items():
        assert set(RECORD_FIELDS) <= set(rec), name
        path = test_models / rec["file"]
        assert path.stat().st_size == rec["file_bytes"]
        assert sha256_file(path) == rec["sha256"]
        sizes.append(rec["file_bytes"])
    # clearly different sizes: tens of KB up to a few MB
    assert min(sizes) < 100_000 and max(sizes) > 2_000_000
    doc = json.loads((test_models / "catalog.json").read_text())
    assert doc["version"] == 1


def test_digits_model_is_accurate_through_tflite(test_models, test_catalog):
    from models.digits import load_split

    _, _, x_test, y_test = load_split()
    model = load_model(test_models / test_catalog["digits-cnn"]["file"])
    predicted = [int(np.argmax(model.predict(x[None]))) for x in x_test]
    accuracy = float(np.mean(np.array(predicted) == y_test))
    assert len(y_test) >= 300
    assert accuracy >= 0.9, accuracy


def test_unknown_set_lists_valid_sets(tmp_path):
    result = CliRunner().invoke(main, ["models", "build", "--set", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown set 'nope'" in result.output
    for name in SETS:
        assert name in result.output


def test_unknown_architecture_lists_valid_ones(tmp_path):
    result = CliRunner().invoke(
        main, ["models", "build", "--arch", "resnet9000", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "unknown architecture 'resnet9000'" in result.output
    assert "mobilenetv2" in result.output and "densenet121" in result.output
    assert not (tmp_path / "catalog.json").exists()


def test_bad_dtype_and_pretrained_variants_are_refused(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        main, ["models", "build", "--arch", "tiny-cnn", "--dtype", "int4", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "unknown dtype 'int4'" in result.output
    result = runner.invoke(
        main, ["models", "build", "--arch", "mobilenet", "--weights", "imagenet", "--variants", "2"]
    )
    assert result.exit_code == 2 and "needs random weights" in result.output


def test_list_shows_the_plan_without_building(tmp_path):
    result = CliRunner().invoke(
        main, ["models", "build", "--set", "full", "--list", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0
    assert len(result.output.strip().splitlines()) == 26
    assert not (tmp_path / "catalog.json").exists()
