"""From Azure trace files to a workload file: every step of ``workload.md`` as an option.

Two streamed passes over the trace files plus an external bucket sort (``pipeline_spool``):

1. scan: per-function totals inside the window, honouring the trigger filter and the early
   stops (``max_functions``: the first N distinct functions in row order; ``max_invocations``:
   stop reading once N invocations have been read, row order); then the quantile and
   one-hit-wonder filters, then the pairing;
2. emit: the kept functions' invocations become request times (2019: per minute, see
   ``spread`` below; 2021: the exact arrival ``end − duration``), thinned by ``downsample``
   (each request kept with probability 1/factor), spooled by time;
3. the spool is read back bucket by bucket, sorted, spread (``even``), resampled (``qpm``),
   divided by ``speedup`` and written as the workload file.

``spread`` (2019): ``even`` (the seed's): all of a minute's invocations, of every kept
function, at equal gaps ``60/T`` over the minute, dealt to the functions in random order
(``pipeline_sample.place_even``); ``aligned``: each function's own ``c`` invocations at
``minute + j·60/c`` — every active function fires at the minute's first instant, a synchronised
burst; kept to reproduce numbers recorded before ``even`` took the seed's meaning;
``poisson``: uniform order statistics within the minute, independently per function.

With ``stop_early`` a first pass finds where the window ends (``pipeline_sample.stop_minute``);
``make_representative`` keeps FaasCache's representative sample of the functions that pass the
quantile filters (``pipeline_sample.representative``).

Several 2019 day files are concatenated in time in the order given (day k starts at minute
1440·k). Times in the output start at the window's start. A function's ``source`` is
``app[:8]:function[:8]`` of its trace hashes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from loadgen.azure import MINUTES, BadRows, read_invocations_2019, read_invocations_2021
from loadgen.pipeline_sample import QpmSampler, place_even, representative, stop_minute
from loadgen.pipeline_spool import TimeSpool
from loadgen.workload_file import Request, write_workload

FORMATS = ("2019", "2021")
SPREADS = ("even", "aligned", "poisson")


@dataclass
class PipelineOptions:
    trace_format: str = "2019"
    triggers: str = "http"  # "http" or "all" (2019 only; the 2021 file has no trigger)
    start_minute: int = 0
    minutes: int | None = None  # window length; None = to the end
    max_functions: int | None = None
    max_invocations: int | None = None
    stop_early: bool = False  # the seed's early stop by time, checked at each whole hour
    min_uniq_funcs: int = 1000  # stop_early: more distinct functions than this, or
    min_uniq_invocations: int = 10000  # more invocations than this (x downsample)
    min_quantile: float = 0.0
    max_quantile: float = 1.0
    drop_one_hit: bool = False
    make_representative: bool = False  # FaasCache's representative sample of functions
    num_representative_quantiles: int = 400
    num_from_each_quantile: int = 1
    spread: str = "even"  # SPREADS
    downsample: float = 1.0
    qpm: float | None = None  # resample to this many requests per minute of the window
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
        if self.spread not in SPREADS:
            raise ValueError(f"spread must be one of {', '.join(SPREADS)}, got {self.spread!r}")
        if not 0.0 <= self.min_quantile <= self.max_quantile <= 1.0:
            raise ValueError("need 0 <= min_quantile <= max_quantile <= 1")
        if self.downsample < 1.0 or self.speedup <= 0:
            raise ValueError("downsample must be >= 1 and speedup > 0")
        if self.start_minute < 0 or (self.minutes is not None and self.minutes <= 0):
            raise ValueError("start_minute must be >= 0 and minutes > 0")
        if self.min_uniq_funcs < 0 or self.min_uniq_invocations < 0:
            raise ValueError("--min-uniq-funcs and --min-uniq-invocations must be >= 0")
        if self.num_representative_quantiles < 1 or self.num_from_each_quantile < 1:
            raise ValueError(
                "--num-representative-quantiles and --num-from-each-quantile must be >= 1"
            )
        if self.qpm is not None:
            if not self.qpm > 0:
                raise ValueError(f"--qpm must be > 0, got {self.qpm}")
            if self.downsample != 1.0:
                raise ValueError(
                    "--qpm sets the request count itself: do not combine it with --downsample"
                )


@dataclass
class PipelineReport:
    rows: int = 0
    functions_seen: int = 0
    functions_kept: int = 0
    invocations_in_window: int = 0
    requests: int = 0
    window_minutes: float = 0.0  # the window's length as read (what --qpm multiplies)
    stopped_early_at: int | None = None  # stop_early: minutes from the start to the cut
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


def _stop_early(files, opts: PipelineOptions) -> int | None:
    """The seed's early stop by time: a first pass gathering the invocations of each hour of
    the window and each function's first hour with one; ``stop_minute`` finds the cut."""
    from tqdm import tqdm

    lo, _ = _window(opts)
    hourly: list[int] = []
    first: dict[Key, int] = {}
    rows = _rows(files, opts, BadRows() if opts.skip_bad_rows else None)
    for fi, key, payload in tqdm(
        rows, desc="stop-early", unit="row", disable=None if opts.progress else True
    ):
        part = _in_window(fi, payload, opts)
        if part is None:
            continue
        if opts.trace_format == "2021":
            hours, counts = [int((part - lo) // 3600)], [1]
        else:
            nz = np.flatnonzero(part[1])
            per_hour = np.bincount((part[0] - opts.start_minute + nz) // 60, weights=part[1][nz])
            hours = np.flatnonzero(per_hour).tolist()
            counts = per_hour[hours].astype(np.int64).tolist()
        if not hours:
            continue
        first[key] = min(first.get(key, hours[0]), hours[0])
        if hours[-1] >= len(hourly):
            hourly.extend([0] * (hours[-1] + 1 - len(hourly)))
        for h, c in zip(hours, counts):
            hourly[h] += c
    limit = opts.min_uniq_invocations * opts.downsample  # enough left after downsampling
    return stop_minute(np.array(hourly), list(first.values()), opts.min_uniq_funcs, limit)


def scan(files, opts: PipelineOptions, report: PipelineReport) -> dict[Key, int]:
    """Pass 1: totals per function inside the window, with the row-order early stops; sets
    ``report.window_minutes``."""
    from tqdm import tqdm

    bad = report.bad_rows if opts.skip_bad_rows else None
    totals: dict[Key, int] = {}
    read = 0
    last = None  # 2021: the latest arrival read in the window
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
        if opts.trace_format == "2021" and part is not None:
            last = part if last is None else max(last, part)
        n = 0 if part is None else (1 if opts.trace_format == "2021" else int(part[1].sum()))
        totals[key] += n
        read += n
        if opts.max_invocations is not None and read >= opts.max_invocations:
            break
    if opts.trace_format == "2019":
        avail = len(files) * MINUTES - opts.start_minute
        report.window_minutes = max(0, min(opts.minutes or avail, avail))
    else:
        lo, _ = _window(opts)
        report.window_minutes = opts.minutes or (0 if last is None else (last - lo) // 60 + 1)
    return totals


def select(totals: Mapping[Key, int], opts: PipelineOptions) -> list[Key]:
    """Quantile and one-hit-wonder filters (functions with no request in the window go too),
    then, if asked, FaasCache's representative sample of what is left."""
    keys = [k for k, v in totals.items() if v > 0]
    if not keys:
        return []
    vals = np.array([totals[k] for k in keys])
    lo, hi = np.quantile(vals, [opts.min_quantile, opts.max_quantile])
    keep = (vals >= lo) & (vals <= hi)
    if opts.drop_one_hit:
        keep &= vals > 1
    kept = [k for k, ok in zip(keys, keep) if ok]
    if opts.make_representative and kept:
        rng = np.random.default_rng([opts.seed, 2])
        idx = representative(
            np.array([totals[k] for k in kept]),
            opts.num_representative_quantiles,
            opts.num_from_each_quantile,
            rng,
        )
        kept = [kept[i] for i in idx.tolist()]
    return kept


def _minute_times(first_minute: int, counts: np.ndarray, spread: str, rng) -> np.ndarray:
    """Request times of one function's per-minute ``counts`` (``even``: the minutes' starts;
    ``place_even`` spreads them once every function's requests of the minute are known)."""
    minutes = np.flatnonzero(counts)
    c = counts[minutes]
    base = np.repeat((first_minute + minutes) * 60.0, c)
    if spread == "even":
        return base
    starts = np.repeat(np.cumsum(c) - c, c)
    if spread == "aligned":
        return base + (np.arange(len(base)) - starts) * 60.0 / np.repeat(c, c)
    u = rng.random(len(base)) * 60.0
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
    if opts.stop_early:
        cut = _stop_early(files, opts)
        if cut is not None and (opts.minutes is None or cut < opts.minutes):
            opts = replace(opts, minutes=cut)
            report.stopped_early_at = cut
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
    even = opts.trace_format == "2019" and opts.spread == "even"
    minute_totals = np.zeros(int(report.window_minutes) if even else 0, dtype=np.int64)
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
            if i is None and not (even and key in totals):
                continue
            part = _in_window(fi, payload, opts)
            if part is None:
                continue
            if opts.trace_format == "2021":
                if keep_p >= 1.0 or rng.random() < keep_p:
                    buf_t.append(part - lo)
                    buf_f.append(i)
                if len(buf_t) >= 1 << 16:
                    spool.add(np.array(buf_t), np.array(buf_f, dtype=np.int32))
                    buf_t, buf_f = [], []
                continue
            if even:  # every function read, before filters and thinning: the seed spreads
                first = part[0] - opts.start_minute  # all of a minute, then drops requests
                minute_totals[first : first + len(part[1])] += part[1]
                if i is None:
                    continue
            times = _minute_times(part[0], part[1], opts.spread, rng) - lo
            if keep_p < 1.0:
                times = times[rng.random(len(times)) < keep_p]
            spool.add(times, np.full(len(times), i, dtype=np.int32))
        spool.add(np.array(buf_t), np.array(buf_f, dtype=np.int32))
        chunks = _read_back(spool, opts, minute_totals if even else None, report.window_minutes)
        report.requests = write_workload(out, _requests(chunks, names, target))
    return report


def _read_back(spool: TimeSpool, opts: PipelineOptions, minute_totals, window_minutes: float):
    """The spool's sorted chunks, spread (``even``), resampled (``qpm``), sped up."""
    place = np.random.default_rng([opts.seed, 3])
    sampler = None
    if opts.qpm is not None:
        target = int(opts.qpm * window_minutes)  # the seed's int(qpm * minutes collected)
        sampler = QpmSampler(target, spool.count, np.random.default_rng([opts.seed, 4]))
    for times, funcs in spool.sorted_chunks():
        if minute_totals is not None:
            times, funcs = place_even(times, funcs, minute_totals, place)
        if sampler is not None:
            times, funcs = sampler.take(times, funcs)
        yield times / opts.speedup, funcs


def _requests(chunks, names: list[str], target: list[str]) -> Iterator[Request]:
    rid = 0
    for times, funcs in chunks:
        for t, i in zip(times.tolist(), funcs.tolist()):
            yield Request(t, target[i], str(rid), names[i])
            rid += 1
