"""Hybrid histogram keep-alive with prewarming ("Serverless in the Wild", ATC'20).

Per model, a histogram of idle times in 1-minute bins over 4 hours. An idle time is the time
between two consecutive invocations (ATC'20 measures from the end of the execution; starts
keep the interface free of execution ends, and differ by an execution time, far below a
1-minute bin). Percentiles are over the idle times within range. After an invocation at ``t``:

- ``head`` = the 5th percentile of idle time (lower edge of its bin) x 0.9: the model will not
  be needed before ``t + head``, so it is unloaded as soon as it stops executing and prewarmed
  at ``t + head``;
- ``tail`` = the 99th percentile (upper edge of its bin) x 1.1: it stays loaded until
  ``t + tail``, then is unloaded.

A ``head`` of 0 means "keep it loaded from the invocation on". When the histogram is not
representative, the model falls back to a fixed TTL from its last invocation (no prewarm):

- fewer than ``min_samples`` idle times;
- more than ``max_oob_fraction`` of them beyond the histogram's range (ATC'20 uses ARIMA for
  those; a TTL is the simple, documented stand-in);
- a coefficient of variation of the bin counts below ``cv_threshold``: idle times spread
  evenly over many bins say the pattern is not regular (one sharp peak has a CV near
  ``sqrt(bins)``; a flat histogram has a CV near 0).

Each invocation costs O(log bins): counts live in a Fenwick tree (percentiles by binary
descent) and the CV is kept from running sums of counts and squared counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from agent.policies.base import Entry
from agent.policies.proactive.base import ProactivePolicy, Timeline, fit, positive_seconds
from agent.policies.proactive.ttl import DEFAULT_TTL_S


class IdleHistogram:
    """Counts of idle times in ``bins`` bins of ``bin_s`` seconds, plus those out of range."""

    def __init__(self, bins: int, bin_s: float) -> None:
        self.bins = bins
        self.bin_s = bin_s
        self.counts = [0] * bins
        self._tree = [0] * (bins + 1)  # Fenwick tree over counts, 1-based
        self.n = 0  # idle times in range
        self.out_of_range = 0
        self._sum_sq = 0  # sum of squared bin counts, for the CV

    def add(self, idle_s: float) -> None:
        b = int(idle_s // self.bin_s)
        if b >= self.bins:
            self.out_of_range += 1
            return
        c = self.counts[b]
        self.counts[b] = c + 1
        self._sum_sq += 2 * c + 1
        self.n += 1
        i = b + 1
        while i <= self.bins:
            self._tree[i] += 1
            i += i & -i

    @property
    def samples(self) -> int:
        return self.n + self.out_of_range

    def percentile_bin(self, p: float) -> int:
        """The bin holding the ``p``-th percentile of the in-range idle times (``n > 0``)."""
        rank = max(1, math.ceil(p / 100.0 * self.n))
        pos, step = 0, 1 << self.bins.bit_length()
        while step:
            nxt = pos + step
            if nxt <= self.bins and self._tree[nxt] < rank:
                pos = nxt
                rank -= self._tree[nxt]
            step >>= 1
        return pos  # 0-based bin index: the first whose prefix count reaches the rank

    def cv(self) -> float:
        """Coefficient of variation of the bin counts (0 when empty)."""
        if self.n == 0:
            return 0.0
        mean = self.n / self.bins
        variance = max(self._sum_sq / self.bins - mean * mean, 0.0)
        return math.sqrt(variance) / mean


@dataclass
class _Model:
    histogram: IdleHistogram
    last: float | None = None
    prewarm_s: float = 0.0
    keep_s: float = DEFAULT_TTL_S
    from_histogram: bool = False


class HybridHistogram(ProactivePolicy):
    name = "histogram"
    description = "ATC'20 hybrid: per-model idle-time histogram, prewarm p5x0.9, keep to p99x1.1."

    def __init__(
        self,
        *,
        bin_s: float = 60.0,
        range_s: float = 4 * 3600.0,
        head_percentile: float = 5.0,
        tail_percentile: float = 99.0,
        head_margin: float = 0.9,
        tail_margin: float = 1.1,
        min_samples: int = 10,
        cv_threshold: float = 2.0,
        max_oob_fraction: float = 0.5,
        fallback_ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        super().__init__()
        self.bin_s = positive_seconds("bin_s", bin_s)
        range_s = positive_seconds("range_s", range_s)
        self.bins = max(1, round(range_s / self.bin_s))
        self.head_percentile = _within("head_percentile", head_percentile, 0, 100)
        self.tail_percentile = _within("tail_percentile", tail_percentile, 0, 100)
        if self.head_percentile > self.tail_percentile:
            raise ValueError(
                f"head_percentile ({head_percentile}) must not exceed "
                f"tail_percentile ({tail_percentile})"
            )
        self.head_margin = _within("head_margin", head_margin, 0, 1)
        self.tail_margin = _within("tail_margin", tail_margin, 1, math.inf)
        self.min_samples = int(_within("min_samples", min_samples, 1, math.inf))
        self.cv_threshold = _within("cv_threshold", cv_threshold, 0, math.inf)
        self.max_oob_fraction = _within("max_oob_fraction", max_oob_fraction, 0, 1)
        self.fallback_ttl_s = positive_seconds("fallback_ttl_s", fallback_ttl_s)
        self._models: dict[str, _Model] = {}
        self._timeline = Timeline()

    # -- what the histogram says -----------------------------------------------------------

    def representative(self, h: IdleHistogram) -> bool:
        """Whether ``h`` may drive prewarm and keep-alive (else: the fallback TTL)."""
        if h.samples < self.min_samples or h.n == 0:
            return False
        if h.out_of_range > self.max_oob_fraction * h.samples:
            return False
        return h.cv() >= self.cv_threshold

    def windows(self, name: str) -> tuple[float, float, bool]:
        """``(prewarm_s, keep_s, from_histogram)`` for ``name`` after its last invocation."""
        model = self._models.get(name)
        if model is None:
            return 0.0, self.fallback_ttl_s, False
        return model.prewarm_s, model.keep_s, model.from_histogram

    def _update(self, model: _Model) -> None:
        h = model.histogram
        if not self.representative(h):
            model.prewarm_s, model.keep_s, model.from_histogram = 0.0, self.fallback_ttl_s, False
            return
        head = h.percentile_bin(self.head_percentile) * self.bin_s * self.head_margin
        tail = (h.percentile_bin(self.tail_percentile) + 1) * self.bin_s * self.tail_margin
        model.prewarm_s, model.keep_s, model.from_histogram = head, tail, True

    # -- the proactive interface -----------------------------------------------------------

    def on_invocation(self, name: str, now: float) -> None:
        super().on_invocation(name, now)
        model = self._models.get(name)
        if model is None:
            model = self._models[name] = _Model(IdleHistogram(self.bins, self.bin_s))
        if model.last is not None:
            model.histogram.add(now - model.last)
        model.last = now
        self._update(model)
        times = (now + model.keep_s,)
        if model.prewarm_s > 0:
            times = (now + model.prewarm_s, *times)
        self._timeline.set(name, times)

    def expired(self, cached: Sequence[Entry], now: float) -> list[str]:
        out = []
        for e in cached:
            if e.pinned:
                continue
            model = self._models.get(e.name)
            if model is None or model.last is None:
                # Never seen invoked (loaded before this policy started): the fallback TTL.
                if now >= e.last_used + self.fallback_ttl_s:
                    out.append(e.name)
                continue
            if now >= model.last + model.keep_s or now < model.last + model.prewarm_s:
                out.append(e.name)
        return sorted(out)

    def prewarm(self, now: float, free_bytes: int, candidates: Sequence[Entry]) -> list[str]:
        due = []
        for e in candidates:
            model = self._models.get(e.name)
            if model is None or model.last is None or model.prewarm_s <= 0:
                continue
            start = model.last + model.prewarm_s
            if start <= now < model.last + model.keep_s:
                due.append((start, e.name, e))
        due.sort(key=lambda item: (item[0], item[1]))
        return fit([e for _, _, e in due], free_bytes)

    def next_event_time(self, now: float) -> float:
        return self._timeline.next_after(now)


def _within(option: str, value: object, low: float, high: float) -> float:
    """A numeric option in ``[low, high]``, or a clear error naming it."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{option} must be a number, not {value!r}") from None
    if math.isnan(number) or not low <= number <= high:
        raise ValueError(f"{option} must be between {low} and {high}, not {value!r}")
    return number
