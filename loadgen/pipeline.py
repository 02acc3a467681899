"""From Azure trace files to a workload file: every step of ``workload.md`` as an option.

Two streamed passes over the trace files plus an external bucket sort (``pipeline_spool``):

1. scan: per-function totals inside the window, honouring the trigger filter and the early
   stops (``max_functions``: the first N distinct functions in row order; ``max_invocations``:
   stop reading once N invocations have been read, row order); then the quantile and
   one-hit-wonder filters, then the pairing;
2. emit: the kept functions' invocations become request times (2019: a minute's count spread
   evenly — request j of c at ``minute + j·60/c`` — or as Poisson arrivals, i.e. uniform
   order statistics; 2021: the exact arrival ``end − duration``), thinned by ``downsample``
   (each request kept with probability 1/factor), divided by ``speedup``, spooled by time;
3. the spool is read back bucket by bucket, sorted, and written as the workload file.

Several 2019 day files are concatenated in time in the order given (day k starts at minute
1440·k). Times in the output start at the window's start. A function's ``source`` is
``app[:8]:function[:8]`` of its trace hashes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from loadgen.azure import MINUTES, BadRows, read_invocations_2019, read_invocations_2021
from loadgen.pipeline_spool import TimeSpool
from loadgen.workload_file import Request, write_workload

FORMATS = ("2019", "2021")


@dataclass
class PipelineOptions:
    trace_format: str = "2019"
    triggers: str = "http"  # "http" or "all" (2019 only; the 2021 file has no trigger)
    start_minute: int = 0
    minutes: int | None = None  # window length; None = to the end
    max_functions: int | None = None
    max_invocations: int | None = None
    min_quantile: float = 0.0
    max_quantile: float = 1.0
    drop_one_hit: bool = False
    spread: str = "even"  # or "poisson"
    downsample: float = 1.0
    speedup: float = 1.0
    seed: int = 0
    skip_bad_rows: bool = False
    progress: bool = True
    bucket_s: float = 600.0

    def check(self) -> None:
        if self.trace_format not in FORMATS:
            raise ValueError(f"unknown trace format {self.trace_format!r}: 2019 or 2021")
        if self.triggers not in ("http", "all"):
            raise ValueError(f"triggers must be 'http' or 'all', got {self.triggers!r}")
        if self.spread not in ("even", "poisson"):
            raise ValueError(f"spread must be 'even' or 'poisson', got {self.spread!r}")
        if not 0.0 <= self.min_quantile <= self.max_quantile <= 1.0:
            raise ValueError("need 0 <= min_quantile <= max_quantile <= 1")
        if self.downsample < 1.0 or self.speedup <= 0:
            raise ValueError("downsample must be >= 1 and speedup > 0")
        if self.start_minute < 0 or (self.minutes is not None and self.minutes <= 0):
            raise ValueError("start_minute must be >= 0 and minutes > 0")


@dataclass
class PipelineReport:
    rows: int = 0
    functions_seen: int = 0
    functions_kept: int = 0
    invocations_in_window: int = 0
    requests: int = 0
    bad_rows: BadRows = field(default_factory=BadRows)
    totals: dict[str, int] = field(default_factory=dict)  # kept function -> requests in window


Key = tuple[str, str]  # (app, function)


def label(key: Key) -> str:
    return f"{key[0][:8]}:{key[1][:8]}"


def _rows(files: Sequence[str | os.PathLike], opts: PipelineOptions, bad: BadRows | None):
    """(file index, key, payload) in file order: 2019 payload = counts, 2021 = arrival (s)."""
    for fi, path in enumerate(files):
        if opts.trace_format == "2019":
            for row in read_invocations_2019(path, bad):
                if opts.triggers == "http" and row.trigger != "http":
                    continue
                yield fi, (row.app, row.function), row.counts
        else:
            for inv in read_invocations_2021(path, bad):
                yield fi, (inv.app, inv.func), inv.arrival


def _window(opts: PipelineOptions) -> tuple[float, float]:
    lo = opts.start_minute * 60.0
    return lo, (lo + opts.minutes * 60.0 if opts.minutes else float("inf"))


def _in_window(fi: int, payload, opts: PipelineOptions) -> np.ndarray | float | None:
    """2019: the window's slice of counts with its first global minute; 2021: arrival or None."""
    lo, hi = _window(opts)
    if opts.trace_format == "2021":
        return payload if lo <= payload < hi else None
    first = fi * MINUTES
    a = max(0, int(lo // 60) - first)
    b = min(MINUTES, int(min(hi, 1e18) // 60) - first)
    return None if b <= a else (first + a, np.asarray(payload[a:b], dtype=np.int64))


def scan(files, opts: PipelineOptions, report: PipelineReport) -> dict[Key, int]:
    """Pass 1: totals per function inside the window, with the early stops."""
    from tqdm import tqdm

    bad = report.bad_rows if opts.skip_bad_rows else None
    totals: dict[Key, int] = {}
    read = 0
    rows = tqdm(
        _rows(files, opts, bad), desc="scan", unit="row", disable=None if opts.progress else True
    )
    for fi, key, payload in rows:
        report.rows += 1
        if key not in totals:
            if opts.max_functions is not None and len(totals) >= opts.max_functions:
                continue
            totals[key] = 0
        part = _in_window(fi, payload, opts)
        n = 0 if part is None else (1 if opts.trace_format == "2021" else int(part[1].sum()))
        totals[key] += n
        read += n
        if opts.max_invocations is not None and read >= opts.max_invocations:
            break
    return totals


def select(totals: Mapping[Key, int], opts: PipelineOptions) -> list[Key]:
    """Quantile and one-hit-wonder filters (functions with no request in the window go too)."""
    keys = [k for k, v in totals.items() if v > 0]
    if not keys:
        return []
    vals = np.array([totals[k] for k in keys])
    lo, hi = np.quantile(vals, [opts.min_quantile, opts.max_quantile])
    keep = (vals >= lo) & (vals <= hi)
    if opts.drop_one_hit:
        keep &= vals > 1
    return [k for k, ok in zip(keys, keep) if ok]


def _minute_times(first_minute: int, counts: np.ndarray, spread: str, rng) -> np.ndarray:
    minutes = np.flatnonzero(counts)
    c = counts[minutes]
    base = np.repeat((first_minute + minutes) * 60.0, c)
    if spread == "even":
        starts = np.repeat(np.cumsum(c) - c, c)
        j = np.arange(len(base)) - starts
        return base + j * 60.0 / np.repeat(c, c)
    u = rng.random(len(base)) * 60.0
    starts = np.repeat(np.cumsum(c) - c, c)
    order = np.lexsort((u, starts))  # sort offsets within each minute
    return base + u[order]


def build_workload(
    files: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    opts: PipelineOptions,
    pairing: Callable[[dict[str, int]], Mapping[str, str]] | None = None,
) -> PipelineReport:
    """Run the whole pipeline; ``pairing(totals by label) -> {label: model}`` (None: no models)."""
    from tqdm import tqdm

    opts.check()
    if not files:
        raise ValueError("no trace files given")
    report = PipelineReport()
    totals = scan(files, opts, report)
    report.functions_seen = len(totals)
    report.invocations_in_window = sum(totals.values())
    kept = select(totals, opts)
    report.functions_kept = len(kept)
    report.totals = {label(k): totals[k] for k in kept}
    names = [label(k) for k in kept]
    target = names
    if pairing is not None and kept:
        mapping = pairing(report.totals)
        target = [mapping[n] for n in names]
    index = {k: i for i, k in enumerate(kept)}
    rng = np.random.default_rng(opts.seed)
    lo, _ = _window(opts)
    keep_p = 1.0 / opts.downsample
    with TimeSpool(opts.bucket_s) as spool:
        rows = tqdm(
            _rows(files, opts, None if not opts.skip_bad_rows else BadRows()),
            desc="emit",
            unit="row",
            total=report.rows,
            disable=None if opts.progress else True,
        )
        seen = 0
        buf_t: list[float] = []
        buf_f: list[int] = []
        for fi, key, payload in rows:
            seen += 1
            if seen > report.rows:
                break
            i = index.get(key)
            if i is None:
                continue
            part = _in_window(fi, payload, opts)
            if part is None:
                continue
            if opts.trace_format == "2021":
                if keep_p >= 1.0 or rng.random() < keep_p:
                    buf_t.append((part - lo) / opts.speedup)
                    buf_f.append(i)
                if len(buf_t) >= 1 << 16:
                    spool.add(np.array(buf_t), np.array(buf_f, dtype=np.int32))
                    buf_t, buf_f = [], []
                continue
            times = _minute_times(part[0], part[1], opts.spread, rng) - lo
            if keep_p < 1.0:
                times = times[rng.random(len(times)) < keep_p]
            spool.add(times / opts.speedup, np.full(len(times), i, dtype=np.int32))
        spool.add(np.array(buf_t), np.array(buf_f, dtype=np.int32))
        report.requests = write_workload(out, _requests(spool.sorted_chunks(), names, target))
    return report


def _requests(chunks, names: list[str], target: list[str]) -> Iterator[Request]:
    rid = 0
    for times, funcs in chunks:
        for t, i in zip(times.tolist(), funcs.tolist()):
            yield Request(t, target[i], str(rid), names[i])
            rid += 1
