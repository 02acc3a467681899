"""LFU: evict the model requested least often since it entered the cache.

Classic in-cache LFU (as in cachetools' ``LFUCache``): the count starts when a model is loaded
and is forgotten when it is evicted, so a model that was popular long ago does not squat in
memory. (The lifetime count is the ``popularity`` policy.) Ties go to the least recently used.

State: ``on_insert`` stores the model's lifetime request count in ``Entry.priority``; the
in-cache count is then ``requests - priority``. Keeping it in the entry means whoever stores
entries (Redis, the simulator's dict) stores it too; a hit must not overwrite it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.policies.base import Entry, OrderedPolicy


class LFU(OrderedPolicy):
    name = "lfu"
    description = "Fewest requests since it was loaded first (in-cache LFU; ties: LRU)."

    def order_key(
        self, cached: Sequence[Entry], candidates: Sequence[Entry], total_requests: int, now: float
    ) -> Callable[[Entry], tuple[float, float]]:
        return lambda e: (e.requests - e.priority, e.last_used)

    def on_insert(self, entry: Entry, now: float) -> None:
        entry.priority = float(entry.requests)
