"""The wire format of synchronous invocations (see :mod:`agent.worker`): the gateway pushes a
message onto the worker's lane list, the worker pushes the answer onto the caller's reply list.

Both are a JSON header line followed by raw bytes, so tensors and response bodies are never
re-encoded (nor pickled) on the way: a request carries its input as ``.npy`` bytes, an answer
its JSON response body, encoded once by the worker and passed through by the gateway.

When the worker runs on the gateway's own host, the input tensor does not go through Redis at
all: the gateway leaves it in the :class:`Spool`, a private directory on the host's shared
memory (``/dev/shm``), and the message names the file. Redis takes milliseconds to accept a
value of a few hundred kilobytes (an image model's input), several times the rest of a warm
hit; a file in shared memory costs tens of microseconds. Workers on other hosts get the tensor
inline, through Redis.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from functions.tensors import to_npy

SPOOL_ROOT = "/dev/shm"
SPOOL_MAX_AGE_S = 600  # older inputs were abandoned (a gateway died meanwhile): swept


class Spool:
    """Request tensors handed from a gateway to a worker on the same host, as files in a
    directory only this user can read (``<root>/brulee-<uid>``, mode 0700). Not usable when
    the root does not exist or the directory belongs to someone else: inputs then travel
    inline."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        root = Path(root or os.environ.get("BRULEE_SPOOL_DIR") or SPOOL_ROOT)
        self.dir = root / f"brulee-{os.getuid()}"
        self.host = socket.gethostname()
        self.usable = False
        try:
            self.dir.mkdir(mode=0o700, exist_ok=True)
            st = self.dir.stat()
            self.usable = st.st_uid == os.getuid() and (st.st_mode & 0o077) == 0
        except OSError:
            pass

    def put(self, batch: np.ndarray) -> str | None:
        """Leave ``batch`` for a worker as ``.npy``; its file name, or None if it could not be
        written (no space in shared memory: send it inline)."""
        if not self.usable:
            return None
        path = self.dir / f"{uuid.uuid4().hex}.npy"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(to_npy(batch))
        except OSError:
            path.unlink(missing_ok=True)
            return None
        return path.name

    def _path(self, name: str) -> Path:
        path = self.dir / name
        if path.parent != self.dir or not name.endswith(".npy"):  # a name, not a path
            raise ValueError(f"not a spool file name: {name!r}")
        return path

    def take(self, name: str) -> bytes | None:
        """The payload left under ``name``, removed; None if it is gone."""
        path = self._path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        path.unlink(missing_ok=True)
        return data

    def discard(self, name: str | None) -> None:
        if name:
            self._path(name).unlink(missing_ok=True)

    def sweep(self, max_age_s: float = SPOOL_MAX_AGE_S) -> int:
        """Remove inputs older than ``max_age_s`` (left by a gateway that died); their count."""
        if not self.usable:
            return 0
        old = time.time() - max_age_s
        gone = 0
        for path in self.dir.glob("*.npy"):
            try:
                if path.stat().st_mtime < old:
                    path.unlink()
                    gone += 1
            except FileNotFoundError:
                pass
        return gone


def lane_message(req: dict[str, Any], payload: bytes) -> bytes:
    """A synchronous invocation as the gateway pushes it onto a lane: a JSON header line
    (``req`` with its ``reply`` key), then the input tensor's ``.npy`` bytes."""
    return json.dumps(req).encode() + b"\n" + payload


def reply_message(result: dict[str, Any]) -> bytes:
    """An answer as a worker pushes it: a JSON header line (cache, timings, worker, or error
    and status), then the JSON response body, encoded once here and passed through as is."""
    head = {k: v for k, v in result.items() if k != "result"}
    body = orjson.dumps(result["result"]) if "result" in result else b""
    return json.dumps(head).encode() + b"\n" + body


def read_reply(raw: bytes) -> tuple[dict[str, Any], bytes]:
    head, _, body = raw.partition(b"\n")
    return json.loads(head), body
