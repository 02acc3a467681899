"""`brulee up` as a user runs it: embedded redis-server, gunicorn gateway, real workers; it
serves, refuses a second start on the same state directory, and SIGTERM leaves no process."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests

from agent.redis_server import free_port
from tests.agent_fixtures import descendants, start_up, stop_up, up_cmd, wait_for_up

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]


def test_up_serves_refuses_second_and_stops_cleanly(test_models: Path, tmp_path: Path):
    state = tmp_path / "state"
    up = start_up(
        test_models, state, "--workers", "1", "--memory-cap", "64MiB", "--keep-alive", "ttl:600"
    )
    url, env = up.url, up.env
    try:
        wait_for_up(up, workers=1)
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

        # a keep-alive connection idle past gunicorn's default keep-alive (2 s) is still open:
        # a pooled client sending on it as the server closed it would get no answer
        conn = http.client.HTTPConnection(urlsplit(url).hostname, urlsplit(url).port, timeout=60)
        body, headers = json.dumps({"inputs": x}), {"Content-Type": "application/json"}
        conn.request("POST", "/function/digits-cnn", body, headers)
        assert conn.getresponse().read() and conn.sock is not None
        sock = conn.sock
        time.sleep(3.5)
        conn.request("POST", "/function/digits-cnn", body, headers)
        assert conn.getresponse().status == 200 and conn.sock is sock
        conn.close()

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
            up_cmd(test_models, state, free_port(), "--workers", "1"),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        assert "already running" in second.stderr + second.stdout

        assert len(descendants(up.proc.pid)) >= 3  # redis-server, worker, gunicorn (+ its own)
    finally:
        orphans = stop_up(up)
    assert up.proc.returncode == 0, up.output()
    assert not orphans, "orphans after SIGTERM"
