"""Start real pieces of the agent for tests: a private redis-server, worker processes, and a
whole agent (gateway over real HTTP plus workers). Other test modules (Locust replay, deploy)
can reuse :func:`running_agent`."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
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
def redis_server(persist: bool = False, durability: str = "fast") -> Iterator[RedisServer]:
    """A private redis-server on a free loopback port, removed afterwards (``persist``: with
    its append-only file, forced to disk as ``durability`` says)."""
    with tempfile.TemporaryDirectory(prefix="brulee-redis-") as tmp:
        server = RedisServer(tmp, port=free_port(), persist=persist, durability=durability)
        server.start()
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
    durability: str | None = None,
) -> Iterator[dict]:
    """A whole agent: private Redis, ``workers`` worker processes, and the gateway served over
    real HTTP by werkzeug in a thread. Yields ``{"url", "redis_url", "token", "server",
    "workers"}``. ``spool_dir``: the gateway's input spool root (default as the workers':
    ``BRULEE_SPOOL_DIR``, else /dev/shm). ``durability``: Redis keeps its append-only file,
    configured as ``brulee up --durability`` configures it (default: no persistence); strict's
    forcing at the agent's promises (``BRULEE_AOF_DIR``, agent/durable.py) is ``brulee up``'s,
    not done here."""
    with redis_server(durability is not None, durability or "fast") as server:
        procs = [start_worker(server.url, models_dir, cap, policy) for _ in range(workers)]
        try:
            wait_for_workers(server.url, workers)
            with serve_gateway(
                redis_url=server.url,
                models_dir=models_dir,
                functions_file=functions_file,
                token=token,
                body_limit=body_limit,
                policy=policy,
                sync_timeout=sync_timeout,
                spool_dir=spool_dir,
                max_waiting=max_waiting,
            ) as url:
                yield {
                    "url": url,
                    "redis_url": server.url,
                    "token": token,
                    "server": server,
                    "workers": procs,
                }
        finally:
            stop_all(procs)


@contextlib.contextmanager
def serve_gateway(**options) -> Iterator[str]:
    """The gateway (``agent.gateway.create_app(**options)``) served over real HTTP by werkzeug
    in a thread on a free loopback port; yields its URL."""
    from werkzeug.serving import make_server

    from agent.gateway import create_app

    port = free_port()
    http = make_server("127.0.0.1", port, create_app(**options), threaded=True)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    requests.get(f"{url}/healthz", timeout=5)
    try:
        yield url
    finally:
        http.shutdown()


# -- `brulee up` as a user runs it (a subprocess), for tests/test_up.py and test_supervisor.py


@dataclasses.dataclass
class Up:
    """A ``brulee up`` started by :func:`start_up`; its output goes to ``log``."""

    proc: subprocess.Popen
    cmd: list[str]
    env: dict[str, str]
    url: str
    state: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def token(self) -> str:
        return (self.state / "token").read_text().strip()


def up_cmd(models_dir: Path, state_dir: Path, port: int, *options: str) -> list[str]:
    """The command line of ``brulee up`` on ``port`` (more ``options`` appended)."""
    return [
        sys.executable, "-c", "from agent.cli import main; main()", "up", "--port", str(port),
        "--models", str(models_dir), "--state-dir", str(state_dir), *options,
    ]  # fmt: skip


def start_up(
    models_dir: Path, state_dir: Path, *options: str, env: dict[str, str] | None = None
) -> Up:
    """Start ``brulee up`` (no ``REDIS_URL``/``BRULEE_TOKEN`` from the tests' environment
    unless ``env`` gives them) on a free port; see :func:`wait_for_up`."""
    port = free_port()
    full_env = {**os.environ, "PYTHONPATH": str(REPO)}
    full_env.pop("REDIS_URL", None)
    full_env.pop("BRULEE_TOKEN", None)
    full_env.update(env or {})
    cmd = up_cmd(models_dir, state_dir, port, *options)
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir.parent / f"{state_dir.name}-up.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    return Up(proc, cmd, full_env, f"http://127.0.0.1:{port}", state_dir, log)


def wait_for_up(up: Up, workers: int, timeout: float = 60.0) -> dict:
    """Wait until ``/healthz`` answers 200 with ``workers`` registered; returns its body."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if up.proc.poll() is not None:
            raise RuntimeError(f"brulee up exited ({up.proc.returncode}):\n{up.output()}")
        try:
            resp = requests.get(f"{up.url}/healthz", timeout=2)
            if resp.status_code == 200 and resp.json().get("workers") == workers:
                return resp.json()
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"brulee up did not serve {workers} workers within {timeout:g} s")


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children…)."""
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


def process_state(pid: int) -> str | None:
    """``pid``'s state letter in /proc (``Z``: a zombie nobody reaped), None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    return process_state(pid) not in (None, "Z")


def stop_up(up: Up, timeout: float = 60.0) -> set[int]:
    """SIGTERM ``brulee up``, wait for it; returns its processes still alive afterwards
    (orphans: there should be none)."""
    family = descendants(up.proc.pid)
    up.proc.send_signal(signal.SIGTERM)
    try:
        up.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        up.proc.kill()
        up.proc.wait()
    time.sleep(0.5)
    return {p for p in family if process_alive(p)}


@contextlib.contextmanager
def callback_receiver(fail_first: int = 0) -> Iterator[tuple[int, list[bytes]]]:
    """A real HTTP server on a free loopback port that records the bodies POSTed to it (an
    async job's callback); yields its port and the list of bodies. It answers 500 to its
    first ``fail_first`` POSTs (not recorded), 204 after."""
    import http.server

    received: list[bytes] = []
    failures = [fail_first]

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if failures[0] > 0:
                failures[0] -= 1
                self.send_response(500)
                self.end_headers()
                return
            received.append(body)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()


def wait_for(received: list, timeout: float = 30.0) -> bool:
    """Whether ``received`` gets an item within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(received)
