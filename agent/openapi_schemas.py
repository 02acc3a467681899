"""The schemas of the gateway's OpenAPI document (:mod:`agent.openapi`): the bodies the routes
take and the answers they give, as ``components/schemas``."""

from __future__ import annotations

from typing import Any

from agent.jobs import DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS_LIMIT
from agent.sizes import MAX_SIZE
from functions.handlers import HANDLERS
from functions.stack import MEMORY_PATTERN, NAME_MAX

NAME_PATTERN = f"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_MAX - 1}}}$"
HANDLER_NAMES = sorted(HANDLERS)
JOB_STATES = ["queued", "started", "deferred", "scheduled", "finished", "failed", "stopped"]
JOB_STATES += ["canceled"]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def schemas(models: list[str] | None) -> dict[str, Any]:
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
                "result": ref("InvocationResult"),
                "error": {"type": "string"},
                "X-Cache": {"type": "string", "nullable": True},
                "X-Load-Seconds": {"type": "number", "nullable": True},
                "X-Exec-Seconds": {"type": "number", "nullable": True},
                "X-Queue-Seconds": {"type": "number", "nullable": True},
                "X-Worker": {"type": "string", "nullable": True},
                "X-Variant": {"type": "string", "nullable": True},
                "waiting_for_memory": {"type": "boolean"},
                "attempts": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "attempts started (a worker died running each but the last)",
                },
                "max_attempts": {"type": "integer", "minimum": 1},
                "attempt_errors": {
                    "description": "why each attempt that did not finish ended",
                    **array(
                        obj(
                            ["attempt", "error"],
                            attempt={"type": "integer", "minimum": 1},
                            error={"type": "string"},
                            at={"type": "number"},
                        )
                    ),
                },
                "callback": obj(
                    ["url", "delivered", "pending", "attempts"],
                    url={"type": "string"},
                    delivered={"type": "boolean"},
                    pending={"type": "boolean"},
                    attempts=array(
                        obj(
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
                "stages": {
                    "type": "string",
                    "nullable": True,
                    "enum": ["bulk", "linear", "interleaved", None],
                    "description": "serve from the model's stage files (brulee models build "
                    "--stages K) under this loading policy",
                },
                "variants": {
                    "type": "array",
                    "minItems": 1,
                    "nullable": True,
                    "description": "models to serve under memory pressure, best first (the "
                    "function's model first), each a name or {model, accuracy}; null: none",
                    "items": {
                        "oneOf": [
                            {"type": "string"},
                            {
                                "type": "object",
                                "required": ["model"],
                                "additionalProperties": False,
                                "properties": {
                                    "model": {"type": "string"},
                                    "accuracy": {"type": "number", "minimum": 0, "maximum": 1},
                                },
                            },
                        ]
                    },
                },
                "min_accuracy": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 1,
                    "nullable": True,
                    "description": "variants less accurate than this are never served",
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
                "stages": {"type": "string", "nullable": True},
                "options": {"type": "object"},
                "record": {"type": "object"},
                "variants": {"type": "array", "items": {"type": "object"}},
                "min_accuracy": {"type": "number", "nullable": True},
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
                "jobs": ref("JobCounts"),
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
        **status_schemas(),
    }


def status_schemas() -> dict[str, Any]:
    """``GET /system/status`` (what the status page polls, ``agent.status``)."""
    number, integer, text = {"type": "number"}, {"type": "integer"}, {"type": "string"}
    utility = {
        "description": "what the policy orders copies by, smallest evicted first "
        "(CremeBrulee: pop x cost / bytes; LFU: a pair); null: the policy has no order",
        "oneOf": [{"type": "number", "nullable": True}, array({"type": "number"})],
    }
    compared = obj(["model", "worker", "utility"], model=text, worker=text, bytes=integer,
                   utility=utility, pinned={"type": "boolean"})  # fmt: skip
    copy = obj(
        ["model", "worker", "state", "bytes", "hits", "last_used", "utility"],
        model=text, worker=text, since=number, requests=integer, hits=integer,
        misses=integer, in_flight=integer, queued=integer, utility=utility,
        bytes={"type": "integer", "nullable": True}, last_used={"type": "number", "nullable": True},
        state={"type": "string", "enum": ["loading", "ready", "draining", "releasing"]},
    )  # fmt: skip
    eviction = obj(
        ["time", "policy", "victims"],
        time=number, policy=text, rule=text, need_bytes=integer, kept_total=integer,
        incoming=obj(["model"], model=text, bytes=integer, utility=utility),
        victims=array(compared), kept=array(compared),
    )  # fmt: skip
    device = obj(
        ["cap_bytes", "used_bytes", "workers", "copies", "admission", "evictions"],
        cap_bytes=integer, used_bytes=integer, releasing=integer, rss_bytes=integer,
        baseline_rss_bytes=integer, workers={"type": "object"}, copies=array(copy),
        admission=obj(["waiting"], waiting=array({"type": "object"})),
        evicted={"type": "object"}, evictions=array(eviction),
    )  # fmt: skip
    per_kind = {"type": "object", "additionalProperties": {"type": "number", "nullable": True}}
    function = obj(
        ["name", "model", "state", "hits", "misses", "hit_ratio", "mean_s"],
        name=text, model=text, hits=integer, misses=integer,
        state={"type": "string", "enum": ["cold", "ready", "failed"]},
        hit_ratio={"type": "number", "nullable": True, "minimum": 0, "maximum": 1},
        seconds=per_kind, mean_s=per_kind,
    )  # fmt: skip
    sample = obj(["t", "devices"], t=number, devices={"type": "object"})
    return {
        "Status": obj(
            ["time", "policy", "devices", "memory", "functions"],
            time=number,
            policy=text,
            sample_s=number,
            devices={"type": "object", "additionalProperties": device},
            memory={**array(sample), "description": "resident-memory samples, oldest first"},
            functions=array(function),
        )  # fmt: skip
    }
