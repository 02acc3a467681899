"""`benchmarks/soak.py` end to end, shortened: the real `brulee up` (embedded redis-server,
gunicorn, RQ workers, the test models) under an Azure-like load for half a minute, with each
kind of fault injected once for real (processes killed and stopped, model files corrupted).

It checks that the soak accounts for everything it did, and that the agent keeps the soak's
promises while the faults happen: no invariant violated (cap, accounting, resident memory,
no copy stuck loading), every request answered (200, or an error that names its cause), no
accepted async job lost, every fault recovered from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadgen.soak_faults import KINDS

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(180)


def test_soak_runs_and_accounts_for_every_request(test_models: Path, tmp_path: Path):
    out = tmp_path / "soak"
    cmd = [sys.executable, str(REPO / "benchmarks" / "soak.py"), "--models", str(test_models),
           "--minutes", "0.5", "--cap", "60%", "--rate", "8", "--fault-every", "4",
           "--first-fault", "2", "--stop-seconds", "2", "--recover-timeout", "5",
           "--grace", "10", "--out", str(out)]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=170)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    doc = json.loads((out / "soak.json").read_text())
    # the exit status says what the report says
    assert done.returncode == (1 if doc["failed"] else 0), done.stdout[-3000:]
    assert ("FAILED" in done.stdout) == bool(doc["failed"])
    for title in ("outcome", "faults", "invariants", "async jobs"):
        assert title in done.stdout

    # every scheduled request was sent or said why not; every one sent has exactly one outcome
    req = doc["requests"]
    assert doc["scheduled"] > 100
    assert req["sent"] + sum(doc["not_sent"].values()) == doc["scheduled"]
    assert req["sent"] == sum(req["counts"].values())
    assert req["bad"] == sum(
        n for k, n in req["counts"].items() if k.startswith(("unanswered", "no cause"))
    )
    assert any(k.startswith("200 ") for k in req["counts"])  # the agent served before the faults
    # every accepted async job ended (finished, failed with a reason) or is counted lost
    jobs = doc["async_jobs"]
    assert jobs["accepted"] == req["counts"].get("202 async accepted", 0) > 0
    assert jobs["accepted"] == sum(jobs["counts"].values())
    assert jobs["lost"] == sum(n for k, n in jobs["counts"].items() if k.startswith("lost"))

    # one fault of each kind, in rotation; each was injected, or says why it was not
    faults = doc["faults"]
    assert [f["kind"] for f in faults[: len(KINDS)]] == list(KINDS)
    for fault in faults:
        assert fault["injected"] or fault["detail"], fault
        if fault["recovered"]:
            assert fault["recover_s"] is not None and fault["recover_s"] >= 0
        elif fault["injected"]:
            assert fault["detail"], fault  # what was still wrong
    # the model faults need no supervisor: their calls are answered with the load failure
    for fault in faults[:2]:
        assert fault["injected"], fault
        assert any("cannot be loaded" in d for d in fault["detail"]), fault

    # the invariants were checked about once a second, and held
    inv = doc["invariants"]
    assert inv["checks"] >= 10
    assert set(inv) >= {"violations", "examples", "unreachable_s", "peak", "rss_tolerance_bytes"}
    assert not inv["violations"], inv["examples"]
    # the agent's promises: every request answered with a cause, no job lost, every fault
    # recovered from (the run's verdict says the same)
    assert req["bad"] == 0, req["counts"]
    assert jobs["lost"] == 0, jobs["counts"]
    assert all(f["recovered"] for f in faults if f["injected"]), faults
    assert not doc["failed"], doc["failed"]
    assert doc["settings"]["cap_bytes"] == int(doc["settings"]["working_set_bytes"] * 0.6)
