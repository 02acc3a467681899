"""`brulee testbed` (the README's main job) end to end against the REAL agent: `brulee up` with
its own redis-server, gunicorn, RQ workers and TFLite models, replayed by Locust with the real
Azure 2019 rows, and the simulator on the same workload."""

from __future__ import annotations

import ctypes
import io
import json
import mmap
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from agent.cli import main as brulee
from loadgen.workload_file import iter_workload

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def profiled_models(test_models: Path, tmp_path_factory) -> Path:
    """A copy of the test models with their profile (the agent accounts with it)."""
    models = tmp_path_factory.mktemp("models")
    for item in test_models.iterdir():
        if item.suffix in (".tflite", ".json"):
            shutil.copy(item, models / item.name)
    result = CliRunner().invoke(
        brulee, ["models", "profile", "--models", str(models), "--runs", "3"]
    )
    assert result.exit_code == 0, result.output
    return models


def test_testbed_against_the_real_agent(profiled_models: Path, tmp_path: Path):
    out = tmp_path / "tb"
    result = CliRunner().invoke(
        brulee,
        ["testbed", "--models", str(profiled_models), "--minutes", "0.3", "--cap", "80%",
         "--policies", "lru", "--workers", "1", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    workload = list(iter_workload(out / "workload.csv"))
    n = len(workload)
    assert n > 500  # the real rows: ~1000 requests in a day, here in 18 s
    summary = json.loads((out / "lru" / "summary.json").read_text())

    # every request of the workload was sent, once, to the function the workload names
    assert summary["scheduled"] == summary["requests"] == n
    per_function = {f: b["requests"] for f, b in summary["functions"].items()}
    assert per_function == dict(Counter(r.function for r in workload))
    # every answered request says hit or miss; the agent's own counters agree
    answered = n - summary["failures"]
    assert summary["hits"] + summary["cold_starts"] == answered
    counted = summary["agent_counts"]
    assert counted["hits"] == summary["hits"]
    assert (
        summary["cold_starts"] <= counted["misses"] <= summary["cold_starts"] + summary["failures"]
    )
    assert 0 < summary["cold_starts"] < n
    # the workers report their resident memory: the pool's footprint is in the summary
    pool = summary["pool_memory"]
    assert pool["baseline_rss_bytes"] > 10 * 2**20  # a Python process with the interpreter
    assert pool["peak_rss_bytes"] >= pool["baseline_rss_bytes"]
    # the simulator ran on the same workload with the agent's settings, side by side
    sim = summary["simulated"]
    assert sim["requests"] == n
    assert sim["settings"]["policy"] == "lru" and sim["settings"]["workers"] == 1
    assert (sim["settings"]["deadline_s"], sim["settings"]["max_waiting"]) == (60.0, 64)
    # by default it runs on the load and exec times this run measured (sizes: the profile's)
    assert sim["settings"]["costs"] == "measured" and sim["profiles"].startswith("load and exec")
    assert sim["mean_exec_s"] == pytest.approx(summary["mean_exec_s"], rel=0.05)
    assert set(summary["comparison"]) >= {"hit_ratio_pp", "cold_starts_pct"}
    assert "measured" in result.output and "simulated" in result.output
    rows = json.loads((out / "testbed.json").read_text())["policies"]
    assert [r["policy"] for r in rows] == ["lru"] and rows[0]["requests"] == n
    assert rows[0]["sim failed"] == sum(sim[k] for k in ("rejected", "timed_out", "queue_full"))
    for name in ("report.html", "summary.png", "locust_stats.csv"):
        assert (out / "lru" / name).stat().st_size > 0


def _write_workload(path: Path, functions: list[str], seconds: float, per_second: float) -> Path:
    from loadgen.workload_file import Request, write_workload

    n = int(seconds * per_second)
    # every other request for the first function, the rest in turn
    reqs = (Request(i / per_second, functions[0 if i % 2 else (i // 2) % len(functions)], str(i))
            for i in range(n))  # fmt: skip
    write_workload(path, reqs)
    return path


def test_testbed_replays_a_workload_file_with_repetitions(profiled_models: Path, tmp_path: Path):
    """--workload: any workload file, as it is; --repeat: each policy's runs in rounds, and the
    table of medians with their min-max."""
    models = ["tiny-cnn", "mobilenet-micro", "mobilenetv2-mini", "mobilenetv3small-mini"]
    workload = _write_workload(tmp_path / "w.csv", models, seconds=3, per_second=10)
    out = tmp_path / "tb"
    result = CliRunner().invoke(
        brulee,
        ["testbed", "--models", str(profiled_models), "--workload", str(workload), "--cap", "60%",
         "--policies", "random,lru", "--repeat", "2", "--workers", "1", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "testbed.json").read_text())
    assert doc["workload"] == str(workload) and doc["cold_loads"] is True
    assert sorted(doc["models"]) == sorted(models)
    runs = [(r["policy"], r["rep"]) for r in doc["policies"]]
    assert runs == [("random", 1), ("lru", 1), ("random", 2), ("lru", 2)]  # rounds of policies
    for policy, rep in runs:
        summary = json.loads((out / policy / f"rep{rep}" / "summary.json").read_text())
        assert summary["requests"] == 30
    for row in doc["policies"]:
        assert row["requests"] == 30
        if row["policy"] == "random":
            assert row["load vs random"] == row["costed vs random"] == 1.0  # against itself
        else:
            assert row["costed vs random"] > 0  # the same round's random run is the base
    spread = {r["policy"]: r for r in doc["spread"]}
    assert set(spread) == {"random", "lru"} and spread["lru"]["runs"] == 2
    values = [r["hit ratio"] for r in doc["policies"] if r["policy"] == "lru"]
    hit = spread["lru"]["hit ratio"]
    assert (hit["min"], hit["max"]) == (min(values), max(values))
    assert hit["min"] <= hit["median"] <= hit["max"]
    assert "median (min-max) of 2 runs per policy" in result.output
    assert (out / "policies.png").stat().st_size > 0


def test_testbed_refuses_a_workload_naming_models_the_zoo_lacks(
    profiled_models: Path, tmp_path: Path
):
    workload = _write_workload(tmp_path / "w.csv", ["tiny-cnn", "resnet9000"], 1, 4)
    result = CliRunner().invoke(
        brulee,
        ["testbed", "--models", str(profiled_models), "--workload", str(workload),
         "--out", str(tmp_path / "tb")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "1 model(s) that are not in" in result.output and "resnet9000" in result.output
    assert "catalog.json" in result.output and "brulee models build" in result.output
    assert not (tmp_path / "tb" / "testbed.json").exists()


def test_testbed_on_a_synthetic_workload_of_distinct_model_variants(
    test_models: Path, tmp_path: Path
):
    """--synth N: builds (once, then cached) and profiles a variant zoo, and replays a synthetic
    Azure-like day whose every function has a model (a file) of its own."""
    zoo = test_models.parent / f"{test_models.name}-variants"
    out = tmp_path / "tb"
    result = CliRunner().invoke(
        brulee,
        ["testbed", "--synth", "6", "--archs", "tiny-cnn,mobilenet-micro", "--models", str(zoo),
         "--minutes", "0.25", "--rate", "8", "--cap", "50%", "--policies", "gdsf",
         "--workers", "1", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    from models.catalog import load_catalog

    catalog = load_catalog(zoo)
    workload = list(iter_workload(out / "workload.csv"))
    model_of: dict[str, set[str]] = {}
    for req in workload:
        model_of.setdefault(req.source, set()).add(req.function)
    # one model per synthetic function, and no model shared by two functions
    assert all(len(m) == 1 for m in model_of.values())
    used = [next(iter(m)) for m in model_of.values()]
    assert len(set(used)) == len(used) >= 3
    assert set(used) <= {"tiny-cnn", "tiny-cnn-v1", "tiny-cnn-v2", "mobilenet-micro",
                         "mobilenet-micro-v1", "mobilenet-micro-v2"}  # fmt: skip
    files = {catalog[m]["file"] for m in used}
    assert len(files) == len(used)  # distinct weights: a file each
    # about --rate x --minutes requests: the busiest functions thinned, the day in 15 s
    assert 60 <= len(workload) <= 180 and workload[-1].time <= 15
    summary = json.loads((out / "gdsf" / "summary.json").read_text())
    assert summary["requests"] == len(workload)
    assert summary["failures"] == 0, summary.get("errors")
    assert summary["cold_starts"] >= len(set(used))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policies", "cremebrulee,nonsense"], "nonsense"),
        (["--cap", "150%"], "(0, 100]"),
        (["--cap", "lots"], "lots"),
        (["--cap", "400X"], "'400X' is not a size: expected bytes"),  # agent.sizes' message
    ],
)
def test_testbed_bad_input_is_named(profiled_models: Path, tmp_path: Path, args, message):
    result = CliRunner().invoke(
        brulee, ["testbed", "--models", str(profiled_models), "--out", str(tmp_path), *args]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_testbed_without_profile_says_how_to_make_one(test_models: Path, tmp_path: Path):
    models = tmp_path / "m"
    models.mkdir()
    shutil.copy(test_models / "catalog.json", models / "catalog.json")
    result = CliRunner().invoke(brulee, ["testbed", "--models", str(models)])
    assert result.exit_code == 2
    assert "brulee models profile" in result.output


def resident_fraction(path: Path) -> float:
    """The share of ``path``'s pages in the OS page cache, by ``mincore(2)`` on a mapping of it
    (what util-linux's ``fincore`` reports)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]  # fmt: skip
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size, page = path.stat().st_size, os.sysconf("SC_PAGE_SIZE")
    pages = (size + page - 1) // page
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = (ctypes.c_ubyte * pages)()
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(b & 1 for b in vec) / pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


@pytest.mark.parametrize("cold", [True, False], ids=["cold-loads", "warm-loads"])
def test_cold_loads_drop_an_evicted_models_file_from_the_page_cache(
    profiled_models: Path, tmp_path: Path, cold: bool
):
    """`brulee up --cold-loads`: when placement evicts a copy (here to make room for another
    model under the cap), the worker that drops it also drops its file from the page cache, so
    the next load reads storage; without the option the file stays cached."""
    from models.profile import read_profiles
    from tests.agent_fixtures import start_up, stop_up, wait_for_up

    a, b = "mobilenetv2-mini", "mobilenetv3small-mini"
    sizes = [
        int(read_profiles(profiled_models / "profiles.json")[m]["loaded_bytes"]) for m in (a, b)
    ]
    cap = max(sizes) + min(sizes) // 2  # one of them at a time
    os.sync()  # freshly copied files: dirty pages are never dropped, written ones are
    options = ["--workers", "1", "--memory-cap", str(cap)] + ["--cold-loads"] * cold
    up = start_up(profiled_models, tmp_path / "state", *options)
    image = _png(96)

    def call(model: str) -> str:
        resp = requests.post(f"{up.url}/function/{model}", data=image,
                             headers={"Content-Type": "image/png"}, timeout=60)  # fmt: skip
        assert resp.status_code == 200, resp.text
        return resp.headers["X-Cache"]

    try:
        wait_for_up(up, workers=1)
        assert call(a) == "miss"
        assert resident_fraction(profiled_models / f"{a}.tflite") > 0.9  # loading read it
        assert call(b) == "miss"  # a is evicted to make room, and dropped by its worker
        deadline = time.monotonic() + 10
        while cold and resident_fraction(profiled_models / f"{a}.tflite") > 0.1:
            assert time.monotonic() < deadline, "the evicted model's file stayed cached"
            time.sleep(0.1)
        cached = resident_fraction(profiled_models / f"{a}.tflite")
        assert cached < 0.1 if cold else cached > 0.9
        assert resident_fraction(profiled_models / f"{b}.tflite") > 0.9  # the held one stays
        assert call(a) == "miss"  # it really was evicted in both runs
    finally:
        stop_up(up)


def _png(side: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()
