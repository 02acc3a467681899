"""Reading a device's cache state for a decision: its copies, backlogs and the policy's facts
about each copy; everything one placement decides on, read in one round trip
(:func:`read_state`, :class:`CacheState`); the policy object for one decision; and the victims
of a load that outgrew its reservation. Shared by placement, keep-alive, the lifecycle and
the snapshot.

The read is kept apart from the decision (:mod:`agent.decision`) and the transaction that
commits it (:mod:`agent.placement`): a decision is a pure function of what was read here."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from agent.keys import decode, key, lanes, rq_queue, slot, unslot
from agent.lifecycle import DRAINING, LOADING
from agent.membership import Membership, Worker, parse_cap
from agent.policies import Entry, EvictionPolicy, make_policy


def parse_entries(raw: dict, workers) -> list[tuple[str, str, dict]]:
    """A device's ``entries`` hash as ``(model, worker, doc)``, for the given workers only."""
    out = []
    for field_, value in decode(raw).items():
        model, worker = unslot(field_)
        if worker in workers:
            out.append((model, worker, json.loads(value)))
    return out


def used_bytes(entries: list[tuple[str, str, dict]]) -> int:
    return sum(int(doc["bytes"]) for _, _, doc in entries)


def ask_backlogs(pipe, workers) -> None:
    """Queue in ``pipe`` each worker's RQ queue and lane length (for :func:`backlogs_from`)."""
    for w in workers:
        pipe.llen(rq_queue(w.queue))
        for name in lanes(w.name):
            pipe.llen(name)


def backlogs_from(workers, lengths: list[int]) -> dict[str, int]:
    return {w.name: sum(lengths[3 * i : 3 * i + 3]) for i, w in enumerate(workers)}


@dataclass
class CacheState:
    """The cache state one placement decides on (read in one round trip)."""

    requests: int  # all requests so far (the policies' R)
    model_requests: int  # requests for the model being placed
    entries: dict[str, list[tuple[str, str, dict]]] = field(default_factory=dict)
    caps: dict[str, int] = field(default_factory=dict)
    pins: dict[str, dict[str, str]] = field(default_factory=dict)
    clocks: dict[str, float] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)
    queued: dict[str, dict[str, str]] = field(default_factory=dict)
    priority: dict[str, dict[str, str]] = field(default_factory=dict)
    backlog: dict[str, int] = field(default_factory=dict)


def read_state(
    conn: redis.Redis, model: str, alive: dict[str, Worker], devices: list[str]
) -> CacheState:
    """What a decision reads, in one round trip (inside placement's WATCH)."""
    with conn.pipeline(transaction=False) as pipe:
        for d in devices:
            pipe.hgetall(key("entries", d))
            pipe.hget(key("device", d), "cap")
            pipe.hgetall(key("pins", d))
            pipe.get(key("clock", d))
            pipe.zcard(key("waiting", d))
            pipe.hgetall(key("queued", d))
            pipe.hgetall(key("priority", d))
        ask_backlogs(pipe, alive.values())
        pipe.get(key("requests"))
        pipe.hget(key("stats", model), "requests")
        replies = pipe.execute()
    state = CacheState(int(replies[-2] or 0), int(replies[-1] or 0))
    for i, d in enumerate(devices):
        raw, cap, pins, clock, waiting, queued, priority = replies[7 * i : 7 * i + 7]
        state.entries[d] = parse_entries(raw, alive)
        state.caps[d], state.pins[d] = parse_cap(d, cap), decode(pins)
        state.clocks[d], state.waiting[d] = float(clock or 0.0), int(waiting)
        state.queued[d], state.priority[d] = decode(queued), decode(priority)
    state.backlog = backlogs_from(alive.values(), replies[7 * len(devices) : -2])
    return state


def policy_entries(
    conn: redis.Redis, device: str, entries: list[tuple[str, str, dict]], pins: dict[str, str]
) -> list[tuple[Entry, str]]:
    """Policy facts for every copy on ``device``, with its slot. Pinned: executing or loading."""
    if not entries:
        return []
    models = sorted({m for m, _, _ in entries})
    with conn.pipeline(transaction=False) as pipe:
        for m in models:
            pipe.hgetall(key("stats", m))
        pipe.hgetall(key("used", device))
        pipe.hgetall(key("priority", device))
        *replies, used, priority = (decode(reply) for reply in pipe.execute())
    stats = dict(zip(models, replies))
    result = []
    for model, worker, doc in entries:
        s = slot(model, worker)
        st = stats.get(model, {})
        entry = Entry(
            name=model,
            bytes=int(doc["bytes"]),
            load_s=float(st.get("load_s", doc.get("load_s", 0.0))),
            exec_s=float(st.get("exec_s", doc.get("exec_s", 0.0))),
            requests=int(st.get("requests", 0)),
            last_used=float(used.get(s, doc["inserted_at"])),
            inserted_at=float(doc["inserted_at"]),
            pinned=int(pins.get(s, 0)) > 0 or doc["state"] in (LOADING, DRAINING),
            priority=float(priority.get(s, 0.0)),
        )
        result.append((entry, s))
    return result


_seeds = itertools.count(1)


def policy_for(name: str, options: dict[str, Any], clock: float = 0.0) -> EvictionPolicy:
    """A policy object for one decision: nothing is shared between gunicorn's threads, and
    a policy with a clock (GDSF) gets the device's stored one."""
    policy = make_policy(name, seed=next(_seeds), **options)
    if policy.uses_clock:
        policy = make_policy(name, seed=policy.seed, clock=clock, **options)
    return policy


def overflow_victims(
    conn: redis.Redis, device: str, loaded_slot: str, new_bytes: int, policy: EvictionPolicy | None
) -> list[str] | None:
    """Slots to evict when a load turned out larger than reserved and the device's total now
    exceeds its cap (the policy chooses among idle copies; None: nothing can make room)."""
    members = Membership(conn)
    alive = members.alive()
    entries = parse_entries(conn.hgetall(key("entries", device)), alive)
    used = sum(new_bytes if slot(m, w) == loaded_slot else int(d["bytes"]) for m, w, d in entries)
    need = used - members.cap(device)
    if need <= 0:
        return []
    if policy is None:
        stored = decode(conn.hgetall(key("device", device)))
        policy = policy_for(
            stored.get("policy", "cremebrulee"), {}, float(conn.get(key("clock", device)) or 0.0)
        )
    pins = decode(conn.hgetall(key("pins", device)))
    facts = [(e, s) for e, s in policy_entries(conn, device, entries, pins) if s != loaded_slot]
    chosen = policy.victims(
        [e for e, _ in facts],
        Entry("", 0, 0.0, 0.0, pinned=True),
        need,
        int(conn.get(key("requests")) or 0),
        time.time(),
    )
    if chosen is None:
        return None
    by_id = {id(e): s for e, s in facts}
    return [by_id[id(e)] for e in chosen]


def victims_or_drains(
    policy: EvictionPolicy,
    facts: list[tuple[Entry, str]],
    queued: dict[str, str],
    incoming: Entry,
    need: int,
    total_requests: int,
    now: float,
) -> tuple[list[Entry] | None, list[str]]:
    """The policy's victims among copies nobody has requests queued for; if they cannot
    free ``need``, ``(None, drains)``: the copies with requests queued that the policy
    would take as well — they are drained (they take no new requests and are evicted once
    their queue is served) while the request waits, rather than evicted under the
    requests queued on them."""
    entries = [e for e, _ in facts]
    pinned = [e.pinned for e in entries]
    for e, s in facts:
        e.pinned = e.pinned or int(queued.get(s, 0)) > 0
    chosen = policy.victims(entries, incoming, need, total_requests, now)
    for e, was in zip(entries, pinned):
        e.pinned = was
    if chosen is not None or not any(int(queued.get(s, 0)) > 0 for _, s in facts):
        return chosen, []
    wider = policy.victims(entries, incoming, need, total_requests, now) or []
    slot_of = {id(e): s for e, s in facts}
    return None, [slot_of[id(e)] for e in wider if int(queued.get(slot_of[id(e)], 0)) > 0]
