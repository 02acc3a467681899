"""FIFO: evict the model that has been in the cache longest, however often it is used."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.policies.base import Entry, OrderedPolicy


class FIFO(OrderedPolicy):
    name = "fifo"
    description = "Longest in cache first (oldest insertion)."

    def order_key(
        self, cached: Sequence[Entry], candidates: Sequence[Entry], total_requests: int, now: float
    ) -> Callable[[Entry], float]:
        return lambda e: e.inserted_at
