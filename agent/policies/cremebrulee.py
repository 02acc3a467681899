"""CremeBrulee (ACSOS'21): Belady's MIN adapted to deep-learning models.

The distance to a model's next request is estimated from its popularity, and weighed by what a
miss on it would cost (its load latency) and by the memory it holds. See
``docs/spec/policies.md`` for the formula and the three selection steps (the third, the
largest-first trim, is shared by every policy: ``agent.policies.base.largest_first``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from agent.policies.base import Entry, Oracle, OrderedPolicy, flag

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


def _exponent(name: str, value: object) -> float:
    """A scale exponent: finite and >= 0. A negative one would turn "more popular" or "dearer
    to reload" into "evict first", and 0 raised to it is undefined."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, not {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    return number


class CremeBrulee(OrderedPolicy):
    name = "cremebrulee"
    description = "Lowest utility pop^a x cost^b / bytes first (the seed's CremeBrulee)."

    def __init__(
        self,
        seed: int = 0,
        oracle: Oracle | None = None,
        *,
        cost: str = "direct",
        boundary_scale: float = 1.0,
        cost_scale: float = 1.0,
        use_size: bool = True,
        trim: bool | str = True,
    ) -> None:
        super().__init__(seed=seed, oracle=oracle, trim=trim)
        # The spec spells the variants "cost-direct" and "cost-increase"; accept both forms.
        cost = str(cost).removeprefix("cost-")
        if cost not in COSTS:
            valid = ", ".join(f"{c} (cost-{c})" for c in COSTS)
            raise ValueError(f"cost must be one of {valid}, not {cost!r}")
        self.cost = cost
        self.boundary_scale = _exponent("boundary_scale", boundary_scale)
        self.cost_scale = _exponent("cost_scale", cost_scale)
        self.use_size = flag("use_size", use_size)

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
        a, b = self.boundary_scale, self.cost_scale
        if a == 1.0 and b == 1.0:  # the default: skip two float powers per model (hot path)
            weights = [pop * cost for pop, cost in zip(pops, costs)]
        else:
            weights = [pop**a * cost**b for pop, cost in zip(pops, costs)]
        if self.use_size:
            return {id(e): w / (e.bytes or _TINY) for e, w in zip(entries, weights)}
        return {id(e): w for e, w in zip(entries, weights)}

    def shown_key(
        self, cached: Sequence[Entry], total_requests: int, now: float
    ) -> Callable[[Entry], float]:
        """The utility itself (for the randomised variant too: not its draw's key)."""
        utility = self.utilities(cached, total_requests, now)
        return lambda e: utility[id(e)]

    def order_key(
        self, cached: Sequence[Entry], candidates: Sequence[Entry], total_requests: int, now: float
    ) -> Callable[[Entry], float]:
        # Step 1: increasing utility. Step 2, the prefix reaching need, is take_until; step 3,
        # the largest-first trim, is every policy's shared last step (base.largest_first).
        utility = self.utilities(cached, total_requests, now)
        return lambda e: utility[id(e)]
