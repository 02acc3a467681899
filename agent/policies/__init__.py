"""Eviction policies, shared by the live agent and the simulator, and a registry by name.

``make_policy("cremebrulee", cost="increase")`` builds one; ``POLICIES`` maps every name to
its class (each has a one-line ``description``). ``parse_policy_spec`` reads the command-line
form ``name:key=value:...`` (``lru:trim=off``) that ``brulee simulate --policies`` and the
agent's ``--policy`` take. Proactive (keep-alive, prewarm) policies live
in ``agent.policies.proactive``.
"""

from __future__ import annotations

import inspect
from typing import Any

from agent.policies.base import Entry, EvictionPolicy, Oracle, OrderedPolicy
from agent.policies.belady import Belady
from agent.policies.cremebrulee import CremeBrulee
from agent.policies.cremebrulee_oracle import CremeBruleeOracle
from agent.policies.cremebrulee_random import CremeBruleeRandom
from agent.policies.fifo import FIFO
from agent.policies.gdsf import GDSF
from agent.policies.lfu import LFU
from agent.policies.loadtime import LoadTime
from agent.policies.lru import LRU
from agent.policies.popularity import Popularity
from agent.policies.random_eviction import RandomEviction
from agent.policies.size import Size

POLICIES: dict[str, type[EvictionPolicy]] = {
    cls.name: cls
    for cls in (
        CremeBrulee,
        CremeBruleeOracle,
        CremeBruleeRandom,
        Belady,
        LRU,
        LFU,
        FIFO,
        RandomEviction,
        Size,
        LoadTime,
        Popularity,
        GDSF,
    )
}

# Other spellings accepted by make_policy (the spec names GDSF "greedy-dual" too).
ALIASES: dict[str, str] = {"greedy-dual": "gdsf"}


def parse_policy_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"cremebrulee:cost=increase:use_size=false"`` -> (name, options); values are parsed as
    numbers or booleans where they look like one. Raises ``ValueError`` for an option without
    ``=``."""
    name, *opts = spec.strip().split(":")
    options: dict[str, Any] = {}
    for opt in opts:
        key, sep, raw = opt.partition("=")
        if not sep:
            raise ValueError(f"policy option {opt!r} in {spec!r}: expected key=value")
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            try:
                value = float(raw) if any(c in raw for c in ".e") else int(raw)
            except ValueError:
                pass
        options[key] = value
    return name, options


def make_policy(
    name: str, seed: int = 0, oracle: Oracle | None = None, **options: Any
) -> EvictionPolicy:
    """Build the policy registered as ``name``; ``options`` go to its constructor.

    Raises ``ValueError`` for an unknown name or option, or an oracle policy without an
    oracle, so a typo on the command line is an answer rather than a traceback."""
    cls = POLICIES.get(ALIASES.get(name, name))
    if cls is None:
        valid = ", ".join(sorted([*POLICIES, *ALIASES]))
        raise ValueError(f"unknown eviction policy {name!r}; valid: {valid}")
    if cls.needs_oracle and oracle is None:
        raise ValueError(f"policy {name!r} needs an oracle (a trace's future): simulation only")
    try:
        inspect.signature(cls).bind(seed=seed, oracle=oracle, **options)
    except TypeError as exc:
        raise ValueError(f"policy {name!r}: {exc}") from None
    return cls(seed=seed, oracle=oracle, **options)


__all__ = [
    "ALIASES",
    "POLICIES",
    "Entry",
    "EvictionPolicy",
    "Oracle",
    "OrderedPolicy",
    "make_policy",
    "parse_policy_spec",
]
