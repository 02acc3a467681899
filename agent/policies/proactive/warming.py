"""Warming: when memory is free, load the models with the highest expected utility.

Free memory earns nothing; a model loaded into it ahead of its next request turns that miss
into a hit at no cost to anything cached. "Expected utility" is CremeBrulee's ``u(m)`` (the
same code, so the two never disagree on what a model is worth), computed over the models that
are not loaded. Models never requested (popularity 0) are not worth loading. Never unloads:
combine with eviction on misses; memory fills, then misses decide.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.policies.base import Entry
from agent.policies.cremebrulee import CremeBrulee
from agent.policies.proactive.base import ProactivePolicy, fit


class Warming(ProactivePolicy):
    name = "warming"
    description = "Fill free memory with the unloaded models of highest CremeBrulee utility."

    def __init__(
        self,
        *,
        cost: str = "direct",
        boundary_scale: float = 1.0,
        cost_scale: float = 1.0,
        use_size: bool = True,
    ) -> None:
        super().__init__()
        self.utility = CremeBrulee(
            cost=cost, boundary_scale=boundary_scale, cost_scale=cost_scale, use_size=use_size
        )

    def prewarm(self, now: float, free_bytes: int, candidates: Sequence[Entry]) -> list[str]:
        wanted = [e for e in candidates if e.requests > 0 and 0 < e.bytes <= free_bytes]
        if not wanted:
            return []
        total = sum(e.requests for e in wanted)  # S() rescales: R only needs to be consistent
        utility = self.utility.utilities(wanted, total, now)
        wanted.sort(key=lambda e: (-utility[id(e)], e.name))
        return fit(wanted, free_bytes)
