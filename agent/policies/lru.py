"""LRU: evict the least recently used model first — the default of most model servers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.policies.base import Entry, OrderedPolicy


class LRU(OrderedPolicy):
    name = "lru"
    description = "Least recently used first."

    def order_key(
        self, cached: Sequence[Entry], candidates: Sequence[Entry], total_requests: int, now: float
    ) -> Callable[[Entry], float]:
        return lambda e: e.last_used
