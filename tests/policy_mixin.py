"""The invariants of ``docs/spec/policies.md``, stated once, run against every eviction policy.

A test class for a policy mixes in ``PolicyInvariants`` and sets ``policy_name`` (and
``options`` if needed); ``tests/test_policies.py`` checks that every registered policy has one.
Oracle policies get a small oracle built from a known future (``FutureOracle``).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import random
from collections.abc import Sequence
from typing import Any, ClassVar

from agent.policies import POLICIES, Entry, EvictionPolicy, make_policy


class FutureOracle:
    """Next-request times from a known list of ``(time, name)`` requests."""

    def __init__(self, requests: Sequence[tuple[float, str]] = ()) -> None:
        self.times: dict[str, list[float]] = {}
        for t, name in sorted(requests):
            self.times.setdefault(name, []).append(t)

    def next_use(self, name: str, now: float) -> float:
        times = self.times.get(name, [])
        i = bisect.bisect_right(times, now)
        return times[i] if i < len(times) else math.inf


def random_cache(rng: random.Random, n: int, pinned_share: float = 0.2) -> list[Entry]:
    """``n`` cached entries with varied facts; about ``pinned_share`` of them pinned."""
    return [
        Entry(
            name=f"m{i:05d}",
            bytes=rng.randint(1, 1000),
            load_s=rng.uniform(0.01, 5.0),
            exec_s=rng.uniform(0.001, 0.5),
            requests=rng.randint(0, 200),
            last_used=rng.uniform(0, 1000),
            inserted_at=rng.uniform(0, 1000),
            pinned=rng.random() < pinned_share,
            priority=rng.uniform(0, 10),
        )
        for i in range(n)
    ]


def random_oracle(rng: random.Random, names: Sequence[str], now: float) -> FutureOracle:
    """A future in which about half of ``names`` are requested again after ``now``."""
    return FutureOracle(
        [(now + rng.uniform(0.001, 500), name) for name in names if rng.random() < 0.5]
    )


def replay(policy: EvictionPolicy, requests: Sequence[str], sizes: dict[str, int], cap: int):
    """Drive ``policy`` through a request stream with a byte-capped cache, as the simulator
    does (hooks included); returns the list of ``(time, evicted names)`` decisions."""
    cache: dict[str, Entry] = {}
    counts: dict[str, int] = {}
    log = []
    for t, name in enumerate(requests):
        now = float(t)
        counts[name] = counts.get(name, 0) + 1
        if name in cache:
            entry = cache[name]
            entry.requests, entry.last_used = counts[name], now
            policy.on_hit(entry, now)
            continue
        incoming = Entry(name, sizes[name], 1.0 + sizes[name] / 100, 0.1, counts[name], now, now)
        need = incoming.bytes - (cap - sum(e.bytes for e in cache.values()))
        victims = policy.victims(list(cache.values()), incoming, need, t + 1, now)
        assert victims is not None  # nothing is pinned in this replay
        for v in victims:
            del cache[v.name]
            policy.on_evict(v, now)
        log.append((t, sorted(v.name for v in victims)))
        incoming.pinned = False
        cache[name] = incoming
        policy.on_insert(incoming, now)
    return log


class PolicyInvariants:
    """Every policy: never a pinned or incoming victim; frees ``need`` (stopping as soon as it
    is met) or says it cannot; nothing for ``need <= 0``; deterministic for a seed; a pure
    decision; O(n log n); its victims trimmed largest first unless ``trim=off``."""

    policy_name: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}
    # False for a policy whose own rule takes the largest first (size): the trim keeps all
    trim_changes: ClassVar[bool] = True

    def make(self, seed: int = 0, oracle: Any = None, **extra: Any) -> EvictionPolicy:
        if POLICIES[self.policy_name].needs_oracle and oracle is None:
            oracle = FutureOracle()
        return make_policy(self.policy_name, seed=seed, oracle=oracle, **self.options, **extra)

    def cases(self, count: int = 60, seed: int = 1):
        """Random decisions: ``(cached, incoming, need, total_requests, now, oracle)``."""
        rng = random.Random(seed)
        for _ in range(count):
            cached = random_cache(rng, rng.randint(0, 40))
            incoming = Entry("incoming", rng.randint(1, 3000), 1.0, 0.1, pinned=True)
            if cached and rng.random() < 0.3:
                # the caller may list the incoming model as reserved already (unpinned copy)
                cached.append(dataclasses.replace(incoming, pinned=False, bytes=5000))
            free = sum(e.bytes for e in cached if not e.pinned and e.name != "incoming")
            need = rng.choice([rng.randint(1, max(free, 1)), free, free + 1, rng.randint(1, 3000)])
            now = 1000.0
            oracle = random_oracle(rng, [e.name for e in cached], now)
            yield cached, incoming, need, sum(e.requests for e in cached), now, oracle

    def test_never_evicts_pinned_or_incoming(self):
        for trim, (cached, incoming, need, total, now, oracle) in self.trimmed_or_not():
            policy = self.make(oracle=oracle, trim=trim)
            victims = policy.victims(cached, incoming, need, total, now) or []
            assert not [v.name for v in victims if v.pinned], "evicted a pinned model"
            assert incoming.name not in [v.name for v in victims], "evicted the incoming model"
            assert all(any(v is e for e in cached) for v in victims), "victim not from cached"
            assert len({id(v) for v in victims}) == len(victims), "a victim listed twice"

    def trimmed_or_not(self):
        """Every case of ``cases``, once with the shared trim (the default) and once without."""
        for trim in (True, False):
            for case in self.cases():
                yield trim, case

    def test_frees_need_when_possible_and_says_so_otherwise(self):
        seen_none = seen_some = 0
        for trim, (cached, incoming, need, total, now, oracle) in self.trimmed_or_not():
            evictable_bytes = sum(e.bytes for e in cached if not e.pinned and e.name != "incoming")
            policy = self.make(oracle=oracle, trim=trim)
            victims = policy.victims(cached, incoming, need, total, now)
            if evictable_bytes < need:
                assert victims is None, f"need {need} > evictable {evictable_bytes}: not None"
                seen_none += 1
            else:
                assert victims is not None, f"need {need} <= evictable {evictable_bytes}"
                assert sum(v.bytes for v in victims) >= need
                # nothing evicted that the miss did not require: without the last victim,
                # not enough would be free
                assert need <= 0 or sum(v.bytes for v in victims[:-1]) < need
                seen_some += 1
        assert seen_none and seen_some  # the cases exercise both answers

    def test_trim_keeps_the_fewest_largest_of_what_the_rule_took(self):
        """The shared last step (the seed's): with ``trim`` on (the default) the victims are
        the largest-first prefix, of what the same policy takes with ``trim=off``, that frees
        ``need``; so they are a subset of it, largest first, and minimal by that rule."""
        trimmed_some = 0
        for seed in (0, 4):
            for cached, incoming, need, total, now, oracle in self.cases(seed=seed):
                on = self.make(seed=seed, oracle=oracle).victims(cached, incoming, need, total, now)
                off = self.make(seed=seed, oracle=oracle, trim="off").victims(
                    cached, incoming, need, total, now
                )
                if off is None or need <= 0:
                    assert on == off
                    continue
                by_size = sorted(off, key=lambda v: -v.bytes)  # stable: the rule's order on ties
                prefix, freed = [], 0
                for v in by_size:
                    if freed >= need:
                        break
                    prefix.append(v)
                    freed += v.bytes
                assert [v.name for v in on] == [v.name for v in prefix]
                assert [v.bytes for v in on] == sorted((v.bytes for v in on), reverse=True)
                trimmed_some += len(on) < len(off)
        # the cases include decisions the trim changes (none for a largest-first rule)
        assert bool(trimmed_some) == self.trim_changes

    def test_exactly_all_evictable_bytes(self):
        rng = random.Random(7)
        cached = random_cache(rng, 12)
        incoming = Entry("incoming", 1, 1.0, 0.1, pinned=True)
        unpinned = [e for e in cached if not e.pinned]
        need = sum(e.bytes for e in unpinned)
        victims = self.make().victims(cached, incoming, need, 100, 1000.0)
        assert victims is not None
        assert sorted(v.name for v in victims) == sorted(e.name for e in unpinned)

    def test_nothing_when_need_is_not_positive(self):
        for cached, incoming, _, total, now, oracle in self.cases(count=10):
            for need in (0, -1, -(10**9)):
                assert self.make(oracle=oracle).victims(cached, incoming, need, total, now) == []

    def test_decision_is_pure(self):
        for cached, incoming, need, total, now, oracle in self.cases(count=20):
            before = [dataclasses.astuple(e) for e in cached]
            self.make(oracle=oracle).victims(cached, incoming, need, total, now)
            assert [dataclasses.astuple(e) for e in cached] == before

    def test_deterministic_for_a_seed_and_input(self):
        for seed in (0, 3):
            for cached, incoming, need, total, now, oracle in self.cases(count=20, seed=seed):
                first = self.make(seed=seed, oracle=oracle).victims(
                    cached, incoming, need, total, now
                )
                shuffled = list(cached)
                random.Random(seed).shuffle(shuffled)  # Redis lists hashes in any order
                again = self.make(seed=seed, oracle=oracle).victims(
                    shuffled, incoming, need, total, now
                )
                names = None if first is None else [v.name for v in first]
                assert names == (None if again is None else [v.name for v in again])

    def test_deterministic_over_a_request_stream(self):
        rng = random.Random(11)
        names = [f"f{i}" for i in range(30)]
        sizes = {n: rng.randint(10, 100) for n in names}
        requests = [names[min(int(rng.paretovariate(1.2)) - 1, 29)] for _ in range(400)]
        oracle = FutureOracle([(float(t), n) for t, n in enumerate(requests)])
        runs = [
            replay(self.make(seed=5, oracle=oracle), requests, sizes, cap=400) for _ in range(2)
        ]
        assert runs[0] == runs[1]
        assert sum(len(victims) for _, victims in runs[0]) > 0  # the cap forced evictions
