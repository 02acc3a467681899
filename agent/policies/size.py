"""Size: evict the largest model first, so that as few models as possible leave the cache."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.policies.base import Entry, OrderedPolicy


class Size(OrderedPolicy):
    name = "size"
    description = "Largest model first."

    def order_key(
        self, cached: Sequence[Entry], candidates: Sequence[Entry], total_requests: int, now: float
    ) -> Callable[[Entry], int]:
        return lambda e: -e.bytes
