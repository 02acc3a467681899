"""Popularity: evict the model with the smallest share of all requests seen so far.

``pop(m) = requests(m) / (1 + R)`` over the agent's (or trace's) whole life, the factor
CremeBrulee uses alone. Unlike ``lfu`` it does not forget a model's history when the model
leaves the cache (it is "perfect" LFU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.policies.base import Entry, OrderedPolicy


class Popularity(OrderedPolicy):
    name = "popularity"
    description = "Lowest share of all requests so far first (pop = requests / (1 + R))."

    def order_key(
        self, cached: Sequence[Entry], candidates: Sequence[Entry], total_requests: int, now: float
    ) -> Callable[[Entry], float]:
        share = 1.0 / (1 + total_requests)
        return lambda e: e.requests * share
