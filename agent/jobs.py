"""What an asynchronous invocation is promised, and the record that keeps the promise.

A ``202 Accepted`` means: the job runs **at least once**, unless its function fails it.

- It is held for a worker (``held:{w}``, written in the transaction that queues it there,
  cleared when the worker is done with it) and runs there only if that worker lives: the
  jobs held for a worker that dies or is stopped — queued or running — go to the device's
  orphans, like a dead worker's synchronous calls
  (:meth:`agent.membership.Membership.forget_worker`), and are placed again (:func:`adopt`,
  called by :func:`agent.waiting.adopt_orphans`), on whichever worker runs next — after a
  restart, the next start's. A job id a worker popped but never received (Redis went down
  in between) is put back on its queue (:func:`requeue_lost`).
- A job whose worker died while running it is run again, up to ``max_attempts`` attempts in
  all (default :data:`DEFAULT_MAX_ATTEMPTS`; the function's ``max_attempts`` in the stack
  file, or the request's ``X-Max-Attempts``); only after the last does it end ``failed``,
  with each attempt's error. A job may thus run more than once: a client that retries a
  submission sends ``Idempotency-Key`` and gets the first submission's job back
  (:func:`claim_key`), not a second run.

The record ``job:{id}`` (id: the client's) holds ``function``, ``max_attempts``,
``attempts`` (started), ``running_on`` (the worker running an attempt now), ``error:{n}``
(why attempt ``n`` did not finish), ``failed`` (the final reason, when the job was failed
without an answer from a worker) and the callback's fields (:mod:`agent.callbacks`).
``jobs`` counts per function: ``waiting`` and ``running`` (gauges), ``retried``,
``finished`` and ``failed`` (counters).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

import redis

from agent.keys import key

if TYPE_CHECKING:
    from agent.placement import Placement

DEFAULT_MAX_ATTEMPTS = 2  # a job whose worker died while running it is retried once
MAX_ATTEMPTS_LIMIT = 10
KEY_MAX = 200  # characters of an Idempotency-Key
RECORD_TTL_S = 3600  # as RQ keeps a job's result (dispatch.JOB_TTL_S)
GAUGES, COUNTERS = ("waiting", "running"), ("retried", "finished", "failed")


def record(job_id: str) -> str:
    return key("job", job_id)


def held(worker: str) -> str:
    """The list of jobs placed on ``worker`` that it has not finished (RQ ids)."""
    return key("held", worker)


def requeue_lost(conn: redis.Redis, worker: str, queue_key: str) -> int:
    """Put back on ``worker``'s queue the jobs it holds that are neither queued nor running
    (it runs none now: it is waiting for work) — a pop whose answer Redis never delivered;
    returns how many."""
    queued = set(conn.lrange(queue_key, 0, -1))
    lost = [i for i in dict.fromkeys(conn.lrange(held(worker), 0, -1)) if i not in queued]
    if lost:
        conn.rpush(queue_key, *lost)
    return len(lost)


def parse_max_attempts(raw: Any, what: str = "X-Max-Attempts") -> int | None:
    """An attempt bound: an integer from 1 to :data:`MAX_ATTEMPTS_LIMIT` (None: not given)."""
    if raw is None:
        return None
    try:
        value = int(raw)
        if isinstance(raw, float | bool) or str(value) != str(raw).strip():
            raise ValueError
    except (TypeError, ValueError):
        value = 0
    if not 1 <= value <= MAX_ATTEMPTS_LIMIT:
        raise ValueError(
            f"{what} must be an integer from 1 to {MAX_ATTEMPTS_LIMIT}, got {raw!r:.40}"
        )
    return value


def parse_key(raw: str | None) -> str | None:
    """An ``Idempotency-Key``: 1 to :data:`KEY_MAX` printable ASCII characters."""
    if raw is None:
        return None
    if not 1 <= len(raw) <= KEY_MAX or not all(32 <= ord(c) < 127 for c in raw):
        raise ValueError(f"Idempotency-Key must be 1-{KEY_MAX} printable ASCII characters")
    return raw


def _key_of(function: str, idempotency_key: str) -> str:
    return key("idem", function, hashlib.sha256(idempotency_key.encode()).hexdigest())


def claim_key(conn: redis.Redis, function: str, idempotency_key: str, job_id: str) -> str | None:
    """Bind ``idempotency_key`` (per function) to ``job_id``; the job id it already named, if
    it did (then nothing is submitted)."""
    old = conn.set(_key_of(function, idempotency_key), job_id, nx=True, ex=RECORD_TTL_S, get=True)
    return old.decode() if old is not None else None


def release_key(conn: redis.Redis, function: str, idempotency_key: str, job_id: str) -> None:
    """The submission bound to the key was refused: the key is free again."""
    name = _key_of(function, idempotency_key)
    if conn.get(name) == job_id.encode():
        conn.delete(name)


def count(pipe, function: str, **moves: int) -> None:
    for state, n in moves.items():
        pipe.hincrby(key("jobs"), f"{function}|{state}", n)


def accept(conn: redis.Redis, req: dict[str, Any]) -> None:
    """Open a job's record and count it waiting (before it is handed over)."""
    fields = {"function": req["function"], "max_attempts": req["max_attempts"], "attempts": 0}
    if req.get("callback"):
        fields["callback"] = req["callback"]
    with conn.pipeline() as pipe:
        pipe.hset(record(req["job_id"]), mapping=fields)
        pipe.expire(record(req["job_id"]), RECORD_TTL_S)
        count(pipe, req["function"], waiting=1)
        pipe.execute()


def refused(conn: redis.Redis, req: dict[str, Any]) -> None:
    """The submission was refused (no 202): no record, no count."""
    with conn.pipeline() as pipe:
        pipe.delete(record(req["job_id"]))
        count(pipe, req["function"], waiting=-1)
        pipe.execute()


def started(conn: redis.Redis, req: dict[str, Any], worker: str) -> None:
    """A worker starts an attempt."""
    with conn.pipeline() as pipe:
        pipe.hincrby(record(req["job_id"]), "attempts", 1)
        pipe.hset(record(req["job_id"]), "running_on", worker)
        pipe.expire(record(req["job_id"]), RECORD_TTL_S)
        count(pipe, req["function"], waiting=-1, running=1)
        pipe.execute()


def ended(pipe, req: dict[str, Any], result: dict[str, Any] | None) -> None:
    """The attempt ended, in ``pipe``: with ``result`` (the job's answer), or None: the job
    went back to placement (its copy was evicted while it was queued), not an attempt."""
    rec = record(req["job_id"])
    pipe.hdel(rec, "running_on")
    if result is None:
        pipe.hincrby(rec, "attempts", -1)
        count(pipe, req["function"], running=-1, waiting=1)
    else:  # kept with the record too: if RQ cannot record the end, the answer stays
        pipe.hset(rec, "answer", json.dumps(result))
        count(pipe, req["function"], running=-1, **{_outcome(result): 1})


def _outcome(result: dict[str, Any]) -> str:
    return "failed" if "error" in result else "finished"


def fail(conn: redis.Redis, req: dict[str, Any], reason: str, waiting: bool = True) -> None:
    """End a job ``failed`` without a worker's answer (``waiting``: it was counted waiting);
    its callback hears of it."""
    from agent import callbacks

    with conn.pipeline() as pipe:
        pipe.hset(record(req["job_id"]), "failed", reason)
        count(pipe, req["function"], failed=1, **({"waiting": -1} if waiting else {}))
        callbacks.schedule(pipe, req, {"error": reason})
        pipe.execute()


def adopt(placement: Placement, device: str, rq_id: str) -> bool:
    """Place again an async job a dead (or stopped) worker held: queued there (it never
    started: placed again as it is), or running there (that attempt failed: run again if it
    has attempts left, else failed with each attempt's error). True if it was placed."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job
    from rq.serializers import JSONSerializer

    from agent.dispatch import ASYNC, counted_as, submit
    from agent.membership import PlacementError
    from agent.txn import Contended

    conn = placement.r
    try:
        job = Job.fetch(rq_id, connection=conn, serializer=JSONSerializer)
        if job.func_name != "agent.worker.invoke":
            return False  # an eviction or a prewarm for the dead worker: moot now
        req = dict(job.args[0])
    except (NoSuchJobError, IndexError, TypeError, ValueError):
        return False  # expired or malformed: nothing to run
    if str(getattr(job.get_status(), "value", "")) not in ("queued", "started"):
        return False  # it ended meanwhile (its worker answered before it was forgotten)
    rec = record(req["job_id"])
    worker, attempts, most, answer = conn.hmget(
        rec, "running_on", "attempts", "max_attempts", "answer"
    )
    if answer is not None:
        return False  # answered: only RQ's record of its end was lost
    if worker is not None:
        n, most = int(attempts or 1), int(most or DEFAULT_MAX_ATTEMPTS)
        why = f"worker {worker.decode()} died while running it"
        with conn.pipeline() as pipe:
            pipe.hset(rec, f"error:{n}", json.dumps({"error": why, "at": time.time()}))
            pipe.hdel(rec, "running_on")
            count(pipe, req["function"], running=-1, **({"retried": 1, "waiting": 1}
                                                       if n < most else {}))  # fmt: skip
            pipe.execute()
        if n >= most:
            fail(conn, req, f"{why}, on its last attempt ({n} of {most})", waiting=False)
            return False
    req["recount"] = counted_as(req)
    try:
        submit(placement, req, b"", ASYNC, rq_id)
    except (PlacementError, Contended) as exc:
        placement.uncount(device, req)
        fail(conn, req, f"its worker stopped before running it and it could not be placed "
                        f"again: {exc}")  # fmt: skip
        return False
    return True


def describe(conn: redis.Redis, job_id: str) -> dict[str, Any]:
    """A job's attempts, their errors and its callback deliveries, for ``GET /jobs/{id}``
    (``failed``: the final reason when no worker answered it; ``answer``: the worker's)."""
    from agent.callbacks import deliveries

    raw = {k.decode(): v.decode() for k, v in conn.hgetall(record(job_id)).items()}
    if not raw:
        return {}
    errors = sorted(
        ({"attempt": int(f.split(":", 1)[1]), **json.loads(v)}
         for f, v in raw.items() if f.startswith("error:")),
        key=lambda e: e["attempt"],
    )  # fmt: skip
    doc: dict[str, Any] = {
        "attempts": int(raw.get("attempts", 0)),
        "max_attempts": int(raw.get("max_attempts", DEFAULT_MAX_ATTEMPTS)),
        "attempt_errors": errors,
    }
    if "failed" in raw:
        doc["failed"] = raw["failed"]
    if "answer" in raw:
        doc["answer"] = json.loads(raw["answer"])
    if "callback" in raw:
        doc["callback"] = deliveries(raw)
    return doc


def counts(conn: redis.Redis) -> dict[str, dict[str, int]]:
    """Per function: waiting, running (now), retried, finished, failed (since the start)."""
    out: dict[str, dict[str, int]] = {}
    for field_, n in conn.hgetall(key("jobs")).items():
        function, state = field_.decode().rsplit("|", 1)
        out.setdefault(function, dict.fromkeys((*GAUGES, *COUNTERS), 0))[state] = int(n)
    return out
