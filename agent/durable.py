"""``--durability strict`` for the embedded Redis: force its append-only file to disk at the
agent's promises only, not after every write.

Redis 7.0 has one knob, ``appendfsync``, for every write: ``always`` forced the lane pushes,
claims and answers of synchronous calls too — three forced writes on a warm hit's critical
path, which nobody is promised (a synchronous caller is waiting; it hears of a failure). On
this machine, with other processes writing to the disk, that was 15 of a tiny model's 17 ms
through the agent (measured: ``appendfsync no`` on the same agent, 1.7 ms). Redis 7.2's
``WAITAOF`` would let one command wait for its own write; 7.0 does not have it.

So the embedded Redis runs ``appendfsync no`` under strict — it still ``write()``s its
append-only file before it answers any command (only ``everysec`` may hold writes back), so
a kill of redis-server loses nothing answered — and the agent forces the file itself, on the
same host, where it promises: the gateway before a 202 (the job, its input and its record are
on disk when the client hears "accepted"), a worker after recording a job's end.
``BRULEE_AOF_DIR`` (set by ``brulee up`` for its own Redis under strict) names the directory;
unset (``fast``, or a Redis of the user's, whose own ``appendfsync`` decides), nothing is
forced here.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "BRULEE_AOF_DIR"


class AppendOnlyFile:
    """The embedded Redis' append-only files (``appendonlydir``: Redis 7's base, increment
    and manifest files), forced to disk on :meth:`force`."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory)

    def force(self) -> None:
        """fsync every file of the append-only directory and the directory itself: what Redis
        has answered so far is on disk when this returns. The files are listed each time (an
        AOF rewrite starts a new increment file); one deleted meanwhile was merged into a base
        file Redis forced itself before it switched to it."""
        for path in self.dir.iterdir():
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def from_env() -> AppendOnlyFile | None:
    """The file to force at the agent's promises, or None (nothing to force here)."""
    directory = os.environ.get(ENV)
    return AppendOnlyFile(directory) if directory else None
