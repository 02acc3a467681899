"""Locust replay end to end: real HTTP, real Locust subprocess, real TFLite models.

The server is loadgen/replay_standin.py under gunicorn (LRU cache of real TFLite interpreters
under a byte cap, the agent's HTTP surface). The workload is the real Azure 2019 rows in
loadgen/data, compressed to ~20 s and mapped onto the test models.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import main as brulee
from agent.redis_server import free_port
from loadgen.replay import ReplayError, function_mapping, run_replay, workload_functions
from loadgen.workload_file import Request, iter_workload, write_workload

ROOT = Path(__file__).resolve().parent.parent
AZURE_ROWS = ROOT / "loadgen" / "data" / "azure2019_invocations_first9rows.csv"
SMALL_MODELS = ["digits-cnn", "mobilenet-micro", "mobilenetv2-mini", "tiny-cnn"]


@pytest.fixture(scope="module")
def server(test_models: Path, test_catalog: dict):
    """gunicorn serving the test models with the cap at 50 % of the small models' working set."""
    import requests

    sizes = {name: rec["file_bytes"] for name, rec in test_catalog.items()}
    cap = sum(sizes[m] for m in SMALL_MODELS) // 2
    port = free_port()
    env = dict(os.environ, BRULEE_STANDIN_MODELS=str(test_models), BRULEE_STANDIN_CAP=str(cap))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "1", "-k", "gthread",
         "--threads", "8", "--keep-alive", "60", "--chdir", str(ROOT),
         "loadgen.replay_standin:make_app()"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(75):
        try:
            requests.get(url + "/system/functions", timeout=1)
            break
        except requests.RequestException:
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def mapped_azure_workload(tmp: Path, models: list[str], *options: str) -> Path:
    """The real Azure rows (one day, all triggers) compressed to ~20 s by `brulee trace
    workload` (plus ``options``), with their functions mapped onto ``models``."""
    raw = tmp / "azure.csv"
    result = CliRunner().invoke(
        brulee,
        ["trace", "workload", str(AZURE_ROWS), "--out", str(raw), "--triggers", "all",
         "--speedup", str(86400 / 20), "--seed", "1", *options],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    mapping = function_mapping(workload_functions(raw), models)
    mapped = tmp / "azure-mapped.csv"
    write_workload(
        mapped, (Request(r.time, mapping[r.function], r.id, r.source) for r in iter_workload(raw))
    )
    return mapped


@pytest.fixture(scope="module")
def azure_workload(tmp_path_factory) -> Path:
    return mapped_azure_workload(tmp_path_factory.mktemp("wl"), SMALL_MODELS)


def test_replay_counts_match_workload_and_agent(server, azure_workload, tmp_path):
    expected = Counter(r.function for r in iter_workload(azure_workload))
    assert sum(expected.values()) > 500  # the real rows give ~1000 requests
    summary = run_replay(azure_workload, server, tmp_path, simulate=True)

    n = sum(expected.values())
    assert summary["scheduled"] == n
    assert summary["requests"] == n and summary["failures"] == 0
    assert {f: b["requests"] for f, b in summary["functions"].items()} == dict(expected)
    assert summary["hits"] + summary["cold_starts"] == n
    # the agent's own counters agree with what the replay saw in X-Cache
    assert summary["agent_counts"]["hits"] == summary["hits"]
    assert summary["agent_counts"]["misses"] == summary["cold_starts"]
    assert 0 < summary["cold_starts"] < n  # the cap at 50 % forces some, not all, misses
    assert summary["lag_p99_s"] < 0.25  # open loop kept its schedule on a shared 2-core box
    assert max(m["used_bytes"] for m in summary["memory"]) > 0
    for name in ("summary.json", "summary.png", "report.html", "locust_stats.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["requests"] == n

    sim = summary["simulated"]
    assert sim["requests"] == n
    assert sim["settings"] == {
        "policy": "lru",
        "workers": 1,
        "cap_bytes": saved["memory"][0]["cap_bytes"],
        # the agent's admission defaults (sync timeout, bound) unless it reports others
        "deadline_s": 60.0,
        "max_waiting": 64,
    }
    # the comparison is reported, whatever it says
    assert set(summary["comparison"]) >= {"hit_ratio_pp", "cold_starts_pct"}


def test_unknown_functions_reported_before_run(server, tmp_path):
    path = tmp_path / "w.csv"
    write_workload(path, [Request(0.0, "tiny-cnn", "0"), Request(0.1, "no-such-model", "1"),
                          Request(0.2, "also-missing", "2")])  # fmt: skip
    with pytest.raises(ReplayError, match="also-missing, no-such-model") as err:
        run_replay(path, server, tmp_path / "out")
    assert "--map" in str(err.value)
    assert not (tmp_path / "out" / "records.csv").exists()  # nothing was sent


def test_map_is_deterministic():
    trace = {"b": 5, "a": 5, "c": 9, "tiny-cnn": 1}
    served = ["tiny-cnn", "digits-cnn"]
    mapping = function_mapping(trace, served)
    assert mapping == {
        "tiny-cnn": "tiny-cnn",
        "c": "digits-cnn",
        "a": "tiny-cnn",
        "b": "digits-cnn",
    }
    assert function_mapping(dict(reversed(trace.items())), served[::-1]) == mapping


@pytest.mark.parametrize("silent", [False, True], ids=["nothing-listening", "never-answers"])
def test_unreachable_host_fails_fast(silent, tmp_path):
    path = tmp_path / "w.csv"
    write_workload(path, [Request(0.0, "tiny-cnn", "0")])
    listener = socket.socket()  # accepts connections (backlog) but never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1] if silent else free_port()
    started = time.time()
    result = CliRunner().invoke(
        brulee,
        ["replay", "--workload", str(path), "--host", f"http://127.0.0.1:{port}",
         "--out", str(tmp_path / "out")],
    )  # fmt: skip
    listener.close()
    assert result.exit_code == 1
    assert f"cannot reach the agent at http://127.0.0.1:{port}" in result.output
    assert time.time() - started < 6


def test_sigint_writes_partial_reports(server, tmp_path):
    path = tmp_path / "long.csv"
    write_workload(path, (Request(i * 0.05, "tiny-cnn", str(i)) for i in range(1200)))  # 60 s
    out = tmp_path / "out"
    brulee_bin = Path(sys.executable).with_name("brulee")
    # Ctrl-C as at a terminal: the replay hears SIGINT even when this suite was started in the
    # background (a non-interactive shell's `cmd &` ignores SIGINT, and children inherit that)
    proc = subprocess.Popen(
        [str(brulee_bin), "replay", "--workload", str(path), "--host", server, "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    # interrupt once the replay is really running (20+ records), not after a fixed sleep: on a
    # loaded machine the start-up alone (imports, Locust's workers) can take longer than 5 s
    records = out / "records.csv"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if records.exists() and records.read_text().count("\n") > 25:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the replay ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=90)
    assert proc.returncode == 130, output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert 20 < summary["requests"] < 1200
    with open(out / "records.csv", newline="") as fh:
        assert sum(1 for _ in csv.DictReader(fh)) == summary["requests"]
    assert (out / "report.html").exists() and (out / "locust_stats.csv").exists()
    assert "INTERRUPTED" in output


AGENT_MODELS = ["digits-cnn", "mobilenet-micro", "tiny-cnn"]


def test_replay_against_real_agent(test_models: Path, tmp_path):
    """The real agent (private Redis, a real worker, real models): the replay's X-Cache counts
    equal the agent's own hit/miss counters, and the simulator runs on the same workload."""
    from tests.agent_fixtures import running_agent

    workload = mapped_azure_workload(tmp_path, AGENT_MODELS, "--downsample", "4")
    n = sum(1 for _ in iter_workload(workload))
    # the cap holds mobilenet-micro (2.3 MB resident with XNNPACK's packed weights) with room
    with running_agent(test_models, cap=3_500_000, workers=1, policy="lru") as agent:
        summary = run_replay(
            workload, agent["url"], tmp_path / "out", simulate=True, token=agent["token"]
        )
    assert summary["scheduled"] == summary["requests"] == n
    ok = summary["requests"] - summary["failures"]
    assert ok > 0.9 * n, summary["failures"]
    assert summary["hits"] + summary["cold_starts"] == ok
    assert summary["agent_counts"]["hits"] == summary["hits"]
    # a failed request (e.g. 503 after a load) may still count as a miss at the agent
    misses = summary["agent_counts"]["misses"]
    assert summary["cold_starts"] <= misses <= summary["cold_starts"] + summary["failures"]
    assert summary["simulated"]["requests"] == n
    assert summary["simulated"]["settings"]["policy"] == "lru"


def run_locustfile(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``locust -f loadgen/locustfile.py ARGS`` as a user runs it (a subprocess, headless)."""
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadgen" / "locustfile.py"),
           "--headless", "--users", "1", "--spawn-rate", "1", "--run-time", "60s",
           "--stop-timeout", "10", "--only-summary", "--loglevel", "WARNING", *args]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_locustfile_standalone_against_real_agent(test_models: Path, tmp_path):
    """``locust -f loadgen/locustfile.py --host URL`` with only Locust's options and the
    locustfile's own: the bundled workload by default, the functions fetched with the token."""
    from tests.agent_fixtures import running_agent

    records = tmp_path / "records.csv"
    with running_agent(test_models, cap=64 << 20, workers=1, policy="lru") as agent:
        done = run_locustfile(
            "--host", agent["url"], "--speedup", "1440", "--duration", "7200",
            "--records", str(records), "--csv", str(tmp_path / "locust"),
            env={"BRULEE_TOKEN": agent["token"]},
        )  # fmt: skip
        served = {f.name for f in test_models.glob("*.tflite")}
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(open(records)))
    assert len(rows) > 20  # the bundled day's first 2 hours: 48 requests in 5 s
    assert {r["function"] for r in rows} <= {Path(n).stem for n in served}
    assert max(float(r["scheduled"]) for r in rows) - min(float(r["sent"]) for r in rows) < 10
    answered = [r for r in rows if r["status"] == "200" and r["x_cache"] in ("hit", "miss")]
    assert len(answered) > 0.9 * len(rows), Counter(r["status"] for r in rows)
    stats = {r["Name"]: r for r in csv.DictReader(open(tmp_path / "locust_stats.csv"))}
    # Locust's own stats too (its CSV may be written before the last answers are counted)
    assert 0.9 * len(rows) <= int(stats["Aggregated"]["Request Count"]) <= len(rows)


def test_locustfile_standalone_names_what_is_missing(tmp_path):
    functions = tmp_path / "functions.json"
    functions.write_text(json.dumps({"functions": [{"name": "tiny-cnn"}]}))
    workload = tmp_path / "w.csv"
    write_workload(workload, [Request(0.0, "nope", "r0", "")])
    no_host = run_locustfile("--functions", str(functions))
    assert no_host.returncode != 0 and "no --host" in no_host.stderr
    url = "http://127.0.0.1:9"
    unknown = run_locustfile(
        "--host", url, "--functions", str(functions), "--workload", str(workload)
    )
    assert unknown.returncode != 0 and "nope" in unknown.stderr and "--map" in unknown.stderr
    missing = run_locustfile("--host", url, "--functions", str(functions), "--workload", "none.csv")
    assert missing.returncode != 0 and "--workload none.csv: no such file" in missing.stderr
    unreachable = run_locustfile("--host", url)
    assert unreachable.returncode != 0 and "cannot reach the agent" in unreachable.stderr
