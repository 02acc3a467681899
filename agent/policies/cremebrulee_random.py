"""Random eviction weighted by CremeBrulee's utility (the seed's randomised variant).

Victims are drawn at random, without replacement, with probability proportional to
``1 - u/max(u)``: a model of low utility is likely to go, the most useful possible victim is
drawn only when nothing else frees enough. Drawing stops as soon as ``need`` is freed; then,
as for every policy and as in the seed (whose ``random`` eviction with ``--random_weights
cremebrulee`` this is), the drawn victims are trimmed largest first (``trim=off``: all of
them go, an unbiased weighted draw).

Sampling without replacement uses Efraimidis-Spirakis keys, ``-ln(U) / w`` for ``U`` uniform:
sorting by that key is a weighted draw, so a decision stays one O(n log n) sort. The random
numbers are assigned in name order, so a decision depends on the seed and the entries only,
not on the order the caller lists them in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from agent.policies.base import Entry
from agent.policies.cremebrulee import CremeBrulee


class CremeBruleeRandom(CremeBrulee):
    name = "cremebrulee-random"
    description = "Random victims, drawn with probability proportional to 1 - u/max(u) (seeded)."

    def order_key(
        self, cached: Sequence[Entry], candidates: Sequence[Entry], total_requests: int, now: float
    ) -> Callable[[Entry], tuple[float, float]]:
        utility = self.utilities(cached, total_requests, now)
        top = max(utility[id(e)] for e in candidates)
        keys: dict[int, tuple[float, float]] = {}
        for e in sorted(candidates, key=lambda e: e.name):
            u = utility[id(e)]
            weight = 1.0 - u / top if top > 0 else 1.0
            draw = 1.0 - self.rng.random()  # in (0, 1]: log is finite
            keys[id(e)] = (-math.log(draw) / weight if weight > 0 else math.inf, u)
        return lambda e: keys[id(e)]
