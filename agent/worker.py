"""The worker: an RQ ``SimpleWorker`` that keeps TFLite interpreters warm between jobs.

RQ's default worker forks a work horse per job, which would throw every interpreter away;
``SimpleWorker`` runs jobs in its own process, so the interpreters (:mod:`agent.interpreters`)
survive from one job to the next. Each worker has its own RQ queue and a *lane* (a plain
Redis list for synchronous calls), popped in the same blocking call (:mod:`agent.lanequeue`),
and a heartbeat, an admission and a callback thread. What one invocation does is
:mod:`agent.serve`.

RQ jobs a worker runs — only these; any other function name in its queue fails with a reason
(:data:`JOB_FUNCTIONS`): :func:`invoke` (an async invocation), :func:`evict` (drop copies that
placement evicted), :func:`prewarm` (a proactive load).

The heartbeat thread, every second: refreshes the worker's liveness and reconciles what this
process holds with what the accounting says it holds (:func:`reconcile`): a worker that was
paused past its heartbeat and forgotten drops every interpreter before it registers again, so
it never holds memory the accounting does not count. The admission thread places requests
waiting for memory on its device (:func:`agent.waiting.admit`) whenever an invocation or an
eviction of this worker ends, and every second (what answers tickets whose deadline passed).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from functools import partial
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested
from rq.serializers import JSONSerializer

from agent import callbacks, jobs, waiting
from agent.dispatch import ASYNC, SYNC, counted_as, submit
from agent.interpreters import InterpreterCache
from agent.keys import lanes, worker_queue
from agent.lane import Spool, reply_message
from agent.lanequeue import POP_SLICE_S, LaneQueue
from agent.membership import HEARTBEAT_TTL, PlacementError
from agent.memory import pss_bytes, release_memory, rss_bytes
from agent.placement import Placement
from agent.serve import REPLACED, Context, account, reconcile, serve
from agent.txn import Contended, through_outage

log = logging.getLogger("brulee.worker")
JOB_FUNCTIONS = ("agent.worker.invoke", "agent.worker.evict", "agent.worker.prewarm")
RECONCILE_EVERY_S = 5.0
ADMISSION_STOP_S = 10.0  # a stopping worker waits this long for its admission pass to end
CALLBACK_PERIOD_S = 0.5
# Every reply a worker waits for is due within POP_SLICE_S: its longest blocking command is the
# BLPOP of agent.lanequeue, sliced to that; nothing else it sends blocks (no WAIT, no blocking
# XREAD; its Lua scripts are short). A healthy Redis may still hold a reply back behind another
# client's script or command, for up to its busy threshold (lua-time-limit, 5 s: past that it
# answers BUSY to everyone else) — twice that is the slack. A reply later than SOCKET_TIMEOUT_S
# means Redis went away without a word (its host crashed or was cut off and Redis restarted,
# so no FIN or RST ever reaches the worker): the read raises redis.TimeoutError, handled like
# a lost connection (the pop is marked failed and retried by RQ's loop, the steps a worker must
# not lose are retried through the outage), and the next command connects again. Without it
# the read would wait for RQ's socket timeout: its dequeue timeout + 10 s, 415 s.
REDIS_BUSY_S = 5.0
SOCKET_TIMEOUT_S = POP_SLICE_S + 2 * REDIS_BUSY_S
CONNECT_TIMEOUT_S = 2.0
# TCP keepalive on idle connections (the pool's spares): a peer gone silent is found after
# 10 s idle + 3 unanswered probes 2 s apart, so the next command takes a new connection at once
KEEPALIVE = {
    getattr(socket, name): value
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
}

_CONTEXT: Context | None = None


def _context() -> Context:
    if _CONTEXT is None:
        raise RuntimeError("brulee jobs run only inside a brulee worker (brulee worker)")
    return _CONTEXT


# -- RQ jobs ------------------------------------------------------------------------------------


def invoke(req: dict[str, Any]) -> dict[str, Any]:
    """An asynchronous invocation; its input waits under ``req["input_key"]``. If its copy was
    evicted while it was queued, it is placed again — through the same placement and
    admission as at the gateway, never by waiting here — as a new job, and this one answers
    ``{"moved_to": id}`` (``GET /jobs/{id}`` follows it to the final answer). Its record
    (:mod:`agent.jobs`) counts the attempt; its callback is queued with the answer."""
    ctx = _context()
    through_outage(lambda: jobs.started(ctx.conn, req, ctx.worker), "starting a job")
    with ctx.lock:
        result, pinned = serve(ctx, req, lambda: ctx.conn.get(req["input_key"]))
        if result is REPLACED:
            result = _replace(ctx, req, b"", ASYNC)
            if result is REPLACED:

                def moved() -> None:
                    with ctx.conn.pipeline() as pipe:
                        jobs.ended(pipe, req, None)
                        pipe.execute()

                through_outage(moved, f"moving job {req.get('job_id')}")
                _force(ctx)
                return {"moved_to": req["moved_to"]}

        def answer() -> list:
            with ctx.conn.pipeline(transaction=False) as pipe:
                pipe.delete(req["input_key"])
                account(ctx, req, result, pinned, pipe)
                jobs.ended(pipe, req, result)
                callbacks.schedule(pipe, req, result)
                return pipe.execute()

        replies = through_outage(answer, f"answering job {req.get('job_id')}")
        _force(ctx)
        _unpinned(ctx, req, replies[1] if pinned else None)
    ctx.admit_now.set()
    return result


def _force(ctx: Context) -> None:
    """Strict durability: a job's end (its answer, or where it moved) is on disk before the
    worker takes more work (:mod:`agent.durable`)."""
    if ctx.aof is not None:
        try:
            ctx.aof.force()
        except OSError as exc:
            log.warning("could not force the append-only file to disk: %s", exc)


def evict(models: list[str]) -> dict[str, int]:
    """Drop interpreters that placement evicted from this worker; returns the bytes freed."""
    ctx = _context()
    freed = {}
    with ctx.lock:
        for model in models:
            freed[model] = ctx.interpreters.drop(model)
            through_outage(
                lambda m=model: ctx.copies.released(ctx.device, m, ctx.worker, freed[m]),
                f"releasing {model}",
            )
    ctx.admit_now.set()
    return freed


def prewarm(model: str, file: str) -> dict[str, Any]:
    """Load ``model`` ahead of its requests into memory placement reserved: open it and run it
    once on zeros, so its tensor arena exists and its first request is a plain hit."""
    import numpy as np

    ctx = _context()
    with ctx.lock:
        if model in ctx.interpreters.models:
            ctx.copies.loaded(ctx.device, model, ctx.worker, None, 0.0)
            return {"model": model, "load_s": 0.0}
        rss_before = rss_bytes()
        try:
            loaded, load_s = ctx.interpreters.load(model, file)
        except (ValueError, RuntimeError, OSError) as exc:
            ctx.copies.give_back(ctx.device, model, ctx.worker)
            return {"model": model, "error": f"cannot be loaded from {file}: {exc}"}
        try:
            loaded.predict(np.zeros(loaded.input.shape, dtype=loaded.input.dtype))
        finally:
            observed = rss_bytes() - rss_before
            if not ctx.copies.loaded(ctx.device, model, ctx.worker, None, load_s, observed):
                ctx.interpreters.drop(model)
    return {"model": model, "load_s": load_s, "observed_bytes": observed}


# -- synchronous calls --------------------------------------------------------------------------


def serve_lane(raw: bytes) -> None:
    """One synchronous invocation popped from the lane; its caller gets an answer whatever
    happens here (an unexpected error becomes a 500 naming it), unless the request went back
    to placement (its copy was evicted while it was queued), whose worker answers."""
    ctx = _context()
    head, _, payload = raw.partition(b"\n")
    req = json.loads(head)
    result: dict[str, Any] = {}
    pinned = False
    with ctx.lock:
        try:
            result, pinned = serve(ctx, req, lambda: _lane_input(ctx, req, payload))
            if result is REPLACED:
                result = _replace(ctx, req, payload)
        except Exception as exc:  # noqa: BLE001 (the waiting caller must hear of it)
            log.exception("invocation of %s failed", req.get("function"))
            result = {"error": f"the worker failed: {exc!r}", "status": 500, "worker": ctx.worker}
        if result is REPLACED:
            waiters = 0
        else:

            def answer() -> list:
                with ctx.conn.pipeline(transaction=False) as pipe:
                    pipe.rpush(req["reply"], reply_message(result))
                    pipe.expire(req["reply"], waiting.REPLY_TTL_S)
                    account(ctx, req, result, pinned, pipe)
                    return pipe.execute()

            replies = through_outage(answer, f"answering a call of {req.get('function')}")
            waiters = _unpinned(ctx, req, replies[2] if pinned else None)
    if waiters:
        ctx.admit_now.set()


def _unpinned(ctx: Context, req: dict[str, Any], reply: list | None) -> int:
    """After the unpin (``reply``: ``[requests waiting for memory, evicted]``, None if there
    was no pin): a drained copy that the unpin evicted is dropped here, its worker; returns
    how many requests wait for memory (> 0, or a drop: try to admit them)."""
    if reply is None:
        return 0
    waiters, evicted = int(reply[0]), int(reply[1])
    if evicted:
        model = req["model"]
        freed = ctx.interpreters.drop(model)
        through_outage(
            lambda: ctx.copies.released(ctx.device, model, ctx.worker, freed),
            f"releasing drained {model}",
        )
        return waiters or 1
    return waiters


def _replace(ctx: Context, req: dict[str, Any], payload: bytes, kind: str = SYNC
             ) -> dict[str, Any]:  # fmt: skip
    """Place a request again (its copy is gone): a miss, through the same placement and
    admission as at the gateway. A lane request goes onto the front of its new worker's lane
    (which answers its caller); an async one becomes a new job (``req["moved_to"]``)."""
    deadline = req.get("deadline")
    req["recount"] = counted_as(req)
    ident = uuid.uuid4().hex
    if kind == ASYNC:
        req["moved_to"] = ident
    try:
        submit(ctx.placement, req, payload, kind, ident,
               float("inf") if deadline is None else float(deadline), front=True)  # fmt: skip
    except (PlacementError, Contended) as exc:
        ctx.placement.uncount(ctx.device, req)
        extra = {"retry_after": exc.retry_after} if hasattr(exc, "retry_after") else {}
        return {"error": str(exc), "status": exc.status, "worker": ctx.worker, **extra}
    return REPLACED


def _lane_input(ctx: Context, req: dict[str, Any], inline: bytes) -> bytes | None:
    """A lane invocation's input: inline, or left in the gateway's spool on this host."""
    from functions.handlers import BadInput

    name = req.get("input_file")
    if not name:
        return inline
    data = ctx.spool.read(name, int(req["input_bytes"]))
    if data is None:
        raise BadInput(
            f"the input was not found in this worker's spool ({ctx.spool.dir}): the gateway on "
            f"{req.get('host')} and this worker do not share it; retry",
            status=503,
        )
    return data


# -- the worker process -------------------------------------------------------------------------


class UnknownJob(Exception):
    """A job in a brulee worker's queue that is not one of brulee's job functions."""


class BruleeWorker(SimpleWorker):
    """One long-lived worker per core: jobs run in-process so interpreters stay warm."""

    # RQ waits 1, 2, 4 … up to 60 s between tries of a pop that failed because Redis was down,
    # and starts again from 1 s only when it dequeues an RQ job; the synchronous calls this
    # worker serves inside its pop (LaneQueue) never reset it, so each Redis outage made the
    # next one cost twice as long (measured: 7 s before it served again after the fifth).
    # Trying a local Redis every 2 s costs nothing.
    max_connection_wait_time = 2.0

    def __init__(
        self, *args: Any, device: str, context: Context, cap: int | None = None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("serializer", JSONSerializer)
        super().__init__(*args, **kwargs)
        global _CONTEXT
        _CONTEXT = self.ctx = context
        self.device, self.cap = device, cap
        self._stop_heartbeat = threading.Event()
        self.lanes = lanes(self.name)
        self.queue_class = type("BruleeLaneQueue", (LaneQueue,), {"lane_worker": self})
        self.pop_failed = False  # a blocking pop failed: a job may be popped and unreceived

    @property
    def connection_timeout(self) -> float:
        """The socket timeout RQ gives the worker's connection (when it has none or a shorter
        one): RQ's is its dequeue timeout + 10 s (415 s), meant for one BLPOP of the whole
        dequeue timeout; this worker pops in slices of POP_SLICE_S (:class:`LaneQueue`), so
        its timeout is :data:`SOCKET_TIMEOUT_S`."""
        return SOCKET_TIMEOUT_S

    def perform_job(self, job, queue, execution) -> bool:
        """Run only brulee's own job functions; anything else fails with the reason. A job
        RQ has recorded the end of is no longer held for this worker (if recording it failed,
        the job stays held: placed again when this worker is forgotten)."""
        if job.func_name not in JOB_FUNCTIONS:
            try:
                raise UnknownJob(
                    f"job {job.id} asks for {job.func_name!r}; a brulee worker runs "
                    f"only {', '.join(JOB_FUNCTIONS)}"
                )
            except UnknownJob:
                self._finalize_failure(job, queue, execution, sys.exc_info())
            return False
        done = super().perform_job(job, queue, execution)
        through_outage(partial(self.connection.lrem, jobs.held(self.name), 0, job.id),
                       f"ending job {job.id}")  # fmt: skip
        return done

    def serve_lane(self, raw: bytes) -> None:
        """One synchronous invocation; a stop requested meanwhile waits for its answer."""
        serve_lane(raw)
        if self._stop_requested:
            raise StopRequested()

    def _shutdown(self) -> None:
        """Warm shutdown (SIGTERM/SIGINT): finish what runs now, take nothing more. Never
        raised from the signal handler: an interrupted blocking pop could lose the job it
        popped; the dequeue loop notices the request between pops."""
        self._stop_requested = True

    def register_birth(self, *args: Any, **kwargs: Any) -> None:
        super().register_birth(*args, **kwargs)
        release_memory(collect=True)
        self._baseline_rss = rss_bytes()  # before any model: the worker's fixed cost
        self._baseline_pss = pss_bytes()  # the part of it not shared with the agent's others
        self._register()
        threading.Thread(target=self._beat, name="brulee-heartbeat", daemon=True).start()
        self._admission = threading.Thread(target=self._admit, name="brulee-admission", daemon=True)
        self._admission.start()
        threading.Thread(target=self._deliver, name="brulee-callbacks", daemon=True).start()

    def register_death(self, *args: Any, **kwargs: Any) -> None:
        self._stop_heartbeat.set()
        self.ctx.admit_now.set()
        # the admission thread may be placing orphans again (popped, not yet placed): let it
        # finish before this process forgets itself and exits, or a job popped would be lost
        admission = getattr(self, "_admission", None)
        if admission is not None:
            admission.join(ADMISSION_STOP_S)
        self.ctx.spool.close()
        try:
            self.ctx.placement.members.forget_worker(self.name)
        except redis.RedisError:  # Redis already gone: the accounting goes with it
            pass
        super().register_death(*args, **kwargs)

    def _register(self) -> None:
        members = self.ctx.placement.members
        members.set_device(self.device, cap=self.cap, policy=self.ctx.placement.policy_name)
        members.register(
            self.name,
            self.device,
            os.getpid(),
            socket.gethostname(),
            self._baseline_rss,
            spool=self.ctx.spool.announce(),
            pss=self._baseline_pss,
        )

    def _admit(self) -> None:
        """The admission thread: when this worker freed memory (an invocation or eviction
        ended: ``ctx.admit_now``) and every second regardless, place what waits for memory
        on its device. Apart from the heartbeat, so that a long pass — hundreds of waiting
        requests on a loaded device — never makes the worker look dead; apart from the
        invocations, which it never delays."""
        while not self._stop_heartbeat.is_set():
            self.ctx.admit_now.wait(HEARTBEAT_TTL / 5)
            self.ctx.admit_now.clear()
            if self._stop_heartbeat.is_set():
                break
            waiting.admit_device(self.ctx.placement, self.ctx.device)

    def _deliver(self) -> None:
        """Deliver the callbacks that are due (any worker's jobs), until the worker stops."""
        while not self._stop_heartbeat.wait(CALLBACK_PERIOD_S):
            try:
                callbacks.deliver_due(self.ctx.conn, self.ctx.placement.scripts)
            except redis.RedisError as exc:
                log.warning("callback delivery failed: %s", exc)

    def _beat(self) -> None:
        last_reconcile = time.monotonic()
        while not self._stop_heartbeat.wait(HEARTBEAT_TTL / 5):
            try:
                if not self.ctx.placement.members.heartbeat(self.name, rss_bytes()):
                    self._rejoin()
                if time.monotonic() - last_reconcile > RECONCILE_EVERY_S and self.ctx.lock.acquire(
                    blocking=False
                ):  # busy: next time
                    try:
                        reconcile(self.ctx)
                    finally:
                        self.ctx.lock.release()
                    last_reconcile = time.monotonic()
                    # forget workers that died unnoticed (an agent killed whole, then started
                    # again): what they held is placed again
                    self.ctx.placement.members.alive()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)

    def _rejoin(self) -> None:
        """This worker was forgotten (paused past its heartbeat) or Redis lost its
        registration: drop every interpreter — the accounting no longer counts them — then
        register again."""
        with self.ctx.lock:
            held = list(self.ctx.interpreters.models)
            for model in held:
                self.ctx.interpreters.drop(model)
            log.warning(
                "worker %s was forgotten by placement; dropped %d interpreters (%s) and "
                "registered again",
                self.name,
                len(held),
                ", ".join(held) or "none",
            )
            self.ctx.placement.members.forget_worker(self.name)  # whatever is left of it
            self._register()


def connect(redis_url: str) -> redis.Redis:
    """A worker's Redis client: replies later than :data:`SOCKET_TIMEOUT_S` fail (a Redis gone
    silent is noticed), and over TCP idle connections are probed (:data:`KEEPALIVE`)."""
    options: dict[str, Any] = {}
    if not redis_url.startswith("unix:"):
        options = {"socket_keepalive": True, "socket_keepalive_options": KEEPALIVE}
    return redis.Redis.from_url(
        redis_url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        **options,
    )


def new_worker_name(device: str) -> str:
    return f"{device}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def run_worker(
    redis_url: str,
    device: str,
    models_dir: str | os.PathLike,
    policy: str = "cremebrulee",
    cap: int | None = None,
    threads: int = 1,
    name: str | None = None,
    cold_loads: bool | None = None,
) -> None:
    """Run one worker until SIGTERM/SIGINT (RQ finishes the current job first). ``cold_loads``:
    see :class:`~agent.interpreters.InterpreterCache`."""
    conn = connect(redis_url)
    name = name or new_worker_name(device)
    placement = Placement(conn, policy)
    interpreters = InterpreterCache(models_dir, threads, cold_loads)
    context = Context(name, device, placement, interpreters, conn, Spool())
    queue = Queue(worker_queue(name), connection=conn, serializer=JSONSerializer)
    worker = BruleeWorker(
        [queue], connection=conn, name=name, device=device, context=context, cap=cap
    )
    context.interpreters.warm_runtime()
    worker.work(with_scheduler=False, logging_level="WARNING")
