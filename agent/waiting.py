"""The admission queue in Redis: requests that wait for memory, per device, and the step that
places them when memory frees (the rule is :mod:`agent.admission`'s).

A ticket (``ticket:{id}``: ``head`` JSON — kind, request, model facts, arrival, deadline — and
``payload``, the inline input of a lane message) sits in ``waiting:{d}``, ordered by arrival.
:func:`admit` serves the queue head first, one at a time, until one does not fit; it runs
wherever memory may have freed — a worker after each invocation and eviction (when anybody
waits) and every second from each worker's heartbeat (which also answers tickets whose
deadline has passed) — so no request waits for a wake-up that never comes. Placing a ticket
and removing it are one transaction (the ticket's queue is watched), so a ticket is placed at
most once and never after its gateway gave up on it (:func:`cancel`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import redis

if TYPE_CHECKING:
    from agent.cachestate import CacheState
    from agent.decision import Decision, ModelFacts, Wait
    from agent.membership import Worker
    from agent.placement import Placement

from agent import admission
from agent.keys import decode, key, unslot
from agent.lane import reply_message
from agent.lifecycle import DRAINING, LOADING
from agent.membership import PlacementError

log = logging.getLogger("brulee.worker")
REPLY_TTL_S = 120  # an answer nobody collected (its caller gave up) expires


def add(pipe, device: str, wait: Wait, model: ModelFacts, now: float) -> None:
    """Queue a ticket, in ``pipe`` (placement's ``MULTI``)."""
    head = {
        **wait.head,
        "id": wait.id,
        "device": device,
        "model": model.name,
        "bytes": model.bytes,
        "arrived": now,
        "deadline": None if wait.deadline == float("inf") else wait.deadline,
    }
    pipe.hset(
        key("ticket", wait.id),
        mapping={"head": json.dumps(head), "payload": wait.payload, "model": model.name},
    )
    pipe.zadd(key("waiting", device), {wait.id: now})


def join(
    placement: Placement,
    pipe,
    model: ModelFacts,
    decision: Decision,
    state: CacheState,
    wait: Wait | None,
    alive: dict[str, Worker],
    now: float,
) -> Decision:
    """A request that cannot be placed now joins the device's queue, in placement's
    transaction (``pipe``): :class:`MemoryBusy` if it cannot wait, :class:`QueueFull` (429)
    if the queue is at its bound."""
    from agent.placement import MemoryBusy, QueueFull

    device = decision.device
    held = sum(1 for _, _, d in state.entries[device] if d["state"] == LOADING) + sum(
        int(n) > 0 for n in state.pins[device].values()
    )
    if wait is None:
        pipe.unwatch()
        raise MemoryBusy(
            f"no room for model {model.name!r} ({model.bytes} bytes): the memory is held "
            f"by {held} copies that are executing or loading, and copies with requests "
            "queued on them"
        )
    queued = state.waiting[device]
    workers = sum(1 for w in alive.values() if w.device == device)
    models = models_waiting(placement.r, device)
    if admission.is_full(models, model.name, placement.max_waiting):
        pipe.unwatch()
        placement.r.hincrby(key("admission", device), "refused", 1)
        raise QueueFull(
            f"{queued} requests for {len(models)} models already wait for memory on device "
            f"{device!r} (the bound, --max-waiting {placement.max_waiting} models); retry later",
            admission.retry_after(queued, model.exec_s + model.load_s, workers),
        )
    pipe.multi()
    placement._record_arrival(pipe, model.name, now)
    add(pipe, device, wait, model, now)
    decision.ticket, decision.position, decision.arrived = wait.id, queued, now
    return decision


def models_waiting(conn: redis.Redis, device: str) -> Counter[str]:
    """How many requests wait for each model on ``device`` (the bound counts models)."""
    ids = conn.zrange(key("waiting", device), 0, -1)
    with conn.pipeline(transaction=False) as pipe:
        for i in ids:
            pipe.hget(key("ticket", i.decode()), "model")
        return Counter(m.decode() for m in pipe.execute() if m is not None)


def cancel(conn: redis.Redis, device: str, ticket: str) -> bool:
    """Take a ticket out of the queue (its caller gives up); True if it was still waiting."""
    with conn.pipeline() as pipe:
        pipe.zrem(key("waiting", device), ticket)
        pipe.delete(key("ticket", ticket))
        removed, _ = pipe.execute()
    return bool(removed)


def expire(conn: redis.Redis, device: str, ticket: str, head: dict[str, Any], now: float) -> None:
    """A ticket whose deadline passed leaves the queue; its caller gets a 503 that says how
    long it waited for memory."""
    if not cancel(conn, device, ticket):
        return
    conn.hincrby(key("admission", device), "timed_out", 1)
    req = head.get("req", {})
    waited = now - float(head["arrived"])
    if head.get("kind") == "lane" and req.get("reply"):
        reply = {
            "error": timed_out_message(req.get("function", "?"), head, waited),
            "status": 503,
            "retry_after": admission.retry_after(
                int(conn.zcard(key("waiting", device))), float(req["facts"]["exec_s"]), 1
            ),
        }
        _answer(conn, req, reply)


def timed_out_message(function: str, head: dict[str, Any], waited: float) -> str:
    return (
        f"function {function!r} waited {waited:.1f} s for memory for model "
        f"{head.get('model')!r} ({head.get('bytes')} bytes) and its deadline passed: the "
        "device's memory was held by executing or loading models; retry"
    )


def admit(placement: Placement, device: str, now: float | None = None) -> int:
    """Place the device's waiting requests, head first, until one does not fit; behind a head
    that does not fit, only requests whose model is now cached go (they take no memory: no
    overtaking). Answers those whose deadline passed. Returns how many were placed.

    One pass reads every ticket in one round trip; behind a blocked head, a ticket whose model
    has no copy taking requests is skipped without a transaction (it needs memory), so a long
    queue of riders costs a transaction only for those actually placed."""
    conn = placement.r
    ids = [raw.decode() for raw in conn.zrange(key("waiting", device), 0, -1)]
    if not ids:
        return 0
    with conn.pipeline(transaction=False) as pipe:
        for ticket in ids:
            pipe.hget(key("ticket", ticket), "head")
        heads = pipe.execute()
    placed, blocked, held = 0, False, set()
    for ticket, head in zip(ids, heads):
        if head is None:  # placed or cancelled meanwhile, or a leftover
            conn.zrem(key("waiting", device), ticket)
            continue
        doc = json.loads(head)
        t = now or time.time()
        if doc.get("deadline") is not None and admission.expired(
            admission.Ticket(ticket, doc["model"], doc["bytes"], doc["arrived"], doc["deadline"]),
            t,
        ):
            expire(conn, device, ticket, doc, t)
            continue
        if blocked and doc["model"] not in held:
            continue  # it needs memory: it may not pass the head
        payload = conn.hget(key("ticket", ticket), "payload") or b""
        decision = _place_ticket(placement, device, ticket, doc, payload, t, blocked)
        if decision is None:
            continue  # cancelled meanwhile
        if decision.ticket is not None:
            if not blocked:  # still no room for it: from here on only hits may go
                blocked, held = True, taking_requests(conn, device)
            continue
        placed += 1
    return placed


def taking_requests(conn: redis.Redis, device: str) -> set[str]:
    """The models with a copy on ``device`` that takes requests (loading or ready)."""
    return {
        unslot(field_)[0]
        for field_, doc in conn.hgetall(key("entries", device)).items()
        if json.loads(doc)["state"] != DRAINING
    }


def _place_ticket(placement, device, ticket, doc, payload, now, hits_only):
    """One waiting request, placed and taken out of the queue in one transaction."""
    from agent.dispatch import SYNC, enqueue_job, facts_of, push_lane

    req = doc["req"]

    def still_waiting(pipe) -> bool:
        return pipe.zscore(key("waiting", device), ticket) is not None

    def enqueue(pipe, decision) -> None:
        pipe.zrem(key("waiting", device), ticket)
        pipe.delete(key("ticket", ticket))
        pipe.hincrby(key("admission", device), "admitted", 1)
        observe_wait(pipe, time.time() - float(doc["arrived"]))
        if doc["kind"] == SYNC:
            push_lane(pipe, decision, req, payload)
        else:
            enqueue_job(pipe, placement.r, decision, req, ticket)

    decision, _ = placement.place(
        facts_of(req),
        enqueue,
        now=now,
        admitting=still_waiting,
        recount=req.get("recount"),
        hits_only=hits_only,
    )
    return decision


def admit_device(placement: Placement, device: str) -> None:
    """Memory may have freed on ``device``: place the requests waiting for it (if any) and
    the calls a dead worker left queued (if any); a failure is logged, never raised (the
    worker's admission thread calls this)."""
    from agent.txn import Contended

    conn = placement.r
    try:
        with conn.pipeline(transaction=False) as pipe:
            pipe.zcard(key("waiting", device))
            pipe.llen(key("orphans", device))
            queued, orphans = pipe.execute()
        if orphans:
            adopt_orphans(placement, device)
        if queued:
            admit(placement, device)
    except (redis.RedisError, PlacementError, Contended) as exc:
        log.warning("admission failed: %s", exc)


def adopt_orphans(placement: Placement, device: str) -> int:
    """Place again the calls a dead worker had queued (``orphans:{d}``; they never started),
    as misses through the same placement and admission; a call whose deadline passed, or
    that cannot be placed, is answered with why. Its async jobs there too
    (:func:`agent.jobs.adopt`). Returns how many were placed."""
    from agent.dispatch import SYNC, counted_as, submit
    from agent.jobs import adopt
    from agent.txn import Contended

    conn, placed = placement.r, 0
    while (raw := conn.lpop(key("orphans", device))) is not None:
        if b"\n" not in raw:  # an async job's id (a lane message has a header line)
            placed += adopt(placement, device, raw.decode())
            continue
        head, _, payload = raw.partition(b"\n")
        req = json.loads(head)
        req["recount"] = counted_as(req)
        deadline = float(req.get("deadline") or "inf")
        if time.time() >= deadline:
            _answer(conn, req, {"error": "its worker died before running it and its deadline "
                                "passed before another could", "status": 503})  # fmt: skip
            continue
        try:
            submit(placement, req, payload, SYNC, req["reply"], deadline, front=True)
            placed += 1
        except (PlacementError, Contended) as exc:
            placement.uncount(device, req)
            _answer(conn, req, {"error": str(exc), "status": exc.status,
                                **({"retry_after": exc.retry_after}
                                   if getattr(exc, "retry_after", None) else {})})  # fmt: skip
    return placed


def _answer(conn: redis.Redis, req: dict[str, Any], reply: dict[str, Any]) -> None:
    with conn.pipeline(transaction=False) as pipe:
        pipe.rpush(req["reply"], reply_message(reply))
        pipe.expire(req["reply"], REPLY_TTL_S)
        pipe.execute()


BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def observe_wait(pipe, seconds: float) -> None:
    """The admission-wait histogram (``brulee_admission_wait_seconds``), in ``pipe``."""
    bucket = next((str(b) for b in BUCKETS if seconds <= b), "+Inf")
    pipe.hincrby(key("hist", "admission_s"), bucket, 1)
    pipe.hincrbyfloat(key("hist", "admission_s"), "sum", seconds)


def listing(conn: redis.Redis, device: str, now: float | None = None) -> list[dict[str, Any]]:
    """Who waits for what on ``device``, in order (for ``/system/cache``)."""
    now = now or time.time()
    ids = [i.decode() for i in conn.zrange(key("waiting", device), 0, -1)]
    with conn.pipeline(transaction=False) as pipe:
        for i in ids:
            pipe.hget(key("ticket", i), "head")
        heads = pipe.execute()
    out = []
    for i, raw in zip(ids, heads):
        if raw is None:
            continue
        doc = json.loads(raw)
        out.append(
            {
                "ticket": i,
                "kind": "sync" if doc["kind"] == "lane" else "async",
                "function": doc["req"].get("function"),
                "model": doc["model"],
                "bytes": doc["bytes"],
                "waited_s": round(now - float(doc["arrived"]), 3),
                "deadline_in_s": None
                if doc.get("deadline") is None
                else round(float(doc["deadline"]) - now, 3),
            }
        )
    return out


def counters(conn: redis.Redis, device: str) -> dict[str, int]:
    return {k: int(v) for k, v in decode(conn.hgetall(key("admission", device))).items()}
