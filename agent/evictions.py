"""Why a copy was evicted: each copy's utility under the policy, and a short log of recent
eviction decisions with the utilities the policy compared (for the status page).

The utility is what the policy orders copies by, smallest evicted first: CremeBrulee's
``u(m) = pop x cost / bytes`` (its randomised variant draws by the same ``u``); for every other
ordered policy its sort key (LRU: last use, FIFO: insertion time, GDSF: its priority, ...).
A policy without an order (random) has none. The log is a capped Redis list per device
(``evictions:{d}:log``, newest first), written in the placement's own transaction, so it
costs one ``LPUSH`` and one ``LTRIM`` per eviction decision and nothing on a hit.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import redis

from agent.keys import key, unslot
from agent.policies import Entry, EvictionPolicy
from agent.policies.base import OrderedPolicy

KEPT = 50  # eviction decisions kept per device
COMPARED_SHOWN = 12  # copies kept by a decision listed with it (the lowest utilities)


def log_key(device: str) -> str:
    return key("evictions", device, "log")


def _plain(value: Any) -> float | list | None:
    """A sort key as JSON: a number, a list of numbers (LFU's pair), None if not finite."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def utilities(
    policy: EvictionPolicy, entries: Sequence[Entry], total_requests: int, now: float
) -> list[float | list | None]:
    """Each entry's utility under ``policy`` (see the module's docstring), in order."""
    if not entries:
        return []
    if isinstance(policy, OrderedPolicy):
        try:
            key_of = policy.shown_key(entries, total_requests, now)
        except ValueError:  # an oracle policy outside the simulator
            key_of = None
        if key_of is not None:
            return [_plain(key_of(e)) for e in entries]
    return [None] * len(entries)


def explain(
    policy: EvictionPolicy,
    facts: Sequence[tuple[Entry, str]],
    incoming: Entry,
    victims: Sequence[Entry],
    need: int,
    total_requests: int,
    now: float,
    incoming_requests: int = 0,
) -> dict[str, Any]:
    """One eviction decision as the log keeps it: the model coming in, the bytes it needed,
    the victims and the copies kept, each with its utility (computed over the same copies
    the policy compared, so the numbers are the ones it ordered by; the incoming model's is
    computed as if it were cached too, with its ``incoming_requests`` so far)."""
    entries = [e for e, _ in facts]
    values = dict(zip(map(id, entries), utilities(policy, entries, total_requests, now)))
    # the incoming model's as if it were cached (scaled together with the others)
    arriving = dataclasses.replace(incoming, requests=incoming_requests or incoming.requests)
    incoming_u = utilities(policy, [*entries, arriving], total_requests, now)[-1]
    chosen = {id(v) for v in victims}

    def copy(e: Entry, s: str) -> dict[str, Any]:
        model, worker = unslot(s)
        return {"model": model, "worker": worker, "bytes": e.bytes, "utility": values[id(e)],
                "pinned": e.pinned}  # fmt: skip

    kept = [copy(e, s) for e, s in facts if id(e) not in chosen]
    kept.sort(key=lambda c: (c["pinned"], _order(c["utility"])))
    return {
        "time": now,
        "policy": policy.name,
        "rule": policy.description,
        "incoming": {"model": incoming.name, "bytes": incoming.bytes, "utility": incoming_u},
        "need_bytes": need,
        "victims": [copy(e, s) for e, s in facts if id(e) in chosen],
        "kept": kept[:COMPARED_SHOWN],
        "kept_total": len(kept),
    }


def _order(value: float | list | None) -> tuple:
    """Sort utilities for display: smallest first, missing last."""
    if value is None:
        return (1, ())
    return (0, tuple(value) if isinstance(value, list) else (value,))


def record(pipe, device: str, decision: dict[str, Any]) -> None:
    """Add ``decision`` (from :func:`explain`) to the device's log, in ``pipe``."""
    pipe.lpush(log_key(device), json.dumps(decision))
    pipe.ltrim(log_key(device), 0, KEPT - 1)


def record_idle(pipe, device: str, slots: Sequence[str], rule: str, now: float) -> None:
    """Copies a keep-alive policy unloaded as idle (no utility compared: its rule decided)."""
    victims = [dict(zip(("model", "worker"), unslot(s)), utility=None) for s in slots]
    record(pipe, device, {"time": now, "policy": "keep-alive", "rule": rule, "victims": victims})


def recent(conn: redis.Redis, device: str, n: int = KEPT) -> list[dict[str, Any]]:
    """The device's last ``n`` eviction decisions, newest first."""
    return [json.loads(raw) for raw in conn.lrange(log_key(device), 0, n - 1)]
