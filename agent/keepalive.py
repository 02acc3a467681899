"""Proactive policies in the live agent (``--keep-alive``): unload what a keep-alive policy
finds idle, and load what it wants warm into free memory — never evicting for it. The policy
objects are the simulator's (``agent.policies.proactive``)."""

from __future__ import annotations

import time
from typing import Any

from rq import Queue
from rq.serializers import JSONSerializer

from agent import evictions
from agent.keys import decode, key, slot, unslot
from agent.lifecycle import Copies
from agent.placement import (
    ModelFacts,
    Placement,
    ask_backlogs,
    backlogs_from,
    parse_entries,
    policy_entries,
    used_bytes,
)
from agent.policies import Entry
from agent.txn import transaction


def expire_idle(
    placement: Placement, proactive: Any, now: float | None = None
) -> list[tuple[str, str]]:
    """Evict what ``proactive`` says has been idle too long, on every device (never a pinned
    copy); returns the ``(model, worker)`` copies evicted."""
    now = now or time.time()
    r = placement.r
    alive = placement.members.alive()
    evicted: list[tuple[str, str]] = []
    for device in sorted({w.device for w in alive.values()}):

        def body(pipe, device=device) -> list[str]:
            pins = decode(r.hgetall(key("pins", device)))
            queued = decode(r.hgetall(key("queued", device)))
            entries = parse_entries(r.hgetall(key("entries", device)), alive)
            facts = policy_entries(r, device, entries, pins)
            names = set(proactive.expired([e for e, _ in facts], now))
            # idle: not pinned, and no request queued on it
            slots = [s for e, s in facts if e.name in names and not e.pinned and not queued.get(s)]
            if not slots:
                pipe.unwatch()
                return []
            pipe.multi()
            placement.copies.evict(pipe, device, slots, placement.policy_name)
            rule = f"idle: {getattr(proactive, 'description', type(proactive).__name__)}"
            evictions.record_idle(pipe, device, slots, rule, now)
            return slots

        done = transaction(r, [key("entries", device), key("pins", device)], body)
        evicted += [unslot(s) for s in done]
    return evicted


def prewarm(
    placement: Placement,
    proactive: Any,
    facts: dict[str, ModelFacts],
    files: dict[str, str],
    now: float | None = None,
) -> list[tuple[str, str]]:
    """Load what ``proactive`` wants warm into free memory only, on every device. ``facts``:
    the models that could be loaded, ``files``: their files. Returns ``(model, worker)`` per
    load queued (``agent.worker.prewarm`` jobs)."""
    now = now or time.time()
    r = placement.r
    alive = placement.members.alive()
    placed: list[tuple[str, str]] = []
    for device in sorted({w.device for w in alive.values()}):
        entries = parse_entries(r.hgetall(key("entries", device)), alive)
        cached = {m for m, _, _ in entries}
        free = placement.members.cap(device) - used_bytes(entries)
        if free <= 0 or r.zcard(key("waiting", device)):  # waiting requests come first
            continue
        names = sorted(m for m in facts if m not in cached)
        with r.pipeline(transaction=False) as pipe:
            for m in names:
                pipe.hget(key("stats", m), "requests")
            counts = dict(zip(names, pipe.execute()))
        candidates = [
            Entry(m, facts[m].bytes, facts[m].load_s, facts[m].exec_s, int(counts[m] or 0))
            for m in names
        ]
        for name in proactive.prewarm(now, free, candidates):
            done = _prewarm_one(placement, device, facts[name], files[name], alive, now)
            if done:
                placed.append((name, done))
    return placed


def _prewarm_one(
    placement: Placement, device: str, model: ModelFacts, file: str, alive: dict, now: float
) -> str | None:
    """Reserve the memory and queue the load on the least-backed-up worker, in one
    transaction; None if the model got cached or the room went meanwhile."""
    r = placement.r

    def body(pipe) -> str | None:
        entries = parse_entries(r.hgetall(key("entries", device)), alive)
        if any(m == model.name for m, _, _ in entries) or (
            used_bytes(entries) + model.bytes > placement.members.cap(device)
        ):
            pipe.unwatch()
            return None
        candidates = [w for w in alive.values() if w.device == device]
        with r.pipeline(transaction=False) as ask:
            ask_backlogs(ask, candidates)
            backlog = backlogs_from(candidates, ask.execute())
        target = min(candidates, key=lambda w: (backlog[w.name], w.name))
        entry = Entry(
            model.name, model.bytes, model.load_s, model.exec_s, inserted_at=now, last_used=now
        )
        policy = placement.policy(float(r.get(key("clock", device)) or 0.0))
        policy.on_insert(entry, now)
        s = slot(model.name, target.name)
        pipe.multi()
        Copies.reserve(
            pipe, device, model.name, target.name, model.bytes, model.load_s, model.exec_s, now
        )
        pipe.hset(key("used", device), s, now)
        pipe.hset(key("priority", device), s, entry.priority)
        pipe.hincrby(key("prewarms", device), model.name, 1)
        Queue(target.queue, connection=r, serializer=JSONSerializer).enqueue_call(
            "agent.worker.prewarm", args=(model.name, file), pipeline=pipe
        )
        return target.name

    return transaction(r, [key("entries", device), key("pins", device)], body)
