"""Proactive (keep-alive and prewarm) policies: the histogram's percentiles and CV, the
ATC'20 windows and their fallback, the fixed TTL, warming, and what every one must hold."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from agent.policies import Entry
from agent.policies.proactive import PROACTIVE, make_proactive
from agent.policies.proactive.histogram import HybridHistogram, IdleHistogram

MIN = 60.0


def e(name: str, bytes_: int = 100, **facts) -> Entry:
    return Entry(name, bytes_, facts.pop("load_s", 1.0), facts.pop("exec_s", 0.1), **facts)


# -- the idle-time histogram ---------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_percentile_bins_match_a_sorted_list(seed):
    rng = random.Random(seed)
    h = IdleHistogram(bins=240, bin_s=MIN)
    idle = [rng.expovariate(1 / rng.choice([30, 600, 5000])) for _ in range(rng.randint(1, 500))]
    for x in idle:
        h.add(x)
    in_range = sorted(int(x // MIN) for x in idle if x < 240 * MIN)
    assert h.n == len(in_range) and h.out_of_range == len(idle) - len(in_range)
    for p in (1, 5, 50, 99, 100):
        rank = max(1, math.ceil(p / 100 * len(in_range)))
        assert h.percentile_bin(p) == in_range[rank - 1], p
    counts = np.bincount(in_range, minlength=240)
    assert h.cv() == pytest.approx(counts.std() / counts.mean())


def test_cv_separates_a_sharp_peak_from_a_flat_spread():
    peak, flat = IdleHistogram(240, MIN), IdleHistogram(240, MIN)
    for i in range(240):
        peak.add(30 * MIN + 5)
        flat.add(i * MIN + 5)
    assert peak.cv() == pytest.approx(math.sqrt(239))
    assert flat.cv() == 0.0


# -- hybrid histogram ----------------------------------------------------------------------


def invoke_every(policy, name: str, period_s: float, count: int, start: float = 0.0) -> float:
    t = start
    for i in range(count):
        t = start + i * period_s
        policy.on_invocation(name, t)
    return t


def test_regular_pattern_unloads_then_prewarms_then_expires():
    policy = make_proactive("histogram")
    last = invoke_every(policy, "f", 30 * MIN + 10, 12)  # idle times in bin 30
    prewarm_s, keep_s, from_histogram = policy.windows("f")
    assert from_histogram
    assert prewarm_s == pytest.approx(30 * MIN * 0.9)  # lower edge of the p5 bin x 0.9
    assert keep_s == pytest.approx(31 * MIN * 1.1)  # upper edge of the p99 bin x 1.1

    cached = [e("f", last_used=last)]
    assert policy.expired(cached, last) == ["f"]  # idle until the prewarm: unload now
    assert policy.expired([e("f", last_used=last, pinned=True)], last) == []  # still executing
    assert policy.next_event_time(last) == pytest.approx(last + prewarm_s)

    assert policy.prewarm(last + prewarm_s - 1, 10**6, [e("f")]) == []
    assert policy.prewarm(last + prewarm_s, 10**6, [e("f")]) == ["f"]
    assert policy.prewarm(last + prewarm_s, 99, [e("f")]) == []  # only into free memory
    assert policy.expired(cached, last + prewarm_s) == []  # inside the window: keep
    assert policy.next_event_time(last + prewarm_s) == pytest.approx(last + keep_s)

    assert policy.expired(cached, last + keep_s) == ["f"]
    assert policy.prewarm(last + keep_s, 10**6, [e("f")]) == []  # window closed
    assert policy.next_event_time(last + keep_s) == math.inf


def test_short_idle_times_keep_the_model_loaded():
    policy = make_proactive("histogram")
    last = invoke_every(policy, "f", 20.0, 15)  # all in bin 0: head 0
    prewarm_s, keep_s, from_histogram = policy.windows("f")
    assert from_histogram and prewarm_s == 0 and keep_s == pytest.approx(MIN * 1.1)
    assert policy.expired([e("f", last_used=last)], last + 1) == []
    assert policy.expired([e("f", last_used=last)], last + keep_s) == ["f"]


@pytest.mark.parametrize(
    "why, periods",
    [
        ("too few samples", [30 * MIN] * 5),
        ("irregular: idle times spread over the whole range", [i * MIN + 5 for i in range(240)]),
        ("mostly beyond the 4-hour range", [5 * 3600.0] * 20 + [30 * MIN] * 10),
    ],
)
def test_unrepresentative_histogram_falls_back_to_the_ttl(why, periods):
    policy = make_proactive("histogram", fallback_ttl_s=900)
    t = 0.0
    policy.on_invocation("f", t)
    for p in periods:
        t += p
        policy.on_invocation("f", t)
    assert policy.windows("f") == (0.0, 900.0, False), why
    cached = [e("f", last_used=t)]
    assert policy.expired(cached, t + 899) == []
    assert policy.expired(cached, t + 900) == ["f"]
    assert policy.prewarm(t + 100, 10**6, [e("f")]) == []
    assert policy.next_event_time(t) == t + 900


def test_histogram_unknown_model_uses_the_fallback_on_last_used():
    policy = make_proactive("histogram", fallback_ttl_s=600)
    assert policy.expired([e("g", last_used=100.0)], 699.0) == []
    assert policy.expired([e("g", last_used=100.0)], 700.0) == ["g"]


def test_prewarm_earliest_due_first_within_free_bytes():
    policy = make_proactive("histogram")
    # both last invoked at 330 min; a every 30 min: window [+27, +34.1] min;
    # b every 28 min: window [+25.2, +31.9] min. At +28 min both are due, b for longer.
    calls = [(i * 30 * MIN, "a") for i in range(12)]
    calls += [(22 * MIN + i * 28 * MIN, "b") for i in range(12)]
    for t, name in sorted(calls):
        policy.on_invocation(name, t)
    now = 330 * MIN + 28 * MIN
    candidates = [e("a", 300), e("b", 300)]
    assert policy.prewarm(now, 1000, candidates) == ["b", "a"]
    assert policy.prewarm(now, 400, candidates) == ["b"]


def test_histogram_bad_options_are_named():
    with pytest.raises(ValueError, match="head_percentile .* must not exceed"):
        HybridHistogram(head_percentile=99, tail_percentile=5)
    with pytest.raises(ValueError, match="head_margin must be between 0 and 1"):
        HybridHistogram(head_margin=1.5)
    with pytest.raises(ValueError, match="bin_s must be a finite number of seconds > 0"):
        HybridHistogram(bin_s=0)


# -- fixed TTL, none, warming --------------------------------------------------------------


def test_fixed_ttl():
    policy = make_proactive("ttl", ttl_s=600)
    policy.on_invocation("a", 100.0)
    policy.on_invocation("b", 300.0)
    cached = [e("a", last_used=100.0), e("b", last_used=300.0), e("c", last_used=0.0)]
    assert policy.expired(cached, 599.0) == []
    assert policy.expired(cached, 600.0) == ["c"]  # never seen invoked: counts from last_used
    assert policy.expired(cached, 700.0) == ["a", "c"]
    assert policy.expired([e("a", last_used=100.0, pinned=True)], 10**6) == []
    assert policy.next_event_time(0.0) == 700.0
    assert policy.next_event_time(700.0) == 900.0
    policy.on_invocation("b", 800.0)  # b's deadline moves: 900 is no longer an event
    assert policy.next_event_time(700.0) == 1400.0
    assert policy.prewarm(1000.0, 10**9, [e("z", requests=5)]) == []


@pytest.mark.parametrize("name", ["ttl", "histogram"])
def test_deadlines_kept_do_not_grow_with_requests(name):
    # the agent's keep-alive loop never asks for the next event: what the policy keeps must
    # still be bounded by the models, not by the requests
    policy = make_proactive(name)
    for i in range(20_000):
        policy.on_invocation(f"m{i % 5}", float(i))
    assert len(policy._timeline._heap) <= 2 * 5 + 64 + 2
    assert policy.next_event_time(0.0) > 20_000 - 5  # the live deadlines are still there


def test_none_does_nothing():
    policy = make_proactive("none")
    policy.on_invocation("a", 0.0)
    assert policy.expired([e("a", last_used=0.0)], 10**9) == []
    assert policy.prewarm(10**9, 10**9, [e("b", requests=5)]) == []
    assert policy.next_event_time(0.0) == math.inf


def test_warming_loads_highest_utility_into_free_memory():
    policy = make_proactive("warming")
    candidates = [
        e("hot", 100, requests=50),  # u: pop 1 x cost 1 / 100 = .01
        e("warm", 100, requests=10),  # .002
        e("big", 2000, requests=50),  # .0005, and too big for the free memory
        e("never", 10, requests=0),  # never requested: not worth loading
        e("tiny", 10, requests=1),  # .02 x 1 / 10 = .002: ties with warm, name decides
    ]
    assert policy.prewarm(0.0, 250, candidates) == ["hot", "tiny", "warm"]
    assert policy.prewarm(0.0, 150, candidates) == ["hot", "tiny"]
    assert policy.prewarm(0.0, 5, candidates) == []
    assert policy.expired([e("hot", last_used=0.0)], 10**9) == []


# -- what every proactive policy holds -----------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROACTIVE))
def test_every_proactive_policy_invariants(name):
    rng = random.Random(3)
    policy = make_proactive(name)
    models = [e(f"m{i}", rng.randint(10, 500), requests=rng.randint(0, 50)) for i in range(20)]
    t = 0.0
    for _ in range(600):
        t += rng.expovariate(1 / 120)
        policy.on_invocation(rng.choice(models[:10]).name, t)
    for now in (t, t + 300, t + 3000, t + 30000):
        cached = [
            e(m.name, m.bytes, last_used=t - 50, pinned=i % 3 == 0)
            for i, m in enumerate(models[:12])
        ]
        gone = policy.expired(cached, now)
        assert gone == sorted(gone)
        assert not {c.name for c in cached if c.pinned} & set(gone)
        assert set(gone) <= {c.name for c in cached}
        free = rng.randint(0, 2000)
        loaded = policy.prewarm(now, free, models[12:])
        assert set(loaded) <= {m.name for m in models[12:]}
        assert sum(m.bytes for m in models if m.name in loaded) <= free
        assert policy.prewarm(now, free, models[12:]) == loaded  # deterministic
        assert policy.next_event_time(now) > now
    with pytest.raises(ValueError, match="earlier than the previous one"):
        policy.on_invocation("m0", t - 1)


def test_unknown_proactive_policy_and_option():
    with pytest.raises(ValueError, match="unknown proactive policy 'tll'; valid: .*ttl"):
        make_proactive("tll")
    with pytest.raises(ValueError, match="unexpected keyword argument 'ttl'"):
        make_proactive("ttl", ttl=5)
    with pytest.raises(ValueError, match="ttl_s must be a finite number of seconds > 0"):
        make_proactive("fixed-ttl", ttl_s=-1)
    assert make_proactive("hybrid").name == "histogram"
