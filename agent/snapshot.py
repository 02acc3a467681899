"""What ``/system/cache`` (and the Prometheus collector) shows: per device its cap, the bytes
accounted and the workers' real resident memory, every copy with its state, pins and age,
counters, and who waits for memory."""

from __future__ import annotations

import socket
import time
from typing import Any

from agent import jobs, waiting
from agent.keys import decode, key, slot
from agent.memory import rss_bytes
from agent.placement import Placement, ask_backlogs, backlogs_from, parse_entries, used_bytes


def _worker_rss(placement: Placement, worker: str) -> dict[str, Any]:
    """A worker's resident memory: read from ``/proc`` now when it runs on this host (so the
    workers of one snapshot are sampled together), else its last heartbeat's."""
    rss, base, base_pss, pid, host = placement.r.hmget(
        key("worker", worker), "rss", "baseline_rss", "baseline_pss", "pid", "host"
    )
    value = int(rss or 0)
    if pid and host and host.decode() == socket.gethostname():
        try:
            value = rss_bytes(int(pid))
        except (OSError, ValueError, IndexError):
            pass  # gone meanwhile: keep the heartbeat's value
    return {
        "pid": int(pid or 0),
        "host": (host or b"").decode(),
        "rss_bytes": value,
        "baseline_rss_bytes": int(base or 0),
        "baseline_pss_bytes": int(base_pss or 0),
    }


def snapshot(placement: Placement, **settings: Any) -> dict[str, Any]:
    """The cache view; ``settings`` (the gateway's sync timeout) are shown with it."""
    r = placement.r
    alive, _ = placement.members.workers()
    now = time.time()
    devices: dict[str, Any] = {}
    for device in sorted({w.device for w in alive.values()}):
        mine = [w for w in alive.values() if w.device == device]
        with r.pipeline(transaction=False) as pipe:
            pipe.hgetall(key("entries", device))
            pipe.hgetall(key("pins", device))
            for name in ("hits", "misses", "evictions", "prewarms"):
                pipe.hgetall(key(name, device))
            pipe.hlen(key("releasing", device))
            ask_backlogs(pipe, mine)
            raw, pins, *rest = pipe.execute()
        counters = {
            name: {k: int(v) for k, v in decode(rest[i]).items()}
            for i, name in enumerate(("hits", "misses", "evictions", "prewarms"))
        }
        releasing, backlog = rest[4], backlogs_from(mine, rest[5:])
        entries, pins = parse_entries(raw, alive), decode(pins)
        workers = {
            w.name: {
                "queue": w.queue,
                "queued": backlog[w.name],
                **_worker_rss(placement, w.name),
                "models": [],
            }
            for w in mine
        }
        for model, worker, doc in sorted(entries):
            workers[worker]["models"].append(
                {
                    "model": model,
                    "bytes": int(doc["bytes"]),
                    "state": doc["state"],
                    "since": doc.get("since", doc["inserted_at"]),
                    "in_flight": int(pins.get(slot(model, worker), 0)),
                }
            )
        devices[device] = {
            "cap_bytes": placement.members.cap(device),
            "used_bytes": used_bytes(entries),
            "releasing": releasing,
            # the pool's real footprint: resident memory of its workers, and what they held
            # before any model (resident stays <= cap + baseline when eviction works)
            "rss_bytes": sum(w["rss_bytes"] for w in workers.values()),
            "baseline_rss_bytes": sum(w["baseline_rss_bytes"] for w in workers.values()),
            # the same in proportional memory: what the workers cost, the pages they share
            # with the rest of the agent counted once (RSS counts them in every worker)
            "baseline_pss_bytes": sum(w["baseline_pss_bytes"] for w in workers.values()),
            **counters,
            "admission": {
                "waiting": waiting.listing(r, device, now),
                **waiting.counters(r, device),
            },
            "workers": workers,
        }
    return {
        "policy": placement.policy_name,
        "max_waiting": placement.max_waiting,
        **settings,
        "time": now,
        "devices": devices,
        # asynchronous jobs per function: waiting and running now; retried, finished and
        # failed since Redis' data began
        "jobs": jobs.counts(r),
    }
