"""The gateway: OpenFaaS-style HTTP API in front of the worker pool (a Flask app for gunicorn).

Every gunicorn process is stateless: functions, cache state, metrics and jobs live in Redis,
so any number of processes agree (each keeps a copy of the function registry, dropped when
its version in Redis changes). An invocation decodes and validates the body here (bad input
never reaches a worker), then placement chooses the worker atomically and queues the work in
the same step:

- synchronous (``/function``): a warm hit is one Redis script (:meth:`Cache.try_hit`), a miss
  one WATCH/MULTI transaction (:meth:`Cache.place`); either pushes the invocation, tensor
  included, onto the worker's lane (see :mod:`agent.worker`) and the gateway blocks on its
  reply list;
- asynchronous (``/async-function``): the tensor is parked under a Redis key and an RQ job
  enqueued in the placement's transaction; RQ keeps its state and result for ``/jobs``.

No client data is pickled: lane messages and RQ jobs are JSON, tensors ``.npy`` bytes.
"""

from __future__ import annotations

import atexit
import hmac
import json
import os
import time
import uuid
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import redis
from flask import Flask, Response, jsonify, request
from prometheus_client import CollectorRegistry, generate_latest
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.webhook import Webhook
from werkzeug.exceptions import HTTPException

from agent.callbacks import ENV, CallbackPolicy, CallbackRefused
from agent.lane import Spool, lane_message, read_reply
from agent.metrics import RedisCollector
from agent.openapi import openapi_document
from agent.placement import (
    Cache,
    ModelFacts,
    PlacementError,
    RegistryChanged,
    key,
    lane,
)
from functions.tensors import to_npy

INPUT_TTL_S = 300
SPOOL_CHECK_S = 2.0  # how long a gateway process trusts that its workers share its spool
DEFAULT_BODY_LIMIT = 16 * 1024 * 1024
HEADERS = {
    "X-Cache": "cache",
    "X-Load-Seconds": "load_s",
    "X-Exec-Seconds": "exec_s",
    "X-Queue-Seconds": "queue_s",
    "X-Worker": "worker",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra


def read_token(state_dir: str | os.PathLike | None) -> str | None:
    """``BRULEE_TOKEN`` wins; otherwise the token file ``brulee up`` wrote into the state dir."""
    token = os.environ.get("BRULEE_TOKEN")
    if token:
        return token
    if state_dir and (Path(state_dir) / "token").exists():
        return (Path(state_dir) / "token").read_text().strip()
    return None


def _function_doc(fn: Any) -> dict[str, Any]:
    doc = asdict(fn) if is_dataclass(fn) else dict(fn)
    return json.loads(json.dumps(doc, default=str))


def _as_list(found: Any) -> list[Any]:
    return list(found.values()) if isinstance(found, dict) else list(found)


class Registry:
    """Functions deployed on this agent, kept in the Redis hash ``brulee:functions``."""

    def __init__(self, conn: redis.Redis, models_dir: Path, functions_file: str | None) -> None:
        self.r = conn
        self.models_dir = models_dir
        self.functions_file = functions_file
        self._handlers: dict[str, tuple[str, Any]] = {}
        self._docs: dict[str, dict[str, Any]] = {}  # this process's copy, valid for _version
        self._version: bytes | None = None

    def ensure_loaded(self) -> None:
        """Seed the registry from the stack file (or every model) once per Redis database; a
        lock makes concurrent first requests wait for the seeding instead of answering 404."""
        if self.r.exists(key("functions", "seeded")):
            return
        with self.r.lock(key("functions", "seeding"), timeout=120, blocking_timeout=120):
            if self.r.exists(key("functions", "seeded")):
                return
            from functions import stack
            from models.catalog import load_catalog

            if self.functions_file:
                catalog = load_catalog(self.models_dir)
                found = stack.load_stack(self.functions_file, self.models_dir, catalog)
            else:
                found = stack.zero_config(self.models_dir)
            for fn in _as_list(found):
                self.deploy(_function_doc(fn))
            self.r.set(key("functions", "seeded"), 1)

    def deploy(self, doc: dict[str, Any]) -> dict[str, Any]:
        from functions.stack import model_path

        name = doc["name"]
        try:
            path = model_path(self.models_dir, doc["file"])
            problem = None if Path(path).is_file() else f"model file {doc['file']} does not exist"
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        pipe = self.r.pipeline()
        pipe.hset(key("functions"), name, json.dumps(doc))
        if problem:
            pipe.hset(key("failed"), name, problem)
        else:
            pipe.hdel(key("failed"), name)
        pipe.incr(key("functions", "version"))
        pipe.execute()
        return doc

    def remove(self, name: str) -> bool:
        pipe = self.r.pipeline()
        pipe.hdel(key("functions"), name)
        pipe.hdel(key("failed"), name)
        pipe.incr(key("functions", "version"))
        return bool(pipe.execute()[0])

    def get(self, name: str, verify: bool = True) -> dict[str, Any]:
        """The function's document, or 404; 503 with the reason if its model failed to load.
        One round trip when this process's copy is current; none with ``verify=False`` (the
        caller checks the version and the failed flag itself: the hit script does)."""
        if not verify and name in self._docs:
            return self._docs[name]
        pipe = self.r.pipeline(transaction=False)
        pipe.get(key("functions", "version"))
        pipe.hget(key("failed"), name)
        version, reason = pipe.execute()
        if version != self._version:
            self._docs, self._version = {}, version
        doc = self._docs.get(name)
        if doc is None:
            raw = self.r.hget(key("functions"), name)
            if raw is None and not self.r.exists(key("functions", "seeded")):
                self.ensure_loaded()
                raw = self.r.hget(key("functions"), name)
            if raw is None:
                raise ApiError(
                    404, f"function {name!r} is not deployed (see GET /system/functions)"
                )
            doc = self._docs[name] = json.loads(raw)
        if reason is not None:
            raise ApiError(503, f"function {name!r} failed: {reason.decode()}")
        return doc

    @property
    def version(self) -> bytes | None:
        """The registry version this process's copy was read at."""
        return self._version

    def forget(self) -> None:
        """Drop this process's copy (the registry changed)."""
        self._docs, self._version = {}, None

    def changed(self) -> bool:
        """Whether the registry changed since this process's copy was read (then dropped)."""
        if self.r.get(key("functions", "version")) == self._version:
            return False
        self.forget()
        return True

    def all(self) -> dict[str, dict[str, Any]]:
        return {k.decode(): json.loads(v) for k, v in self.r.hgetall(key("functions")).items()}

    def handler(self, doc: dict[str, Any]) -> Any:
        from functions.handlers import make_handler

        spec = json.dumps([doc["handler"], doc.get("options"), doc.get("record")], sort_keys=True)
        cached = self._handlers.get(doc["name"])
        if cached is None or cached[0] != spec:
            handler = make_handler(
                doc["handler"], doc.get("record") or {}, **(doc.get("options") or {})
            )
            cached = self._handlers[doc["name"]] = (spec, handler)
        return cached[1]


class Profiles:
    """The models directory's ``profiles.json`` (``brulee models profile``), re-read when it
    changes; empty when there is none."""

    def __init__(self, models_dir: Path) -> None:
        self.path = models_dir / "profiles.json"
        self._stamp: float | None = None
        self._records: dict[str, dict[str, Any]] = {}

    def get(self, model: str) -> dict[str, Any] | None:
        from models.profile import read_profiles

        try:
            stamp = self.path.stat().st_mtime
        except OSError:
            return None
        if stamp != self._stamp:
            try:
                self._records = read_profiles(self.path)
            except (ValueError, KeyError, TypeError):
                self._records = {}
            self._stamp = stamp
        return self._records.get(model)


def model_facts(
    conn: redis.Redis, doc: dict[str, Any], models_dir: Path, profile: dict[str, Any] | None
) -> tuple[ModelFacts, bool]:
    """Bytes and times placement accounts with, and whether the bytes come from a profile.

    Bytes: the profile's loaded bytes (measured in a fresh process) when there is one, raised
    to what a worker measured if that was more (a worker also holds the request's tensors
    while the model runs); without a profile, what a worker observed when it loaded the model,
    else the memory hint, else twice the file size (weights plus arena, roughly). A worker's
    resident-memory delta never *lowers* a profile: in a long-lived process the allocator
    reuses pages freed by earlier evictions, so the delta can be far below what the model
    really holds."""
    record = doc.get("record") or {}
    stats = {k.decode(): v.decode() for k, v in conn.hgetall(key("stats", doc["model"])).items()}
    profile = profile or {}
    if profile.get("loaded_bytes"):
        size = max(int(profile["loaded_bytes"]), int(stats.get("bytes") or 0))
    else:
        size = (
            stats.get("bytes")
            or record.get("loaded_bytes")
            or doc.get("memory")
            or 2 * int(record.get("file_bytes") or (models_dir / doc["file"]).stat().st_size)
        )
    facts = ModelFacts(
        doc["model"],
        int(size),
        float(stats.get("load_s") or profile.get("avg_load_latency") or 0.05),
        float(stats.get("exec_s") or profile.get("exec_s") or record.get("exec_s") or 0.01),
    )
    return facts, bool(profile.get("loaded_bytes"))


def create_app(
    redis_url: str | None = None,
    models_dir: str | os.PathLike | None = None,
    functions_file: str | None = None,
    state_dir: str | os.PathLike | None = None,
    token: str | None = None,
    body_limit: int | None = None,
    policy: str | None = None,
    sync_timeout: float = 60.0,
    spool_dir: str | os.PathLike | None = None,
    callback_allow: str | None = None,
) -> Flask:
    """Build the app; unset arguments come from ``BRULEE_*`` environment variables (gunicorn)."""
    env = os.environ.get
    redis_url = (
        redis_url or env("BRULEE_REDIS_URL") or env("REDIS_URL") or "redis://127.0.0.1:6379/0"
    )
    models = Path(models_dir or env("BRULEE_MODELS") or "models")
    functions_file = functions_file or env("BRULEE_FUNCTIONS") or None
    state_dir = state_dir or env("BRULEE_STATE_DIR")
    token = token or read_token(state_dir)
    body_limit = body_limit or int(env("BRULEE_BODY_LIMIT") or DEFAULT_BODY_LIMIT)
    policy = policy or env("BRULEE_POLICY") or "cremebrulee"
    callbacks = CallbackPolicy.parse(callback_allow if callback_allow is not None else env(ENV))

    conn = redis.Redis.from_url(
        redis_url, socket_connect_timeout=2, socket_timeout=sync_timeout + 5
    )
    cache = Cache(conn, policy)
    registry = Registry(conn, models, functions_file)
    profiles = Profiles(models)
    spool = Spool(spool_dir)  # None: BRULEE_SPOOL_DIR, else /dev/shm
    spool.sweep()
    atexit.register(spool.close)
    spool_seen: list[Any] = [0.0, False]  # (when, whether every worker shares the spool)
    metrics = CollectorRegistry(auto_describe=False)
    metrics.register(RedisCollector(cache))
    app = Flask("brulee")
    app.config["MAX_CONTENT_LENGTH"] = body_limit

    @app.after_request
    def _drain(resp: Response) -> Response:
        """Read a body the route did not (an error answered first: unknown route or function,
        wrong method), up to the limit: a server answering before reading it closes the
        keep-alive connection, and the client's next request on it fails unanswered."""
        if request.content_length and request.content_length <= body_limit:
            request.get_data()
        return resp

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return jsonify(error=str(exc), **exc.extra), exc.status

    @app.errorhandler(PlacementError)
    def _placement_error(exc: PlacementError):
        return jsonify(error=str(exc)), exc.status

    @app.errorhandler(redis.RedisError)
    def _redis_down(exc: redis.RedisError):
        return jsonify(
            error=f"the agent's Redis is unreachable ({redis_url.split('@')[-1]}): {exc}"
        ), 503

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        """Werkzeug's own answers (no route, wrong method, body over the limit, a malformed
        request) as JSON, keeping their headers (``Allow`` on a 405)."""
        messages = {
            404: f"no route {request.path}",
            405: f"method {request.method} not allowed on {request.path}",
            413: f"request body larger than the limit of {body_limit} bytes",
        }
        resp = jsonify(error=messages.get(exc.code or 500, exc.description or exc.name))
        resp.status_code = exc.code or 500
        for header, value in exc.get_headers():
            if header.lower() != "content-type":
                resp.headers[header] = value
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        """Anything else is a bug: logged with its traceback, answered as JSON (never Flask's
        HTML page), and the agent keeps serving."""
        app.logger.exception("unexpected error on %s %s", request.method, request.path)
        return jsonify(error=f"unexpected error ({type(exc).__name__}); see the agent's log"), 500

    def require_token() -> None:
        if token is None:
            raise ApiError(503, "no management token configured (BRULEE_TOKEN or state dir)")
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise ApiError(401, "management endpoints need 'Authorization: Bearer <token>'")

    def json_body(what: str = "body") -> Any:
        """The request's JSON document, read strictly (``functions.tensors.parse_json``)."""
        from functions.handlers import BadInput
        from functions.tensors import parse_json

        if request.mimetype != "application/json":
            raise ApiError(
                400, f"wrong content type {request.mimetype or '(none)'!r}: send application/json"
            )
        try:
            return parse_json(request.get_data(), what)
        except BadInput as exc:
            raise ApiError(exc.status, str(exc)) from exc

    def deadline_header() -> int | None:
        """``X-Deadline-Ms``: absent, or a whole number of milliseconds > 0 (else 400)."""
        raw = request.headers.get("X-Deadline-Ms")
        if raw is None:
            return None
        if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
            raise ApiError(400, f"X-Deadline-Ms must be an integer > 0 (ms), got {raw!r:.40}")
        return int(raw)

    def decode(name: str, verify: bool = True) -> tuple[dict[str, Any], Any]:
        """The function's document and the request's input tensor (4xx/5xx here)."""
        doc = registry.get(name, verify)
        from functions.handlers import BadInput

        if request.content_length and request.content_length > body_limit:
            raise ApiError(413, f"request body larger than the limit of {body_limit} bytes")
        try:
            batch = registry.handler(doc).decode(request.get_data(), request.content_type or "")
        except BadInput as exc:
            if not verify and registry.changed():  # judged by a stale copy: judge again
                return decode(name, verify=True)
            raise ApiError(exc.status, str(exc)) from exc
        return doc, batch

    def job_request(name: str, doc: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """What a worker needs to run one invocation of ``doc`` (placement adds the rest)."""
        return {
            "function": name,
            "model": doc["model"],
            "file": doc["file"],
            "handler": doc["handler"],
            "options": doc.get("options") or {},
            "record": doc.get("record") or {},
            "enqueued_at": time.time(),
            **extra,
        }

    def placed(req: dict[str, Any], facts: ModelFacts, profiled: bool, placement) -> None:
        """Fill in what placement decided (the worker evicts, waits for, reserves)."""
        req.update(
            miss=not placement.hit,
            profiled_bytes=profiled,
            reserved_bytes=facts.bytes,
            evict_here=placement.evict_here,
            wait_for=placement.wait_for,
        )

    def evict_elsewhere(pipe, placement) -> None:
        """Victims on other workers than the target: they drop them first thing."""
        for victim, worker in placement.evicted:
            if worker != placement.worker:
                Queue(f"brulee.{worker}", connection=conn, serializer=JSONSerializer).enqueue_call(
                    "agent.worker.evict", args=([victim],), pipeline=pipe, at_front=True
                )

    def place(doc: dict[str, Any], enqueue) -> Any:
        """Placement's transaction with ``enqueue(pipe, placement, facts, profiled)``; errors
        become answers (507 names the model's bytes)."""
        facts, profiled = model_facts(conn, doc, models, profiles.get(doc["model"]))
        try:
            _placement, result = cache.place(
                facts, lambda pipe, placement: enqueue(pipe, placement, facts, profiled)
            )
        except PlacementError as exc:
            extra = {"model_bytes": facts.bytes} if exc.status == 507 else {}
            raise ApiError(exc.status, str(exc), **extra) from exc
        return result

    def submit(name: str, callback: str | None = None) -> Job:
        """An asynchronous invocation: the input under a Redis key, an RQ job on the worker."""
        doc, batch = decode(name)
        input_key = key("input", uuid.uuid4().hex)
        conn.set(input_key, to_npy(batch), ex=INPUT_TTL_S)

        def enqueue(pipe, placement, facts, profiled):
            req = job_request(name, doc, input_key=input_key)
            placed(req, facts, profiled, placement)
            evict_elsewhere(pipe, placement)
            hooks = (
                [Webhook(callback, s, method="POST") for s in ("finished", "failed")]
                if callback
                else None
            )
            queue = Queue(placement.queue, connection=conn, serializer=JSONSerializer)
            return queue.enqueue_call(
                "agent.worker.invoke",
                args=(req,),
                pipeline=pipe,
                result_ttl=3600,
                failure_ttl=3600,
                timeout=int(sync_timeout),
                meta={"function": name, "worker": placement.worker},
                webhooks=hooks,
            )

        try:
            return place(doc, enqueue)
        except ApiError:
            conn.delete(input_key)
            raise

    def call(name: str) -> tuple[dict[str, Any], bytes]:
        """A synchronous invocation through the worker's lane; returns the reply's header and
        body. A warm hit is one script (which also checks this process's copy of the function
        registry and the function's failed flag); anything else a placement transaction."""
        while True:
            doc, batch = decode(name, verify=False)
            reply = key("reply", uuid.uuid4().hex)
            slot, via, inline = hand_over(batch)
            try:
                placement = cache.try_hit(
                    doc["model"],
                    lane_message(job_request(name, doc, reply=reply, **via), inline),
                    function=name,
                    registry_version=registry.version,
                )
                return wait_for_answer(name, doc, placement, reply, via, inline, slot)
            except RegistryChanged:
                spool.done(slot)  # nothing was queued: decode again with the current registry
                registry.forget()
            except BaseException:
                spool.discard(slot)  # a worker may still read it: never reuse it
                raise

    def hand_over(batch) -> tuple[str | None, dict[str, Any], bytes]:
        """How the input reaches the worker: a spool slot when every worker is on this host
        (the slot's name, the message fields naming it, no inline bytes), else inline."""
        spooled = spool.put(batch) if spool_reaches_workers() else None
        if spooled is None:
            return None, {}, to_npy(batch)
        slot, size = spooled
        return slot, {"input_file": slot, "input_bytes": size, "host": spool.host}, b""

    def wait_for_answer(name, doc, placement, reply, via, inline, slot):
        """Place a miss (if the hit script did not place it) and wait for the worker."""
        if placement is not None:
            worker = placement.worker
        else:

            def enqueue(pipe, placement, facts, profiled):
                req = job_request(name, doc, reply=reply, **via)
                placed(req, facts, profiled, placement)
                evict_elsewhere(pipe, placement)
                pipe.rpush(lane(placement.worker), lane_message(req, inline))
                return placement.worker

            worker = place(doc, enqueue)
        deadline = time.monotonic() + sync_timeout
        while True:
            popped = conn.blpop([reply], timeout=1)
            if popped is not None:
                spool.done(slot)  # the worker is done with the input
                return read_reply(popped[1])
            if not conn.exists(key("alive", worker)):
                raise ApiError(
                    503, f"worker {worker} died before finishing the job for {name!r}; retry"
                )
            if time.monotonic() > deadline:
                raise ApiError(504, f"function {name!r} did not answer within {sync_timeout:g} s")

    def spool_reaches_workers() -> bool:
        """Whether every worker sees this process's spool (then inputs go through it)."""
        if time.monotonic() - spool_seen[0] > SPOOL_CHECK_S:
            spool_seen[:] = [time.monotonic(), spool.reaches(cache.spool_markers())]
        return spool_seen[1]

    def respond(name: str, head: dict[str, Any], body: bytes):
        if "error" in head:
            return jsonify(error=head["error"]), int(head.get("status", 500))
        resp = Response(body, mimetype="application/json")
        for header, field_ in HEADERS.items():
            value = head.get(field_)
            resp.headers[header] = f"{value:.6f}" if isinstance(value, float) else str(value)
        return resp

    @app.post("/function/<name>")
    def invoke(name: str):
        deadline_header()
        return respond(name, *call(name))

    @app.post("/async-function/<name>")
    def invoke_async(name: str):
        deadline_header()
        callback = request.headers.get("X-Callback-Url")
        if callback is not None:
            try:
                callback = callbacks.check(callback)
            except CallbackRefused as exc:
                raise ApiError(400, str(exc)) from exc
        job = submit(name, callback)
        resp = jsonify(id=job.id, status="queued", location=f"/jobs/{job.id}")
        resp.status_code = 202
        resp.headers["Location"] = f"/jobs/{job.id}"
        return resp

    @app.get("/jobs/<job_id>")
    def job_status(job_id: str):
        try:
            job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
        except Exception as exc:  # rq.exceptions.NoSuchJobError and malformed ids
            raise ApiError(404, f"no job {job_id!r}") from exc
        status = job.get_status()
        doc: dict[str, Any] = {"id": job.id, "status": str(getattr(status, "value", status))}
        if doc["status"] == "finished":
            result = job.return_value()
            if "error" in result:
                doc.update(status="failed", error=result["error"])
            else:
                doc["result"] = result["result"]
                doc.update({h: result.get(f) for h, f in HEADERS.items()})
        elif doc["status"] in ("queued", "started") and not conn.exists(
            key("alive", job.meta.get("worker", ""))
        ):
            worker = job.meta.get("worker")
            doc.update(status="failed", error=f"worker {worker} died before finishing the job")
        elif doc["status"] in ("failed", "stopped", "canceled"):
            doc["error"] = (job.exc_info or "job failed").strip().splitlines()[-1]
        return jsonify(doc)

    @app.get("/system/functions")
    def list_functions():
        require_token()
        registry.ensure_loaded()
        failed = {k.decode(): v.decode() for k, v in conn.hgetall(key("failed")).items()}
        snap = cache.snapshot()
        loaded: dict[str, int] = {}
        for device in snap["devices"].values():
            for w in device["workers"].values():
                for m in w["models"]:
                    loaded[m["model"]] = max(loaded.get(m["model"], 0), m["bytes"])
        out = []
        from functions.stack import Function

        for name, doc in sorted(registry.all().items()):
            state = "failed" if name in failed else ("ready" if doc["model"] in loaded else "cold")
            out.append(
                {
                    **Function(**doc).describe(),
                    "state": state,
                    "reason": failed.get(name),
                    "loaded_bytes": loaded.get(doc["model"]),
                    **cache.memory_stats(doc["model"]),
                }
            )
        return jsonify(functions=out)

    @app.post("/system/functions")
    def deploy_function():
        require_token()
        from functions.stack import build_function, deploy_request, model_path
        from models.catalog import load_catalog

        try:
            name, spec = deploy_request(json_body())
            fn = build_function(name, spec, models, load_catalog(models))
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        if not model_path(models, fn.file).is_file():
            raise ApiError(400, f"model file {fn.file!r} does not exist in the model directory")
        registry.ensure_loaded()
        return jsonify(registry.deploy(_function_doc(fn))), 201

    @app.delete("/system/functions")
    def remove_function():
        require_token()
        body = json_body()
        if not isinstance(body, dict) or "functionName" not in body:
            raise ApiError(400, 'body must be a JSON object {"functionName": "<name>"}')
        unknown = sorted(set(body) - {"functionName"})
        if unknown:
            raise ApiError(400, f"unknown field(s) {unknown}; the body is {{'functionName'}}")
        name = body["functionName"]
        if not isinstance(name, str) or not name:
            raise ApiError(400, f"'functionName' must be a non-empty string, got {name!r:.80}")
        if not registry.remove(name):
            raise ApiError(404, f"function {name!r} is not deployed")
        return jsonify(removed=name)

    @app.get("/system/cache")
    def system_cache():
        require_token()  # worker names hold host names and process ids
        return jsonify(cache.snapshot())

    @app.get("/healthz")
    def healthz():
        conn.ping()
        alive, _ = cache.workers()
        return jsonify(status="ok", workers=len(alive))

    @app.get("/metrics")
    def prometheus():
        return Response(generate_latest(metrics), mimetype="text/plain; version=0.0.4")

    @app.get("/openapi.json")
    def openapi():
        from models.catalog import load_catalog

        try:
            served = sorted(load_catalog(models))
        except (OSError, ValueError):
            served = None
        return jsonify(openapi_document(served))

    return app
