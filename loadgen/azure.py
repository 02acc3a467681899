"""Streaming readers of the Azure Functions traces (formats in ``docs/spec/workload.md``).

Every reader yields one record per row and holds one row at a time. A malformed row (wrong
column count, non-numeric field, missing header) raises ``TraceError`` naming ``file:line`` and
the reason, unless ``bad_rows`` (a ``BadRows`` counter) is given: then the row is skipped and
counted. Files ending in ``.gz`` are decompressed on the fly.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, TextIO

# real Azure 2019 rows shipped with brulee (loadgen/data/README.md): one day, 9 functions
BUNDLED_TRACE = os.path.join(
    os.path.dirname(__file__), "data", "azure2019_invocations_first9rows.csv"
)

MINUTES = 1440
INVOCATION_HEADER = ("HashOwner", "HashApp", "HashFunction", "Trigger")
DURATION_HEADER = (
    "HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum,percentile_Average_0,"
    "percentile_Average_1,percentile_Average_25,percentile_Average_50,percentile_Average_75,"
    "percentile_Average_99,percentile_Average_100"
).split(",")
MEMORY_HEADER = (
    "HashOwner,HashApp,SampleCount,AverageAllocatedMb,AverageAllocatedMb_pct1,"
    "AverageAllocatedMb_pct5,AverageAllocatedMb_pct25,AverageAllocatedMb_pct50,"
    "AverageAllocatedMb_pct75,AverageAllocatedMb_pct95,AverageAllocatedMb_pct99,"
    "AverageAllocatedMb_pct100"
).split(",")
HEADER_2021 = ("app", "func", "end_timestamp", "duration")


class TraceError(ValueError):
    """A trace file that cannot be read; the message starts with ``file:line:``."""


@dataclass
class BadRows:
    """Counts (and remembers the first few) skipped malformed rows."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(message)


class FunctionDay(NamedTuple):
    owner: str
    app: str
    function: str
    trigger: str
    counts: list[int]  # invocations in each minute 1..1440


class Durations(NamedTuple):
    owner: str
    app: str
    function: str
    average_ms: float
    count: int
    percentiles_ms: dict[str, float]  # "min", "p0", "p1", …, "p100", "max"


class AppMemory(NamedTuple):
    owner: str
    app: str
    samples: int
    average_mb: float
    percentiles_mb: dict[str, float]  # "p1", "p5", …, "p100"


class Invocation(NamedTuple):
    app: str
    func: str
    arrival: float  # end_timestamp - duration, seconds from the trace start
    duration: float


def open_text(path: str | os.PathLike) -> TextIO:
    if str(path).endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), newline="")
    return open(path, newline="")


def _rows(path, header: tuple | list, bad: BadRows | None, exact: bool = True) -> Iterator:
    """(line, row) for the data rows, after checking the header's leading columns."""
    try:
        fh = open_text(path)
    except FileNotFoundError:
        raise TraceError(f"{path}: no such file") from None
    with fh:
        reader = csv.reader(fh)
        try:
            first = next(reader, None)
        except (UnicodeDecodeError, OSError, csv.Error) as exc:
            raise TraceError(f"{path}:1: unreadable ({exc})") from None
        if first is None or [c.strip() for c in first[: len(header)]] != list(header):
            raise TraceError(
                f"{path}:1: missing header: expected {','.join(header)}"
                f"{',…' if not exact else ''}, got {','.join((first or [])[:6])[:120]}"
            )
        width = len(first)
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != width:
                _reject(bad, TraceError(f"{path}:{line}: expected {width} columns, got {len(row)}"))
                continue
            yield line, row, first


def _reject(bad: BadRows | None, error: TraceError) -> None:
    """A malformed row: stop with ``error`` (file:line and the reason), or, when skipping bad
    rows, count it in ``bad``."""
    if bad is None:
        raise error from None
    bad.add(str(error))


def _num(path, line: int, name: str, text: str, kind=float) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise TraceError(f"{path}:{line}: {name} {text!r} is not a number") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise TraceError(f"{path}:{line}: {name} {text!r} is not finite")
    return value


def read_invocations_2019(path, bad_rows: BadRows | None = None) -> Iterator[FunctionDay]:
    """Rows of ``invocations_per_function_md.anon.dNN.csv``: per-minute counts of a function."""
    for line, row, header in _rows(path, INVOCATION_HEADER, bad_rows, exact=False):
        if line == 2 and len(header) != 4 + MINUTES:
            raise TraceError(f"{path}:1: expected {4 + MINUTES} columns, got {len(header)}")
        try:
            try:
                counts = list(map(int, row[4:]))
            except ValueError:  # empty cells count as 0; anything else is reported below
                counts = [int(c) if c else 0 for c in row[4:]]
            if min(counts) < 0:
                raise TraceError(f"{path}:{line}: negative invocation count")
        except ValueError:
            bad_at = next(i for i, c in enumerate(row[4:]) if c and not c.lstrip("-").isdigit())
            msg = (
                f"{path}:{line}: count of minute {bad_at + 1} {row[4 + bad_at]!r} is not an integer"
            )
            _reject(bad_rows, TraceError(msg))
            continue
        yield FunctionDay(row[0], row[1], row[2], row[3], counts)


def read_durations_2019(path, bad_rows: BadRows | None = None) -> Iterator[Durations]:
    """Rows of ``function_durations_percentiles.anon.dNN.csv`` (milliseconds)."""
    names = ["p0", "p1", "p25", "p50", "p75", "p99", "p100"]
    for line, row, _ in _rows(path, DURATION_HEADER, bad_rows):
        try:
            nums = [_num(path, line, h, v) for h, v in zip(DURATION_HEADER[3:], row[3:])]
        except TraceError as exc:
            _reject(bad_rows, exc)
            continue
        pct = {"min": nums[2], "max": nums[3], **dict(zip(names, nums[4:]))}
        yield Durations(row[0], row[1], row[2], nums[0], int(nums[1]), pct)


def read_memory_2019(path, bad_rows: BadRows | None = None) -> Iterator[AppMemory]:
    """Rows of ``app_memory_percentiles.anon.dNN.csv`` (per application, megabytes)."""
    names = ["p1", "p5", "p25", "p50", "p75", "p95", "p99", "p100"]
    for line, row, _ in _rows(path, MEMORY_HEADER, bad_rows):
        try:
            nums = [_num(path, line, h, v) for h, v in zip(MEMORY_HEADER[2:], row[2:])]
        except TraceError as exc:
            _reject(bad_rows, exc)
            continue
        yield AppMemory(row[0], row[1], int(nums[0]), nums[1], dict(zip(names, nums[2:])))


def read_invocations_2021(path, bad_rows: BadRows | None = None) -> Iterator[Invocation]:
    """Rows of the 2021 per-invocation file, in file order (not sorted by time)."""
    for line, row, _ in _rows(path, HEADER_2021, bad_rows):
        try:
            end = _num(path, line, "end_timestamp", row[2])
            dur = _num(path, line, "duration", row[3])
            if dur < 0:
                raise TraceError(f"{path}:{line}: duration {row[3]!r} is negative")
        except TraceError as exc:
            _reject(bad_rows, exc)
            continue
        yield Invocation(row[0], row[1], end - dur, dur)
