"""GDSF, greedy-dual-size-frequency with aging, as FaasCache (ASPLOS'21) keeps functions warm.

Each cached model has a priority ``clock + requests * (load_s - exec_s) / bytes``: frequent,
costly-to-reload, small models rank high. The lowest priority is evicted first, and the
``clock`` rises to the priority of each evicted model, so a model that stops being used ages
out: newer insertions and hits start from a higher clock. A hit recomputes the priority with
the current clock.

State: the priority lives in ``Entry.priority`` (set by ``on_insert``/``on_hit``) and the
clock in the float attribute ``clock``; the agent persists both in Redis (and builds a policy
per decision with the device's stored clock: ``make_policy("gdsf", clock=…)``), the simulator
in its entries. ``on_evict`` must be called for each victim actually evicted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.policies.base import Entry, Oracle, OrderedPolicy


class GDSF(OrderedPolicy):
    name = "gdsf"
    description = "Lowest greedy-dual priority clock + requests x (load - exec) / bytes first."

    uses_clock = True

    def __init__(
        self,
        seed: int = 0,
        oracle: Oracle | None = None,
        clock: float = 0.0,
        *,
        trim: bool | str = True,
    ) -> None:
        super().__init__(seed=seed, oracle=oracle, trim=trim)
        self.clock = clock

    def priority(self, entry: Entry) -> float:
        """The greedy-dual priority at the current clock. A miss that costs less than nothing
        (``exec_s > load_s``, only with bad facts) counts as free rather than negative."""
        cost = max(entry.load_s - entry.exec_s, 0.0)
        return self.clock + entry.requests * cost / max(entry.bytes, 1)

    def order_key(
        self, cached: Sequence[Entry], candidates: Sequence[Entry], total_requests: int, now: float
    ) -> Callable[[Entry], float]:
        return lambda e: e.priority

    def on_insert(self, entry: Entry, now: float) -> None:
        entry.priority = self.priority(entry)

    def on_hit(self, entry: Entry, now: float) -> None:
        entry.priority = self.priority(entry)

    def on_evict(self, entry: Entry, now: float) -> None:
        # Aging: the clock never goes down (an out-of-order eviction must not rejuvenate).
        self.clock = max(self.clock, entry.priority)
