"""`brulee testbed` (the README's main job) end to end against the REAL agent: `brulee up` with
its own redis-server, gunicorn, RQ workers and TFLite models, replayed by Locust with the real
Azure 2019 rows, and the simulator on the same workload."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
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
