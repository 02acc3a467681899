"""Start real pieces of the agent for tests: a private redis-server, worker processes, and a
whole agent (gateway over real HTTP plus workers). Other test modules (Locust replay, deploy)
can reuse :func:`running_agent`."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import redis
import requests

from agent.redis_server import RedisServer, free_port
from agent.up import stop_processes, worker_argv

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server on a free loopback port, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="brulee-redis-") as tmp:
        server = RedisServer(tmp, port=free_port(), persist=False).start()
        try:
            yield server
        finally:
            server.stop()


def start_worker(
    redis_url: str, models_dir: Path, cap: int, policy: str = "cremebrulee", device: str = "dev"
) -> subprocess.Popen:
    """One real ``brulee worker`` process."""
    cmd = worker_argv(redis_url, models_dir, cap, policy, device)
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def wait_for_workers(redis_url: str, n: int, timeout: float = 60.0) -> None:
    from agent.membership import Membership

    members = Membership(redis.Redis.from_url(redis_url))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(members.workers()[0]) >= n:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{n} workers did not register within {timeout:g} s")


def stop_all(processes: list[subprocess.Popen]) -> None:
    stop_processes(processes, timeout=15)


@contextlib.contextmanager
def running_agent(
    models_dir: Path,
    cap: int,
    workers: int = 1,
    policy: str = "cremebrulee",
    token: str = "test-token",
    functions_file: str | None = None,
    body_limit: int | None = None,
    spool_dir: Path | None = None,
    max_waiting: int | None = None,
    sync_timeout: float = 30,
) -> Iterator[dict]:
    """A whole agent: private Redis, ``workers`` worker processes, and the gateway served over
    real HTTP by werkzeug in a thread. Yields ``{"url", "redis_url", "token", "server",
    "workers"}``. ``spool_dir``: the gateway's input spool root (default as the workers':
    ``BRULEE_SPOOL_DIR``, else /dev/shm)."""
    from werkzeug.serving import make_server

    from agent.gateway import create_app

    with redis_server() as server:
        procs = [start_worker(server.url, models_dir, cap, policy) for _ in range(workers)]
        try:
            wait_for_workers(server.url, workers)
            app = create_app(
                redis_url=server.url,
                models_dir=models_dir,
                functions_file=functions_file,
                token=token,
                body_limit=body_limit,
                policy=policy,
                sync_timeout=sync_timeout,
                spool_dir=spool_dir,
                max_waiting=max_waiting,
            )
            port = free_port()
            http = make_server("127.0.0.1", port, app, threaded=True)
            thread = threading.Thread(target=http.serve_forever, daemon=True)
            thread.start()
            url = f"http://127.0.0.1:{port}"
            requests.get(f"{url}/healthz", timeout=5)
            try:
                yield {
                    "url": url,
                    "redis_url": server.url,
                    "token": token,
                    "server": server,
                    "workers": procs,
                }
            finally:
                http.shutdown()
        finally:
            stop_all(procs)
