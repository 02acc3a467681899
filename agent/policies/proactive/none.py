"""No proactive policy: a model stays loaded until a miss evicts it (as ModelMesh does)."""

from __future__ import annotations

from agent.policies.proactive.base import ProactivePolicy


class NoProactive(ProactivePolicy):
    name = "none"
    description = "Never unload idle models nor load ahead; only misses evict (ModelMesh)."
