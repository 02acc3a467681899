"""What a simulation run measures: ``SimResult`` (the numbers a table or CSV shows), the
fixed-memory response-time histogram and the memory timeline.

Kept apart from the event loop so that reading a result (``brulee simulate``'s table and plots,
the replay comparison, a sweep gathering results from other machines) needs none of it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

TIMELINE_POINTS = 500


class LogHistogram:
    """Counts of positive values in log-spaced bins (``per_decade`` per factor 10) from ``lo``
    to ``hi``; a quantile is read as the geometric centre of its bin. Fixed memory."""

    def __init__(self, lo: float = 1e-6, hi: float = 1e6, per_decade: int = 100) -> None:
        self.lo, self.per_decade = lo, per_decade
        self.nbins = int(round(math.log10(hi / lo) * per_decade)) + 1
        self.counts = [0] * (self.nbins + 1)  # bin 0: values <= lo
        self.n = 0
        self._scale = per_decade / math.log(10)
        self._loglo = math.log(lo)

    def add(self, x: float) -> None:
        i = (
            0
            if x <= self.lo
            else min(self.nbins, 1 + int((math.log(x) - self._loglo) * self._scale))
        )
        self.counts[i] += 1
        self.n += 1

    def add_many(self, xs: np.ndarray) -> None:
        """``add`` for each of ``xs``, vectorised. ``np.log`` may differ from ``math.log`` in
        the last bit, so values within 1e-9 of a bin edge are binned by ``add``'s formula."""
        xs = np.asarray(xs, dtype=np.float64)
        big = xs > self.lo
        with np.errstate(divide="ignore", invalid="ignore"):
            v = (np.log(np.where(big, xs, 1.0)) - self._loglo) * self._scale
        fl = np.floor(v)
        edge = big & ((v - fl < 1e-9) | (fl + 1 - v < 1e-9))
        idx = np.where(big, np.minimum(self.nbins, 1 + fl), 0).astype(np.int64)
        for k in np.flatnonzero(edge).tolist():
            x = float(xs[k])
            idx[k] = min(self.nbins, 1 + int((math.log(x) - self._loglo) * self._scale))
        counts = np.bincount(idx, minlength=self.nbins + 1)
        for i in np.flatnonzero(counts).tolist():
            self.counts[i] += int(counts[i])
        self.n += len(xs)

    def value(self, i: int) -> float:
        if i == 0:
            return self.lo
        return self.lo * 10 ** ((i - 0.5) / self.per_decade)

    def quantile(self, q: float) -> float:
        if not self.n:
            return math.nan
        target, acc = q * self.n, 0
        for i, c in enumerate(self.counts):
            acc += c
            if acc >= target and c:
                return self.value(i)
        return self.value(self.nbins)

    def cdf(self) -> list[tuple[float, float]]:
        """(value, fraction of values <= it) for every non-empty bin."""
        out, acc = [], 0
        for i, c in enumerate(self.counts):
            if c:
                acc += c
                out.append((self.value(i), acc / self.n))
        return out


@dataclass
class SimResult:
    """What one (policy, cap) run measured. ``memory_timeline``: (time, peak bytes used in the
    interval ending then), at most ``TIMELINE_POINTS`` points; ``response_cdf`` likewise."""

    policy: str
    proactive: str
    cap_bytes: int
    workers: int
    requests: int = 0
    hits: int = 0
    cold_starts: int = 0
    load_waits: int = 0
    rejected: int = 0
    evictions: int = 0
    proactive_unloads: int = 0
    prewarms: int = 0
    total_load_delay_s: float = 0.0
    total_exec_s: float = 0.0
    # admission (arrival placement): misses that waited for memory and were then placed, the
    # ones whose deadline passed while waiting (503) and the ones refused at a full queue (429);
    # the wait is over the admitted ones (time in the admission queue, part of response time)
    admitted_after_wait: int = 0
    timed_out: int = 0
    queue_full: int = 0
    total_admission_wait_s: float = 0.0
    p99_admission_wait_s: float = math.nan
    p50_s: float = math.nan
    p95_s: float = math.nan
    p99_s: float = math.nan
    mean_response_s: float = math.nan
    peak_memory_bytes: int = 0
    mean_memory_bytes: float = 0.0
    memory_timeline: list[tuple[float, int]] = field(default_factory=list)
    response_cdf: list[tuple[float, float]] = field(default_factory=list)
    # memory-adaptive variants (loadgen.sim.variants), empty without: requests served by a
    # variant other than the one requested, by name and by rank in its list (0: the best,
    # never counted here), the background upgrades and the accuracy lost (fractions, summed)
    variant_served: dict[str, int] = field(default_factory=dict)
    variant_rank_served: list[int] = field(default_factory=list)
    variant_upgrades: int = 0
    variant_accuracy_lost: float = 0.0

    @property
    def served(self) -> int:
        """Requests that got a response (not rejected, timed out or refused at a full queue)."""
        return self.requests - self.rejected - self.timed_out - self.queue_full

    @property
    def mean_admission_wait_s(self) -> float:
        """Mean time in the admission queue of the requests that waited and were placed."""
        n = self.admitted_after_wait
        return self.total_admission_wait_s / n if n else math.nan

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else math.nan

    @property
    def mean_load_delay_s(self) -> float:
        return self.total_load_delay_s / self.served if self.served else math.nan

    @property
    def mean_exec_s(self) -> float:
        return self.total_exec_s / self.served if self.served else math.nan

    @property
    def load_delay_ratio(self) -> float:
        """The paper's metric: mean model-load delay / mean execution latency."""
        return self.mean_load_delay_s / self.mean_exec_s if self.served else math.nan

    def variant_shares(self) -> list[float]:
        """The share of served requests each rank of variant served (0: the requested model,
        the best, also for models without variants); empty without variants."""
        if not self.variant_rank_served:
            return []
        n = self.served or 1
        smaller = [c / n for c in self.variant_rank_served[1:]]
        return [1.0 - sum(smaller), *smaller] if self.served else [math.nan] * (len(smaller) + 1)

    @property
    def accuracy_cost_pts(self) -> float:
        """Accuracy points lost per served request, on average: served by a smaller variant x
        its accuracy below the best's (0 without variants)."""
        return 100 * self.variant_accuracy_lost / self.served if self.served else math.nan

    def summary(self) -> dict[str, Any]:
        """Flat numbers for the table/CSV (no timelines); with variants, ``v0_share``,
        ``v1_share``, … (``variant_shares``), ``variant_upgrades`` and ``accuracy_cost_pts``."""
        variant_keys = ("variant_served", "variant_rank_served", "variant_upgrades",
                        "variant_accuracy_lost")  # fmt: skip
        skip = ("memory_timeline", "response_cdf", *variant_keys)
        d = {k: v for k, v in asdict(self).items() if k not in skip}
        d.update(
            hit_ratio=self.hit_ratio,
            mean_load_delay_s=self.mean_load_delay_s,
            mean_exec_s=self.mean_exec_s,
            load_delay_ratio=self.load_delay_ratio,
            mean_admission_wait_s=self.mean_admission_wait_s,
        )
        shares = self.variant_shares()
        if shares:
            d.update({f"v{k}_share": s for k, s in enumerate(shares)})
            d.update(variant_upgrades=self.variant_upgrades,
                     accuracy_cost_pts=self.accuracy_cost_pts)  # fmt: skip
        return d


class MemoryTimeline:
    """Bytes in use over time: the peak per interval (``TIMELINE_POINTS`` intervals over the
    workload's span), the overall peak and the time-weighted mean, written into ``res``."""

    def __init__(self, res: SimResult, t0: float, t1: float) -> None:
        self.res = res
        self.t0 = t0
        self.step = (max(t1, t0 + 1e-9) - t0) / TIMELINE_POINTS
        self.next, self.peak = t0 + self.step, 0
        self.area, self.t = 0.0, t0
        self.used = 0

    def set(self, now: float, value: int) -> None:
        """From ``now`` on, ``value`` bytes are in use."""
        timeline = self.res.memory_timeline
        while now > self.next and len(timeline) < TIMELINE_POINTS:
            timeline.append((self.next, self.peak))
            self.peak = self.used
            self.next += self.step
        self.area += self.used * (now - self.t)
        self.t = now
        self.used = value
        self.peak = max(self.peak, value)
        self.res.peak_memory_bytes = max(self.res.peak_memory_bytes, value)

    def close(self, end: float) -> None:
        """The run ended at ``end`` (or the last memory change, if later): the mean."""
        end = max(self.t, end)
        self.set(end, self.used)
        span = end - self.t0
        self.res.mean_memory_bytes = self.area / span if span > 0 else float(self.used)


def finish_responses(res: SimResult, hist: LogHistogram, resp_sum: float) -> None:
    """Percentiles, mean and the (at most ``TIMELINE_POINTS``-point) CDF of response times."""
    res.p50_s, res.p95_s, res.p99_s = (hist.quantile(q) for q in (0.5, 0.95, 0.99))
    if hist.n:
        res.mean_response_s = resp_sum / hist.n
    cdf = hist.cdf()
    stride = max(1, len(cdf) // TIMELINE_POINTS)
    res.response_cdf = cdf[::stride] + ([cdf[-1]] if cdf and len(cdf) % stride != 1 else [])
