"""The interface every eviction policy implements, shared by the live agent and the simulator.

A policy is a small decision over the cached entries: given them, the incoming model and the
bytes that must be freed, return the victims, or ``None`` when even evicting every unpinned
entry would not free enough. It does not care whether time is real or simulated: ``now`` is
passed in. See ``docs/spec/policies.md`` for the facts and invariants.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol


@dataclass(slots=True)
class Entry:
    """What a policy may know about one model (cached, or the one coming in).

    ``priority`` is scratch space owned by the policy in use (GDSF keeps its greedy-dual
    priority there), so that whoever stores entries (Redis in the agent, a dict in the
    simulator) stores it too.
    """

    name: str
    bytes: int
    load_s: float
    exec_s: float
    requests: int = 0
    last_used: float = 0.0
    inserted_at: float = 0.0
    pinned: bool = False
    priority: float = 0.0


class Oracle(Protocol):
    """Knowledge of the future, for the simulation-only oracle policies."""

    def next_use(self, name: str, now: float) -> float:
        """Time of ``name``'s next request after ``now`` (``math.inf`` if none)."""


class EvictionPolicy(ABC):
    """Choose victims on a miss. Subclasses set ``name`` and ``description`` and implement
    ``victims`` (``OrderedPolicy`` does, with the shared trim); the ``on_*`` hooks let stateful
    policies (GDSF, LFU) track hits and evictions. ``trim`` (on by default; "off" from a
    command line) is every policy's option: see ``largest_first``.

    How a cache drives one (the agent's placement and the simulator alike): on a miss, call
    ``victims``; call ``on_evict`` for each victim actually evicted, then ``on_insert`` for the
    model brought in. On a hit, call ``on_hit``. The entry passed to ``on_insert``/``on_hit``
    already counts the current request in ``requests`` and carries the ``priority`` stored for
    it (a hook may update ``priority``; the caller stores it back with the entry)."""

    name: ClassVar[str]
    description: ClassVar[str]
    needs_oracle: ClassVar[bool] = False
    uses_clock: ClassVar[bool] = False  # takes ``clock=`` (a device's stored clock; GDSF)

    def __init__(
        self, seed: int = 0, oracle: Oracle | None = None, *, trim: bool | str = True
    ) -> None:
        self.seed = seed
        self.oracle = oracle
        self.rng = random.Random(seed)  # for the policies that draw (seeded: reproducible)
        self.trim = flag("trim", trim)

    @abstractmethod
    def victims(
        self,
        cached: Sequence[Entry],
        incoming: Entry,
        need: int,
        total_requests: int,
        now: float,
    ) -> list[Entry] | None:
        """Entries to evict so that ``need`` bytes are freed; ``[]`` when ``need <= 0``;
        ``None`` when the unpinned entries together hold fewer than ``need`` bytes.
        Never returns a pinned entry or ``incoming``. Trimmed largest first unless ``trim``
        is off (``OrderedPolicy.victims``, which every registered policy uses)."""

    def on_insert(self, entry: Entry, now: float) -> None:  # noqa: B027 (optional hook)
        """``entry`` has been loaded into the cache."""

    def on_hit(self, entry: Entry, now: float) -> None:  # noqa: B027 (optional hook)
        """``entry`` was requested while cached."""

    def on_evict(self, entry: Entry, now: float) -> None:  # noqa: B027 (optional hook)
        """``entry`` has been evicted."""


def evictable(cached: Sequence[Entry], incoming: Entry) -> list[Entry]:
    """The only possible victims: unpinned cached entries other than the incoming model.

    The incoming model is matched by name, because the caller may already list it among the
    cached entries (e.g. reserved while it loads) as a different object."""
    return [e for e in cached if not e.pinned and e.name != incoming.name]


def take_until(ordered: Iterable[Entry], need: int) -> list[Entry]:
    """The shortest prefix of ``ordered`` whose bytes reach ``need``: evict in order, stop
    as soon as enough is free, so nothing is evicted that the miss did not require."""
    taken: list[Entry] = []
    freed = 0
    for entry in ordered:
        if freed >= need:
            break
        taken.append(entry)
        freed += entry.bytes
    return taken


def largest_first(taken: Sequence[Entry], need: int) -> list[Entry]:
    """The seed's last step for every policy: of the victims ``taken`` (which free ``need``),
    keep the fewest that still free it, largest first, so that small models taken on the way
    stay cached. Equal sizes keep the policy's order (a stable sort, as the seed's)."""
    return take_until(sorted(taken, key=lambda e: -e.bytes), need)


def flag(name: str, value: object) -> bool:
    """A boolean option that may arrive as text from a command line ("off", "false", "0")."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false (on/off), not {value!r}")


class OrderedPolicy(EvictionPolicy):
    """The shape every registered policy shares: order the possible victims by a key (smallest
    evicted first), take from the front until ``need`` is met, then trim what was taken.

    Subclasses give the key in ``order_key``; ties are broken by name so that a decision does
    not depend on the order in which the caller (Redis, a dict) lists the entries. A sort is
    O(n log n), which is what every decision may cost. The last step, as in the seed's
    placement controller for every policy: unless the policy was built with ``trim=off``, only
    the fewest of those taken, largest first, that still free ``need`` are evicted
    (``largest_first``). It is shared so that the policies are compared on equal terms: it is
    not CremeBrulee's alone."""

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
        candidates = evictable(cached, incoming)
        if sum(e.bytes for e in candidates) < need:
            return None
        key = self.order_key(cached, candidates, total_requests, now)
        taken = take_until(sorted(candidates, key=lambda e: (key(e), e.name)), need)
        return largest_first(taken, need) if self.trim else taken

    @abstractmethod
    def order_key(
        self,
        cached: Sequence[Entry],
        candidates: Sequence[Entry],
        total_requests: int,
        now: float,
    ) -> Callable[[Entry], Any]:
        """A key for the possible victims (``candidates``); the smallest is evicted first.
        ``cached`` is every cached entry, for keys scaled across the cache."""

    def shown_key(
        self, cached: Sequence[Entry], total_requests: int, now: float
    ) -> Callable[[Entry], Any] | None:
        """What the status page shows as each copy's utility: by default the order key
        (smallest evicted first); None for a policy whose order is not a utility."""
        return self.order_key(cached, cached, total_requests, now)

    def require_oracle(self) -> Oracle:
        """The oracle, or a clear error: oracle policies only make sense in simulation."""
        if self.oracle is None:
            raise ValueError(f"policy {self.name!r} needs an oracle (simulation only)")
        return self.oracle
