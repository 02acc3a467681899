"""`brulee up` restarts what dies: faults injected into a real agent (embedded redis-server,
gunicorn gateway, two real workers) by killing and pausing its processes.

The tests share one agent, in order: a worker killed under load, the embedded Redis killed,
the gateway killed, one worker slot killed into a crash loop. `--max-restarts 2` keeps the
crash loop short."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis
import requests

from agent.keys import key, unslot
from agent.redis_server import RedisServer, free_port
from agent.supervisor import RestartPolicy, Slot, Supervisor
from tests.agent_fixtures import (
    Up,
    descendants,
    process_state,
    start_up,
    stop_up,
    wait_for_up,
)

pytestmark = pytest.mark.timeout(120)
X = np.zeros((1, 8, 8, 1), dtype=np.float32).tolist()
DEVICE = socket.gethostname()


def call(up: Up) -> requests.Response:
    return requests.post(f"{up.url}/function/digits-cnn", json={"inputs": X}, timeout=60)


def supervisor(up: Up) -> dict:
    return json.loads((up.state / "supervisor.json").read_text())


def slot_of(up: Up, label: str) -> dict:
    return next(w for w in supervisor(up)["workers"] if w["slot"] == label)


def eventually(check: Callable[[], object], timeout: float, what: str):
    """``check()``'s first truthy value within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except (OSError, ValueError, requests.RequestException):
            found = None
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def cache_state(up: Up) -> dict:
    resp = requests.get(
        f"{up.url}/system/cache", headers={"Authorization": f"Bearer {up.token()}"}, timeout=10
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["devices"][DEVICE]


@pytest.fixture(scope="module")
def agent(test_models: Path, tmp_path_factory) -> Up:
    state = tmp_path_factory.mktemp("supervised") / "state"
    up = start_up(
        test_models, state, "--workers", "2", "--memory-cap", "64MiB", "--max-restarts", "2"
    )
    try:
        wait_for_up(up, workers=2)
        yield up
    finally:
        orphans = stop_up(up)
    assert up.proc.returncode == 0, up.output()
    assert not orphans, f"orphans after SIGTERM: {orphans}"
    assert not (state / "supervisor.json").exists()


def test_killed_worker_is_forgotten_and_replaced_while_the_other_serves(agent: Up):
    first = call(agent)
    assert first.status_code == 200, first.text
    victim = first.headers["X-Worker"]
    label = next(w["slot"] for w in supervisor(agent)["workers"] if w["name"] == victim)
    other = next(w["name"] for w in supervisor(agent)["workers"] if w["name"] != victim)
    answers: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            resp = call(agent)
            answers.append((time.monotonic(), resp.status_code, resp.headers.get("X-Worker", "")))

    loader = threading.Thread(target=load)
    loader.start()
    try:
        time.sleep(0.5)
        killed_at = time.monotonic()
        os.kill(slot_of(agent, label)["pid"], signal.SIGKILL)
        replaced = eventually(
            lambda: (
                (s := slot_of(agent, label))["state"] == "running" and s["name"] != victim and s
            ),
            10,
            "a replacement worker started",
        )
        registered = replaced["name"]
        eventually(lambda: registered in cache_state(agent)["workers"], 15, "it registered")
        time.sleep(0.5)
    finally:
        stop.set()
        loader.join(60)
    assert replaced["restarts"] == 1 and "SIGKILL" in replaced["last_exit"]
    after = [(status, worker) for t, status, worker in answers if t > killed_at]
    # served on: by the other worker, or by the replacement (forked from the supervisor, it
    # serves within about a second, often before placement needs the other)
    served = {worker for status, worker in after if status == 200}
    assert served & {other, registered}, f"no service after the kill: {after}"
    failed = [status for status, _ in after if status != 200]
    # only calls caught on the dying worker fail, each with a 503 naming it
    assert set(failed) <= {503} and len(failed) <= 5, after

    # the dead worker's copies are gone from the accounting, nothing else holds its name
    conn = redis.Redis(unix_socket_path=str(agent.state / "redis" / "redis.sock"))
    for name in ("entries", "pins", "used", "priority", "releasing"):
        holders = {unslot(f)[1] for f in conn.hkeys(key(name, DEVICE))}
        assert victim not in holders, f"{name} still lists the dead worker {victim}"
    assert victim.encode() not in conn.smembers(key("workers"))
    device = cache_state(agent)
    assert victim not in device["workers"]
    listed = sum(m["bytes"] for w in device["workers"].values() for m in w["models"])
    assert device["used_bytes"] == listed
    assert call(agent).status_code == 200
    assert f"worker {label} ({victim}, pid" in agent.output()


def test_killed_redis_is_restarted_and_reaped_and_everyone_reconnects(agent: Up):
    before = supervisor(agent)
    old = before["redis"]["pid"]
    workers = {w["slot"]: w["pid"] for w in before["workers"]}
    # pause the supervisor so that Redis stays down long enough to be seen down
    os.kill(agent.proc.pid, signal.SIGSTOP)
    try:
        os.kill(old, signal.SIGKILL)
        down = eventually(
            lambda: (
                (r := requests.get(f"{agent.url}/healthz", timeout=10)).status_code == 503
                and r.json()
            ),
            10,
            "/healthz answered 503",
        )
        assert down["status"] == "down" and "supervisor" in down
        eventually(lambda: process_state(old) == "Z", 5, "the dead redis-server is a zombie")
    finally:
        os.kill(agent.proc.pid, signal.SIGCONT)
    restarted = time.monotonic()
    eventually(
        lambda: requests.get(f"{agent.url}/healthz", timeout=10).json().get("workers") == 2,
        10,
        "/healthz answered 200 with both workers",
    )
    assert time.monotonic() - restarted < 10
    assert process_state(old) is None, "the dead redis-server was not reaped"
    after = supervisor(agent)
    assert after["redis"]["restarts"] == 1 and after["redis"]["pid"] not in (old, None)
    assert "SIGKILL" in after["redis"]["last_exit"]
    resp = call(agent)
    assert resp.status_code == 200, resp.text
    # the workers rode the outage out: the same processes, not restarted
    assert {w["slot"]: w["pid"] for w in after["workers"]} == workers


def test_killed_gateway_is_restarted(agent: Up):
    old = supervisor(agent)["gateway"]["pid"]
    os.kill(old, signal.SIGKILL)
    eventually(
        lambda: supervisor(agent)["gateway"]["restarts"] == 1, 5, "the gateway was restarted"
    )
    eventually(lambda: call(agent).status_code == 200, 20, "a call answered by the new gateway")
    assert supervisor(agent)["gateway"]["pid"] != old


def test_crash_loop_stops_restarts_and_healthz_says_degraded(agent: Up):
    # a slot not killed yet: its first 2 deaths are restarted, the third is a crash loop
    label = next(w["slot"] for w in supervisor(agent)["workers"] if w["restarts"] == 0)
    pid = None
    for death in range(1, 4):
        pid = eventually(
            lambda last=pid: (
                (s := slot_of(agent, label))["state"] == "running" and s["pid"] != last and s["pid"]
            ),
            15,
            f"worker slot {label} running again before death {death}",
        )
        os.kill(pid, signal.SIGKILL)
    slot = eventually(
        lambda: (s := slot_of(agent, label))["state"] == "crash-loop" and s, 5, "crash loop"
    )
    assert slot["restarts"] == 2 and slot["pid"] is None
    time.sleep(1.5)  # longer than any backoff so far: still not restarted
    assert slot_of(agent, label)["state"] == "crash-loop"
    health = requests.get(f"{agent.url}/healthz", timeout=10)
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "degraded" and body["crash_loop"] == [label]
    assert body["supervisor"]["crash_loop"] == [label]
    assert "crash loop" in agent.output()
    # the other worker serves on; the dead one is out of the accounting
    for _ in range(3):
        resp = call(agent)
        assert resp.status_code == 200, resp.text
    assert len(cache_state(agent)["workers"]) == 1


def test_redis_password_is_on_no_command_line(test_models: Path, tmp_path: Path):
    secret = secrets.token_hex(16)
    with RedisServer(tmp_path / "redis", port=free_port(), persist=False, password=secret) as db:
        assert db.config_path.stat().st_mode & 0o777 == 0o600
        up = start_up(
            test_models,
            tmp_path / "state",
            "--workers", "1", "--memory-cap", "64MiB", "--redis-url", db.url,
        )  # fmt: skip
        try:
            wait_for_up(up, workers=1)
            assert call(up).status_code == 200
            family = descendants(up.proc.pid)
            assert len(family) >= 3  # the worker, gunicorn and its processes
            for pid in [db.process.pid, *family]:
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:  # it ended meanwhile
                    continue
                assert secret.encode() not in cmdline, f"password on pid {pid}'s command line"
        finally:
            orphans = stop_up(up)
        assert not orphans


def test_backoff_doubles_until_the_crash_loop(tmp_path: Path):
    """The restart policy on real processes that exit at once with status 3."""
    said: list[str] = []
    crashing = Slot("w1", "worker", lambda _s: subprocess.Popen([sys.executable, "-c", "exit(3)"]))
    steady = Slot("gateway", "gateway", lambda _s: subprocess.Popen(["sleep", "30"]), vital=True)
    policy = RestartPolicy(first=0.1, cap=0.3, limit=4, window=60)
    sup = Supervisor([crashing, steady], tmp_path, policy, echo=said.append)
    sup.start_all()
    try:
        deadline = time.monotonic() + 20
        while crashing.state != "crash-loop" and time.monotonic() < deadline:
            assert sup.tick()  # a worker slot in crash loop does not stop the agent
            time.sleep(0.02)
        delays = [line.rsplit("in ", 1)[1] for line in said if "restarting it in" in line]
        assert delays == ["0.1 s", "0.2 s", "0.3 s", "0.3 s"]  # doubling, capped
        deaths = [line for line in said if "restarted" not in line]
        assert len(deaths) == 5 and all("exit code 3" in line for line in deaths), said
        assert "crash loop" in deaths[-1]
        status = json.loads((tmp_path / "supervisor.json").read_text())
        assert status["workers"][0]["state"] == "crash-loop" and status["crash_loop"] == ["w1"]
        assert status["workers"][0]["restarts"] == 4 and status["gateway"]["state"] == "running"
    finally:
        sup.stop(timeout=5)
    assert steady.proc.returncode == -signal.SIGTERM
    assert not (tmp_path / "supervisor.json").exists()


def test_redis_urls_are_redacted_in_messages():
    from agent.redis_server import redact

    assert (
        redact("unix:///run/b/redis.sock?password=s3cret")
        == "unix:///run/b/redis.sock?password=***"
    )
    assert redact("redis://:s3cret@10.0.0.2:6379/0") == "redis://10.0.0.2:6379/0"
