"""The gateway: OpenFaaS-style HTTP API in front of the worker pool (a Flask app for gunicorn).

Every gunicorn process is stateless: functions, cache state, metrics and jobs live in Redis,
so any number of processes agree. The routes are thin: an invocation is
:mod:`agent.invocations` (decode, place, hand over, wait), the function registry
:mod:`agent.registry`, the cache view :mod:`agent.snapshot`.
"""

from __future__ import annotations

import atexit
import hmac
import os
from pathlib import Path
from typing import Any

import redis
from flask import Flask, Response, jsonify, request
from prometheus_client import CollectorRegistry, generate_latest
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from agent import jobs
from agent.callbacks import ENV, CallbackPolicy, CallbackRefused
from agent.errors import ApiError
from agent.invocations import HEADERS, Invocations
from agent.keys import key
from agent.lane import Spool
from agent.membership import PlacementError
from agent.metrics import RedisCollector
from agent.openapi import openapi_document
from agent.placement import Placement
from agent.redis_server import redact
from agent.registry import Registry, _function_doc
from agent.snapshot import snapshot
from agent.status import register as register_status_page

DEFAULT_BODY_LIMIT = 16 * 1024 * 1024


def read_token(state_dir: str | os.PathLike | None) -> str | None:
    """``BRULEE_TOKEN`` wins; otherwise the token file ``brulee up`` wrote into the state dir."""
    token = os.environ.get("BRULEE_TOKEN")
    if token:
        return token
    if state_dir and (Path(state_dir) / "token").exists():
        return (Path(state_dir) / "token").read_text().strip()
    return None


# Every gunicorn thread may hold a connection (a synchronous call blocks on its reply for up
# to its deadline), and there are hundreds when the admission queue is full: redis-py 8's
# default pool of 100 answered "Too many connections" (503) to the rest.
REDIS_CONNECTIONS = 4096


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
    max_waiting: int | None = None,
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
    sync_timeout = float(env("BRULEE_SYNC_TIMEOUT") or sync_timeout)
    callbacks = CallbackPolicy.parse(callback_allow if callback_allow is not None else env(ENV))

    conn = redis.Redis.from_url(
        redis_url,
        socket_connect_timeout=2,
        socket_timeout=sync_timeout + 5,
        max_connections=REDIS_CONNECTIONS,
    )
    placement = Placement(conn, policy, max_waiting=max_waiting)
    registry = Registry(conn, models, functions_file)
    spool = Spool(spool_dir)  # None: BRULEE_SPOOL_DIR, else /dev/shm
    spool.sweep()
    atexit.register(spool.close)
    invocations = Invocations(conn, placement, registry, models, spool, body_limit, sync_timeout)
    metrics = CollectorRegistry(auto_describe=False)
    metrics.register(RedisCollector(placement))
    app = Flask("brulee")
    app.config["MAX_CONTENT_LENGTH"] = body_limit

    @app.after_request
    def _drain(resp: Response) -> Response:
        """Read a body the route did not (an error answered first: unknown route or function,
        wrong method), up to the limit: a server answering before reading it closes the
        keep-alive connection, and the client's next request on it fails unanswered."""
        if request.content_length and request.content_length <= body_limit:
            body()
        return resp

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return jsonify(error=str(exc), **exc.extra), exc.status, exc.headers

    @app.errorhandler(PlacementError)
    def _placement_error(exc: PlacementError):
        return jsonify(error=str(exc)), exc.status

    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    def _redis_down(exc: redis.RedisError):
        return jsonify(error=f"the agent's Redis is unreachable ({redact(redis_url)}): {exc}"), 503

    @app.errorhandler(redis.RedisError)
    def _redis_error(exc: redis.RedisError):
        app.logger.exception("Redis refused a command: %s", exc)
        return jsonify(error=f"the agent's Redis refused a command: {exc}"), 503

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

    def body() -> bytes:
        """The request body, read once. With a ``Content-Length`` it is one read of the
        server's input stream: Werkzeug's ``get_data`` under a body limit reads it through
        ``LimitedStream`` 8 KiB at a time, 1.1 ms for a 588 KiB tensor here against 0.1 ms.
        Without one (chunked), Werkzeug's reader."""
        if "brulee.body" in request.environ:
            return request.environ["brulee.body"]
        length = request.content_length
        if length is None:
            data = request.get_data()
        elif length > body_limit:
            raise RequestEntityTooLarge()
        else:
            data = request.environ["wsgi.input"].read(length) if length else b""
            request.environ["brulee.body"] = data  # read once, whatever it holds
            if len(data) != length:
                raise ApiError(
                    400, f"body ended after {len(data)} of its {length} bytes (Content-Length)"
                )
        request.environ["brulee.body"] = data
        return data

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
            return parse_json(body(), what)
        except BadInput as exc:
            raise ApiError(exc.status, str(exc)) from exc

    def deadline_header() -> str | None:
        """``X-Deadline-Ms``: absent, or a whole number of milliseconds > 0 (else 400)."""
        raw = request.headers.get("X-Deadline-Ms")
        if raw is None:
            return None
        if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
            raise ApiError(400, f"X-Deadline-Ms must be an integer > 0 (ms), got {raw!r:.40}")
        return raw

    def respond(head: dict[str, Any], body: bytes):
        if "error" in head:
            headers = {"Retry-After": str(head["retry_after"])} if head.get("retry_after") else {}
            return jsonify(error=head["error"]), int(head.get("status", 500)), headers
        resp = Response(body, mimetype="application/json")
        for header, field_ in HEADERS.items():
            value = head.get(field_)
            resp.headers[header] = f"{value:.6f}" if isinstance(value, float) else str(value)
        return resp

    @app.post("/function/<name>")
    def invoke(name: str):
        deadline = deadline_header()
        return respond(*invocations.call(name, body(), request.content_type or "", deadline))

    @app.post("/async-function/<name>")
    def invoke_async(name: str):
        deadline_header()
        callback = request.headers.get("X-Callback-Url")
        if callback is not None:
            try:
                callback = callbacks.check(callback)
            except CallbackRefused as exc:
                raise ApiError(400, str(exc)) from exc
        try:
            attempts = jobs.parse_max_attempts(request.headers.get("X-Max-Attempts"))
            idempotency = jobs.parse_key(request.headers.get("Idempotency-Key"))
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        job_id = invocations.submit(
            name, body(), request.content_type or "", callback, attempts, idempotency
        )
        resp = jsonify(id=job_id, status="queued", location=f"/jobs/{job_id}")
        resp.status_code = 202
        resp.headers["Location"] = f"/jobs/{job_id}"
        return resp

    @app.get("/jobs/<job_id>")
    def job_status(job_id: str):
        return jsonify(invocations.job(job_id))

    @app.get("/system/functions")
    def list_functions():
        require_token()
        registry.ensure_loaded()
        failed = {k.decode(): v.decode() for k, v in conn.hgetall(key("failed")).items()}
        snap = snapshot(placement)
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
                    **placement.copies.memory_stats(doc["model"]),
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
        return jsonify(snapshot(placement, sync_timeout_s=sync_timeout))

    @app.get("/healthz")
    def healthz():
        """ok; degraded (still 200) when `brulee up`'s supervisor has given up restarting a
        part (crash loop); 503 while Redis is unreachable. Includes the supervisor's state."""
        from agent.supervisor import read_status

        supervisor = read_status(state_dir)  # None: not run by `brulee up`
        extra = {} if supervisor is None else {"supervisor": supervisor}
        try:
            conn.ping()
            alive, _ = placement.members.workers()
        except redis.RedisError as exc:
            error = f"the agent's Redis is unreachable: {exc}"
            return jsonify(status="down", error=error, **extra), 503
        looping = (supervisor or {}).get("crash_loop")
        if looping:
            return jsonify(status="degraded", workers=len(alive), crash_loop=looping, **extra)
        return jsonify(status="ok", workers=len(alive), **extra)

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

    register_status_page(app, placement, registry, require_token)
    return app
