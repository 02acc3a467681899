"""The simulated device's memory: which models are cached (resident or loading), when each load
completes, what pins them, and the bytes in use over time.

Models are small integers (their index in the workload's ``names``) so that every per-model
fact is a list lookup; the policy sees ``Entry`` objects, one per cached model, kept here and
handed to it as they are (``refresh_pins`` sets their ``pinned`` flag first).
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.policies import Entry, EvictionPolicy
from loadgen.profiles import ModelCost
from loadgen.sim.results import MemoryTimeline, SimResult


class Device:
    """Memory of one device, the policy driven as the agent drives it (``on_insert``,
    ``on_evict``); the counters of requests are the event loop's."""

    def __init__(
        self,
        names: Sequence[str],
        cost: Sequence[ModelCost],
        cap_bytes: int,
        pol: EvictionPolicy,
        res: SimResult,
        t0: float,
        t1: float,
    ) -> None:
        nm = len(names)
        self.names, self.cost, self.cap_bytes, self.pol = names, cost, cap_bytes, pol
        self.size = [int(c.bytes or 0) for c in cost]
        self.cached: dict[int, Entry] = {}  # model -> entry (resident or loading)
        self.ready_at = [0.0] * nm  # when a cached model's load completes
        self.pins = [0] * nm  # requests executing m or waiting for its load (not merely queued)
        self.queued = [0] * nm  # arrival placement: requests placed on m's holder, not started
        self.draining = [False] * nm  # arrival placement: takes no new requests, goes when idle
        self.holder = [0] * nm  # arrival placement: the worker that holds m
        self.memory = MemoryTimeline(res, t0, t1)
        self.version = 0  # changes with every insert and evict (what is cached)

    @property
    def used(self) -> int:
        return self.memory.used

    @property
    def free(self) -> int:
        return self.cap_bytes - self.memory.used

    def refresh_pins(self, now: float) -> list[Entry]:
        """The cached entries, each ``pinned`` if executing, loading or draining at ``now``."""
        entries = []
        pins, ready_at, draining = self.pins, self.ready_at, self.draining
        for m, e in self.cached.items():
            e.pinned = pins[m] > 0 or ready_at[m] > now or draining[m]
            entries.append(e)
        return entries

    def evict(self, m: int, now: float) -> None:
        e = self.cached.pop(m)
        self.version += 1
        self.pol.on_evict(e, now)
        self.memory.set(now, self.memory.used - self.size[m])

    def insert(self, m: int, entry: Entry, now: float) -> None:
        """``m`` takes its bytes from ``now`` (the caller sets when its load completes)."""
        self.cached[m] = entry
        self.version += 1
        self.memory.set(now, self.memory.used + self.size[m])
        self.pol.on_insert(entry, now)

    def new_entry(self, m: int, requests: int, now: float | None = None) -> Entry:
        """The policy's view of ``m`` (``now``: its last use and insertion time)."""
        c = self.cost[m]
        if now is None:
            return Entry(self.names[m], self.size[m], c.load_s, c.exec_s, requests)
        return Entry(self.names[m], self.size[m], c.load_s, c.exec_s, requests, now, now)

    def evict_victims(self, victims: Sequence[Entry], index: dict[str, int], now: float) -> float:
        """Evict the policy's choice (checking it respected the pins) at ``now``; returns
        ``now`` plus the unload times, added one by one (a worker unloads them in turn)."""
        t = now
        for v in victims:
            vm = index[v.name]
            if self.pins[vm] or self.ready_at[vm] > now:
                raise RuntimeError(f"policy {self.pol.name} evicted pinned model {v.name}")
            t += self.cost[vm].unload_s
            self.evict(vm, now)
        return t
