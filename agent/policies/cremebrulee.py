"""CremeBrulee (ACSOS'21): Belady's MIN adapted to deep-learning models.

The distance to a model's next request is estimated from its popularity, and weighed by what a
miss on it would cost (its load latency) and by the memory it holds. See
``docs/spec/policies.md`` for the formula and the three selection steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.policies.base import Entry, OrderedPolicy

COSTS = ("direct", "increase")

# Guards against a zero exec time (cost-increase) or a zero-byte entry: a tiny positive
# value keeps the formula defined without changing the order of any realistic entries.
_TINY = 1e-12


def scaled(values: list[float]) -> list[float]:
    """``S(x)``: divide by the maximum so the largest is 1. All zero means all equal, so each
    becomes 1 (neutral) rather than 0, which would erase the other factors of the utility."""
    top = max(values, default=0.0)
    if top <= 0:
        return [1.0] * len(values)
    return [v / top for v in values]


class CremeBrulee(OrderedPolicy):
    name = "cremebrulee"
    description = "Lowest utility pop^a x cost^b / bytes first, then the largest of those (seed)."

    def __init__(
        self,
        seed: int = 0,
        oracle=None,
        *,
        cost: str = "direct",
        boundary_scale: float = 1.0,
        cost_scale: float = 1.0,
        use_size: bool = True,
    ) -> None:
        super().__init__(seed=seed, oracle=oracle)
        if cost not in COSTS:
            raise ValueError(f"cost must be one of {', '.join(COSTS)}, not {cost!r}")
        self.cost = cost
        self.boundary_scale = float(boundary_scale)
        self.cost_scale = float(cost_scale)
        self.use_size = bool(use_size)

    def popularity(self, entries: Sequence[Entry], total_requests: int, now: float) -> list[float]:
        """``pop(m) = requests / (1 + R)``: its inverse estimates the distance to the next
        request (the "Belady boundary"). The oracle variant overrides this."""
        return [e.requests / (1 + total_requests) for e in entries]

    def miss_cost(self, entry: Entry) -> float:
        """What a miss on ``entry`` costs: its load time, or how many times slower than a warm
        execution a cold one is (cost-increase)."""
        if self.cost == "increase":
            return entry.load_s / max(entry.exec_s, _TINY)
        return entry.load_s

    def utilities(
        self, entries: Sequence[Entry], total_requests: int, now: float
    ) -> dict[int, float]:
        """``u(m)`` for each of ``entries``, keyed by ``id(entry)``; the scaling ``S`` is
        across ``entries``, which should be every cached model (the spec's "max across")."""
        pops = scaled(self.popularity(entries, total_requests, now))
        costs = scaled([self.miss_cost(e) for e in entries])
        return {
            id(e): pop**self.boundary_scale
            * cost**self.cost_scale
            / (max(e.bytes, _TINY) if self.use_size else 1.0)
            for e, pop, cost in zip(entries, pops, costs)
        }

    def order_key(
        self, cached: Sequence[Entry], candidates: Sequence[Entry], total_requests: int, now: float
    ) -> Callable[[Entry], float]:
        # Step 1: increasing utility (step 2, the prefix reaching need, is take_until).
        utility = self.utilities(cached, total_requests, now)
        return lambda e: utility[id(e)]

    def select(self, taken: list[Entry], need: int) -> list[Entry]:
        """Step 3: of the low-utility models taken, evict only the fewest (largest first)
        that still free ``need``; the small ones taken on the way stay cached."""
        freed = 0
        victims: list[Entry] = []
        for entry in sorted(taken, key=lambda e: (-e.bytes, e.name)):
            if freed >= need:
                break
            victims.append(entry)
            freed += entry.bytes
        return victims
