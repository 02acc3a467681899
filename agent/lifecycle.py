"""The life of a model copy (a model on one worker), and every transition it can make.

States, as :mod:`agent.keys` stores them::

    (none) --reserve--> loading --loaded--> ready --evict--> releasing --released--> (none)
                          |                       |                  ^
                          +--give_back--> (none)  +--drain--> draining  (evicted when the
                                                  |                     last request queued
                                                  +--forget--> (none)   on it is done)

- **reserve** (placement's commit, :meth:`reserve`): the copy is counted against the cap at
  once, ``loading``; a loading copy is pinned (never a victim).
- **claim** / **unpin** (the worker, around each invocation: ``claim.lua``, ``unpin.lua``): a
  copy is pinned while an invocation *executes* on it, and only then. Requests queued on a
  worker do not pin; they are counted (``queued:{d}``, up at placement, down at the claim) so
  that placement evicts copies nobody waits for first. If that cannot free enough, copies
  with requests queued are not evicted under them but **drained** (``draining``): they take
  no new requests (those become misses and wait in the admission queue, in order), serve
  what is queued on them, and are evicted by the unpin of the last one (``unpin.lua``), which
  frees the memory the waiting miss needs. If a copy is nevertheless gone when a queued
  request reaches it (its worker was forgotten), the claim finds nothing and the worker
  places the request again, as a miss.
- **loaded** (``ready.lua``; a transaction if the model grew past its reservation): ``loading``
  becomes ``ready`` with the bytes the worker measured. Every path out of ``loading`` ends in
  ``ready`` or in **give_back**: the worker calls one of them in a ``finally`` right after the
  load, whatever the request does next (its input expired or is missing, the interpreter
  raised), so a copy is never left pinned by a load nobody finishes.
- **evict** (in the transaction of whoever evicts: placement, keep-alive, a grown load): the
  copy leaves the accounting and waits in ``releasing`` until its worker has dropped the
  interpreter (an ``agent.worker.evict`` job at the front of its queue); a load that needed
  that memory waits for the release, so resident memory follows the cap.
- **forget** (:meth:`forget_worker`): a dead worker's copies leave the accounting at once.

``loading`` and ``draining`` copies and copies with an invocation executing are pinned: never
a victim.

Each transition is one atomic Redis step (a script or a ``MULTI``).
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from agent.keys import decode, key, slot, unslot, worker_queue
from agent.scripts import Scripts
from agent.txn import transaction

LOADING, READY, DRAINING = "loading", "ready", "draining"


class Claimed:
    """What :meth:`Copies.claim` found: the copy's entry (pinned now), None (gone), or the
    reason its function failed."""

    def __init__(self, entry: dict | None = None, failed: str | None = None) -> None:
        self.entry, self.failed = entry, failed


def loading_entry(bytes_: int, load_s: float, exec_s: float, now: float) -> str:
    """The ``entries`` value of a copy just reserved (a miss or a prewarm)."""
    return json.dumps(
        {
            "bytes": bytes_,
            "state": LOADING,
            "since": now,
            "inserted_at": now,
            "load_s": load_s,
            "exec_s": exec_s,
        }
    )


def evict_job(pipe, conn: redis.Redis, victim_worker: str, models: list[str]) -> None:
    """Queue ``agent.worker.evict`` at the front of a worker's queue, in ``pipe``."""
    Queue(worker_queue(victim_worker), connection=conn, serializer=JSONSerializer).enqueue_call(
        "agent.worker.evict", args=(models,), pipeline=pipe, at_front=True
    )


class Copies:
    """The transitions of model copies in Redis (see the module's docstring)."""

    def __init__(self, conn: redis.Redis, scripts: Scripts | None = None) -> None:
        self.r = conn
        self.scripts = scripts or Scripts(conn)

    # -- reserve and evict happen inside someone else's transaction ------------------------

    @staticmethod
    def reserve(
        pipe,
        device: str,
        model: str,
        worker: str,
        bytes_: int,
        load_s: float,
        exec_s: float,
        now: float,
    ) -> None:
        """none → loading, in ``pipe`` (a placement's or a prewarm's ``MULTI``)."""
        pipe.hset(
            key("entries", device), slot(model, worker), loading_entry(bytes_, load_s, exec_s, now)
        )

    def evict(self, pipe, device: str, slots: list[str], policy: str) -> None:
        """ready → releasing for each slot, in ``pipe``, with the workers' drop jobs."""
        by_worker: dict[str, list[str]] = {}
        for s in slots:
            model, worker = unslot(s)
            for name in ("entries", "used", "priority"):
                pipe.hdel(key(name, device), s)
            pipe.hset(key("releasing", device), s, 1)
            pipe.hincrby(key("evictions", device), policy, 1)
            by_worker.setdefault(worker, []).append(model)
        for worker, models in by_worker.items():
            evict_job(pipe, self.r, worker, models)

    # -- what a worker does around an invocation --------------------------------------------

    def claim(self, device: str, model: str, worker: str, function: str = "") -> Claimed:
        found = self.scripts.claim(
            keys=[
                key("entries", device),
                key("pins", device),
                key("failed"),
                key("queued", device),
            ],
            args=[slot(model, worker), function],
        )
        if found is None:
            return Claimed()
        if isinstance(found, list):
            return Claimed(failed=found[1].decode())
        return Claimed(entry=json.loads(found))

    def unpin(
        self,
        device: str,
        model: str,
        worker: str,
        exec_s: float | None,
        pipe=None,
        policy: str = "",
    ) -> Any:
        """The invocation is over: unpin and store the model's exec time (in ``pipe`` if
        given). A draining copy with nothing left queued or executing is evicted in the same
        step (draining → releasing; its worker drops it). The reply: ``[requests waiting for
        memory on the device, 1 if the copy was evicted]``."""
        names = ("pins", "stats", "waiting", "entries", "queued", "used", "priority",
                 "releasing", "evictions")  # fmt: skip
        keys = [key("stats", model) if n == "stats" else key(n, device) for n in names]
        args = [slot(model, worker), "" if exec_s is None else repr(exec_s), policy]
        if pipe is not None:
            return self.scripts.in_pipeline(pipe, "unpin", keys, args)
        return self.scripts.unpin(keys=keys, args=args)

    @staticmethod
    def drain(pipe, device: str, slots: list[str], now: float, entries: dict[str, dict]) -> None:
        """ready → draining, in ``pipe``: the copy takes no new requests and is evicted when
        the last request queued on it is done (:meth:`unpin`)."""
        for s in slots:
            pipe.hset(key("entries", device), s, json.dumps({**entries[s], "state": DRAINING,
                                                              "since": now}))  # fmt: skip

    def loaded(
        self,
        device: str,
        model: str,
        worker: str,
        observed_bytes: int | None,
        load_s: float,
        rss_growth: int | None = None,
        policy=None,
    ) -> bool:
        """loading → ready, correcting the reservation with ``observed_bytes`` (None: keep
        it). If the model is larger than reserved and idle copies cannot make room (the
        ``policy`` chooses them), the reservation is given back and False returned: the worker
        drops the model, the cap holds. ``rss_growth``: the worker's resident-memory increase
        at the load, kept in the model's stats (``observed_bytes`` in ``/system/functions``)."""
        s = slot(model, worker)
        seen = {} if rss_growth is None else {"observed_bytes": rss_growth, "load_s": load_s}
        measured = "" if observed_bytes is None else max(int(observed_bytes), 1)
        fields = {**seen, **({"bytes": measured, "load_s": load_s} if measured else {})}
        now = time.time()
        done = self.scripts.ready(
            keys=[key("entries", device), key("stats", model)],
            args=[s, measured, repr(now), *(x for kv in fields.items() for x in kv)],
        )
        if done != b"grow":  # within its reservation the device stays within the cap
            return True
        from agent.cachestate import overflow_victims  # (imports this module)

        def grow(pipe) -> bool:
            raw = pipe.hget(key("entries", device), s)
            if raw is None:  # evicted or forgotten meanwhile
                pipe.unwatch()
                return True
            doc = json.loads(raw)
            doc.update(bytes=int(measured), state=READY, since=now)
            victims = overflow_victims(self.r, device, s, doc["bytes"], policy)
            pipe.multi()
            pipe.hset(key("stats", model), mapping={**seen, "bytes": doc["bytes"]})
            if victims is None:  # only executing copies hold the rest: give it back
                self._give_back(pipe, device, s)
                return False
            pipe.hset(key("entries", device), s, json.dumps(doc))
            self.evict(pipe, device, victims, getattr(policy, "name", "overflow"))
            return True

        return transaction(self.r, [key("entries", device), key("pins", device)], grow)

    @staticmethod
    def _give_back(pipe, device: str, s: str) -> None:
        for name in ("entries", "used", "priority", "pins"):
            pipe.hdel(key(name, device), s)

    def give_back(
        self, device: str, model: str, worker: str, failed: tuple[str, str] | None = None
    ) -> None:
        """loading → none: the load failed (``failed``: the function and the reason, shown in
        ``/system/functions``; other functions keep serving)."""
        with self.r.pipeline() as pipe:
            self._give_back(pipe, device, slot(model, worker))
            if failed:
                pipe.hset(key("failed"), *failed)
            pipe.execute()

    def released(
        self, device: str, model: str, worker: str, freed_bytes: int | None = None
    ) -> None:
        """releasing → none: the worker dropped the interpreter (``freed_bytes``: its RSS
        decrease, kept as the model's ``freed_bytes``)."""
        with self.r.pipeline() as pipe:
            pipe.hdel(key("releasing", device), slot(model, worker))
            if freed_bytes is not None:
                pipe.hset(key("stats", model), "freed_bytes", freed_bytes)
            pipe.execute()

    def is_releasing(self, device: str, slots: list[str]) -> bool:
        return bool(slots) and any(self.r.hmget(key("releasing", device), slots))

    def forget_worker(self, pipe, device: str, worker: str) -> list[str]:
        """Every copy of ``worker`` → none, in ``pipe``; returns the models it held."""
        released: list[str] = []
        for name in ("entries", "pins", "used", "priority", "releasing", "queued"):
            fields = [f for f in self.r.hkeys(key(name, device)) if unslot(f)[1] == worker]
            if name == "entries":
                released = [unslot(f)[0] for f in fields]
            if fields:
                pipe.hdel(key(name, device), *fields)
        return released

    def clear_pins(self, device: str, worker: str) -> list[str]:
        """Remove every pin on ``worker``'s copies (its caller knows nothing executes there);
        returns the slots that had one."""
        fields = [f for f in self.r.hkeys(key("pins", device)) if unslot(f)[1] == worker]
        if fields:
            self.r.hdel(key("pins", device), *fields)
        return [f.decode() if isinstance(f, bytes) else f for f in fields]

    def held_by(self, device: str, worker: str) -> dict[str, dict[str, Any]]:
        """The copies the accounting says ``worker`` holds: model → entry."""
        return {
            unslot(f)[0]: json.loads(v)
            for f, v in decode(self.r.hgetall(key("entries", device))).items()
            if unslot(f)[1] == worker
        }

    def memory_stats(self, model: str) -> dict[str, int]:
        """What workers measured of ``model``: RSS increase at its last load, decrease at its
        last eviction (absent until it happened)."""
        observed, freed = self.r.hmget(key("stats", model), "observed_bytes", "freed_bytes")
        out = {}
        if observed is not None:
            out["observed_bytes"] = int(observed)
        if freed is not None:
            out["freed_bytes"] = int(freed)
        return out
