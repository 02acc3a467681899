"""The workload file: the contract between the trace pipeline, the simulator and the replay.

A CSV file (gzip-compressed when its name ends in ``.gz``), one request per row, sorted by
time, with the header ``time,function,id,source``:

- ``time``: seconds since the start of the workload (float, non-decreasing);
- ``function``: the function (model) the request invokes;
- ``id``: a request id, unique within the file;
- ``source``: the trace function the request came from (empty when none).

Readers and writers stream: neither holds the whole file in memory.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Iterable, Iterator
from typing import NamedTuple, TextIO

HEADER = ("time", "function", "id", "source")


class Request(NamedTuple):
    time: float
    function: str
    id: str
    source: str = ""


class WorkloadError(ValueError):
    """A workload file that breaks the contract; the message names the file and line."""


def _open(path: str | os.PathLike, mode: str) -> TextIO:
    if str(path).endswith(".gz"):
        # level 3: several times faster than the default 9, files only slightly larger
        return io.TextIOWrapper(gzip.open(path, mode + "b", compresslevel=3), newline="")
    return open(path, mode, newline="")


def write_workload(path: str | os.PathLike, requests: Iterable[Request]) -> int:
    """Write ``requests`` (already sorted by time); returns how many were written."""
    count = 0
    with _open(path, "w") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(HEADER)
        for req in requests:
            writer.writerow((repr(float(req.time)), req.function, req.id, req.source))
            count += 1
    return count


def iter_workload(path: str | os.PathLike) -> Iterator[Request]:
    """Stream the requests of a workload file, checking the header and the time order."""
    with _open(path, "r") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(header[:3]) != HEADER[:3]:
            raise WorkloadError(f"{path}:1: expected header {','.join(HEADER)}, got {header}")
        last = float("-inf")
        for line, row in enumerate(reader, start=2):
            if len(row) not in (3, 4):
                raise WorkloadError(f"{path}:{line}: expected 3 or 4 columns, got {len(row)}")
            try:
                t = float(row[0])
            except ValueError:
                raise WorkloadError(f"{path}:{line}: time {row[0]!r} is not a number") from None
            if t < last:
                raise WorkloadError(f"{path}:{line}: time {t} goes back (previous {last})")
            last = t
            yield Request(t, row[1], row[2], row[3] if len(row) == 4 else "")
