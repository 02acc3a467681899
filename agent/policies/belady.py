"""Belady's MIN (oracle, simulation only): evict the model whose next request is furthest away.

With models of different sizes and load costs this is not exactly optimal, but it is the
reference the seed compares against. ``next_use`` comes from the trace's future.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.policies.base import Entry, OrderedPolicy


class Belady(OrderedPolicy):
    name = "belady"
    description = "Next request furthest in the future first."
    needs_oracle = True

    def order_key(
        self, cached: Sequence[Entry], candidates: Sequence[Entry], total_requests: int, now: float
    ) -> Callable[[Entry], float]:
        oracle = self.require_oracle()
        # Negated: the furthest (never again = inf) sorts first.
        return lambda e: -oracle.next_use(e.name, now)
