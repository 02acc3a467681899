"""The zoo builder: real Keras architectures converted to TFLite, reproducibly."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.runtime import load_model
from models import build as build_module
from models.build import DTYPES, build, plan
from models.catalog import RECORD_FIELDS, load_catalog, sha256_file
from models.digits import held_out_accuracy
from models.zoo import ARCHITECTURES, SETS, Architecture, resolve


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


def test_two_jobs_build_the_same_bytes_and_catalog_in_spec_order(tmp_path):
    names = ["tiny-cnn", "mobilenet-micro"]
    one = _build(names, tmp_path / "one")
    two = dict(build(plan(resolve(names=names)), tmp_path / "two", progress=False, jobs=2))
    assert list(two) == list(one) == names
    assert two == {name: True for name in names}
    timed = ("exec_s", "builtin_exec_s")  # measured as each file is checked

    def untimed(directory):
        return {
            name: {
                **rec,
                "delegation": {k: v for k, v in rec["delegation"].items() if k not in timed},
            }
            for name, rec in load_catalog(directory).items()
        }

    assert untimed(tmp_path / "two") == untimed(tmp_path / "one")
    for name in names:
        a = (tmp_path / "one" / f"{name}.tflite").read_bytes()
        assert (tmp_path / "two" / f"{name}.tflite").read_bytes() == a, name
    assert _build(names, tmp_path / "two") == {name: False for name in names}


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
    built = _build(["tiny-cnn"], tmp_path, variants=2, dtypes=DTYPES)
    assert set(built) == {
        f"tiny-cnn{v}{d}" for v in ("", "-v1") for d in ("", "-fp16", "-int8", "-int8-full")
    }
    files = {n: (tmp_path / f"{n}.tflite").read_bytes() for n in built}
    assert len(set(files.values())) == 8  # every variant and dtype is a distinct model
    # quantised weights take less room
    assert len(files["tiny-cnn-int8"]) < len(files["tiny-cnn-fp16"]) < len(files["tiny-cnn"])
    assert len(files["tiny-cnn-int8-full"]) < len(files["tiny-cnn"]) / 2
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


def test_digits_model_is_accurate_through_tflite_in_every_dtype(dtype_models):
    catalog = load_catalog(dtype_models)
    assert [catalog[f"digits-cnn{s}"]["dtype"] for s in ("", "-fp16", "-int8", "-int8-full")] == [
        *DTYPES
    ]
    for name, rec in catalog.items():
        accuracy = held_out_accuracy(load_model(dtype_models / rec["file"]))
        assert accuracy >= 0.9, (name, accuracy)
    # full-integer: int8 tensors in the file, float at the runtime's boundary, a quarter the bytes
    full = catalog["digits-cnn-int8-full"]
    assert full["input_dtype"] == full["output_dtype"] == "float32"
    assert full["input_quantization"]["dtype"] == full["output_quantization"]["dtype"] == "int8"
    assert catalog["digits-cnn"]["input_quantization"] is None
    assert full["file_bytes"] < 0.3 * catalog["digits-cnn"]["file_bytes"]


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


# --- every model runs whole on XNNPACK --------------------------------------------------------


def test_every_test_model_is_fully_delegated(test_catalog):
    for name, rec in test_catalog.items():
        delegation = rec["delegation"]
        assert delegation["outside"] == {} and delegation["partitions"] == 1, (name, delegation)
        assert delegation["exec_s"] > 0 and delegation["builtin_exec_s"] > 0, name


def test_a_fixed_batch_is_its_own_model(tmp_path):
    assert _build(["tiny-cnn"], tmp_path, batch=3) == {"tiny-cnn-b3": True}
    rec = load_catalog(tmp_path)["tiny-cnn-b3"]
    assert rec["batch"] == 3 and rec["input_shape"] == [3, 32, 32, 3]
    assert rec["delegation"]["outside"] == {}
    model = load_model(tmp_path / rec["file"])
    assert model.predict(model.input.random(np.random.default_rng(0))).shape == (3, 10)
    result = CliRunner().invoke(main, ["models", "build", "--arch", "tiny-cnn", "--batch", "0"])
    assert result.exit_code == 2 and "--batch" in result.output


def _small(name: str) -> Architecture:
    """An edge architecture at 32x32 pixels and 10 classes (narrow where it has a width)."""
    arch = ARCHITECTURES[name]
    kwargs = {**arch.kwargs, **({"alpha": 0.25} if name in ("mobilenet", "mobilenetv2") else {})}
    return dataclasses.replace(arch, input_size=32, classes=10, kwargs=kwargs)


@pytest.mark.timeout(1500)  # ten real architectures converted, two at a time (2 cores)
def test_edge_architectures_in_a_small_size_are_fully_delegated(tmp_path):
    specs = plan([_small(name) for name in SETS["edge"]])
    built = dict(build(specs, tmp_path, progress=False, jobs=2))  # NotDelegated would fail it
    assert list(built) == SETS["edge"]
    for name, rec in load_catalog(tmp_path).items():
        # all of it, but for ResNetV2's three 1x1 max pools (a window XNNPACK does not take)
        want = {"MAX_POOL_2D": 3} if name == "resnet50v2" else {}
        assert rec["delegation"]["outside"] == want, (name, rec["delegation"])
        assert rec["input_shape"] == [1, 32, 32, 3], name


def test_a_model_left_off_xnnpack_fails_the_build_naming_its_ops(tmp_path, monkeypatch):
    # the conversion builder version 1 did: the Keras model's own signature, batch left open
    convert = build_module.convert
    monkeypatch.setattr(build_module, "convert", lambda spec: convert(spec, open_batch=True))
    runner = CliRunner()
    args = ["models", "build", "--arch", "tiny-cnn,mobilenet-micro", "--out", str(tmp_path)]
    result = runner.invoke(main, args)
    assert result.exit_code == 1
    # tiny-cnn has no reshape, so an open batch costs it nothing; mobilenet's head has one
    assert "tiny-cnn: 6/6 ops on XNNPACK" in result.output
    failure = next(line for line in result.output.splitlines() if line.startswith("FAILED"))
    assert failure.startswith("FAILED mobilenet-micro: 38 of 38 ops run outside the XNNPACK")
    for op in ("SHAPE", "STRIDED_SLICE", "PACK", "RESHAPE", "CONV_2D x15"):
        assert op in failure
    assert "the input's shape [-1, 64, 64, 3] has a dynamic dimension" in failure
    assert "--allow-partial" in result.output
    assert not (tmp_path / "mobilenet-micro.tflite").exists()
    assert set(load_catalog(tmp_path)) == {"tiny-cnn"}

    result = runner.invoke(main, [*args, "--allow-partial"])
    assert result.exit_code == 0, result.output
    assert "mobilenet-micro: 0/38 ops on XNNPACK" in result.output
    rec = load_catalog(tmp_path)["mobilenet-micro"]
    assert rec["delegation"]["outside"]["SHAPE"] == 1 and rec["delegation"]["partitions"] == 0
