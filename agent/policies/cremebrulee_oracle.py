"""CremeBrulee with perfect knowledge of the future (simulation only).

The seed's upper reference for its own estimate: the same utility and selection steps as
``cremebrulee``, but ``pop(m)`` is ``1 / distance to m's next request`` read from the trace's
future instead of being estimated from past popularity. The gap between the two shows how much
CremeBrulee loses by guessing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from agent.policies.base import Entry
from agent.policies.cremebrulee import CremeBrulee

# A next request at (or before) ``now`` would give an infinite popularity; the shortest
# distance we admit is a microsecond, far below any load or execution time.
_MIN_DISTANCE_S = 1e-6


class CremeBruleeOracle(CremeBrulee):
    name = "cremebrulee-oracle"
    description = "CremeBrulee with pop = 1 / distance to the next request (from the trace)."
    needs_oracle = True

    def popularity(self, entries: Sequence[Entry], total_requests: int, now: float) -> list[float]:
        """``1 / (next_use - now)``; a model never requested again has popularity 0."""
        oracle = self.require_oracle()
        pops = []
        for e in entries:
            distance = oracle.next_use(e.name, now) - now
            pops.append(0.0 if math.isinf(distance) else 1.0 / max(distance, _MIN_DISTANCE_S))
        return pops
