"""How placed work reaches its worker — the one place that builds lane messages and RQ jobs,
for the gateway, for a worker placing a request again, and for the admission queue.

A request is a JSON-able dict (``req``): the function and its model, file, handler, options;
``enqueued_at`` (when the gateway took it: the worker's ``queue_s`` counts from there, so it
includes any wait for memory); ``facts`` (what placement reserves); for a synchronous call
``reply`` (the list its gateway waits on), ``deadline`` (epoch seconds: a worker drops work
whose caller has given up) and how its input travels (inline or a spool file); for an async
job ``input_key`` and ``callback``. Placement adds what it decided (:func:`placed`).
"""

from __future__ import annotations

from typing import Any

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from agent.jobs import held
from agent.keys import lane, load_lane, route
from agent.lane import lane_message
from agent.membership import ROUTE_TTL_S
from agent.placement import Decision, ModelFacts, Placement, Wait
from agent.variant_placement import as_facts, served_request

JOB_TTL_S = 3600  # how long RQ keeps an async job's result (and failure)
SYNC, ASYNC = "lane", "job"


def facts_of(req: dict[str, Any]) -> ModelFacts:
    """What placement accounts ``req`` with (a function with variants: its best one's, and
    the variants to choose from, :mod:`agent.variants`)."""
    return as_facts(req["model"], req["facts"], req.get("variants") or [])


def with_facts(req: dict[str, Any], facts: ModelFacts, profiled: bool) -> dict[str, Any]:
    req["model"] = facts.name  # a staged copy's name (agent.staged) when served from stages
    req["facts"] = {
        "bytes": facts.bytes,
        "load_s": facts.load_s,
        "exec_s": facts.exec_s,
        "profiled": profiled,
    }
    return req


def counted_as(req: dict[str, Any]) -> str:
    """How placement counted a request it put on a lane or queue: ``"hit"`` or ``"miss"``."""
    return "miss" if req.get("miss") else "hit"


def placed(req: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """``req`` with what placement decided: a miss (reserve, load), the victims to wait for,
    the variant placed (its model and file)."""
    served = served_request(req, decision)
    return {**served, "miss": not decision.hit, "wait_for": decision.wait_for}


def push_lane(
    pipe, decision: Decision, req: dict[str, Any], payload: bytes, front: bool = False
) -> str:
    """A synchronous invocation onto the chosen worker's lane, in ``pipe``. A miss goes to its
    load lane, popped first: its reserved memory is pinned until the worker has loaded the
    model, and must not sit idle behind a backlog of hits while others wait for memory.
    ``front``: a hit placed again goes to the front of its lane."""
    message = lane_message(placed(req, decision), payload)
    if not decision.hit:
        pipe.rpush(load_lane(decision.worker), message)
    else:
        (pipe.lpush if front else pipe.rpush)(lane(decision.worker), message)
    pipe.set(route(req["reply"]), decision.worker, ex=ROUTE_TTL_S)
    return decision.worker


def enqueue_job(
    pipe, conn: redis.Redis, decision: Decision, req: dict[str, Any], job_id: str
) -> str:
    """An asynchronous invocation as an RQ job (id ``job_id``) on the chosen worker, in
    ``pipe``. Its callback URL (``req["callback"]``) is posted once the answer is final
    (:func:`agent.callbacks.schedule`), not by RQ: a job placed again on another worker (its
    copy was evicted while it was queued, or its worker died) ends in a later job."""
    Queue(decision.queue, connection=conn, serializer=JSONSerializer).enqueue_call(
        "agent.worker.invoke",
        args=(placed({"job_id": job_id, **req}, decision),),  # the client's id, if any
        pipeline=pipe,
        job_id=job_id,
        result_ttl=JOB_TTL_S,
        failure_ttl=JOB_TTL_S,
        timeout=int(req.get("timeout_s", 600)),
        meta={"function": req["function"], "worker": decision.worker},
    )
    pipe.rpush(held(decision.worker), job_id)  # placed again if the worker dies
    return job_id


def submit(
    placement: Placement,
    req: dict[str, Any],
    payload: bytes,
    kind: str,
    ident: str,
    deadline: float = float("inf"),
    front: bool = False,
) -> Decision:
    """Place ``req`` and hand it over (``kind`` :data:`SYNC`: onto a lane, ``ident`` unused but
    as the ticket id; :data:`ASYNC`: as RQ job ``ident``), or park it in the admission queue
    with ``payload`` (the inline input of a lane message). Returns the decision (its
    ``ticket`` is set when it waits)."""
    facts = facts_of(req)

    def enqueue(pipe, decision: Decision) -> None:
        if kind == SYNC:
            push_lane(pipe, decision, req, payload, front)
        else:
            enqueue_job(pipe, placement.r, decision, req, ident)

    wait = Wait(ident, {"kind": kind, "req": req}, payload, deadline)
    decision, _ = placement.place(facts, enqueue, wait=wait, recount=req.get("recount"))
    return decision
