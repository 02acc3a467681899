"""Fixed keep-alive: unload a model idle for longer than a TTL (the common FaaS policy; AWS
Lambda and OpenWhisk keep functions 10-20 minutes). Never prewarms.

Idle time counts from the later of the model's last recorded invocation and its entry's
``last_used``, so entries the policy never saw invoked (loaded before it started, or by a
prewarm) still expire.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from agent.policies.base import Entry
from agent.policies.proactive.base import ProactivePolicy, Timeline, positive_seconds

DEFAULT_TTL_S = 600.0  # 10 minutes


class FixedTTL(ProactivePolicy):
    name = "ttl"
    description = "Unload a model idle for longer than ttl_s (default 10 min); no prewarm."

    def __init__(self, ttl_s: float = DEFAULT_TTL_S) -> None:
        super().__init__()
        self.ttl_s = positive_seconds("ttl_s", ttl_s)
        self._last: dict[str, float] = {}
        self._timeline = Timeline()

    def on_invocation(self, name: str, now: float) -> None:
        super().on_invocation(name, now)
        self._last[name] = now
        self._timeline.set(name, (now + self.ttl_s,))

    def expired(self, cached: Sequence[Entry], now: float) -> list[str]:
        return sorted(
            e.name
            for e in cached
            if not e.pinned
            and now >= max(e.last_used, self._last.get(e.name, -math.inf)) + self.ttl_s
        )

    def next_event_time(self, now: float) -> float:
        return self._timeline.next_after(now)
