"""One size syntax (agent/sizes.py) for every command and file: each form, each bad input, and
each command's size option going through it."""

from __future__ import annotations

import csv
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from agent.cli import main as brulee
from agent.sizes import SizeError, device_ram, parse_size
from functions.stack import load_stack
from loadgen import simulator, testbed
from tests.test_simulator import profile_file, workload


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("400000000", 400_000_000),
        (" 4e8 ", 400_000_000),
        (400_000_000, 400_000_000),
        (4e8, 400_000_000),
        ("400K", 400_000),
        ("400M", 400_000_000),
        ("1.5G", 1_500_000_000),
        ("400MB", 400_000_000),
        ("400 mb", 400_000_000),
        ("400Ki", 400 << 10),
        ("400Mi", 400 << 20),
        ("400MiB", 400 << 20),
        ("2GiB", 2 << 30),
        ("1.5Ki", 1536),
    ],
)
def test_each_form(text, size):
    assert parse_size(text) == size


def test_percent_of_a_base_given_or_computed():
    assert parse_size("50%", percent_of=400) == 200
    assert parse_size("100%", percent_of=400) == 400
    assert parse_size("0.1%", percent_of=400) == 1  # never a zero cap
    assert parse_size("25%", percent_of=lambda: 800) == 200
    assert parse_size("50%", percent_of=device_ram) == device_ram() // 2


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        ("lots", {}, "'lots' is not a size: expected bytes"),
        ("400X", {}, "'400X' is not a size"),
        ("", {}, "is not a size"),
        ("\t64Mi", {}, "is not a size"),  # plain spaces only, as the API schema's pattern
        ("-1Mi", {}, "'-1Mi' is not a size"),
        ("0", {}, "'0' is not a size"),
        (0, {}, "at least 1 byte and below 2^63, got 0"),
        (-5, {}, "got -5"),
        (2**63, {}, "below 2^63"),
        ("1e999", {}, "'1e999' is too large"),
        ("9e18Gi", {}, "too large"),
        (True, {}, "got True"),
        (None, {}, "got None"),
        ("0.5G", {}, "'0.5G' is not a size"),
        ("50%", {}, "a percentage is not accepted here"),
        ("half%", {"percent_of": 10}, "'half%' is not a percentage"),
        ("150%", {"percent_of": 10}, "(0, 100]"),
        ("0%", {"percent_of": 10}, "(0, 100]"),
        ("lots", {"percent_of": 10}, "or PCT%"),
        ("400M", {"was_binary": True}, "used to mean a power of 1,024"),
        ("2g", {"was_binary": True}, "write 2GiB for 2 × 1073741824 bytes or 2GB"),
    ],
)
def test_each_bad_input_is_named(value, kwargs, message):
    with pytest.raises(SizeError) as err:
        parse_size(value, what="memory cap", **kwargs)
    assert message in str(err.value)
    assert "memory cap" in str(err.value)


def test_an_option_that_read_binary_accepts_explicit_units():
    assert parse_size("400MB", was_binary=True) == 400_000_000
    assert parse_size("400MiB", was_binary=True) == 400 << 20
    assert parse_size("1024", was_binary=True) == 1024


def _up_cap(command: str, *args: str) -> int:
    cmd = brulee.get_command(click.Context(brulee), command)
    return cmd.make_context(command, list(args)).params["memory_cap"]


@pytest.mark.parametrize("command", ["up", "worker"])
def test_up_and_worker_memory_cap_use_the_shared_parser(command):
    extra = ["--redis-url", "redis://127.0.0.1:1"] if command == "worker" else []
    assert _up_cap(command, *extra, "--memory-cap", "400MiB") == parse_size("400Mi")
    assert _up_cap(command, *extra, "--memory-cap", "400MB") == testbed.parse_cap("400M", 1)
    assert _up_cap(command, *extra, "--memory-cap", "10%") == device_ram() // 10
    result = CliRunner().invoke(brulee, [command, *extra, "--memory-cap", "400M"])
    assert result.exit_code == 2
    assert "used to mean a power of 1,024" in result.output
    assert "400MiB" in result.output and "400MB" in result.output
    assert "device's total" in CliRunner().invoke(brulee, [command, "--help"]).output


def test_testbed_cap_uses_the_shared_parser():
    """(And its bad --cap on the command line: tests/test_testbed.py.)"""
    assert testbed.parse_cap("400M", 10) == parse_size("400M") == 400_000_000
    assert testbed.parse_cap("400Mi", 10) == _up_cap("up", "--memory-cap", "400MiB")
    assert testbed.parse_cap("50%", 400) == 200
    help_text = CliRunner().invoke(brulee, ["testbed", "--help"]).output
    assert "working set" in help_text


def test_simulate_memory_cap_uses_the_shared_parser(tmp_path: Path):
    assert simulator.parse_cap("2Ki", 10) == 2048
    w = workload(tmp_path, [(0, "A"), (1, "B"), (2, "A")])
    out = tmp_path / "out"
    args = ["simulate", "--workload", w, "--profiles", profile_file(tmp_path), "--policies",
            "lru", "--out", str(out), "--memory-cap"]  # fmt: skip
    res = CliRunner().invoke(brulee, [*args, "2e2,50%"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [int(r["cap_bytes"]) for r in rows] == [200, 100]  # 50% of A+B = 200 bytes
    res = CliRunner().invoke(brulee, [*args, "lots"])
    assert res.exit_code != 0
    assert "'lots' is not a size" in res.output


def test_stack_file_memory_uses_the_shared_parser(tmp_path: Path, test_models, test_catalog):
    stack = tmp_path / "stack.yml"
    stack.write_text(
        "functions: {a: {model: tiny-cnn, memory: 8Mi}, b: {model: tiny-cnn, memory: 8M}}"
    )
    functions = load_stack(stack, test_models, test_catalog)
    assert functions["a"].memory == 8 << 20 == parse_size("8MiB")
    assert functions["b"].memory == 8_000_000 == testbed.parse_cap("8M", 1)
