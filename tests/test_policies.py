"""Eviction policies: the shared invariants (``tests/policy_mixin.py``) for every registered
policy, each policy's own ordering on small hand-made cases, and ``brulee policies``."""

from __future__ import annotations

from collections import Counter

import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.policies import ALIASES, POLICIES, Entry, make_policy, parse_policy_spec
from agent.policies.proactive import PROACTIVE, PROACTIVE_ALIASES
from tests.policy_mixin import FutureOracle, PolicyInvariants

INCOMING = Entry("incoming", 1, 1.0, 0.1, pinned=True)


def e(name: str, bytes_: int = 100, load_s: float = 1.0, exec_s: float = 0.1, **facts) -> Entry:
    return Entry(name, bytes_, load_s, exec_s, **facts)


def names(victims: list[Entry] | None) -> list[str] | None:
    return None if victims is None else [v.name for v in victims]


def decide(policy, cached, need, total=100, now=1000.0):
    return names(policy.victims(cached, INCOMING, need, total, now))


# -- CremeBrulee: the worked examples -----------------------------------------------------


class TestCremeBrulee(PolicyInvariants):
    policy_name = "cremebrulee"

    # Equal sizes; pop scaled by 10 requests, cost scaled by 4.0 s:
    #   x: pop 1.0 x cost 0.05 = 0.05   (most popular, cheapest to reload)
    #   y: pop 0.1 x cost 1.0  = 0.10   (least popular, dearest to reload)
    #   z: pop 0.4 x cost 0.1  = 0.04   <- lowest utility
    def utility_case(self):
        return [
            e("x", load_s=0.2, exec_s=0.01, requests=10),
            e("y", load_s=4.0, exec_s=2.0, requests=1),
            e("z", load_s=0.4, exec_s=0.4, requests=4),
        ]

    def test_utility_weighs_popularity_and_cost(self):
        cached = self.utility_case()
        assert decide(self.make(), cached, 1) == ["z"]
        # Neither factor alone picks z: popularity evicts y, load time evicts x.
        assert decide(make_policy("popularity"), cached, 1) == ["y"]
        assert decide(make_policy("loadtime"), cached, 1) == ["x"]

    def test_utility_values(self):
        cached = self.utility_case()
        u = self.make().utilities(cached, 15, 0.0)
        assert [u[id(c)] * 100 for c in cached] == pytest.approx([0.05, 0.10, 0.04])

    def test_cost_increase_and_exponents_change_the_answer(self):
        cached = self.utility_case()
        # cost = load/exec: x 20, y 2, z 1 -> scaled 1, .1, .05; u: x 1, y .01, z .02
        assert decide(make_policy("cremebrulee", cost="increase"), cached, 1) == ["y"]
        assert decide(make_policy("cremebrulee", cost="cost-increase"), cached, 1) == ["y"]
        # pop^2: x .05, y .01, z .016
        assert decide(make_policy("cremebrulee", boundary_scale=2), cached, 1) == ["y"]
        # cost^2: x .0025, y .1, z .004
        assert decide(make_policy("cremebrulee", cost_scale=2), cached, 1) == ["x"]
        # exponents 0: every utility is 1/bytes, all equal here: the name decides
        flat = make_policy("cremebrulee", boundary_scale=0, cost_scale=0)
        assert decide(flat, cached, 1) == ["x"]

    def test_size_switch(self):
        # p: pop .5, cost 1, 100 B -> .005/B; q: pop 1, cost 1, 400 B -> .0025/B
        cached = [e("p", 100, requests=2), e("q", 400, requests=4)]
        assert decide(self.make(), cached, 1) == ["q"]
        assert decide(make_policy("cremebrulee", use_size=False), cached, 1) == ["p"]
        assert decide(make_policy("cremebrulee", use_size="off"), cached, 1) == ["p"]

    # Selection: R = 99; pop scaled by 50 requests, cost by 2.0 s:
    #   c:  40 B, pop .04 x cost .25 / 40  = 0.00025   (lowest)
    #   b: 100 B, pop .10 x cost .50 / 100 = 0.0005
    #   a: 100 B, pop 1.0 x cost .50 / 100 = 0.005
    #   d:  30 B, pop .80 x cost 1.0 / 30  = 0.0267    (highest)
    def selection_case(self):
        return [
            e("a", 100, load_s=1.0, requests=50),
            e("b", 100, load_s=1.0, requests=5),
            e("c", 40, load_s=0.5, requests=2),
            e("d", 30, load_s=2.0, requests=40),
        ]

    def test_largest_first_trimming_keeps_the_small_model(self):
        cached = self.selection_case()
        # Steps 1-2 take c (40) then b (140 >= 100); step 3 keeps only b, which alone frees 100.
        assert decide(self.make(), cached, 100, total=99) == ["b"]
        # Without step 3 (trim=off: plain order-and-take) c would go too.
        assert decide(self.make(trim="off"), cached, 100, total=99) == ["c", "b"]
        # Step 3 is every policy's: popularity takes the same c, b here, and keeps c too.
        assert decide(make_policy("popularity"), cached, 100, total=99) == ["b"]
        assert decide(make_policy("popularity", trim=False), cached, 100, total=99) == ["c", "b"]
        # When b alone is not enough, both go (largest first).
        assert decide(self.make(), cached, 120, total=99) == ["b", "c"]

    def test_pinning_changes_the_victim(self):
        cached = self.selection_case()
        cached[1].pinned = True  # b is executing
        # c (40) then a (140); a alone frees 100, so a goes and c stays.
        assert decide(self.make(), cached, 100, total=99) == ["a"]
        # all of c, a, d together cannot free 200: say so
        assert decide(self.make(), cached, 200, total=99) is None

    def test_scaling_is_across_every_cached_model(self):
        # S() divides by the maximum over the cached models, pinned ones included: with d
        # (the dearest to reload) pinned, a's cost is still 1.0 / 2.0, not 1.0 / 1.0.
        cached = self.selection_case()
        cached[3].pinned = True
        u = self.make().utilities(cached, 99, 0.0)
        assert u[id(cached[0])] == pytest.approx(1.0 * 0.5 / 100)
        assert u[id(cached[3])] == pytest.approx(0.8 * 1.0 / 30)

    @pytest.mark.parametrize(
        "options, message",
        [
            ({"cost": "cheap"}, "cost must be one of"),
            ({"boundary_scale": -1}, "boundary_scale must be a finite number >= 0"),
            ({"cost_scale": "abc"}, "cost_scale must be a number"),
            ({"use_size": "maybe"}, "use_size must be true or false"),
            ({"bogus": 1}, "unexpected keyword argument 'bogus'"),
        ],
    )
    def test_bad_options_are_named(self, options, message):
        with pytest.raises(ValueError, match=message):
            make_policy("cremebrulee", **options)


class TestCremeBruleeOracle(PolicyInvariants):
    policy_name = "cremebrulee-oracle"

    def test_future_replaces_past_popularity(self):
        # a was popular but is never requested again; b is rare but needed in 1 s.
        cached = [e("a", requests=90), e("b", requests=1)]
        oracle = FutureOracle([(1001.0, "b"), (1500.0, "a")])
        assert decide(self.make(oracle=oracle), cached, 1) == ["a"]
        assert decide(make_policy("cremebrulee"), cached, 1) == ["b"]
        never = FutureOracle([(1001.0, "b")])  # a: pop 0 -> utility 0
        assert decide(self.make(oracle=never), cached, 1) == ["a"]

    def test_needs_an_oracle(self):
        with pytest.raises(ValueError, match="needs an oracle"):
            make_policy("cremebrulee-oracle")


class TestCremeBruleeRandom(PolicyInvariants):
    policy_name = "cremebrulee-random"

    def test_draws_follow_one_minus_scaled_utility(self):
        # Same cost and size; utility follows requests: 1, 5, 10 -> weights .9, .5, 0.
        cached = [e("low", requests=1), e("mid", requests=5), e("top", requests=10)]
        policy = self.make(seed=42)
        counts = Counter(decide(policy, cached, 1)[0] for _ in range(2000))
        assert counts["top"] == 0  # weight 0: never drawn while others suffice
        assert 0.55 < counts["low"] / 2000 < 0.75  # expected .9 / 1.4 = .64
        # the most useful model goes only when nothing else frees enough
        assert sorted(decide(policy, cached, 300)) == ["low", "mid", "top"]

    def test_seed_changes_the_draws(self):
        cached = [e(f"m{i}", requests=i + 1) for i in range(10)]
        assert len({tuple(decide(self.make(seed=s), cached, 300)) for s in range(20)}) > 1


# -- baselines -----------------------------------------------------------------------------


class TestBelady(PolicyInvariants):
    policy_name = "belady"

    def test_furthest_next_request_first(self):
        cached = [e("soon"), e("later"), e("never"), e("latest")]
        oracle = FutureOracle([(1001.0, "soon"), (1100.0, "later"), (1200.0, "latest")])
        policy = self.make(oracle=oracle)
        assert decide(policy, cached, 1) == ["never"]
        assert decide(policy, cached, 201) == ["never", "latest", "later"]

    def test_needs_an_oracle(self):
        with pytest.raises(ValueError, match="needs an oracle"):
            make_policy("belady")


class TestLRU(PolicyInvariants):
    policy_name = "lru"

    def test_least_recently_used_first(self):
        cached = [e("a", last_used=30), e("b", last_used=10), e("c", last_used=20)]
        assert decide(self.make(), cached, 150) == ["b", "c"]


class TestLFU(PolicyInvariants):
    policy_name = "lfu"

    def test_counts_requests_since_loaded(self):
        policy = self.make()
        old = e("old", requests=100, last_used=5)  # popular long ago
        new = e("new", requests=3, last_used=1)
        policy.on_insert(old, 0.0)
        policy.on_insert(new, 0.0)
        for _ in range(2):  # two hits on new since it was loaded, none on old
            new.requests += 1
            policy.on_hit(new, 1.0)
        assert decide(policy, [old, new], 1) == ["old"]
        assert decide(make_policy("popularity"), [old, new], 1) == ["new"]

    def test_ties_go_to_least_recently_used(self):
        policy = self.make()
        cached = [e("a", requests=4, last_used=9), e("b", requests=7, last_used=3)]
        for c in cached:
            policy.on_insert(c, 0.0)
        assert decide(policy, cached, 1) == ["b"]


class TestFIFO(PolicyInvariants):
    policy_name = "fifo"

    def test_longest_in_cache_first(self):
        cached = [
            e("a", inserted_at=3, last_used=99, requests=50),
            e("b", inserted_at=1, last_used=98, requests=60),
            e("c", inserted_at=2, last_used=1, requests=1),
        ]
        assert decide(self.make(), cached, 150) == ["b", "c"]


class TestRandom(PolicyInvariants):
    policy_name = "random"

    def test_uniform_over_candidates(self):
        cached = [e(n) for n in "abcd"] + [e("pinned", pinned=True)]
        policy = self.make(seed=1)
        counts = Counter(decide(policy, cached, 1)[0] for _ in range(4000))
        assert set(counts) == set("abcd")
        assert all(0.2 < c / 4000 < 0.3 for c in counts.values()), counts

    def test_seed_changes_the_draws(self):
        cached = [e(f"m{i}") for i in range(20)]
        assert len({tuple(decide(self.make(seed=s), cached, 300)) for s in range(10)}) > 1


class TestSize(PolicyInvariants):
    policy_name = "size"
    trim_changes = False  # it takes the largest first already

    def test_largest_first(self):
        cached = [e("small", 10), e("large", 300), e("medium", 100)]
        assert decide(self.make(), cached, 5) == ["large"]
        assert decide(self.make(), cached, 350) == ["large", "medium"]


class TestLoadTime(PolicyInvariants):
    policy_name = "loadtime"

    def test_cheapest_to_reload_first(self):
        cached = [e("slow", load_s=5.0), e("fast", load_s=0.1), e("mid", load_s=1.0)]
        assert decide(self.make(), cached, 150) == ["fast", "mid"]


class TestPopularity(PolicyInvariants):
    policy_name = "popularity"

    def test_lowest_share_first(self):
        cached = [e("hot", requests=80), e("cold", requests=2), e("warm", requests=18)]
        assert decide(self.make(), cached, 150) == ["cold", "warm"]


class TestGDSF(PolicyInvariants):
    policy_name = "gdsf"

    def test_priority_formula_and_order(self):
        policy = self.make()
        a = e("a", 100, load_s=2.0, exec_s=1.0, requests=10)  # 10 * 1.0 / 100 = 0.1
        b = e("b", 50, load_s=1.5, exec_s=0.5, requests=2)  # 2 * 1.0 / 50 = 0.04
        for x in (a, b):
            policy.on_insert(x, 0.0)
        assert (a.priority, b.priority) == pytest.approx((0.1, 0.04))
        assert decide(policy, [a, b], 1) == ["b"]

    def test_clock_ages_idle_models(self):
        """a is worth more than d on its own facts, but it sat idle while the clock rose past
        its priority: d, inserted later, outranks it and a is evicted."""
        policy = self.make()
        a = e("a", 100, load_s=6.0, exec_s=1.0, requests=10)  # priority 0.5
        policy.on_insert(a, 0.0)
        for i in range(3):  # evictions of other models raise the clock to 0.45
            other = e(f"o{i}", 10, requests=1)
            other.priority = 0.15 * (i + 1)
            policy.on_evict(other, float(i))
        assert policy.clock == pytest.approx(0.45)
        d = e("d", 100, load_s=2.0, exec_s=1.0, requests=10)  # 0.45 + 0.1 = 0.55
        policy.on_insert(d, 5.0)
        assert d.priority == pytest.approx(0.55)
        assert decide(policy, [a, d], 1) == ["a"]
        # a hit refreshes a's priority with the current clock: 0.45 + 11 * 5 / 100
        a.requests += 1
        policy.on_hit(a, 6.0)
        assert a.priority == pytest.approx(1.0)
        assert decide(policy, [a, d], 1) == ["d"]

    def test_clock_never_goes_down(self):
        policy = self.make()
        policy.on_evict(e("x", priority=2.0), 0.0)
        policy.on_evict(e("y", priority=1.0), 0.0)
        assert policy.clock == 2.0

    def test_greedy_dual_alias(self):
        assert make_policy("greedy-dual").name == "gdsf"


# -- the shared trim -----------------------------------------------------------------------


def test_trim_is_every_policys_last_step_and_an_option_of_each():
    # LRU takes the least recent first: small s (10 B), then big (100 B) reaches need 60;
    # the trim keeps s, as the seed's placement controller does for every policy.
    cached = [e("s", 10, last_used=1), e("big", 100, last_used=2), e("new", 100, last_used=3)]
    assert decide(make_policy("lru"), cached, 60) == ["big"]
    assert decide(make_policy("lru", trim="off"), cached, 60) == ["s", "big"]
    for name, cls in POLICIES.items():
        oracle = FutureOracle() if cls.needs_oracle else None
        assert make_policy(name, oracle=oracle).trim is True, name
        assert make_policy(name, oracle=oracle, trim="off").trim is False, name


def test_trim_through_the_policy_spec():
    name, options = parse_policy_spec("lru:trim=off")
    assert (name, options) == ("lru", {"trim": "off"})
    assert make_policy(name, **options).trim is False
    name, options = parse_policy_spec("cremebrulee:cost=increase:trim=false")
    assert make_policy(name, **options).trim is False
    with pytest.raises(ValueError, match="trim must be true or false"):
        make_policy("lru", trim="sometimes")
    with pytest.raises(ValueError, match="expected key=value"):
        parse_policy_spec("lru:trim")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("lru:trim=maybe", "trim must be true or false"),
        ("lruu", "unknown eviction policy 'lruu'"),
        ("belady", "needs an oracle"),
    ],
)
def test_agent_policy_option_is_checked_before_anything_starts(spec, message):
    for command in ("up", "worker"):
        result = CliRunner().invoke(main, [command, "--policy", spec])
        assert result.exit_code == 2, result.output
        assert message in result.output


# -- the registry --------------------------------------------------------------------------


def test_every_policy_is_held_to_the_invariants():
    tested = {cls.policy_name for cls in PolicyInvariants.__subclasses__()}
    assert tested == set(POLICIES)


def test_unknown_policy_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown eviction policy 'lruu'; valid: .*lru"):
        make_policy("lruu")


def test_every_policy_has_a_description():
    for cls in POLICIES.values():
        assert cls.description and "\n" not in cls.description


def test_brulee_policies_lists_every_name():
    result = CliRunner().invoke(main, ["policies"])
    assert result.exit_code == 0, result.output
    first_words = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    for registry in (POLICIES, PROACTIVE):
        for name, cls in registry.items():
            assert cls.description in first_words.get(name, ""), name
    for alias in (*ALIASES, *PROACTIVE_ALIASES):
        assert alias in result.output
    assert "cost=direct" in result.output and "ttl_s=600.0" in result.output
