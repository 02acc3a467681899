"""Benchmark: what one eviction decision and one proactive update cost, per policy.

``python benchmarks/policy_decisions.py`` prints a table of median microseconds per ``victims`` call
for caches of several sizes, with LRU (the cheapest ordering) measured in the same run as the
baseline, and the cost of ``on_invocation`` + ``next_event_time`` per proactive policy against
``none``. The simulator calls ``victims`` once per miss and ``on_invocation`` once per request,
so these numbers bound what a policy adds to a simulated request.
"""

from __future__ import annotations

import random
import statistics
import time
from functools import partial

import click
from tabulate import tabulate

from agent.policies import POLICIES, Entry, make_policy
from agent.policies.proactive import PROACTIVE, make_proactive


class _UniformFuture:
    """An oracle with a fixed, random next request per model (enough to time a decision)."""

    def __init__(self, names: list[str], rng: random.Random) -> None:
        self.next = {n: rng.uniform(1.0, 1000.0) for n in names}

    def next_use(self, name: str, now: float) -> float:
        return now + self.next.get(name, 1e9)


def _cache(n: int, rng: random.Random) -> list[Entry]:
    return [
        Entry(
            f"m{i}",
            rng.randint(1_000_000, 100_000_000),
            rng.uniform(0.05, 5.0),
            rng.uniform(0.005, 0.5),
            requests=rng.randint(1, 10_000),
            last_used=rng.uniform(0, 1000),
            inserted_at=rng.uniform(0, 1000),
            pinned=rng.random() < 0.1,
            priority=rng.uniform(0, 1),
        )
        for i in range(n)
    ]


def _median_us(fn, calls: int, repeats: int = 5) -> float:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(runs)


def decision_table(sizes: tuple[int, ...], calls: int) -> list[list[object]]:
    rng = random.Random(0)
    rows = []
    caches = {n: _cache(n, rng) for n in sizes}
    futures = {n: _UniformFuture([e.name for e in caches[n]], rng) for n in sizes}
    incoming = Entry("incoming", 50_000_000, 1.0, 0.1, pinned=True)
    baseline: dict[int, float] = {}
    for name in ["lru", *sorted(set(POLICIES) - {"lru"})]:
        row: list[object] = [name]
        for n in sizes:
            policy = make_policy(name, oracle=futures[n])
            cached = caches[n]
            need = sum(e.bytes for e in cached if not e.pinned) // 10  # about a tenth goes
            decide = partial(policy.victims, cached, incoming, need, 10**6, 0.0)
            us = _median_us(decide, calls)
            baseline.setdefault(n, us)
            row += [f"{us:.1f}", f"{us / baseline[n]:.1f}x"]
        rows.append(row)
    return rows


def proactive_table(requests: int, functions: int) -> list[list[object]]:
    rng = random.Random(1)
    stream, now = [], 0.0
    for _ in range(requests):
        now += rng.expovariate(1 / 2.0)
        stream.append((f"f{int(rng.paretovariate(1.1)) % functions}", now))
    rows = []
    baseline = None
    for name in ["none", *sorted(set(PROACTIVE) - {"none"})]:

        def run(name: str = name) -> None:
            policy = make_proactive(name)
            for fn, t in stream:
                policy.on_invocation(fn, t)
                policy.next_event_time(t)

        us = _median_us(run, 1, repeats=3) / len(stream)
        baseline = baseline or us
        rows.append([name, f"{us:.2f}", f"{us / baseline:.1f}x"])
    return rows


@click.command()
@click.option("--sizes", default="20,100,1000", show_default=True, help="Cached models.")
@click.option("--calls", default=200, show_default=True, help="Decisions per timing run.")
@click.option("--requests", default=50_000, show_default=True, help="Proactive stream length.")
def main(sizes: str, calls: int, requests: int) -> None:
    """Print the cost of eviction decisions and proactive updates, per policy."""
    ns = tuple(int(s) for s in sizes.split(","))
    headers = ["policy"] + [h for n in ns for h in (f"us @ {n}", "vs lru")]
    click.echo("Eviction: median microseconds per victims() call (a tenth of the cache goes)")
    click.echo(tabulate(decision_table(ns, calls), headers=headers, disable_numparse=True))
    click.echo()
    click.echo("Proactive: median microseconds per on_invocation() + next_event_time()")
    rows = proactive_table(requests, 200)
    click.echo(tabulate(rows, headers=["policy", "us", "vs none"], disable_numparse=True))


if __name__ == "__main__":
    main()
