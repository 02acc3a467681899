"""The gateway's side of an invocation: decode and validate the body, place it, hand it over,
and (sync) wait for the answer within the request's deadline.

- synchronous (``/function``): a warm hit is one Redis script (:meth:`Placement.try_hit`),
  anything else :func:`agent.dispatch.submit` (a placement transaction, or a ticket in the
  admission queue); either way the gateway then blocks on its reply list until the deadline:
  the sync timeout, shortened by ``X-Deadline-Ms``. A request still waiting for memory at its
  deadline is taken out of the queue and answered 503 with ``Retry-After``; one placed but not
  answered, 504 (its worker drops it if it has not started it).
- asynchronous (``/async-function``): the tensor is parked under a Redis key and an RQ job
  enqueued on the chosen worker in the placement's transaction — or, if it must wait for
  memory, when the admission queue places it (no deadline); the id is the same either way.

No client data is pickled: lane messages and RQ jobs are JSON, tensors ``.npy`` bytes.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from agent import admission, durable, jobs, waiting
from agent.dispatch import ASYNC, SYNC, submit, with_facts
from agent.errors import ApiError
from agent.keys import key, route
from agent.lane import Spool, lane_message, read_reply
from agent.membership import PlacementError
from agent.placement import ModelFacts, Placement, RegistryChanged
from agent.registry import Profiles, Registry, model_facts
from agent.txn import Contended
from agent.variant_placement import variant_list, with_variants
from functions.tensors import to_npy

INPUT_TTL_S = jobs.RECORD_TTL_S  # an accepted job's input lives as long as the job
SPOOL_CHECK_S = 2.0  # how long a gateway process trusts that its workers share its spool
FACTS_TTL_S = 1.0  # how long a gateway process reuses a model's facts
MAX_MOVES = 32  # how many times GET /jobs follows a job placed again
HEADERS = {
    "X-Cache": "cache",
    "X-Load-Seconds": "load_s",
    "X-Exec-Seconds": "exec_s",
    "X-Queue-Seconds": "queue_s",
    "X-Worker": "worker",
    "X-Variant": "variant",
}


def placement_error(exc: PlacementError | Contended, facts: ModelFacts | None = None) -> ApiError:
    """A placement's refusal as an answer (507 names the model's bytes; 429 says when to
    retry)."""
    extra: dict[str, Any] = {}
    headers = {}
    if exc.status == 507 and facts is not None:
        extra["model_bytes"] = facts.bytes
    if getattr(exc, "retry_after", None):
        headers["Retry-After"] = str(exc.retry_after)
    return ApiError(exc.status, str(exc), headers, **extra)


class Invocations:
    def __init__(
        self,
        conn: redis.Redis,
        placement: Placement,
        registry: Registry,
        models: Path,
        spool: Spool,
        body_limit: int,
        sync_timeout: float,
    ) -> None:
        self.r, self.placement, self.registry = conn, placement, registry
        self.profiles = Profiles(models)
        self.models = models
        self.spool = spool
        self.body_limit, self.sync_timeout = body_limit, sync_timeout
        self._spool_seen: tuple[float, bool] = (0.0, False)
        self._facts: dict[tuple, tuple[float, ModelFacts, bool]] = {}
        self.aof = durable.from_env()

    # -- shared steps ------------------------------------------------------------------------

    def decode(
        self, name: str, body: bytes, content_type: str, verify: bool = True
    ) -> tuple[dict[str, Any], Any]:
        """The function's document and the request's input tensor (4xx/5xx here)."""
        from functions.handlers import BadInput

        doc = self.registry.get(name, verify)
        if len(body) > self.body_limit:
            raise ApiError(413, f"request body larger than the limit of {self.body_limit} bytes")
        try:
            batch = self.registry.handler(doc).decode(body, content_type)
        except BadInput as exc:
            if not verify and self.registry.changed():  # judged by a stale copy: judge again
                return self.decode(name, body, content_type, verify=True)
            raise ApiError(exc.status, str(exc)) from exc
        return doc, batch

    def facts(self, doc: dict[str, Any]) -> tuple[ModelFacts, bool]:
        model = doc["model"]
        facts_key = (model, doc.get("stages"))  # a staged function's copy is not the model's
        cached = self._facts.get(facts_key)
        if cached is None or time.monotonic() - cached[0] > FACTS_TTL_S:
            facts, profiled = model_facts(self.r, doc, self.models, self.profiles.get(model))
            cached = self._facts[facts_key] = (time.monotonic(), facts, profiled)
        return cached[1], cached[2]

    def request(self, name: str, doc: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """What a worker needs to run one invocation of ``doc`` (placement adds the rest)."""
        facts, profiled = self.facts(doc)
        req = {
            "function": name,
            "model": doc["model"],
            "file": doc["file"],
            "handler": doc["handler"],
            "options": doc.get("options") or {},
            "record": doc.get("record") or {},
            "enqueued_at": time.time(),
            **extra,
        }
        with_variants(req, variant_list(doc, lambda d: self.facts(d)[0]))
        return with_facts(req, facts, profiled)

    # -- synchronous ---------------------------------------------------------------------------

    def call(
        self, name: str, body: bytes, content_type: str, deadline_ms: str | None
    ) -> tuple[dict[str, Any], bytes]:
        """A synchronous invocation; returns the worker's answer header and body."""
        try:
            deadline = admission.deadline(time.time(), self.sync_timeout, deadline_ms)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        while True:
            doc, batch = self.decode(name, body, content_type, verify=False)
            reply = key("reply", uuid.uuid4().hex)
            slot, via, inline = self._hand_over(batch)
            req = self.request(name, doc, reply=reply, deadline=deadline, **via)
            try:
                decision = self.placement.try_hit(
                    req["model"],  # the copy's name: a staged copy's is not the model's
                    lane_message(req, inline),
                    function=name,
                    registry_version=self.registry.version,
                )
                if decision is None:
                    decision = submit(self.placement, req, inline, SYNC, reply, deadline)
                head, out = self._wait(name, decision, reply, deadline)
                self.spool.done(slot)  # the worker is done with the input
                return head, out
            except RegistryChanged:
                self.spool.done(slot)  # nothing was queued: decode again with the registry
                self.registry.forget()
            except (PlacementError, Contended) as exc:
                self.spool.done(slot)  # nothing was queued
                raise placement_error(exc, self.facts(doc)[0]) from exc
            except BaseException:
                self.spool.discard(slot)  # a worker may still read it: never reuse it
                raise

    def _wait(
        self, name: str, decision, reply: str, deadline: float
    ) -> tuple[dict[str, Any], bytes]:
        """Wait for the answer until the deadline, in slices that check the worker is alive.
        A Redis restart meanwhile is waited out (the call, its reply list and the worker's
        answer survive it: append-only file, and the worker retries its answer), up to the
        deadline; then the caller hears that Redis was unreachable."""
        while True:
            try:
                answer = self._wait_slice(name, decision, reply, deadline)
            except (redis.ConnectionError, redis.TimeoutError):
                if time.time() + 0.25 >= deadline:
                    raise
                time.sleep(0.25)
                continue
            if answer is not None:
                return answer

    def _wait_slice(
        self, name: str, decision, reply: str, deadline: float
    ) -> tuple[dict[str, Any], bytes] | None:
        """One slice of :meth:`_wait`: the answer, None (wait on), or an ApiError."""
        popped = self.r.blpop([reply], timeout=max(min(deadline - time.time(), 1.0), 0.01))
        if popped is not None:
            return read_reply(popped[1])
        worker = self._route(reply, decision)
        if worker is not None and not self.r.exists(key("alive", worker)):
            # forgetting it moves the calls it had queued to be placed again: if this one
            # was among them it is orphaned now, and this caller keeps waiting
            known = self.r.hget(key("worker", worker), "device")  # gone: forgotten already
            device = known.decode() if known else decision.device
            self.placement.members.forget_worker(worker)
            if self._route(reply, decision) == worker:  # it had started it
                raise ApiError(
                    503,
                    f"worker {worker} of device {device!r} died (or lost its link) before "
                    f"finishing the job for {name!r}; retry",
                )
        if time.time() < deadline:
            return None
        if decision.ticket is not None and waiting.cancel(self.r, decision.device, decision.ticket):
            self.r.hincrby(key("admission", decision.device), "timed_out", 1)
            waited = time.time() - float(decision.arrived or time.time())
            facts = self.facts(self.registry.get(name, verify=False))[0]
            retry = admission.retry_after(
                int(self.r.zcard(key("waiting", decision.device))), facts.exec_s, 1
            )
            raise ApiError(
                503,
                waiting.timed_out_message(
                    name, {"model": facts.name, "bytes": facts.bytes}, waited
                ),
                {"Retry-After": str(retry)},
                waited_s=round(waited, 3),
            )
        popped = self.r.blpop([reply], timeout=0.2)  # answered just now?
        if popped is not None:
            return read_reply(popped[1])
        if self.r.get(route(reply)) == b"orphaned":
            raise ApiError(
                503,
                f"the worker that had the call of {name!r} died before running it, and no "
                "other worker took it before its deadline; retry",
                {"Retry-After": "1"},
            )
        raise ApiError(
            504,
            f"function {name!r} did not answer within its deadline "
            f"({self.sync_timeout:g} s, or X-Deadline-Ms)",
        )

    def _route(self, reply: str, decision) -> str | None:
        """The worker that has the call now (None: not placed yet, or orphaned by a dead
        worker and waiting to be placed again: nobody to check on)."""
        routed = self.r.get(route(reply))
        if routed is None:
            return None if decision.ticket is not None else decision.worker
        routed = routed.decode()
        return None if routed == "orphaned" else routed

    def _hand_over(self, batch) -> tuple[str | None, dict[str, Any], bytes]:
        """How the input reaches the worker: a spool slot when every worker shares this
        process's spool (the slot's name, the message fields naming it, no inline bytes),
        else inline."""
        spooled = self.spool.put(batch) if self._spool_reaches_workers() else None
        if spooled is None:
            return None, {}, to_npy(batch)
        slot, size = spooled
        return slot, {"input_file": slot, "input_bytes": size, "host": self.spool.host}, b""

    def _spool_reaches_workers(self) -> bool:
        when, seen = self._spool_seen
        if time.monotonic() - when > SPOOL_CHECK_S:
            seen = self.spool.reaches(self.placement.members.spool_markers())
            self._spool_seen = (time.monotonic(), seen)
        return seen

    # -- asynchronous --------------------------------------------------------------------------

    def submit(
        self,
        name: str,
        body: bytes,
        content_type: str,
        callback: str | None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """An asynchronous invocation; returns its job id (with ``idempotency_key``: the id of
        the first submission that used the key for this function, which runs only once).
        Under ``--durability strict`` the job is on disk when this returns (the embedded
        Redis' file forced here, :mod:`agent.durable`; a Redis of the user's forces every
        write itself)."""
        doc, batch = self.decode(name, body, content_type)
        job_id = uuid.uuid4().hex
        if idempotency_key is not None:
            first = jobs.claim_key(self.r, name, idempotency_key, job_id)
            if first is not None:
                return first
        input_key = key("input", job_id)
        self.r.set(input_key, to_npy(batch), ex=INPUT_TTL_S)
        req = self.request(
            name,
            doc,
            job_id=job_id,
            input_key=input_key,
            timeout_s=self.sync_timeout,
            max_attempts=max_attempts or doc.get("max_attempts") or jobs.DEFAULT_MAX_ATTEMPTS,
            **({"callback": callback} if callback else {}),
        )
        jobs.accept(self.r, req)
        try:
            submit(self.placement, req, b"", ASYNC, job_id)
        except (PlacementError, Contended) as exc:
            self.r.delete(input_key)
            jobs.refused(self.r, req)
            if idempotency_key is not None:
                jobs.release_key(self.r, name, idempotency_key, job_id)
            raise placement_error(exc, self.facts(doc)[0]) from exc
        if self.aof is not None:  # strict: on disk before the 202 (agent/durable.py)
            try:
                self.aof.force()
            except OSError as exc:
                raise ApiError(
                    503,
                    f"job {job_id} was queued but could not be forced to disk ({exc}); it may "
                    f"still run: GET /jobs/{job_id}",
                ) from exc
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        """An async job's state: ``queued`` (also while it waits for memory, or to be placed
        again after its worker stopped), ``started``, ``finished`` with the result and the
        cache fields, or ``failed`` with the reason; its attempts, each failed attempt's
        error and its callback's deliveries. A job placed again (its copy was evicted while
        it was queued) is followed to the job that answers it; the id stays the client's."""
        extra = jobs.describe(self.r, job_id)
        answer = extra.pop("answer", None)
        if "failed" in extra:  # ended without a worker's answer
            return {"id": job_id, "status": "failed", "error": extra.pop("failed"), **extra}
        doc = self._job(job_id)
        for _ in range(MAX_MOVES):
            moved = doc.pop("moved_to", None)
            if moved is None:
                break
            doc = {**self._job(moved), "id": job_id}
        if answer is not None and doc["status"] not in ("finished", "failed"):
            doc = _answered({"id": job_id}, answer)  # RQ could not record the end
        return {**doc, **extra}

    def _job(self, job_id: str) -> dict[str, Any]:
        try:
            job = Job.fetch(job_id, connection=self.r, serializer=JSONSerializer)
        except Exception as exc:  # rq.exceptions.NoSuchJobError and malformed ids
            if self.r.exists(key("ticket", job_id)):
                return {"id": job_id, "status": "queued", "waiting_for_memory": True}
            raise ApiError(404, f"no job {job_id!r}") from exc
        status = job.get_status()
        doc: dict[str, Any] = {"id": job.id, "status": str(getattr(status, "value", status))}
        if self.r.exists(key("ticket", job_id)):  # placed again, waiting for memory
            doc.update(status="queued", waiting_for_memory=True)
        elif doc["status"] == "finished":
            result = job.return_value()
            if "moved_to" in result:
                doc["moved_to"] = result["moved_to"]
            else:
                _answered(doc, result)
        elif doc["status"] in ("queued", "started"):
            worker = job.meta.get("worker", "")
            if worker and not self.r.exists(key("alive", worker)):
                # its worker is gone: what it held is placed again (a running job is retried
                # if it has attempts left); the job waits for that
                if self.r.sismember(key("workers"), worker):
                    self.placement.members.forget_worker(worker)
                doc["status"] = "queued"
        elif doc["status"] in ("failed", "stopped", "canceled"):
            doc["error"] = (job.exc_info or "job failed").strip().splitlines()[-1]
        return doc


def _answered(doc: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with a worker's answer: ``failed`` with its error, or ``finished`` with the
    result and the cache fields."""
    if "error" in result:
        doc.update(status="failed", error=result["error"])
    else:
        doc.update(status="finished", result=result["result"])
        doc.update({h: result.get(f) for h, f in HEADERS.items()})
    return doc
