"""The workers' resident memory over the last minutes, for the status page.

A daemon thread in each gateway process samples every :data:`SAMPLE_S` seconds: each live
worker's resident memory (read from ``/proc`` when it runs on this host, else its last
heartbeat's) and each device's accounted bytes. The samples go to one capped Redis list
(``rss:history``, newest first), so every gunicorn process serves the same history; a short
lock key lets one process take each sample. The thread starts with the first request a
process serves (gunicorn forks its processes after loading the app: a thread started before
would not survive the fork) and stops after Redis has been unreachable for a minute (the next
request starts it again).
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import redis

from agent.keys import key
from agent.placement import Placement, parse_entries, used_bytes
from agent.snapshot import _worker_rss

SAMPLE_S = 2.0
KEPT = 300  # samples: ten minutes
GIVE_UP_S = 60.0  # Redis unreachable this long: the thread ends


def history_key() -> str:
    return key("rss", "history")


def sample(placement: Placement, now: float | None = None) -> dict[str, Any]:
    """One sample: per device, the bytes accounted and each worker's resident memory, with
    what the worker held before any model (its baseline)."""
    alive, _ = placement.members.workers()
    devices: dict[str, Any] = {}
    for device in sorted({w.device for w in alive.values()}):
        entries = parse_entries(placement.r.hgetall(key("entries", device)), alive)
        rss = {w.name: _worker_rss(placement, w.name) for w in alive.values() if w.device == device}
        devices[device] = {
            "used": used_bytes(entries),
            "rss": {name: m["rss_bytes"] for name, m in rss.items()},
            "base": {name: m["baseline_rss_bytes"] for name, m in rss.items()},
        }
    return {"t": now or time.time(), "devices": devices}


def read(conn: redis.Redis) -> list[dict[str, Any]]:
    """The samples kept, oldest first."""
    return [json.loads(raw) for raw in reversed(conn.lrange(history_key(), 0, KEPT - 1))]


class Sampler:
    """The sampling thread of one gateway process (see the module's docstring)."""

    def __init__(self, placement: Placement, interval: float = SAMPLE_S) -> None:
        self.placement = placement
        self.interval = interval
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._start = threading.Lock()

    def ensure_running(self) -> None:
        """Start the thread in this process if it is not running (cheap when it is)."""
        if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
            return
        with self._start:
            if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="rss-history", daemon=True)
                self._thread.start()

    def take(self) -> bool:
        """Take a sample unless another process took one within the interval."""
        r = self.placement.r
        lock_ms = max(int(self.interval * 900), 1)
        if not r.set(key("rss", "history", "lock"), os.getpid(), nx=True, px=lock_ms):
            return False
        doc = json.dumps(sample(self.placement))
        with r.pipeline(transaction=False) as pipe:
            pipe.lpush(history_key(), doc)
            pipe.ltrim(history_key(), 0, KEPT - 1)
            pipe.execute()
        return True

    def _run(self) -> None:
        failing_since = None
        while True:
            try:
                self.take()
                failing_since = None
            except redis.RedisError:
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > GIVE_UP_S:
                    return
            time.sleep(self.interval)
