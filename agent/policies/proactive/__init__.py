"""Proactive policies: unload idle models and load models before they are asked for.

``make_proactive("ttl", ttl_s=1200)`` builds one; ``PROACTIVE`` maps every name to its class
(each has a one-line ``description``). The interface the agent and the simulator drive is
documented in ``agent.policies.proactive.base``.
"""

from __future__ import annotations

import inspect
from typing import Any

from agent.policies.proactive.base import ProactivePolicy
from agent.policies.proactive.histogram import HybridHistogram
from agent.policies.proactive.none import NoProactive
from agent.policies.proactive.ttl import FixedTTL
from agent.policies.proactive.warming import Warming

PROACTIVE: dict[str, type[ProactivePolicy]] = {
    cls.name: cls for cls in (NoProactive, FixedTTL, HybridHistogram, Warming)
}

# Other spellings accepted by make_proactive.
PROACTIVE_ALIASES: dict[str, str] = {
    "fixed-ttl": "ttl",
    "keep-alive": "ttl",
    "hybrid": "histogram",
    "hybrid-histogram": "histogram",
}


def make_proactive(name: str, **options: Any) -> ProactivePolicy:
    """Build the proactive policy registered as ``name``; ``options`` go to its constructor.

    Raises ``ValueError`` naming the valid choices for an unknown name or option."""
    cls = PROACTIVE.get(PROACTIVE_ALIASES.get(name, name))
    if cls is None:
        valid = ", ".join(sorted([*PROACTIVE, *PROACTIVE_ALIASES]))
        raise ValueError(f"unknown proactive policy {name!r}; valid: {valid}")
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        raise ValueError(f"proactive policy {name!r}: {exc}") from None
    return cls(**options)


__all__ = ["PROACTIVE", "PROACTIVE_ALIASES", "ProactivePolicy", "make_proactive"]
