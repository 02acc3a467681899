"""The interface of proactive (keep-alive and prewarm) policies, driven by the agent and the
simulator alike.

Eviction policies answer "what must go to make room for this miss?". Proactive policies answer
the two questions a miss never asks: *which idle models should be unloaded now?* and *which
models should be loaded before anyone asks for them?* Like eviction policies they are pure
decisions: they never read a clock, never load or unload anything themselves, and do not care
whether time is real or simulated.

How a driver (the simulator's event loop, the agent's housekeeping thread) uses one::

    policy = make_proactive("histogram", fallback_ttl_s=600)

    # every request, hit or miss, in time order:
    policy.on_invocation(name, now)

    # when time reaches policy.next_event_time(last_check) -- and whenever a model stops
    # executing (pass just that entry): unload what the policy says has expired
    for name in policy.expired(cached_entries, now):
        unload(name)

    # at the same moments, and whenever memory was freed: load what it wants warm
    for name in policy.prewarm(now, free_bytes, uncached_entries):
        load(name)

    wake_up_at = policy.next_event_time(now)   # math.inf: nothing scheduled

Contract:

- ``on_invocation(name, now)``: a request for ``name`` arrived at ``now``. Calls come in
  non-decreasing ``now``; going back in time is a ``ValueError``.
- ``expired(cached, now) -> list[str]``: names among ``cached`` (``Entry`` objects) to unload
  now. Pinned entries (executing or loading) are never named. Pass every cached entry at a
  scheduled event, or only the entry that just stopped executing (cheap for a simulator).
- ``prewarm(now, free_bytes, candidates) -> list[str]``: names among ``candidates`` (entries of
  models *not* cached, with their facts) to load now. Their bytes together never exceed
  ``free_bytes``: a proactive load only fills free memory, it never evicts.
- ``next_event_time(now) -> float``: the earliest time strictly after ``now`` at which
  ``expired`` or ``prewarm`` may answer differently merely because time passed (``math.inf``
  if none). A driver calls ``expired``/``prewarm`` at ``now`` first, then asks for the next
  time; events at or before ``now`` count as handled.

Answers are deterministic (names in a defined order) so that a simulation is reproducible.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import ClassVar

from agent.policies.base import Entry


class ProactivePolicy:
    """Keep-alive and prewarm decisions. The defaults do nothing (that is the ``none`` policy);
    subclasses set ``name`` and ``description`` and override what they need."""

    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self) -> None:
        self._last_now = -math.inf

    def on_invocation(self, name: str, now: float) -> None:
        """Record a request for ``name`` at ``now`` (subclasses call this first)."""
        if now < self._last_now:
            raise ValueError(
                f"invocation of {name!r} at {now} is earlier than the previous one at "
                f"{self._last_now}: invocations must come in time order"
            )
        self._last_now = now

    def expired(self, cached: Sequence[Entry], now: float) -> list[str]:
        """Names among ``cached`` to unload now (never a pinned one)."""
        return []

    def prewarm(self, now: float, free_bytes: int, candidates: Sequence[Entry]) -> list[str]:
        """Names among ``candidates`` (not cached) to load now, within ``free_bytes``."""
        return []

    def next_event_time(self, now: float) -> float:
        """The earliest time after ``now`` at which an answer may change by itself."""
        return math.inf


def fit(ordered: Sequence[Entry], free_bytes: int) -> list[str]:
    """Names of ``ordered`` entries, taken in order, that fit together into ``free_bytes``
    (an entry too big for what is left is skipped; a smaller one after it may still fit)."""
    chosen: list[str] = []
    left = free_bytes
    for entry in ordered:
        if 0 < entry.bytes <= left:
            chosen.append(entry.name)
            left -= entry.bytes
    return chosen


class Timeline:
    """Per-model deadlines with an O(log n) "what is next?", for ``next_event_time``.

    A model's deadlines are replaced on each invocation; superseded heap items are dropped
    lazily when they reach the top, so an update costs O(log n) and nothing is scanned. When
    they outnumber the live ones (nobody asks what is next: the agent's keep-alive loop), the
    heap is rebuilt from the live deadlines, so it never grows with the number of requests."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._current: dict[str, tuple[float, ...]] = {}

    def set(self, name: str, times: tuple[float, ...]) -> None:
        self._current[name] = times
        for t in times:
            if math.isfinite(t):
                heapq.heappush(self._heap, (t, name))
        if len(self._heap) > 2 * len(self._current) + 64:
            self._heap = [(t, n) for n, ts in self._current.items() for t in ts if math.isfinite(t)]
            heapq.heapify(self._heap)

    def next_after(self, now: float) -> float:
        heap = self._heap
        while heap and (heap[0][0] <= now or heap[0][0] not in self._current[heap[0][1]]):
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf


def positive_seconds(option: str, value: object) -> float:
    """An option that is a duration: a finite number > 0, or a clear error naming it."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{option} must be a number of seconds, not {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{option} must be a finite number of seconds > 0, not {value!r}")
    return seconds
