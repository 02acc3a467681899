"""The worker: an RQ ``SimpleWorker`` that keeps TFLite interpreters warm between jobs.

RQ's default worker forks a work horse per job, which would throw every interpreter away;
``SimpleWorker`` runs jobs in its own process, so :class:`InterpreterCache` survives from one
job to the next. Each worker has its own queue (placement chooses the worker), a heartbeat
thread that tells placement it is alive, and executes RQ jobs: :func:`invoke` (an async
invocation: drop what placement evicted here, load the model if cold, run it), :func:`evict`
(drop interpreters that placement evicted to make room elsewhere on the device) and
:func:`prewarm`.

Synchronous invocations skip RQ's job bookkeeping (about 5 ms a job here, several times a warm
model's own latency): the gateway pushes them onto the worker's *lane*, a plain Redis list the
worker pops in the same blocking call as its RQ queue (:class:`LaneQueue`), and the worker
pushes the answer onto a reply list the gateway waits on. The work done is the same
(:func:`_serve`); nothing durable is lost, since a synchronous caller is waiting for it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import redis
from rq import Queue, SimpleWorker
from rq.exceptions import DequeueTimeout, StopRequested
from rq.serializers import JSONSerializer

from agent.lane import Spool, reply_message
from agent.memory import release_memory, rss_bytes
from agent.metrics import observe
from agent.placement import HEARTBEAT_TTL, REPLY_TTL_S, Cache, key, lane
from agent.runtime import LoadedModel, load_model
from functions.handlers import BadInput, make_handler
from functions.stack import model_path
from functions.tensors import from_npy

log = logging.getLogger("brulee.worker")
RELEASE_WAIT_S = 30.0  # how long a load waits for other workers to drop its victims


class InterpreterCache:
    """The interpreters this process holds, by model name."""

    def __init__(self, models_dir: str | os.PathLike, threads: int = 1) -> None:
        self.models_dir = Path(models_dir)
        self.threads = threads
        self.models: dict[str, LoadedModel] = {}

    def load(self, model: str, file: str) -> tuple[LoadedModel, float]:
        """Load ``file`` (inside the model directory) and return it with the seconds taken."""
        t0 = time.perf_counter()
        loaded = load_model(model_path(self.models_dir, file), num_threads=self.threads)
        self.models[model] = loaded
        return loaded, time.perf_counter() - t0

    def warm_runtime(self) -> None:
        """Load, run and drop the smallest model once, so the runtime's one-time set-up (its
        libraries, the XNNPACK delegate: about 3 MB) is part of the worker's fixed baseline and
        not charged to the first model this worker loads."""
        files = sorted(self.models_dir.glob("*.tflite"), key=lambda p: p.stat().st_size)
        for path in files:
            try:
                loaded = load_model(path, num_threads=self.threads)
            except (ValueError, RuntimeError, OSError):
                continue  # a corrupt file: try the next one
            loaded.predict(np.zeros(loaded.input.shape, dtype=loaded.input.dtype))
            loaded.close()
            del loaded
            release_memory(collect=True)
            return

    def drop(self, model: str) -> int:
        """Drop ``model``'s interpreter and give its memory back; returns the bytes freed."""
        loaded = self.models.pop(model, None)
        if loaded is None:
            return 0
        before = rss_bytes()
        loaded.close()
        del loaded
        release_memory()
        return before - rss_bytes()


@dataclass
class _Context:
    """This process's worker identity and state, for the job functions."""

    worker: str
    device: str
    cache: Cache
    interpreters: InterpreterCache
    conn: redis.Redis
    handlers: dict[tuple, Any]
    spool: Spool
    exec_s: dict[str, float] = field(default_factory=dict)  # moving average per model


_CONTEXT: _Context | None = None


def _context() -> _Context:
    if _CONTEXT is None:
        raise RuntimeError("brulee jobs run only inside a brulee worker (brulee worker)")
    return _CONTEXT


def _handler(ctx: _Context, req: dict[str, Any]):
    spec = (req["handler"], req["file"], repr(sorted(req.get("options", {}).items())))
    if spec not in ctx.handlers:
        ctx.handlers[spec] = make_handler(req["handler"], req["record"], **req.get("options", {}))
    return ctx.handlers[spec]


def invoke(req: dict[str, Any]) -> dict[str, Any]:
    """The RQ job of an asynchronous invocation: its input waits under ``req["input_key"]``."""
    ctx = _context()
    result: dict[str, Any] = {}
    try:
        result = _serve(ctx, req, lambda: ctx.conn.get(req["input_key"]))
        return result
    finally:
        pipe = ctx.conn.pipeline(transaction=False)
        pipe.delete(req["input_key"])
        _account(ctx, req, result, pipe)
        pipe.execute()


def serve_lane(raw: bytes) -> None:
    """Run one synchronous invocation popped from the lane and push its answer; the caller gets
    an answer whatever happens here (an unexpected error becomes a 500 naming it)."""
    ctx = _context()
    head, _, payload = raw.partition(b"\n")
    req = json.loads(head)
    result: dict[str, Any] = {}
    try:
        result = _serve(ctx, req, lambda: _lane_input(ctx, req, payload))
    except Exception as exc:  # noqa: BLE001 (the waiting caller must hear of it)
        log.exception("invocation of %s failed", req.get("function"))
        result = {"error": f"the worker failed: {exc!r}", "status": 500, "worker": ctx.worker}
    finally:
        pipe = ctx.conn.pipeline(transaction=False)
        pipe.rpush(req["reply"], reply_message(result))
        pipe.expire(req["reply"], REPLY_TTL_S)
        _account(ctx, req, result, pipe)
        pipe.execute()


def _account(ctx: _Context, req: dict[str, Any], result: dict[str, Any], pipe) -> None:
    """After an invocation, in the pipeline that answers it: unpin the model, store its exec
    time (this worker's moving average), count it in the metrics if it was served."""
    model, exec_s = req["model"], result.get("exec_s")
    if exec_s is not None:
        old = ctx.exec_s.get(model)
        exec_s = ctx.exec_s[model] = exec_s if old is None else 0.8 * old + 0.2 * exec_s
    ctx.cache.finished(ctx.device, model, ctx.worker, exec_s, pipe)
    if "cache" in result:
        observe(pipe, req["function"], result)


def _lane_input(ctx: _Context, req: dict[str, Any], inline: bytes) -> bytes | None:
    """A lane invocation's input: inline, or left in the gateway's spool on this host."""
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


def _serve(ctx: _Context, req: dict[str, Any], read_input) -> dict[str, Any]:
    """Run one invocation placed on this worker (sync or async alike); errors the caller should
    see are returned as ``{"error": …, "status": …}`` rather than raised, so they reach it
    intact. ``read_input()`` returns the request's ``.npy`` bytes (None: they expired)."""
    started = time.time()
    queue_s = max(started - float(req["enqueued_at"]), 0.0)
    model = req["model"]
    try:
        for victim in req.get("evict_here", []):
            freed = ctx.interpreters.drop(victim)
            ctx.cache.released(ctx.device, victim, ctx.worker, freed)
        loaded = ctx.interpreters.models.get(model)
        hit = loaded is not None
        load_s = 0.0
        rss_before = 0
        if not hit:
            _wait_for_release(ctx, req.get("wait_for", []))
            rss_before = rss_bytes()
            try:
                loaded, load_s = ctx.interpreters.load(model, req["file"])
            except (ValueError, RuntimeError, OSError) as exc:
                reason = f"model {model!r} cannot be loaded from {req['file']}: {exc}"
                ctx.cache.failed_load(ctx.device, model, ctx.worker)
                ctx.conn.hset(key("failed"), req["function"], reason)
                return {"error": reason, "status": 503, "worker": ctx.worker}
        payload = read_input()
        if payload is None:
            return {
                "error": "the request's input expired before a worker took it",
                "status": 504,
                "worker": ctx.worker,
            }
        handler = _handler(ctx, req)
        batch = from_npy(payload)
        t0 = time.perf_counter()
        output = loaded.predict(batch)
        exec_s = time.perf_counter() - t0
        result = handler.encode(output)
        if not hit:
            observed = rss_bytes() - rss_before
            # a profile's loaded bytes (measured in a fresh process) are a floor: this process's
            # RSS delta undercounts when the allocator reuses pages of evicted models, but when
            # it is larger (the request's tensors ride along) the reservation grows to it
            correction = observed
            if req.get("profiled_bytes") and observed <= int(req.get("reserved_bytes") or 0):
                correction = None
            if not ctx.cache.loaded(ctx.device, model, ctx.worker, correction, load_s, observed):
                ctx.interpreters.drop(model)
                return {
                    "error": f"model {model!r} needs {observed} bytes, more than reserved, and "
                    "the rest of the memory is held by executing models; retry shortly",
                    "status": 503,
                    "worker": ctx.worker,
                    "exec_s": exec_s,
                }
        elif req.get("miss"):  # placement thought it cold (its state was lost): mark it ready
            ctx.cache.loaded(ctx.device, model, ctx.worker, None, 0.0)
        return {
            "result": result,
            "cache": "hit" if hit else "miss",
            "load_s": load_s,
            "exec_s": exec_s,
            "queue_s": queue_s,
            "worker": ctx.worker,
        }
    except BadInput as exc:
        return {"error": str(exc), "status": exc.status, "worker": ctx.worker}


def evict(models: list[str]) -> dict[str, int]:
    """Drop interpreters that placement evicted from this worker; returns the bytes freed."""
    ctx = _context()
    freed = {}
    for model in models:
        freed[model] = ctx.interpreters.drop(model)
        ctx.cache.released(ctx.device, model, ctx.worker, freed[model])
    return freed


def prewarm(model: str, file: str) -> dict[str, Any]:
    """Load ``model`` ahead of its requests (a proactive policy asked for it; placement has
    reserved its memory): open it and run it once on zeros, so its tensor arena exists and its
    first request is a plain hit."""
    ctx = _context()
    try:
        if model in ctx.interpreters.models:
            ctx.cache.loaded(ctx.device, model, ctx.worker, None, 0.0)
            return {"model": model, "load_s": 0.0}
        rss_before = rss_bytes()
        try:
            loaded, load_s = ctx.interpreters.load(model, file)
        except (ValueError, RuntimeError, OSError) as exc:
            ctx.cache.failed_load(ctx.device, model, ctx.worker)
            return {"model": model, "error": f"cannot be loaded from {file}: {exc}"}
        loaded.predict(np.zeros(loaded.input.shape, dtype=loaded.input.dtype))
        observed = rss_bytes() - rss_before
        if not ctx.cache.loaded(ctx.device, model, ctx.worker, None, load_s, observed):
            ctx.interpreters.drop(model)
        return {"model": model, "load_s": load_s, "observed_bytes": observed}
    finally:
        ctx.cache.finished(ctx.device, model, ctx.worker, None)


def _wait_for_release(ctx: _Context, slots: list[str]) -> None:
    deadline = time.monotonic() + RELEASE_WAIT_S
    while ctx.cache.is_releasing(ctx.device, slots):
        if time.monotonic() > deadline:
            log.warning(
                "victims %s not released after %.0f s; loading anyway", slots, RELEASE_WAIT_S
            )
            return
        time.sleep(0.005)


class LaneQueue(Queue):
    """RQ's queue class for a :class:`BruleeWorker`: its blocking pop also takes the worker's
    lane, so one call waits for both (RQ's queue first: evictions and async jobs are never
    starved by a stream of synchronous calls)."""

    lane_worker: ClassVar[BruleeWorker | None] = None

    @classmethod
    def dequeue_any(cls, queues, timeout, connection, job_class=None, serializer=None,
                    death_penalty_class=None):  # fmt: skip
        worker = cls.lane_worker
        if worker is None:
            return super().dequeue_any(
                queues, timeout, connection, job_class, serializer, death_penalty_class
            )
        keys = [q.key for q in queues]
        since = time.monotonic()
        while True:
            if timeout is None:  # RQ's burst mode: do not block
                popped = next(
                    ((k, v) for k in (*keys, worker.lane) if (v := connection.lpop(k))), None
                )
                if popped is None:
                    return None
            else:
                popped = connection.blpop([*keys, worker.lane], timeout)
                if popped is None:
                    raise DequeueTimeout(timeout, keys)
            popped_key = popped[0].decode() if isinstance(popped[0], bytes) else popped[0]
            if popped_key == worker.lane:
                worker.serve_lane(popped[1])
                if time.monotonic() - since > 1.0:  # back to RQ's loop, which heartbeats
                    raise DequeueTimeout(timeout, keys)
                continue
            job_id = popped[1].decode() if isinstance(popped[1], bytes) else popped[1]
            found = cls._fetch_dequeued_job(
                connection, popped_key, job_id, job_class=job_class, serializer=serializer,
                death_penalty_class=death_penalty_class,
            )  # fmt: skip
            if found is not None:
                return found


class BruleeWorker(SimpleWorker):
    """One long-lived worker per core: jobs run in-process so interpreters stay warm."""

    def __init__(
        self,
        *args: Any,
        device: str,
        models_dir: str | os.PathLike,
        policy: str = "cremebrulee",
        threads: int = 1,
        cap: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("serializer", JSONSerializer)
        super().__init__(*args, **kwargs)
        global _CONTEXT
        self.device = device
        self.cap = cap
        self.policy_name = policy
        self.brulee_cache = Cache(self.connection, policy)
        _CONTEXT = _Context(
            self.name,
            device,
            self.brulee_cache,
            InterpreterCache(models_dir, threads),
            self.connection,
            {},
            Spool(),
        )
        self._stop_heartbeat = threading.Event()
        self.lane = lane(self.name)
        self.queue_class = type("BruleeLaneQueue", (LaneQueue,), {"lane_worker": self})
        self._serving_lane = False

    def serve_lane(self, raw: bytes) -> None:
        """One synchronous invocation; a stop requested meanwhile waits for its answer."""
        self._serving_lane = True
        try:
            serve_lane(raw)
        finally:
            self._serving_lane = False
        if self._stop_requested:
            raise StopRequested()

    def _shutdown(self) -> None:
        if self._serving_lane:  # warm shutdown: answer the caller first
            self._stop_requested = True
            return
        super()._shutdown()

    def register_birth(self, *args: Any, **kwargs: Any) -> None:
        super().register_birth(*args, **kwargs)
        release_memory(collect=True)
        self._baseline_rss = rss_bytes()  # before any model: the worker's fixed cost
        self._register()
        threading.Thread(target=self._beat, name="brulee-heartbeat", daemon=True).start()

    def register_death(self, *args: Any, **kwargs: Any) -> None:
        self._stop_heartbeat.set()
        _context().spool.close()
        try:
            self.brulee_cache.forget_worker(self.name)
        except redis.RedisError:  # Redis already gone: the accounting goes with it
            pass
        super().register_death(*args, **kwargs)

    def _register(self) -> None:
        self.brulee_cache.register_worker(
            self.name,
            self.device,
            self.queues[0].name,
            os.getpid(),
            socket.gethostname(),
            self._baseline_rss,
            spool=_context().spool.announce(),
        )

    def _beat(self) -> None:
        while not self._stop_heartbeat.wait(HEARTBEAT_TTL / 5):
            try:
                if not self.connection.exists(key("worker", self.name)):
                    # Redis came back without our registration: announce ourselves again
                    self.brulee_cache.set_device(self.device, cap=self.cap, policy=self.policy_name)
                    self._register()
                self.brulee_cache.heartbeat(self.name, rss_bytes())
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)


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
) -> None:
    """Run one worker until SIGTERM/SIGINT (RQ finishes the current job first)."""
    conn = redis.Redis.from_url(redis_url)
    name = name or new_worker_name(device)
    cache = Cache(conn, policy)
    cache.set_device(device, cap=cap, policy=policy)
    queue = Queue(f"brulee.{name}", connection=conn, serializer=JSONSerializer)
    worker = BruleeWorker(
        [queue],
        connection=conn,
        name=name,
        device=device,
        models_dir=models_dir,
        policy=policy,
        threads=threads,
        cap=cap,
    )
    _context().interpreters.warm_runtime()
    worker.work(with_scheduler=False, logging_level="WARNING")
