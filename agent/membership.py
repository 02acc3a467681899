"""Which workers exist, on which device, and whether they are alive.

A worker registers itself (``worker:{w}``, the ``workers`` set) and refreshes a heartbeat key
with a short TTL (:data:`HEARTBEAT_TTL`) every second. One that misses it is dead for
placement: the next decision forgets it — its copies leave the accounting (a worker that was
only paused notices when it resumes, drops its interpreters and registers again, see
``agent.worker``). Every change of membership bumps ``members:version``, so callers may cache
the list (the hit script refuses a stale one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis

from agent.keys import decode, key, lanes, route, rq_queue, worker_queue
from agent.lifecycle import Copies

HEARTBEAT_TTL = 5.0  # seconds without a heartbeat before a worker counts as dead
ROUTE_TTL_S = 120  # how long a call's route key (which worker has it) lives


@dataclass(frozen=True)
class Worker:
    name: str
    device: str
    queue: str


class PlacementError(Exception):
    """A request that cannot be placed; ``status`` is the HTTP answer."""

    status = 503


class Membership:
    def __init__(self, conn: redis.Redis, copies: Copies | None = None) -> None:
        self.r = conn
        self.copies = copies or Copies(conn)

    def set_device(self, device: str, cap: int | None = None, policy: str | None = None) -> None:
        values = {k: v for k, v in (("cap", cap), ("policy", policy)) if v is not None}
        if values:
            self.r.hset(key("device", device), mapping=values)

    def cap(self, device: str) -> int:
        return parse_cap(device, self.r.hget(key("device", device), "cap"))

    def register(
        self,
        worker: str,
        device: str,
        pid: int,
        host: str,
        rss: int = 0,
        spool: str = "",
        pss: int = 0,
    ) -> None:
        """``rss``: the worker's resident memory before it holds any model (its baseline);
        ``spool``: its marker in the input spool ('' if it has none, see ``agent.lane``);
        ``pss``: its proportional memory then (pages shared with n processes count 1/n)."""
        with self.r.pipeline() as pipe:
            pipe.hset(
                key("worker", worker),
                mapping={
                    "device": device,
                    "queue": worker_queue(worker),
                    "pid": pid,
                    "host": host,
                    "baseline_rss": rss,
                    "baseline_pss": pss,
                    "rss": rss,
                    "spool": spool,
                },
            )
            pipe.sadd(key("workers"), worker)
            pipe.set(key("alive", worker), 1, px=int(HEARTBEAT_TTL * 1000))
            pipe.incr(key("members", "version"))
            pipe.execute()

    def heartbeat(self, worker: str, rss: int | None = None) -> bool:
        """The worker is alive; ``rss``: its resident memory now. False when the worker is no
        longer registered (it was forgotten, or Redis lost its state): it must register
        again, and hold nothing the accounting does not count."""
        with self.r.pipeline(transaction=False) as pipe:
            pipe.exists(key("worker", worker))
            pipe.sismember(key("workers"), worker)
            registered, member = pipe.execute()
        if not (registered and member):
            return False
        with self.r.pipeline(transaction=False) as pipe:
            pipe.set(key("alive", worker), 1, px=int(HEARTBEAT_TTL * 1000))
            if rss is not None:
                pipe.hset(key("worker", worker), "rss", rss)
            pipe.execute()
        return True

    def version(self) -> bytes:
        return self.r.get(key("members", "version")) or b"0"

    def workers(self) -> tuple[dict[str, Worker], list[str]]:
        """Alive workers by name, and the names of registered workers that are dead."""
        names = sorted(n.decode() for n in self.r.smembers(key("workers")))
        with self.r.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(key("alive", name))
                pipe.hgetall(key("worker", name))
            replies = pipe.execute()
        alive, dead = {}, []
        for i, name in enumerate(names):
            info = decode(replies[2 * i + 1])
            if replies[2 * i] and info:
                alive[name] = Worker(name, info["device"], info["queue"])
            else:
                dead.append(name)
        return alive, dead

    def alive(self) -> dict[str, Worker]:
        """Alive workers; the dead ones are forgotten on the way."""
        alive, dead = self.workers()
        for name in dead:
            self.forget_worker(name)
        return alive

    def spool_markers(self) -> list[str]:
        """Each registered worker's marker in the input spool ('' for none)."""
        names = self.r.smembers(key("workers"))
        with self.r.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hget(key("worker", name.decode()), "spool")
            return [(m or b"").decode() for m in pipe.execute()]

    def forget_worker(self, worker: str) -> list[str]:
        """Drop a dead (or stopped) worker: its copies leave the accounting, its registration
        goes; returns the models it held. What it had not finished moves to the device's
        orphans, to be placed again (:func:`agent.waiting.adopt_orphans`): the synchronous
        calls queued on its lanes (they never started; the one it was running is answered by
        its gateway, "worker … died"), and the async jobs held for it, queued or running
        (:func:`agent.jobs.adopt`: one that was running is retried if it has attempts left).
        Its queues are emptied again after its registration is gone, for work placed there
        while it was being forgotten."""
        device = (self.r.hget(key("worker", worker), "device") or b"").decode()
        self._orphan(worker, device)
        with self.r.pipeline() as pipe:
            released = self.copies.forget_worker(pipe, device, worker) if device else []
            pipe.srem(key("workers"), worker)
            # its RQ queue and RQ's registry of the jobs it started: its jobs are orphans now
            # (held), and evictions and prewarms for it are moot
            pipe.delete(key("worker", worker), key("alive", worker), rq_wip(worker),
                        rq_queue(worker_queue(worker)))  # fmt: skip
            pipe.incr(key("members", "version"))
            pipe.execute()
        self._orphan(worker, device)
        self._rehome(device)
        return released

    def _rehome(self, device: str) -> None:
        """Only a device's own workers adopt its orphans (their admission pass); when its last
        worker is gone — a device that died or lost its link — they move to a device that has
        workers, whose placement puts them anywhere in the fleet. With no worker anywhere they
        stay: the next worker to start adopts them."""
        if not device or not self.r.llen(key("orphans", device)):
            return
        devices = {w.device for w in self.workers()[0].values()}
        if device in devices or not devices:
            return
        heir = key("orphans", min(devices))
        while self.r.lmove(key("orphans", device), heir) is not None:
            pass

    def _orphan(self, worker: str, device: str) -> None:
        if not device:
            return
        for name in lanes(worker):
            self._orphan_lane(name, device)
        while self.r.lmove(key("held", worker), key("orphans", device)) is not None:
            pass

    def _orphan_lane(self, name: str, device: str) -> None:
        for _ in range(10):  # the lane changes only while its worker's heartbeat still shows
            calls = self.r.lrange(name, 0, -1)
            routes = [route(json.loads(c.split(b"\n", 1)[0]).get("reply", "")) for c in calls]
            moved = self.copies.scripts.orphan(
                keys=[name, key("orphans", device), *routes], args=[ROUTE_TTL_S]
            )
            if moved >= 0:
                return


def rq_wip(worker: str) -> str:
    """RQ's registry of the jobs a worker's queue has started (RQ's key)."""
    return f"rq:wip:{worker_queue(worker)}"


def parse_cap(device: str, raw: bytes | None) -> int:
    """A device's cap as stored in ``device:{d}``."""
    if raw is None:
        raise PlacementError(f"device {device!r} has no memory cap configured")
    return int(raw)
