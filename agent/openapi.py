"""The gateway's OpenAPI 3.0 document (served at ``/openapi.json``).

It declares what the routes really take and answer, so a fuzzer (Schemathesis, in
``tests/test_api_fuzz.py``) can hold the gateway to it: the required fields of each body, the
shape of every answer, every status a route can give (errors are always ``{"error": ...}``,
500 included), the bearer token of the management routes, and links from a deployment to the
routes that use the deployed name and from an async invocation to its job, so stateful tests
call real functions. The deploy body's ``model`` lists the models this agent serves.
"""

from __future__ import annotations

import copy
from typing import Any

from agent.jobs import DEFAULT_MAX_ATTEMPTS, KEY_MAX, MAX_ATTEMPTS_LIMIT
from agent.sizes import MAX_SIZE
from functions.handlers import HANDLERS
from functions.stack import MEMORY_PATTERN, NAME_MAX

NAME_PATTERN = f"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_MAX - 1}}}$"
HANDLER_NAMES = sorted(HANDLERS)
JOB_STATES = ["queued", "started", "deferred", "scheduled", "finished", "failed", "stopped"]
JOB_STATES += ["canceled"]
MESSAGES = {
    "400": "bad input: the message names the problem (body, field, type, shape, header)",
    "401": "missing or wrong 'Authorization: Bearer <token>'",
    "404": "unknown function, job or route",
    "413": "request body over the limit",
    "429": "the admission queue is full; retry after Retry-After seconds",
    "500": "unexpected error (a bug; the agent keeps serving)",
    "503": (
        "unavailable: failed model, no worker, a worker died, memory held by executing "
        "models, Redis unreachable, no token configured, or the request's deadline passed "
        "in the admission queue (then with Retry-After)"
    ),
    "504": "no answer within the synchronous timeout",
    "507": "the model is larger than the device's whole memory cap",
}
RETRY_AFTER = {
    "description": "seconds to wait before retrying",
    "schema": {"type": "integer", "minimum": 0},
}
SECONDS = {"schema": {"type": "number"}, "required": True}
INVOCATION_HEADERS = {
    "X-Cache": {"schema": {"type": "string", "enum": ["hit", "miss"]}, "required": True},
    "X-Load-Seconds": SECONDS,
    "X-Exec-Seconds": SECONDS,
    "X-Queue-Seconds": SECONDS,
    "X-Worker": {"schema": {"type": "string"}, "required": True},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "ok", **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _errors(*statuses: str) -> dict[str, Any]:
    """Error answers for ``statuses`` (500 always); 429 carries ``Retry-After``, and 503 may."""
    out: dict[str, Any] = {}
    for status in sorted({*statuses, "500"}):
        answer = _json(_ref("Error"), MESSAGES[status])
        if status in ("429", "503"):
            answer["headers"] = {"Retry-After": {**RETRY_AFTER, "required": status == "429"}}
        out[status] = answer
    return out


def _schemas(models: list[str] | None) -> dict[str, Any]:
    nullable_int = {"type": "integer", "nullable": True}
    model = {"type": "string", "description": "a model of the agent's model directory"}
    if models:
        model["enum"] = sorted(models)
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string"},
                "model_bytes": {"type": "integer", "description": "507: the model's bytes"},
            },
        },
        "TensorInput": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "inputs": {
                    "description": (
                        "a (nested) list of numbers of the function's input shape, batch "
                        "dimension optional (GET /system/functions gives shape and dtype)"
                    ),
                    "oneOf": [{"type": "array"}, {"type": "number"}],
                }
            },
        },
        "InvocationResult": {
            "type": "object",
            "required": ["outputs"],
            "properties": {
                "outputs": {
                    "type": "array",
                    "description": "the output tensor (tensor, digits) or top-k classes (image)",
                },
                "classes": {"type": "array", "items": {"type": "integer"}},
            },
        },
        "AsyncAccepted": {
            "type": "object",
            "required": ["id", "status", "location"],
            "properties": {
                "id": {"type": "string"},
                "status": {"type": "string", "enum": ["queued"]},
                "location": {"type": "string"},
            },
        },
        "Job": {
            "type": "object",
            "required": ["id", "status"],
            "properties": {
                "id": {"type": "string"},
                "status": {"type": "string", "enum": JOB_STATES},
                "result": _ref("InvocationResult"),
                "error": {"type": "string"},
                "X-Cache": {"type": "string", "nullable": True},
                "X-Load-Seconds": {"type": "number", "nullable": True},
                "X-Exec-Seconds": {"type": "number", "nullable": True},
                "X-Queue-Seconds": {"type": "number", "nullable": True},
                "X-Worker": {"type": "string", "nullable": True},
                "waiting_for_memory": {"type": "boolean"},
                "attempts": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "attempts started (a worker died running each but the last)",
                },
                "max_attempts": {"type": "integer", "minimum": 1},
                "attempt_errors": {
                    "description": "why each attempt that did not finish ended",
                    **_array(
                        _object(
                            ["attempt", "error"],
                            attempt={"type": "integer", "minimum": 1},
                            error={"type": "string"},
                            at={"type": "number"},
                        )
                    ),
                },
                "callback": _object(
                    ["url", "delivered", "pending", "attempts"],
                    url={"type": "string"},
                    delivered={"type": "boolean"},
                    pending={"type": "boolean"},
                    attempts=_array(
                        _object(
                            ["at", "ok"],
                            at={"type": "number"},
                            ok={"type": "boolean"},
                            status={"type": "integer"},
                            error={"type": "string"},
                        )
                    ),
                ),
            },
        },
        "DeployRequest": {
            "type": "object",
            "required": ["name", "model"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": NAME_PATTERN},
                "model": model,
                "handler": {
                    "type": "string",
                    "enum": HANDLER_NAMES,
                    "description": "default: chosen from the model's input signature",
                },
                "file": {
                    "type": "string",
                    "minLength": 1,
                    "description": (
                        "a file inside the model directory (default: the model's); another "
                        "file must be in the catalog with the model's signature"
                    ),
                },
                "memory": {
                    "description": "bytes, or a size: '64Mi' (2^20), '100MB' (10^6)",
                    "nullable": True,
                    "oneOf": [
                        {"type": "integer", "minimum": 1, "maximum": MAX_SIZE - 1},
                        {"type": "string", "pattern": f"^{MEMORY_PATTERN}$"},
                    ],
                },
                "max_attempts": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_ATTEMPTS_LIMIT,
                    "nullable": True,
                    "description": "attempts of an async job whose worker dies running it "
                    f"(default {DEFAULT_MAX_ATTEMPTS}; a request's X-Max-Attempts overrides it)",
                },
                "options": {
                    "type": "object",
                    "nullable": True,
                    "additionalProperties": False,
                    "description": "handler options: max_bytes (any), top_k and labels (image)",
                    "properties": {
                        "max_bytes": {"type": "integer", "minimum": 1},
                        "top_k": {"type": "integer", "minimum": 1},
                        "labels": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
        "Function": {
            "type": "object",
            "required": ["name", "model", "file", "handler"],
            "properties": {
                "name": {"type": "string"},
                "model": {"type": "string"},
                "file": {"type": "string"},
                "handler": {"type": "string"},
                "memory": nullable_int,
                "max_attempts": nullable_int,
                "options": {"type": "object"},
                "record": {"type": "object"},
            },
        },
        "FunctionList": {
            "type": "object",
            "required": ["functions"],
            "properties": {
                "functions": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "model", "handler", "state"],
                        "properties": {
                            "name": {"type": "string"},
                            "model": {"type": "string"},
                            "handler": {"type": "string"},
                            "input_shape": {
                                "type": "array",
                                "nullable": True,
                                "items": {"type": "integer"},
                            },
                            "input_dtype": {"type": "string", "nullable": True},
                            "content_types": {"type": "array", "items": {"type": "string"}},
                            "memory": nullable_int,
                            "state": {"type": "string", "enum": ["cold", "ready", "failed"]},
                            "reason": {"type": "string", "nullable": True},
                            "loaded_bytes": nullable_int,
                            "observed_bytes": {"type": "integer"},
                            "freed_bytes": {"type": "integer"},
                        },
                    },
                }
            },
        },
        "RemoveRequest": {
            "type": "object",
            "required": ["functionName"],
            "additionalProperties": False,
            "properties": {"functionName": {"type": "string", "minLength": 1}},
        },
        "CacheSnapshot": {
            "type": "object",
            "required": ["policy", "devices"],
            "properties": {
                "policy": {"type": "string"},
                "jobs": _ref("JobCounts"),
                "devices": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["cap_bytes", "used_bytes", "workers"],
                        "properties": {
                            "cap_bytes": {"type": "integer"},
                            "used_bytes": {"type": "integer"},
                            "releasing": {"type": "integer"},
                            "rss_bytes": {"type": "integer"},
                            "baseline_rss_bytes": {"type": "integer"},
                            "baseline_pss_bytes": {"type": "integer"},
                            "hits": {"type": "object"},
                            "misses": {"type": "object"},
                            "evictions": {"type": "object"},
                            "prewarms": {"type": "object"},
                            "workers": {"type": "object"},
                        },
                    },
                },
            },
        },
        "JobCounts": {
            "type": "object",
            "description": "async jobs per function: waiting and running now; retried, "
            "finished and failed since the agent's Redis data began",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    n: {"type": "integer"}
                    for n in ("waiting", "running", "retried", "finished", "failed")
                },
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "workers"],
            "properties": {
                "status": {"type": "string", "enum": ["ok"]},
                "workers": {"type": "integer", "minimum": 0},
            },
        },
    }


def openapi_document(models: list[str] | None = None) -> dict[str, Any]:
    """The API's OpenAPI 3.0 document; ``models``: the names a deployment may use."""
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": NAME_PATTERN},
    }
    deadline = {
        "name": "X-Deadline-Ms",
        "in": "header",
        "required": False,
        "description": "answer 503 if the request has not started within this many ms",
        "schema": {"type": "integer", "minimum": 1},
    }
    callback = {
        "name": "X-Callback-Url",
        "in": "header",
        "required": False,
        "description": (
            "http(s) URL POSTed to when the job ends; hosts resolving to loopback, private, "
            "link-local, multicast, reserved or unspecified addresses are refused (400) unless "
            "BRULEE_CALLBACK_ALLOW allows them"
        ),
        "schema": {"type": "string", "format": "uri", "maxLength": 2048},
    }
    attempts = {
        "name": "X-Max-Attempts",
        "in": "header",
        "required": False,
        "description": "attempts if the job's worker dies while running it (default: the "
        f"function's max_attempts, else {DEFAULT_MAX_ATTEMPTS}); the job runs at least once",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ATTEMPTS_LIMIT},
    }
    idempotency = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "a submission with a key already used for this function (within an "
        "hour) is not run again: the answer names the first submission's job",
        "schema": {"type": "string", "minLength": 1, "maxLength": KEY_MAX},
    }
    binary = {"schema": {"type": "string", "format": "binary"}}
    invocation_body = {
        "required": True,
        "content": {
            "application/json": {"schema": _ref("TensorInput")},
            "application/x-npy": binary,
            "image/jpeg": binary,
            "image/png": binary,
        },
    }
    secured = [{"bearer": []}]
    to_invocations = {
        "InvokeFunction": {"operationId": "invokeFunction", "parameters": {"name": "NAME"}},
        "InvokeFunctionAsync": {
            "operationId": "invokeFunctionAsync",
            "parameters": {"name": "NAME"},
        },
    }
    deployed = "$response.body#/name"
    listed = "$response.body#/functions/0/name"
    deploy_links = copy.deepcopy(to_invocations)
    list_links = copy.deepcopy(to_invocations)
    for link in deploy_links.values():
        link["parameters"]["name"] = deployed
    for link in list_links.values():
        link["parameters"]["name"] = listed
    deploy_links["RemoveFunction"] = {
        "operationId": "removeFunction",
        "requestBody": {"functionName": deployed},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "brulee edge agent",
            "version": "1",
            "description": "Errors are JSON {'error': '...'} with the statuses listed per route.",
        },
        "paths": {
            "/function/{name}": {
                "post": {
                    "operationId": "invokeFunction",
                    "summary": "Invoke a function synchronously",
                    "parameters": [name, deadline],
                    "requestBody": invocation_body,
                    "responses": {
                        "200": _json(
                            _ref("InvocationResult"),
                            "the function's answer",
                            headers=INVOCATION_HEADERS,
                        ),
                        **_errors("400", "404", "413", "429", "503", "504", "507"),
                    },
                }
            },
            "/async-function/{name}": {
                "post": {
                    "operationId": "invokeFunctionAsync",
                    "summary": "Invoke a function asynchronously",
                    "parameters": [name, deadline, callback, attempts, idempotency],
                    "requestBody": invocation_body,
                    "responses": {
                        "202": _json(
                            _ref("AsyncAccepted"),
                            "queued; poll Location",
                            headers={"Location": {"schema": {"type": "string"}, "required": True}},
                            links={
                                "GetJob": {
                                    "operationId": "getJob",
                                    "parameters": {"id": "$response.body#/id"},
                                }
                            },
                        ),
                        **_errors("400", "404", "413", "429", "503", "507"),
                    },
                }
            },
            "/jobs/{id}": {
                "get": {
                    "operationId": "getJob",
                    "summary": "State and result of an async job",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {"200": _json(_ref("Job")), **_errors("404", "503")},
                }
            },
            "/system/functions": {
                "get": {
                    "operationId": "listFunctions",
                    "summary": "List functions",
                    "security": secured,
                    "responses": {
                        "200": _json(_ref("FunctionList"), links=list_links),
                        **_errors("401", "503"),
                    },
                },
                "post": {
                    "operationId": "deployFunction",
                    "summary": "Deploy (or redeploy) a function",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("DeployRequest")}},
                    },
                    "responses": {
                        "201": _json(_ref("Function"), "deployed", links=deploy_links),
                        **_errors("400", "401", "413", "503"),
                    },
                },
                "delete": {
                    "operationId": "removeFunction",
                    "summary": "Remove a function",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("RemoveRequest")}},
                    },
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["removed"],
                                "properties": {"removed": {"type": "string"}},
                            },
                            "removed",
                        ),
                        **_errors("400", "401", "404", "413", "503"),
                    },
                },
            },
            "/system/cache": {
                "get": {
                    "operationId": "cacheState",
                    "summary": "What is loaded where: per device and worker (pids, host names)",
                    "security": secured,
                    "responses": {
                        "200": _json(_ref("CacheSnapshot")),
                        **_errors("401", "503"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness",
                    "responses": {"200": _json(_ref("Health")), **_errors("503")},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors("503"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}), **_errors()},
                }
            },
        },
        "components": {
            "schemas": _schemas(models),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
