"""`brulee up` as a user runs it: embedded redis-server, gunicorn gateway, real workers; it
serves, refuses a second start on the same state directory, and SIGTERM leaves no process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from agent.redis_server import free_port

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    pairs = [tuple(map(int, line.split())) for line in out.strip().splitlines()]
    for child, parent in pairs:
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_up_serves_refuses_second_and_stops_cleanly(test_models: Path, tmp_path: Path):
    port = free_port()
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("REDIS_URL", None)
    env.pop("BRULEE_TOKEN", None)
    cmd = [
        sys.executable,
        "-c",
        "from agent.cli import main; main()",
        "up",
        "--port",
        str(port),
        "--workers",
        "1",
        "--memory-cap",
        "64M",
        "--models",
        str(test_models),
        "--state-dir",
        str(state),
        "--keep-alive",
        "ttl:600",
    ]
    up = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/healthz", timeout=2).json().get("workers") == 1:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.3)
        x = np.zeros((1, 8, 8, 1), dtype=np.float32).tolist()
        resp = requests.post(f"{url}/function/digits-cnn", json={"inputs": x}, timeout=60)
        assert resp.status_code == 200, resp.text
        assert resp.headers["X-Cache"] == "miss"
        token = (state / "token").read_text().strip()
        assert (state / "token").stat().st_mode & 0o777 == 0o600
        listed = requests.get(
            f"{url}/system/functions", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert "digits-cnn" in {f["name"] for f in listed.json()["functions"]}

        # an error answered before the body is read (unknown route or function, wrong method)
        # keeps the keep-alive connection usable: the client's next call on it is answered
        session, big = requests.Session(), b"\0" * 1_000_000
        for path, status in (("/nothing", 404), ("/function/nope", 404), ("/healthz", 405)) * 3:
            assert session.post(f"{url}{path}", data=big, timeout=30).status_code == status
            again = session.post(f"{url}/function/digits-cnn", json={"inputs": x}, timeout=60)
            assert again.status_code == 200, again.text

        # `brulee invoke --random`: a random input of the right shape; first a miss, then a hit
        invoke = [sys.executable, "-c", "from agent.cli import main; main()", "invoke"]
        for expected in ("miss", "hit"):
            done = subprocess.run(
                [*invoke, "tiny-cnn", "--random", "--url", url, "--state-dir", str(state)],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr + done.stdout
            assert f"X-Cache: {expected}" in done.stdout
        unknown = subprocess.run(
            [*invoke, "nope", "--random", "--url", url, "--state-dir", str(state)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert unknown.returncode != 0 and "not deployed" in unknown.stderr

        second = subprocess.run(
            cmd[:5] + [str(free_port())] + cmd[6:],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        assert "already running" in second.stderr + second.stdout

        family = _descendants(up.pid)
        assert len(family) >= 3  # redis-server, worker, gunicorn (+ its workers)
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
    assert up.returncode == 0
    time.sleep(0.5)
    assert not [p for p in family if _alive(p)], "orphans after SIGTERM"
