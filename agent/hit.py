"""The warm-hit fast path: one Lua script (``lua/hit.lua``) finds the least-backed-up alive
worker holding the model, accounts the request and the hit and pushes the invocation onto
that worker's lane. The caller passes every key the script touches, from its cached view of
the membership (checked against ``members:version`` in the same step)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from agent.keys import decode, key, lane, load_lane, rq_queue, slot
from agent.membership import Worker
from agent.policies import Entry

if TYPE_CHECKING:
    from agent.placement import Decision, Placement

ARRIVALS_KEPT = 10_000  # the arrivals stream proactive policies read (``arrivals``)
SCALE_OUT_QUEUE = 2  # a hit on a worker with this many requests queued may use a second copy


def try_hit(
    placement: Placement,
    model: str,
    message: bytes,
    now: float | None = None,
    function: str = "",
    registry_version: bytes | None = None,
) -> Decision | None:
    """Place ``message`` (a lane invocation) on the least-backed-up worker holding
    ``model``, accounted like a hit of :meth:`Placement.place`; None when it is not a plain hit
    (then call :meth:`Placement.place`). With ``function``, the same step first checks that
    ``registry_version`` is current (else :class:`RegistryChanged`) and the function has
    not failed (else :class:`FunctionFailed`)."""
    now = now or time.time()
    for _ in range(3):
        version, workers, devices = placement._hit_view or _read_hit_view(placement)
        index = {d: i + 1 for i, d in enumerate(devices)}
        keys = [
            key("functions", "version"),
            key("failed"),
            key("members", "version"),
            key("arrivals"),
            key("requests"),
            key("stats", model),
        ]
        for d in devices:
            keys += [key(n, d) for n in ("entries", "used", "hits", "priority", "clock", "queued")]
        args: list[Any] = [
            function,
            registry_version or b"",
            version,
            model,
            repr(now),
            message,
            SCALE_OUT_QUEUE,
            ARRIVALS_KEPT,
            len(devices),
            len(workers),
        ]
        for w in workers:
            keys += [key("alive", w.name), lane(w.name), rq_queue(w.queue), load_lane(w.name)]
            args += [w.name, index[w.device]]
        found = placement.scripts.hit(keys=keys, args=args)
        if found is None:
            return None
        found = [v.decode() if isinstance(v, bytes) else v for v in found]
        if found[0] == "members":
            placement._hit_view = None
            continue
        break
    else:
        return None
    if found[0] == "stale":
        from agent.placement import RegistryChanged

        raise RegistryChanged()
    if found[0] == "failed":
        from agent.placement import FunctionFailed

        raise FunctionFailed(f"function {function!r} failed: {found[1]}")
    worker, dev_index, requests, priority, clock, raw = found
    device = devices[int(dev_index) - 1]
    if placement.rescores_hits:  # GDSF: recompute the priority
        policy = placement.policy(float(clock))
        doc = json.loads(raw)
        stats = decode(placement.r.hgetall(key("stats", model)))
        entry = Entry(
            model,
            int(doc["bytes"]),
            float(stats.get("load_s", doc.get("load_s", 0.0))),
            float(stats.get("exec_s", doc.get("exec_s", 0.0))),
            requests=int(requests),
            last_used=now,
            inserted_at=float(doc["inserted_at"]),
            priority=float(priority),
        )
        policy.on_hit(entry, now)
        placement.r.hset(key("priority", device), slot(model, worker), entry.priority)
    from agent.placement import Decision

    return Decision(device, worker, "", hit=True)


def _read_hit_view(placement: Placement) -> tuple[bytes, list[Worker], list[str]]:
    version = placement.members.version()
    alive, _ = placement.members.workers()
    workers = sorted(alive.values(), key=lambda w: w.name)
    placement._hit_view = (version, workers, sorted({w.device for w in workers}))
    return placement._hit_view
