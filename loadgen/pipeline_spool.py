"""An external bucket sort by time: how unsorted trace requests become a time-sorted stream.

Requests are appended as (time, function index) records to one temp file per time bucket
(``bucket_s`` seconds wide), buffered in memory up to ``buffer`` records. Reading back loads one
bucket at a time and sorts it, so memory is bounded by the buffer plus the largest bucket —
not by the trace. Exact: no reorder window, no approximation. The 2021 trace's unsorted rows
and the 2019 trace's function-by-function rows both go through it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

RECORD = np.dtype([("t", "f8"), ("f", "i4")])


class TimeSpool:
    def __init__(self, bucket_s: float = 600.0, buffer: int = 1 << 20, tmpdir=None) -> None:
        if bucket_s <= 0:
            raise ValueError("bucket_s must be > 0")
        self.bucket_s = bucket_s
        self.buffer = buffer
        self.dir = Path(tempfile.mkdtemp(prefix="brulee-spool-", dir=tmpdir))
        self._pending: dict[int, list[np.ndarray]] = {}
        self._buffered = 0
        self.count = 0

    def add(self, times: np.ndarray, funcs: np.ndarray) -> None:
        if not len(times):
            return
        rec = np.empty(len(times), RECORD)
        rec["t"], rec["f"] = times, funcs
        buckets = np.floor(times / self.bucket_s).astype(np.int64)
        order = np.argsort(buckets, kind="stable")
        rec, buckets = rec[order], buckets[order]
        cuts = np.flatnonzero(np.diff(buckets)) + 1
        for part, b in zip(np.split(rec, cuts), buckets[np.r_[0, cuts]].tolist()):
            self._pending.setdefault(b, []).append(part)
        self._buffered += len(rec)
        self.count += len(rec)
        if self._buffered >= self.buffer:
            self.flush()

    def flush(self) -> None:
        for b, parts in self._pending.items():
            with open(self.dir / f"{b}.bin", "ab") as fh:
                np.concatenate(parts).tofile(fh)  # one write per bucket, not per part
        self._pending.clear()
        self._buffered = 0

    def sorted_chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(times, function indices) bucket by bucket, each sorted by time (stable)."""
        self.flush()
        for b in sorted(int(p.stem) for p in self.dir.glob("*.bin")):
            rec = np.fromfile(self.dir / f"{b}.bin", RECORD)
            rec = rec[np.argsort(rec["t"], kind="stable")]
            yield rec["t"], rec["f"]

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> TimeSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
