"""Every Redis key brulee uses, in one place (all under the ``brulee:`` prefix, except RQ's own).

Devices and workers (:mod:`agent.membership`):

- ``device:{d}`` hash: ``cap`` (bytes), ``policy``
- ``workers`` set; ``worker:{w}`` hash: ``device``, ``queue``, ``pid``, ``host``, ``rss``,
  ``baseline_rss``, ``spool``; ``alive:{w}``: heartbeat with a short TTL;
  ``members:version``: bumped whenever a worker joins or is forgotten (the hit script's
  callers cache the membership and pass its keys; a stale copy is refused)

Model copies (:mod:`agent.lifecycle`; a copy is a model on one worker, its *slot*
``model|worker``):

- ``entries:{d}`` hash slot → JSON ``{bytes, state, since, inserted_at, load_s, exec_s}``,
  ``state`` ``loading`` or ``ready``: the bytes counted against the device's cap
- ``pins:{d}`` hash slot → invocations executing on the copy (claimed by its worker)
- ``queued:{d}`` hash slot → invocations placed on the copy and not yet claimed
- ``releasing:{d}`` hash slot → bytes: evicted, not yet dropped by its worker
- ``used:{d}``, ``priority:{d}`` hash slot → last use, the policy's stored priority
- ``clock:{d}``: GDSF's clock

Admission (:mod:`agent.waiting`):

- ``waiting:{d}`` sorted set ticket id → arrival time: the device's admission queue
- ``ticket:{id}`` hash: ``head`` (JSON: model facts, kind, deadline, function…) and ``payload``
  (the lane message or the job request)
- ``admission:{d}`` hash: counters ``admitted``, ``timed_out``, ``refused``

Requests and statistics:

- ``lane:{w}`` list: synchronous invocations for worker ``w``; ``lane:{w}:loads``: the
  misses among them (popped first); ``reply:{id}``: one answer;
  ``reply:{id}:route``: the worker that has the call now (or ``orphaned``)
- ``orphans:{d}`` list: calls queued on a worker that died, to be placed again
- ``input:{id}``: an async job's input tensor (TTL)
- ``stats:{m}`` hash: ``requests``, ``load_s``, ``exec_s``, ``bytes``, ``observed_bytes``,
  ``freed_bytes``; ``requests``: all requests (the policies' R)
- ``hits:{d}``, ``misses:{d}``, ``evictions:{d}``, ``prewarms:{d}`` hashes: counters by model
  (by policy for evictions)
- ``arrivals`` stream ``{m, t}``: what the proactive (keep-alive) loop reads
- ``functions`` hash name → JSON; ``functions:version``; ``functions:seeded``; ``failed`` hash
  function → reason
- ``invocations`` hash, ``hist:{kind}`` hashes: Prometheus counters kept in Redis;
  ``latency`` hash ``{function}|{kind}`` → seconds summed (load, exec, queue, total)
- ``evictions:{d}:log`` list: the device's recent eviction decisions, newest first, with the
  utilities the policy compared (:mod:`agent.evictions`); ``rss:history`` list: samples of
  the workers' resident memory (:mod:`agent.status`)
"""

from __future__ import annotations

PREFIX = "brulee"


def key(*parts: str) -> str:
    return ":".join((PREFIX, *parts))


def slot(model: str, worker: str) -> str:
    """The field naming one copy: ``model|worker``."""
    return f"{model}|{worker}"


def unslot(field_: str | bytes) -> tuple[str, str]:
    text = field_.decode() if isinstance(field_, bytes) else field_
    model, worker = text.rsplit("|", 1)
    return model, worker


def lane(worker: str) -> str:
    """The list a worker pops synchronous invocations from."""
    return key("lane", worker)


def load_lane(worker: str) -> str:
    """The list of synchronous misses for a worker: popped before its lane of hits, so the
    memory a miss reserved is not held idle behind a backlog."""
    return key("lane", worker, "loads")


def lanes(worker: str) -> tuple[str, str]:
    """A worker's two lanes, in the order it pops them."""
    return load_lane(worker), lane(worker)


def route(reply: str) -> str:
    """Where a synchronous call is now (its worker's name, or ``orphaned`` while it waits to
    be placed again): the gateway checks that worker's heartbeat while it waits."""
    return f"{reply}:route"


def rq_queue(queue: str) -> str:
    """RQ's own list for a queue name (RQ's key, not under our prefix)."""
    return f"rq:queue:{queue}"


def worker_queue(worker: str) -> str:
    """The RQ queue name of a worker."""
    return f"brulee.{worker}"


def decode(mapping: dict) -> dict[str, str]:
    """A Redis hash reply with bytes keys and values as ``str``."""
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in mapping.items()
    }
