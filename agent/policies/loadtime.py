"""Load time: evict the model that is cheapest to load again (smallest ``load_s``).

A cost-only baseline: it ignores how often a model is used, the opposite of LFU/popularity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.policies.base import Entry, OrderedPolicy


class LoadTime(OrderedPolicy):
    name = "loadtime"
    description = "Cheapest to reload first (smallest load_s)."

    def order_key(
        self, cached: Sequence[Entry], candidates: Sequence[Entry], total_requests: int, now: float
    ) -> Callable[[Entry], float]:
        return lambda e: e.load_s
