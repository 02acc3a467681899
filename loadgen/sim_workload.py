"""The simulator's view of a workload file: one streamed CSV pass into compact temp arrays.

Every (policy, cap) run of ``brulee simulate`` replays the same requests, so the CSV is parsed
once (``csv.reader``, the fastest stdlib parser) into two flat binary files in a temporary
directory: request times (float64) and function indices (int32). Runs then read them back in
chunks through ``numpy.memmap`` and ``tolist()``: no CSV parsing, no per-request objects, and
memory bounded by the chunk size whatever the workload's length.

The oracle policies need each model's next request. Rather than holding the future in memory,
a second pass walks the compact arrays backwards chunk by chunk (vectorised with numpy) and
writes, for every request, the time of the next request to the same function (``inf`` if none)
into a third temp file. The simulator copies that value into a per-model table as each request
passes, so ``Oracle.next_use`` is a list lookup. Memory: one chunk plus one float per function.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import shutil
import tempfile
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np

from loadgen.workload_file import HEADER, WorkloadError

CHUNK = 1 << 16  # requests per chunk: big enough to amortise numpy calls, small in memory


def _open_text(path: str | os.PathLike) -> TextIO:
    if str(path).endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), newline="")
    return open(path, newline="")


class CompactWorkload:
    """A workload file converted to flat arrays in a temp directory (deleted by ``close``).

    ``names[i]`` is function ``i`` (in order of first appearance); ``counts[i]`` its requests;
    ``first_use[i]`` the time of its first request. Use as a context manager.
    """

    def __init__(self, path: str | os.PathLike, tmpdir: str | None = None) -> None:
        self.source = Path(path)
        self._dir = Path(tempfile.mkdtemp(prefix="brulee-sim-", dir=tmpdir))
        self.names: list[str] = []
        self.counts: list[int] = []
        self.first_use: list[float] = []
        self.n = 0
        self.t_first = 0.0
        self.t_last = 0.0
        self._next_path: Path | None = None
        try:
            self._convert()
        except BaseException:
            self.close()
            raise

    # -- conversion ---------------------------------------------------------------------------

    def _convert(self) -> None:
        index: dict[str, int] = {}
        names, counts, first = self.names, self.counts, self.first_use
        times, funcs = array("d"), array("i")
        last = float("-inf")
        line = 1
        with (
            _open_text(self.source) as fh,
            open(self._dir / "times.f64", "wb") as ft,
            open(self._dir / "funcs.i32", "wb") as ff,
        ):
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or tuple(header[:3]) != HEADER[:3]:
                raise WorkloadError(
                    f"{self.source}:1: expected header {','.join(HEADER)}, got {header}"
                )
            for line, row in enumerate(reader, start=2):
                if len(row) not in (3, 4):
                    raise WorkloadError(
                        f"{self.source}:{line}: expected 3 or 4 columns, got {len(row)}"
                    )
                try:
                    t = float(row[0])
                except ValueError:
                    raise WorkloadError(
                        f"{self.source}:{line}: time {row[0]!r} is not a number"
                    ) from None
                if t < last:
                    raise WorkloadError(
                        f"{self.source}:{line}: time {t} goes back (previous {last})"
                    )
                last = t
                name = row[1]
                m = index.get(name)
                if m is None:
                    m = index[name] = len(names)
                    names.append(name)
                    counts.append(0)
                    first.append(t)
                counts[m] += 1
                times.append(t)
                funcs.append(m)
                if len(times) >= CHUNK:
                    self.n += len(times)
                    times.tofile(ft)
                    funcs.tofile(ff)
                    del times[:], funcs[:]
            self.n += len(times)
            times.tofile(ft)
            funcs.tofile(ff)
        if self.n:
            tm = self._map("times.f64", np.float64)
            self.t_first, self.t_last = float(tm[0]), float(tm[-1])

    def _map(self, name: str, dtype: type) -> np.ndarray:
        return np.memmap(self._dir / name, dtype=dtype, mode="r", shape=(self.n,))

    def ensure_next_use(self) -> None:
        """Write, for each request, the time of the next request to the same function."""
        if self._next_path is not None or not self.n:
            self._next_path = self._next_path or self._dir / "next.f64"
            return
        path = self._dir / "next.f64"
        tm, fm = self._map("times.f64", np.float64), self._map("funcs.i32", np.int32)
        out = np.memmap(path, dtype=np.float64, mode="w+", shape=(self.n,))
        carry = np.full(len(self.names), np.inf)  # next use after the chunk, per function
        for hi in range(self.n, 0, -CHUNK):
            lo = max(0, hi - CHUNK)
            t, f = np.asarray(tm[lo:hi]), np.asarray(fm[lo:hi])
            order = np.argsort(f, kind="stable")
            fs, ts = f[order], t[order]
            nxt = np.empty_like(ts)
            same = fs[1:] == fs[:-1]  # next in the same function group, inside the chunk
            nxt[:-1] = np.where(same, ts[1:], carry[fs[:-1]])
            nxt[-1] = carry[fs[-1]]
            out[lo + order] = nxt
            firsts = np.ones(len(fs), dtype=bool)
            firsts[1:] = ~same
            carry[fs[firsts]] = ts[firsts]
        out.flush()
        del out
        self._next_path = path

    # -- reading ------------------------------------------------------------------------------

    def chunks(
        self, with_next: bool = False, size: int = CHUNK
    ) -> Iterator[tuple[np.ndarray, list[float], list[int], list[float] | None, np.ndarray]]:
        """Yield ``(times array, times list, function indices, next uses or None, function
        indices array)`` per chunk."""
        if not self.n:
            return
        tm, fm = self._map("times.f64", np.float64), self._map("funcs.i32", np.int32)
        nm = None
        if with_next:
            self.ensure_next_use()
            nm = np.memmap(self._next_path, dtype=np.float64, mode="r", shape=(self.n,))
        for lo in range(0, self.n, size):
            t = np.asarray(tm[lo : lo + size])
            f = np.asarray(fm[lo : lo + size])
            yield (
                t,
                t.tolist(),
                f.tolist(),
                (None if nm is None else nm[lo : lo + size].tolist()),
                f,
            )

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> CompactWorkload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
