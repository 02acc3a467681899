"""Random: evict uniformly random models (seeded), the baseline that knows nothing.

The seed measures CremeBrulee's penalty as a fraction of random eviction's. Candidates are put
in name order before the seeded shuffle, so a decision depends on the seed and the entries
only, not on the order the caller lists them in. As in the seed (its ``random`` eviction), the
shuffled prefix is trimmed largest first like every policy's (``trim=off``: all of it goes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.policies.base import Entry, OrderedPolicy


class RandomEviction(OrderedPolicy):
    name = "random"
    description = "Uniformly random victims (seeded, reproducible)."

    def order_key(
        self, cached: Sequence[Entry], candidates: Sequence[Entry], total_requests: int, now: float
    ) -> Callable[[Entry], int]:
        ordered = sorted(candidates, key=lambda e: e.name)
        self.rng.shuffle(ordered)
        position = {id(e): i for i, e in enumerate(ordered)}
        return lambda e: position[id(e)]

    def shown_key(self, cached: Sequence[Entry], total_requests: int, now: float) -> None:
        """None: the order is a fresh shuffle, not a utility (and drawing one for show would
        advance the seeded generator and change the next decision)."""
        return None
