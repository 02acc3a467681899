"""The agent's own memory: ``brulee up`` loads only what serving needs, and its workers and
gateway share the runtime their parent imported (forked after import) instead of loading it
each (see benchmarks/footprint.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from agent.memory import pss_bytes
from tests.agent_fixtures import descendants, start_up, stop_up, wait_for_up

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]
# what only other commands need (the simulator, Locust, plotting, the model builder), or none
HEAVY_PACKAGES = ("loadgen", "models", "locust", "gevent", "greenlet", "zmq", "matplotlib",
                  "tensorflow", "keras", "pandas", "scipy", "torch")  # fmt: skip


def shared_objects(pid: int) -> set[str]:
    """The native libraries mapped into ``pid``."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split()[-1] for line in maps if ".so" in line.rsplit("/", 1)[-1]}


def smaps(pid: int) -> dict[str, int]:
    """``/proc/PID/smaps_rollup`` in bytes."""
    rows = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    return {r.split(":")[0]: int(r.split()[1]) * 1024 for r in rows if r.split()[-1] == "kB"}


def test_brulee_up_imports_no_other_command():
    """What the supervisor imports before it forks the workers and the gateway: the CLI, the
    ``up`` command and the runtime they share (:func:`agent.forked.preload`)."""
    code = (
        "import sys; from agent.cli import main; from agent import forked\n"
        "main(['up', '--help'], standalone_mode=False); forked.preload()\n"
        "print('MODULES', *sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded = {name.split(".")[0] for name in done.stdout.split("MODULES", 1)[1].split()}
    assert {"agent", "rq", "flask", "gunicorn"} <= loaded  # the shared runtime is there
    assert not loaded & set(HEAVY_PACKAGES), sorted(loaded & set(HEAVY_PACKAGES))


def test_agent_processes_share_the_runtime_and_load_nothing_heavy(
    test_models: Path, tmp_path: Path
):
    up = start_up(test_models, tmp_path / "state", "--workers", "2", "--memory-cap", "64MiB")
    try:
        wait_for_up(up, workers=2)
        deadline = time.monotonic() + 20
        while True:  # the gateway's second worker may still be starting
            family = [up.proc.pid, *descendants(up.proc.pid)]
            pythons = [p for p in family if "python" in Path(f"/proc/{p}/exe").resolve().name]
            if len(pythons) == 6 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(pythons) == 6  # supervisor, 2 workers, the gateway's master and 2 workers
        time.sleep(1)  # each settled after its start
        for pid in pythons:
            libraries = shared_objects(pid)
            heavy = [lib for lib in libraries if any(f"/{p}/" in lib for p in HEAVY_PACKAGES)]
            assert not heavy, f"pid {pid} loaded {heavy}"
        for pid in pythons[1:]:  # forked after import: most of each child is shared
            mem = smaps(pid)
            shared = mem["Shared_Clean"] + mem["Shared_Dirty"]
            assert shared > mem["Rss"] / 2, f"pid {pid} shares {shared} of {mem['Rss']} bytes"
        total = sum(pss_bytes(p) for p in family)
        assert total < 160 * 2**20, f"the idle agent holds {total / 2**20:.0f} MiB"

        headers = {"Authorization": f"Bearer {up.token()}"}
        cache = requests.get(f"{up.url}/system/cache", headers=headers, timeout=10).json()
        for worker in next(iter(cache["devices"].values()))["workers"].values():
            assert 0 < worker["baseline_pss_bytes"] < worker["baseline_rss_bytes"] / 2, worker
    finally:
        orphans = stop_up(up)
    assert up.proc.returncode == 0, up.output()
    assert not orphans
