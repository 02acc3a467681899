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
from agent.openapi_schemas import NAME_PATTERN, ref, schemas

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
    "X-Variant": {
        "description": "the model that served: the function's, or a smaller variant of it "
        "served because memory was short (agent.variants)",
        "schema": {"type": "string"},
        "required": True,
    },
}


def _json(schema: dict[str, Any], description: str = "ok", **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _errors(*statuses: str) -> dict[str, Any]:
    """Error answers for ``statuses`` (500 always); 429 carries ``Retry-After``, and 503 may."""
    out: dict[str, Any] = {}
    for status in sorted({*statuses, "500"}):
        answer = _json(ref("Error"), MESSAGES[status])
        if status in ("429", "503"):
            answer["headers"] = {"Retry-After": {**RETRY_AFTER, "required": status == "429"}}
        out[status] = answer
    return out


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
            "application/json": {"schema": ref("TensorInput")},
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
                            ref("InvocationResult"),
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
                            ref("AsyncAccepted"),
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
                    "responses": {"200": _json(ref("Job")), **_errors("404", "503")},
                }
            },
            "/system/functions": {
                "get": {
                    "operationId": "listFunctions",
                    "summary": "List functions",
                    "security": secured,
                    "responses": {
                        "200": _json(ref("FunctionList"), links=list_links),
                        **_errors("401", "503"),
                    },
                },
                "post": {
                    "operationId": "deployFunction",
                    "summary": "Deploy (or redeploy) a function",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref("DeployRequest")}},
                    },
                    "responses": {
                        "201": _json(ref("Function"), "deployed", links=deploy_links),
                        **_errors("400", "401", "413", "503"),
                    },
                },
                "delete": {
                    "operationId": "removeFunction",
                    "summary": "Remove a function",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref("RemoveRequest")}},
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
                        "200": _json(ref("CacheSnapshot")),
                        **_errors("401", "503"),
                    },
                }
            },
            "/system/status": {
                "get": {
                    "operationId": "statusData",
                    "summary": "What the status page shows: copies with their utility, recent "
                    "evictions with the utilities compared, memory history, per-function hit "
                    "ratio and latency",
                    "security": secured,
                    "responses": {"200": _json(ref("Status")), **_errors("401", "503")},
                }
            },
            "/status": {
                "get": {
                    "operationId": "statusPage",
                    "summary": "The status page (HTML, no data: it asks for the token and "
                    "polls /system/status)",
                    "responses": {
                        "200": {
                            "description": "a self-contained HTML page",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        },
                        **_errors(),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness",
                    "responses": {"200": _json(ref("Health")), **_errors("503")},
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
            "schemas": schemas(models),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
