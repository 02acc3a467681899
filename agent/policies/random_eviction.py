"""Random: evict uniformly random models (seeded), the baseline that knows nothing.

The seed measures CremeBrulee's penalty as a fraction of random eviction's. Candidates are put
in name order before the seeded shuffle, so a decision depends on the seed and the entries
only, not on the order the caller lists them in.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.policies.base import Entry, EvictionPolicy, evictable, take_until


class RandomEviction(EvictionPolicy):
    name = "random"
    description = "Uniformly random victims (seeded, reproducible)."

    def victims(
        self,
        cached: Sequence[Entry],
        incoming: Entry,
        need: int,
        total_requests: int,
        now: float,
    ) -> list[Entry] | None:
        if need <= 0:
            return []
        candidates = sorted(evictable(cached, incoming), key=lambda e: e.name)
        if sum(e.bytes for e in candidates) < need:
            return None
        self.rng.shuffle(candidates)
        return take_until(candidates, need)
