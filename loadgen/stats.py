"""The calibration statistics of ``workload.md``, measured on any workload (real or synthetic).

Streamed: per function, a count, the last time and the sum / sum of squares of its gaps; per
hour a total. Memory is O(functions + hours), whatever the number of requests.

Definitions (so the numbers can be checked by hand):

- daily rate of a function = its requests × 86,400 / the workload's span (span = last request
  time rounded up to whole hours, at least one hour); the CDF is over the functions that appear;
- top-q share = requests of the ``ceil(q·N)`` most requested functions / all requests;
- a function's inter-arrival CV = std/mean of its gaps (needs >= ``MIN_CV_REQUESTS`` requests);
  "periodic" functions (CV < 0.1) count as timers, the rest as non-timers;
- diurnal swing = amplitude of the one-cycle-per-day Fourier component of the hourly totals /
  their mean (needs >= 24 whole hours).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator

import numpy as np

from loadgen.synth import CDF_KNOTS, DIURNAL, TOP_SHARES
from loadgen.workload_file import iter_workload

MIN_CV_REQUESTS = 5
PERIODIC_CV = 0.1
CHUNK = 1 << 16

# name -> (target, tolerance, how the target is stated)
TARGETS: dict[str, tuple[float, float, str]] = {
    **{f"cdf<= {int(r)}/day": (u, 0.05, f"~{u}") for u, r in CDF_KNOTS},
    **{f"top {q * 100:g}% share": (s, 0.05, f"~{s}") for q, s in TOP_SHARES},
    "median CV non-timer": (1.75, 0.25, "1.5-2"),
    "median CV all": (0.9, 0.2, "~0.9"),
    "diurnal swing": (DIURNAL, 0.05, "~±0.15"),
}


class StatsAccumulator:
    """Feed chunks of (times, function keys) in time order; ``result()`` gives the statistics."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.count = np.zeros(0, dtype=np.int64)
        self.last = np.zeros(0)
        self.gsum = np.zeros(0)
        self.gsq = np.zeros(0)
        self.hours: dict[int, int] = {}
        self.t_last = 0.0
        self.n = 0

    def _grow(self, size: int) -> None:
        old = len(self.count)
        if size > old:
            extra = size - old
            self.count = np.concatenate([self.count, np.zeros(extra, dtype=np.int64)])
            self.last = np.concatenate([self.last, np.full(extra, np.nan)])
            self.gsum = np.concatenate([self.gsum, np.zeros(extra)])
            self.gsq = np.concatenate([self.gsq, np.zeros(extra)])

    def add_indexed(self, times: np.ndarray, funcs: np.ndarray, nfuncs: int) -> None:
        """Add a chunk whose functions are already integer indices below ``nfuncs``."""
        if not len(times):
            return
        self._grow(nfuncs)
        order = np.argsort(funcs, kind="stable")
        f, t = funcs[order], times[order]
        first = np.ones(len(f), dtype=bool)
        first[1:] = f[1:] != f[:-1]
        gaps = np.empty(len(t))
        gaps[1:] = t[1:] - t[:-1]
        prev = self.last[f[first]]
        gaps[first] = t[first] - prev  # NaN for a function's first request ever
        ok = ~np.isnan(gaps)
        np.add.at(self.gsum, f[ok], gaps[ok])
        np.add.at(self.gsq, f[ok], gaps[ok] ** 2)
        np.add.at(self.count, f, 1)
        last_of = np.ones(len(f), dtype=bool)
        last_of[:-1] = f[1:] != f[:-1]
        self.last[f[last_of]] = t[last_of]
        hrs, cnt = np.unique((times // 3600).astype(np.int64), return_counts=True)
        for h, c in zip(hrs.tolist(), cnt.tolist()):
            self.hours[h] = self.hours.get(h, 0) + c
        self.t_last = max(self.t_last, float(times.max()))
        self.n += len(times)

    def add(self, times: list[float], names: list[str]) -> None:
        """Add a chunk of (time, function name) pairs."""
        idx = self.index
        funcs = np.fromiter((idx.setdefault(s, len(idx)) for s in names), np.int64, len(names))
        self.add_indexed(np.asarray(times, dtype=float), funcs, len(idx))

    def result(self) -> dict[str, float]:
        count = self.count[self.count > 0]
        nf = len(count)
        out: dict[str, float] = {"requests": float(self.n), "functions": float(nf)}
        if not nf:
            return out
        span_h = max(1, math.ceil(self.t_last / 3600.0 + 1e-9))
        daily = count * 24.0 / span_h
        for _u, r in CDF_KNOTS:
            out[f"cdf<= {int(r)}/day"] = float(np.mean(daily <= r + 1e-9))
        ranked = np.sort(count)[::-1]
        for q, _ in TOP_SHARES:
            out[f"top {q * 100:g}% share"] = float(ranked[: math.ceil(q * nf)].sum() / ranked.sum())
        have = self.count >= MIN_CV_REQUESTS
        ngaps = self.count[have] - 1
        mean = self.gsum[have] / ngaps
        var = np.maximum(self.gsq[have] / ngaps - mean**2, 0.0)
        cv = np.sqrt(var) / np.where(mean > 0, mean, np.inf)
        out["functions with CV"] = float(len(cv))
        out["periodic fraction"] = float(np.mean(cv < PERIODIC_CV)) if len(cv) else math.nan
        non = cv[cv >= PERIODIC_CV]
        out["median CV non-timer"] = float(np.median(non)) if len(non) else math.nan
        out["median CV all"] = float(np.median(cv)) if len(cv) else math.nan
        hours = np.array([self.hours.get(h, 0) for h in range(span_h)], dtype=float)
        full = (len(hours) // 24) * 24
        if full:
            h = hours[:full]
            comp = np.abs(np.sum(h * np.exp(-2j * np.pi * np.arange(full) / 24))) * 2 / full
            out["diurnal swing"] = float(comp / h.mean()) if h.mean() else math.nan
        else:
            out["diurnal swing"] = math.nan
        return out


def workload_stats(path: str | os.PathLike) -> dict[str, float]:
    """Statistics of a workload file, by trace function (``source``, else ``function``)."""
    acc = StatsAccumulator()
    times: list[float] = []
    names: list[str] = []
    for req in iter_workload(path):
        times.append(req.time)
        names.append(req.source or req.function)
        if len(times) >= CHUNK:
            acc.add(times, names)
            times, names = [], []
    acc.add(times, names)
    return acc.result()


def stats_of_chunks(chunks: Iterable[tuple[np.ndarray, np.ndarray]], nfuncs: int) -> dict:
    """Statistics straight from ``synth_chunks`` (no file round trip)."""
    acc = StatsAccumulator()
    for times, funcs in chunks:
        acc.add_indexed(times, funcs, nfuncs)
    return acc.result()


def within(name: str, value: float) -> bool | None:
    """Whether ``value`` meets the target of ``name`` (None when there is no target)."""
    if name not in TARGETS or value is None or math.isnan(value):
        return None
    target, tol, _ = TARGETS[name]
    return abs(value - target) <= tol


def format_stats(stats: dict[str, float]) -> str:
    """A table: statistic, measured value, target, within tolerance."""
    from tabulate import tabulate

    rows: Iterator = (
        (
            name,
            f"{value:.4g}",
            TARGETS[name][2] if name in TARGETS else "",
            {True: "ok", False: "off", None: ""}[within(name, value)],
        )
        for name, value in stats.items()
    )
    return tabulate(list(rows), headers=("statistic", "measured", "target", "±tol"))
