"""The profiler measures each real model in a fresh process and reports failures by name."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from agent.cli import main

MEASURED = (
    "file_bytes",
    "cold_load_s",
    "warm_load_s",
    "first_invoke_s",
    "exec_s",
    "loaded_bytes",
    "unload_s",
    "released_bytes",
    "avg_load_latency",
    "avg_exec_latency",
    "loaded_size",
    "avg_unload_latency",
)


@pytest.fixture(scope="module")
def profiled(test_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("profile")
    result = CliRunner().invoke(
        main,
        [
            "models",
            "profile",
            "--models",
            str(test_models),
            "--out",
            str(out / "p.json"),
            "--runs",
            "3",
            "--plot",
            str(out / "p.png"),
        ],
    )
    return result, json.loads((out / "p.json").read_text()), out


def test_records_are_complete_and_positive(profiled, test_catalog):
    result, doc, _ = profiled
    assert result.exit_code == 0, result.output
    assert {r["name"] for r in doc["models"]} == set(test_catalog)
    assert doc["failures"] == []
    for rec in doc["models"]:
        for field in MEASURED:
            assert rec[field] > 0, (rec["name"], field, rec[field])
        assert rec["file_bytes"] == test_catalog[rec["name"]]["file_bytes"]


def test_records_are_consistent(profiled):
    _, doc, _ = profiled
    for rec in doc["models"]:
        name = rec["name"]
        # the seed's names are derived from brulee's own measurements
        assert rec["avg_exec_latency"] == rec["exec_s"]
        assert rec["loaded_size"] == rec["loaded_bytes"]
        assert rec["avg_unload_latency"] == rec["unload_s"]
        assert rec["avg_load_latency"] >= rec["cold_load_s"]
        # loaded memory is a sane multiple of the file: the weights plus arena and delegate
        # buffers, not orders of magnitude away
        assert rec["loaded_bytes"] <= 4 * rec["file_bytes"] + 8 * 2**20, name
        if rec["file_bytes"] > 2**20:
            assert rec["loaded_bytes"] >= 0.5 * rec["file_bytes"], name
            # dropping the interpreter really gives most of it back
            assert rec["released_bytes"] >= 0.5 * rec["loaded_bytes"], name
    device = doc["device"]
    assert device["cores"] >= 1 and device["runtime"].startswith("tflite-runtime")


def test_table_and_plot(profiled, test_catalog):
    result, _, out = profiled
    header = result.output.splitlines()[0]
    for column in ("model", "file MB", "loaded MB", "load ms", "exec ms", "load/exec"):
        assert column in header
    for name in test_catalog:
        assert name in result.output
    assert (out / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_corrupt_and_foreign_files_are_reported_and_the_rest_profiled(
    test_models, test_catalog, tmp_path
):
    for name in ("tiny-cnn", "digits-cnn"):
        shutil.copy(test_models / f"{name}.tflite", tmp_path)
    (tmp_path / "notes.tflite").write_text("this is a text file, not a model\n" * 20)
    good = (test_models / "mobilenet-micro.tflite").read_bytes()
    (tmp_path / "truncated.tflite").write_bytes(good[: len(good) // 3])
    result = CliRunner().invoke(
        main, ["models", "profile", "--models", str(tmp_path), "--runs", "2"]
    )
    assert result.exit_code == 1
    assert "FAILED notes: notes.tflite:" in result.output
    assert "FAILED truncated: truncated.tflite:" in result.output
    doc = json.loads((tmp_path / "profiles.json").read_text())
    assert {r["name"] for r in doc["models"]} == {"tiny-cnn", "digits-cnn"}
    assert {f["name"] for f in doc["failures"]} == {"notes", "truncated"}
    assert all(f["reason"] for f in doc["failures"])


def test_unknown_model_name_and_empty_directory(tmp_path, test_models):
    runner = CliRunner()
    result = runner.invoke(main, ["models", "profile", "--models", str(tmp_path)])
    assert result.exit_code == 2 and "no .tflite models in" in result.output
    result = runner.invoke(main, ["models", "profile", "--models", str(test_models), "nosuchmodel"])
    assert result.exit_code == 2 and "no model named nosuchmodel" in result.output


def test_digits_accuracy_through_tflite_for_every_dtype(dtype_models, tmp_path):
    out = tmp_path / "p.json"
    args = ["models", "profile", "--models", str(dtype_models), "--out", str(out), "--runs", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "digits acc %" in result.output.splitlines()[0]
    accuracy = {r["name"]: r["digits_accuracy"] for r in json.loads(out.read_text())["models"]}
    suffixes = ("", "-fp16", "-int8", "-int8-full")
    assert set(accuracy) == {f"digits-cnn{s}" for s in suffixes}
    assert all(a >= 0.9 for a in accuracy.values()), accuracy
    table = CliRunner().invoke(main, ["models", "table", str(out)])
    row = next(line for line in table.output.splitlines() if "digits-cnn-int8-full" in line)
    assert f"{accuracy['digits-cnn-int8-full'] * 100:.1f}" in row
