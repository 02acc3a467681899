"""The wire format of synchronous invocations (see :mod:`agent.worker`): the gateway pushes a
message onto the worker's lane list, the worker pushes the answer onto the caller's reply list.

Both are a JSON header line followed by raw bytes, so tensors and response bodies are never
re-encoded (nor pickled) on the way: a request carries its input as ``.npy`` bytes, an answer
its JSON response body, encoded once by the worker and passed through by the gateway.
"""

from __future__ import annotations

import json
from typing import Any


def lane_message(req: dict[str, Any], payload: bytes) -> bytes:
    """A synchronous invocation as the gateway pushes it onto a lane: a JSON header line
    (``req`` with its ``reply`` key), then the input tensor's ``.npy`` bytes."""
    return json.dumps(req).encode() + b"\n" + payload


def reply_message(result: dict[str, Any]) -> bytes:
    """An answer as a worker pushes it: a JSON header line (cache, timings, worker, or error
    and status), then the JSON response body, encoded once here and passed through as is."""
    head = {k: v for k, v in result.items() if k != "result"}
    body = json.dumps(result["result"]).encode() if "result" in result else b""
    return json.dumps(head).encode() + b"\n" + body


def read_reply(raw: bytes) -> tuple[dict[str, Any], bytes]:
    head, _, body = raw.partition(b"\n")
    return json.loads(head), body
