"""The worker: its interpreter cache gives memory back; it survives a Redis gone silent."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from agent.interpreters import InterpreterCache
from agent.memory import rss_bytes
from agent.redis_server import RedisServer
from agent.worker import SOCKET_TIMEOUT_S
from tests.agent_fixtures import serve_gateway, start_worker, stop_all, wait_for_workers

# a worker whose read hangs notices after SOCKET_TIMEOUT_S; then RQ's first retry (1 s), the
# heartbeat's re-registration (within a second) and the call itself
RECOVER_S = SOCKET_TIMEOUT_S + 8


def test_drop_returns_resident_memory(test_models: Path):
    cache = InterpreterCache(test_models)
    before = rss_bytes()
    loaded, load_s = cache.load("mobilenetv2-mini", "mobilenetv2-mini.tflite")

    loaded.predict(np.zeros(loaded.input.shape, dtype=loaded.input.dtype))  # touch the arena
    grown = rss_bytes() - before
    assert load_s > 0 and grown > 0
    freed = cache.drop("mobilenetv2-mini")
    assert "mobilenetv2-mini" not in cache.models
    assert freed >= 0.5 * grown, f"loading grew RSS by {grown} bytes, dropping freed {freed}"
    assert cache.drop("mobilenetv2-mini") == 0  # dropping twice is harmless


def served_again(url: str, body: dict, since: float, within: float, after: str) -> float:
    """Call digits-cnn until it answers 200; the seconds since ``since`` it took (an
    AssertionError past ``within``)."""
    while True:
        left = within - (time.monotonic() - since)
        assert left > 0, f"the worker did not serve again within {within:g} s after {after}"
        try:
            resp = requests.post(f"{url}/function/digits-cnn", json=body, timeout=left)
        except requests.Timeout:
            continue
        if resp.status_code == 200:
            return time.monotonic() - since
        time.sleep(0.1)


@pytest.mark.timeout(120)
def test_worker_notices_a_silent_redis_and_serves_its_successor(test_models: Path, tmp_path):
    """Redis goes away without a word: frozen (SIGSTOP) with its connections open, so no FIN
    or RST reaches the worker blocked in its pop — as when Redis's host crashes or is cut off —
    and a fresh, empty redis-server takes its address (the same Unix socket). The worker's
    reads time out, it connects to the new Redis, registers again and serves a call within
    RECOVER_S. Without a socket timeout of its own it would wait on the frozen one (RQ's:
    415 s)."""
    server = RedisServer(tmp_path / "redis", port=None, persist=False).start()
    frozen = server.process
    worker = start_worker(server.url, test_models, 64 * 1024 * 1024)
    body = {"inputs": np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32).tolist()}
    gateway = {"redis_url": server.url, "models_dir": test_models, "token": "test-token",
               "sync_timeout": RECOVER_S}  # fmt: skip
    try:
        wait_for_workers(server.url, 1)
        with serve_gateway(**gateway) as url:
            first = requests.post(f"{url}/function/digits-cnn", json=body, timeout=30)
            assert first.status_code == 200, first.text
        frozen.send_signal(signal.SIGSTOP)
        silent = time.monotonic()
        server.start()  # on the same socket path: the frozen one's is unlinked
        with serve_gateway(**gateway) as url:  # a gateway of its own: this one's pool is fresh
            recovered = served_again(url, body, silent, RECOVER_S, "the frozen Redis")
        assert recovered > SOCKET_TIMEOUT_S - 1, recovered  # it did wait on the frozen Redis
    finally:
        frozen.kill()  # the worker, if still waiting on it, hears its connections close
        frozen.wait()
        stop_all([worker])
        server.stop()


OUTAGES = 6


@pytest.mark.timeout(120)
def test_worker_serves_again_soon_after_each_of_several_redis_outages(test_models: Path, tmp_path):
    """Redis stopped and started again, six times, while the worker serves only synchronous
    calls: it serves again within seconds after each restart. RQ's own backoff (1, 2, 4 … 60 s,
    reset only by an RQ job) made the fifth outage cost 7 s here and the sixth ~15 s; the
    worker caps it."""
    server = RedisServer(tmp_path / "redis", port=None, persist=False).start()
    worker = start_worker(server.url, test_models, 64 * 1024 * 1024)
    body = {"inputs": np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32).tolist()}
    bound = 6.0  # the worker's wait between tries (2 s), its re-registration, the call
    recovered = []
    try:
        wait_for_workers(server.url, 1)
        with serve_gateway(redis_url=server.url, models_dir=test_models, sync_timeout=bound) as url:
            assert requests.post(f"{url}/function/digits-cnn", json=body, timeout=30).ok
            for _ in range(OUTAGES):
                server.stop()
                time.sleep(0.5)  # the worker's pop fails: it waits before trying again
                server.start()
                what = f"outage {len(recovered) + 1}"
                recovered.append(served_again(url, body, time.monotonic(), bound, what))
    finally:
        stop_all([worker])
        server.stop()
    assert len(recovered) == OUTAGES, recovered
