"""The wire format of synchronous invocations (see :mod:`agent.worker`): the gateway pushes a
message onto the worker's lane list, the worker pushes the answer onto the caller's reply list.

Both are a JSON header line followed by raw bytes, so tensors and response bodies are never
re-encoded (nor pickled) on the way: a request carries its input as ``.npy`` bytes, an answer
its JSON response body, encoded once by the worker and passed through by the gateway.

When every worker shares the gateway's :class:`Spool` — a private directory in shared memory
(``/dev/shm``) — the input tensor does not go through Redis at all: the gateway leaves it in
a slot file and the message names the file and the byte count. Redis takes milliseconds to
accept a value of a few hundred kilobytes (an image model's input), several times the rest of
a warm hit; rewriting a file in shared memory costs a tenth of a millisecond. Workers that do
not share it (other hosts, containers, private ``/dev``) get the tensor inline, through Redis.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from functions.tensors import npy_parts

SPOOL_ROOT = "/dev/shm"
SPOOL_MAX_AGE_S = 600  # unknown files older than this are swept


class Spool:
    """Request tensors handed from a gateway to the workers that share it, through files in a
    directory only this user can read (``<root>/brulee-<uid>``, mode 0700). Not usable when
    the root does not exist or the directory belongs to someone else: inputs then travel
    inline.

    Each gateway process keeps a few *slot* files (``<pid>-<n>.npy``, one per request in
    flight) and overwrites them: a fresh file per request costs page allocation and freeing,
    about 1 ms for an image tensor. A slot is reused only once the worker has answered; a slot
    whose request ended otherwise (timeout, dead worker) is deleted, never reused, so a late
    reader finds nothing rather than someone else's input."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        root = Path(root or os.environ.get("BRULEE_SPOOL_DIR") or SPOOL_ROOT)
        self.dir = root / f"brulee-{os.getuid()}"
        self.host = socket.gethostname()
        self.usable = False
        self._lock = threading.Lock()
        self._free: list[str] = []
        self._fds: dict[str, int] = {}
        self._made = 0
        self._buffer = bytearray()  # a worker's side: where read() puts an input
        try:
            self.dir.mkdir(mode=0o700, exist_ok=True)
            st = self.dir.stat()
            self.usable = st.st_uid == os.getuid() and (st.st_mode & 0o077) == 0
        except OSError:
            pass

    def put(self, batch: np.ndarray) -> tuple[str, int] | None:
        """Leave ``batch`` for a worker as ``.npy`` in a free slot; the slot's name and the
        byte count, or None if it could not be written (shared memory full: send it inline).
        Give the slot back with :meth:`done` or :meth:`discard`."""
        if not self.usable:
            return None
        header, data = npy_parts(batch)
        with self._lock:
            if self._free:
                name = self._free.pop()
            else:
                self._made += 1
                name = f"{os.getpid()}-{self._made}.npy"
        try:
            fd = self._fds.get(name)
            if fd is None:
                fd = os.open(self.dir / name, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
                self._fds[name] = fd
            size = len(header) + data.nbytes
            if os.pwritev(fd, [header, data], 0) != size:
                raise OSError("short write")
        except OSError:
            self.discard(name)
            return None
        return name, size

    def done(self, name: str | None) -> None:
        """The worker has answered: the slot may carry the next input."""
        if name:
            with self._lock:
                self._free.append(name)

    def discard(self, name: str | None) -> None:
        """The request ended without an answer (a worker may still read the slot later):
        delete the file; the name is never used again."""
        if not name:
            return
        fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)
        self._path(name).unlink(missing_ok=True)

    def _path(self, name: str) -> Path:
        path = self.dir / name
        if path.parent != self.dir or not name.endswith(".npy"):  # a name, not a path
            raise ValueError(f"not a spool file name: {name!r}")
        return path

    def read(self, name: str, size: int) -> memoryview | None:
        """The ``size`` bytes of input in slot ``name`` (a worker's side); None if it is gone.
        They are read into this process's one reusable buffer — valid until the next read: a
        worker serves one call at a time and its interpreter copies its input — so a fresh
        588 KiB buffer's page faults are not paid on every call."""
        try:
            fd = os.open(self._path(name), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            if len(self._buffer) < size:
                self._buffer = bytearray(size)
            view = memoryview(self._buffer)[:size]
            got = os.preadv(fd, [view], 0)
        finally:
            os.close(fd)
        return view if got == size else None

    def close(self) -> None:
        """Delete this process's files (it is stopping)."""
        for name in list(self._fds):
            self.discard(name)
        self._free.clear()
        (self.dir / f"{os.getpid()}-worker.id").unlink(missing_ok=True)

    def announce(self) -> str:
        """A worker's side: leave a marker file in the spool and return its name ('' if the
        spool is unusable). A gateway that sees the marker shares the directory with the
        worker — same host name is not enough: containers and private ``/dev`` namespaces
        (systemd's ``PrivateDevices=``) give each process its own ``/dev/shm``."""
        if not self.usable:
            return ""
        name = f"{os.getpid()}-worker.id"
        try:
            (self.dir / name).write_text(self.host)
        except OSError:
            return ""
        return name

    def reaches(self, markers: list[str]) -> bool:
        """Whether every worker's marker is visible here (then inputs go through the spool)."""
        return self.usable and bool(markers) and all(m and (self.dir / m).exists() for m in markers)

    def sweep(self, max_age_s: float = SPOOL_MAX_AGE_S) -> int:
        """Remove the slots and markers of processes that are gone (and unknown files older
        than ``max_age_s``); returns how many."""
        if not self.usable:
            return 0
        old = time.time() - max_age_s
        gone = 0
        for path in self.dir.iterdir():
            owner = path.name.split("-", 1)[0]
            try:
                if owner.isdigit():
                    if int(owner) == os.getpid() or _alive(int(owner)):
                        continue
                elif path.stat().st_mtime >= old:
                    continue
                path.unlink()
                gone += 1
            except FileNotFoundError:
                pass
        return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
