"""One invocation on a worker, sync or async alike — the whole request path inside a worker.

1. Drop work whose caller has given up (its ``deadline`` passed while it was queued): it
   never runs and holds nothing (queued work pins nothing).
2. Claim the copy (``claim.lua``): pinned while it executes. Gone (evicted or forgotten while
   the request was queued): the request is placed again, as a miss (:data:`REPLACED`).
3. Load it if this worker does not hold it: wait until the victims placement chose are
   released, open the file; a failed load gives the reservation back and marks the function
   failed (other functions keep serving).
4. Run it. Right after, in a ``finally`` whatever happened (input expired or missing, the
   interpreter raised), a fresh load turns ``ready`` (:meth:`Copies.loaded`) — never left
   ``loading``.
The caller unpins in the pipeline that answers (:func:`account`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from agent import durable
from agent.dispatch import counted_as
from agent.durable import AppendOnlyFile
from agent.interpreters import InterpreterCache
from agent.keys import key
from agent.lane import Spool
from agent.memory import rss_bytes
from agent.metrics import observe
from agent.placement import Placement, move_count
from agent.txn import through_outage
from functions.handlers import BadInput, make_handler
from functions.tensors import from_npy

log = logging.getLogger("brulee.worker")
RELEASE_WAIT_S = 30.0  # how long a load waits for other workers to drop its victims
REPLACED = {"replaced": True}  # the request went back to placement: someone else answers


@dataclass
class Context:
    """This process's worker identity and state."""

    worker: str
    device: str
    placement: Placement
    interpreters: InterpreterCache
    conn: redis.Redis
    spool: Spool
    handlers: dict[tuple, Any] = field(default_factory=dict)
    exec_s: dict[str, float] = field(default_factory=dict)  # moving average per model
    # held while an invocation or an eviction runs: the heartbeat thread takes it before it
    # drops interpreters the accounting forgot
    lock: threading.RLock = field(default_factory=threading.RLock)
    # set when this worker may have freed memory: its admission thread tries the waiters
    admit_now: threading.Event = field(default_factory=threading.Event)
    # strict durability with the embedded Redis: forced at a job's end (agent/durable.py)
    aof: AppendOnlyFile | None = field(default_factory=durable.from_env)

    @property
    def copies(self):
        return self.placement.copies


def error(ctx: Context, message: str, status: int, **extra: Any) -> dict[str, Any]:
    return {"error": message, "status": status, "worker": ctx.worker, **extra}


def _handler(ctx: Context, req: dict[str, Any]):
    spec = (req["handler"], req["file"], repr(sorted(req.get("options", {}).items())))
    if spec not in ctx.handlers:
        ctx.handlers[spec] = make_handler(req["handler"], req["record"], **req.get("options", {}))
    return ctx.handlers[spec]


def serve(
    ctx: Context, req: dict[str, Any], read_input: Callable[[], bytes | None]
) -> tuple[dict[str, Any], bool]:
    """Run one invocation placed on this worker; returns the answer and whether the copy was
    pinned (then the caller unpins). Errors are answers (``{"error", "status"}``), never
    exceptions, once the copy is pinned."""
    started = time.time()
    claimed = through_outage(
        lambda: ctx.copies.claim(ctx.device, req["model"], ctx.worker, req["function"]),
        f"claiming {req['model']} for a call",
    )
    if claimed.failed is not None:
        return error(ctx, f"function {req['function']!r} failed: {claimed.failed}", 503), False
    deadline = req.get("deadline")
    if deadline is not None and started > float(deadline):
        if (
            claimed.entry is not None
            and req.get("miss")
            and (req["model"] not in ctx.interpreters.models)
        ):  # its reservation would otherwise wait for a load nobody does
            ctx.copies.give_back(ctx.device, req["model"], ctx.worker)
        late = started - float(deadline)
        message = f"dropped before it ran: its caller's deadline passed {late:.2f} s ago"
        return error(ctx, message, 504), claimed.entry is not None
    if claimed.entry is None:
        return REPLACED, False
    try:
        return _run(ctx, req, read_input, started), True
    except Exception as exc:  # noqa: BLE001 (the interpreter's own: the caller must hear of it)
        log.exception("invocation of %s failed", req.get("function"))
        return error(ctx, f"the worker failed: {exc!r}", 500), True


def _run(ctx: Context, req: dict[str, Any], read_input, started: float) -> dict[str, Any]:
    model = req["model"]
    queue_s = max(started - float(req["enqueued_at"]), 0.0)
    loaded = ctx.interpreters.models.get(model)
    hit = loaded is not None
    load_s, rss_before = 0.0, 0
    if not hit:
        _wait_for_release(ctx, req.get("wait_for", []))
        rss_before = rss_bytes()
        try:
            loaded, load_s = ctx.interpreters.load(model, req["file"])
        except (ValueError, RuntimeError, OSError) as exc:
            reason = f"model {model!r} cannot be loaded from {req['file']}: {exc}"
            ctx.copies.give_back(ctx.device, model, ctx.worker, failed=(req["function"], reason))
            return error(ctx, reason, 503)
    exec_s = None
    try:
        # (a Redis restart while the input is read is not the call's failure: wait it out)
        payload = through_outage(read_input, f"reading the input of a call of {model}")
        if payload is None:
            return error(ctx, "the request's input expired before a worker took it", 504)
        handler = _handler(ctx, req)
        batch = from_npy(payload)
        t0 = time.perf_counter()
        output = loaded.predict(batch)
        exec_s = time.perf_counter() - t0
        result = handler.encode(output)
    except BadInput as exc:
        return error(ctx, str(exc), exc.status)
    finally:
        if not hit:
            _finish_load(ctx, req, load_s, rss_before)
    return {
        "result": result,
        "cache": "hit" if hit else "miss",
        "load_s": load_s,
        "exec_s": exec_s,
        "queue_s": queue_s,
        "worker": ctx.worker,
        "variant": model,  # the model that served: a smaller variant's (agent.variants)
    }


def _finish_load(ctx: Context, req: dict[str, Any], load_s: float, rss_before: int) -> None:
    """loading → ready with what this worker measured; if the model outgrew its reservation
    and nothing idle can make room, drop it again (the reservation was given back)."""
    model = req["model"]
    observed = rss_bytes() - rss_before
    facts = req.get("facts") or {}
    # a profile's loaded bytes (measured in a fresh process) are a floor: this process's RSS
    # delta undercounts when the allocator reuses pages of evicted models, but when it is
    # larger (the request's tensors ride along) the reservation grows to it
    correction = observed
    if facts.get("profiled") and observed <= int(facts.get("bytes") or 0):
        correction = None
    try:
        kept = through_outage(
            lambda: ctx.copies.loaded(
                ctx.device, model, ctx.worker, correction, load_s, observed, ctx.placement.policy()
            ),
            f"marking {model} ready",
        )
    except redis.RedisError:
        log.exception("could not mark %s ready; the heartbeat's reconciliation will", model)
        return
    if not kept:
        log.warning(
            "%s needs %d bytes, more than reserved, and only executing models hold "
            "the rest: dropped again",
            model,
            observed,
        )
        ctx.interpreters.drop(model)


def _wait_for_release(ctx: Context, slots: list[str]) -> None:
    deadline = time.monotonic() + RELEASE_WAIT_S
    while through_outage(
        lambda: ctx.copies.is_releasing(ctx.device, slots), "waiting for victims' release"
    ):
        if time.monotonic() > deadline:
            log.warning(
                "victims %s not released after %.0f s; loading anyway", slots, RELEASE_WAIT_S
            )
            return
        time.sleep(0.005)


def account(ctx: Context, req: dict[str, Any], result: dict[str, Any], pinned: bool, pipe) -> None:
    """After an invocation, in the pipeline that answers it: unpin the copy, store the model's
    exec time (this worker's moving average), count it in the metrics if it was served. If
    the worker found otherwise than placement counted (a call counted as a hit whose copy it
    had to load: the copy was evicted and reserved again for a later miss before the call
    ran), the device's hit/miss counters move to what the answer's ``X-Cache`` says."""
    model, exec_s = req["model"], result.get("exec_s")
    if exec_s is not None:
        old = ctx.exec_s.get(model)
        exec_s = ctx.exec_s[model] = exec_s if old is None else 0.8 * old + 0.2 * exec_s
    if pinned:
        ctx.copies.unpin(ctx.device, model, ctx.worker, exec_s, pipe, ctx.placement.policy_name)
    if "cache" in result:
        observe(pipe, req["function"], result)
        move_count(pipe, ctx.device, model, counted_as(req), result["cache"])


def reconcile(ctx: Context) -> None:
    """Make what this process holds and what the accounting says it holds agree (under the
    context's lock, so no invocation is half way): interpreters the accounting does not count
    (neither a copy nor being released) are dropped; copies counted ``ready`` that this process
    does not hold are given back; a load whose ``ready`` step failed is completed; pins on this
    worker's copies (nothing executes while the lock is held) are stale and cleared."""
    held = ctx.copies.held_by(ctx.device, ctx.worker)
    releasing = {
        m
        for m in ctx.interpreters.models
        if ctx.conn.hexists(key("releasing", ctx.device), f"{m}|{ctx.worker}")
    }
    for model in list(ctx.interpreters.models):
        if model not in held and model not in releasing:
            log.warning("holding %s, which the accounting does not count: dropping it", model)
            ctx.interpreters.drop(model)
        elif model in held and held[model]["state"] == "loading":
            ctx.copies.loaded(ctx.device, model, ctx.worker, None, 0.0)
    for model, entry in held.items():
        if entry["state"] == "ready" and model not in ctx.interpreters.models:
            log.warning("accounted for %s, which this worker does not hold: giving it back", model)
            ctx.copies.give_back(ctx.device, model, ctx.worker)
    stale = ctx.copies.clear_pins(ctx.device, ctx.worker)
    if stale:  # nothing executes here now: a pin left by an answer Redis never took
        log.warning("cleared stale pins of %s", ", ".join(stale))
