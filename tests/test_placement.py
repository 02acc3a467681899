"""Placement against a real redis-server: the atomic decision never over-commits the cap, never
evicts what is executing, and never loads a model twice in parallel."""

from __future__ import annotations

import json
import threading

import pytest
import redis

from agent.keepalive import expire_idle, prewarm
from agent.keys import key
from agent.placement import SCALE_OUT_QUEUE, MemoryBusy, ModelFacts, ModelTooLarge, Placement
from agent.snapshot import snapshot
from tests.agent_fixtures import redis_server

CAP = 1000


@pytest.fixture()
def conn():
    with redis_server() as server:
        yield redis.Redis.from_url(server.url)


def _setup(conn: redis.Redis, workers: int = 2) -> Placement:
    cache = Placement(conn, "cremebrulee")
    cache.members.set_device("dev", cap=CAP, policy="cremebrulee")
    for i in range(workers):
        cache.members.register(f"w{i}", "dev", 100 + i, "host")
    return cache


def _used(cache: Placement) -> int:
    return snapshot(cache)["devices"]["dev"]["used_bytes"]


def _served(cache: Placement, model: str, worker: str) -> None:
    """What the worker does around the placed request: claim the copy (no longer queued,
    pinned), run it, unpin."""
    cache.copies.claim("dev", model, worker)
    cache.copies.unpin("dev", model, worker, 0.01)


def _no_enqueue(pipe, placement):
    return placement


def test_concurrent_misses_never_exceed_cap(conn):
    cache = _setup(conn, workers=3)
    over, errors = [], []

    def place(i: int) -> None:
        own = Placement(redis.Redis(connection_pool=conn.connection_pool), "cremebrulee")
        try:
            placement, _ = own.place(ModelFacts(f"m{i}", 300, 0.1, 0.01), _no_enqueue)
            # the job finishes and the model is ready: it becomes evictable
            own.copies.loaded("dev", f"m{i}", placement.worker, 300, 0.1)
            _served(own, f"m{i}", placement.worker)
            for victim, worker in placement.evicted:
                own.copies.released("dev", victim, worker)
        except MemoryBusy as exc:
            errors.append(exc)
        used = _used(own)
        if used > CAP:
            over.append(used)

    threads = [threading.Thread(target=place, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not over, f"cache over cap: {over}"
    assert _used(cache) <= CAP
    assert len(errors) < 20  # most placements succeed


def test_pinned_models_are_never_evicted(conn):
    cache = _setup(conn, workers=1)
    cache.place(ModelFacts("a", 600, 0.1, 0.01), _no_enqueue)  # loading, pinned: not finished
    with pytest.raises(MemoryBusy):
        cache.place(ModelFacts("b", 600, 0.1, 0.01), _no_enqueue)
    cache.copies.loaded("dev", "a", "w0", 600, 0.1)
    _served(cache, "a", "w0")
    placement, _ = cache.place(ModelFacts("b", 600, 0.1, 0.01), _no_enqueue)
    assert placement.evicted == [("a", "w0")]


def test_loading_model_is_not_loaded_twice(conn):
    cache = _setup(conn, workers=2)
    first, _ = cache.place(ModelFacts("a", 100, 0.1, 0.01), _no_enqueue)
    second, _ = cache.place(ModelFacts("a", 100, 0.1, 0.01), _no_enqueue)
    assert not first.hit and second.hit
    assert second.worker == first.worker  # queued behind the load instead of a second load
    entries = conn.hkeys(key("entries", "dev"))
    assert len(entries) == 1


def test_idle_workers_share_the_copies(conn):
    """With every worker idle, new copies go to the worker holding the fewest, so that two
    models' calls run in parallel instead of queueing on one worker."""
    cache = _setup(conn, workers=2)
    placed = {}
    for name in ("a", "b", "c", "d"):
        decision, _ = cache.place(ModelFacts(name, 100, 0.1, 0.01), _no_enqueue)
        _served(cache, name, decision.worker)
        placed[name] = decision.worker
    assert sorted(placed.values()) == ["w0", "w0", "w1", "w1"], placed


def test_model_larger_than_cap_is_refused(conn):
    cache = _setup(conn, workers=1)
    with pytest.raises(ModelTooLarge, match="1000 bytes"):
        cache.place(ModelFacts("huge", 5000, 0.1, 0.01), _no_enqueue)


def test_dead_worker_models_are_released(conn):
    cache = _setup(conn, workers=1)
    cache.place(ModelFacts("a", 100, 0.1, 0.01), _no_enqueue)
    assert cache.members.forget_worker("w0") == ["a"]
    assert not conn.hkeys(key("entries", "dev"))


def test_keep_alive_evicts_idle_models_only(conn):
    from agent.policies.proactive import make_proactive

    cache = _setup(conn, workers=1)
    for name, busy in (("idle", False), ("busy", True)):
        cache.place(ModelFacts(name, 100, 0.1, 0.01), _no_enqueue, now=1000.0)
        cache.copies.loaded("dev", name, "w0", 100, 0.1)
        if busy:  # its worker runs an invocation on it: pinned
            cache.copies.claim("dev", name, "w0")
        else:  # served: nothing queued or running on it
            _served(cache, name, "w0")
    evicted = expire_idle(cache, make_proactive("ttl", ttl_s=60), now=1100.0)
    assert evicted == [("idle", "w0")]  # "busy" is still executing: never expired
    assert conn.llen("rq:queue:brulee.w0") == 1  # the worker is told to drop it


def _warm(cache: Placement, name: str, load_s: float, requests: int, now: float) -> None:
    for i in range(requests):
        placement, _ = cache.place(ModelFacts(name, 400, load_s, 0.01), _no_enqueue, now=now + i)
        if not placement.hit:
            cache.copies.loaded("dev", name, "w0", 400, load_s)
        _served(cache, name, "w0")


@pytest.mark.parametrize(("policy", "victim"), [("lru", "popular"), ("cremebrulee", "rare")])
def test_cremebrulee_evicts_differently_from_lru(conn, policy, victim):
    """A popular model that is slow to load, used first, and a rarely used cheap one, used
    last: LRU evicts the popular one (least recent); CremeBrulee keeps it (a miss on it costs
    more and it is likelier to be asked for again) and evicts the rare one."""
    cache = Placement(conn, policy)
    cache.members.set_device("dev", cap=CAP, policy=policy)
    cache.members.register("w0", "dev", 100, "host")
    _warm(cache, "popular", load_s=2.0, requests=10, now=1000.0)
    _warm(cache, "rare", load_s=0.05, requests=1, now=2000.0)
    placement, _ = cache.place(ModelFacts("new", 400, 0.1, 0.01), _no_enqueue, now=3000.0)
    assert placement.evicted == [(victim, "w0")]


@pytest.mark.parametrize(
    ("policy", "evicted"),
    [("lru", ["big"]), ("lru:trim=off", ["big", "small"]), ("lru:trim=on", ["big"])],
)
def test_policy_options_in_the_policy_spec_and_the_shared_trim(conn, policy, evicted):
    """The agent's ``--policy`` takes options after the name. LRU takes the least recent,
    "small" (100 B), then "big" (500 B) to free 300 B for "new"; the shared trim (the seed's
    last step) evicts only "big", which alone frees enough; ``trim=off`` evicts both."""
    cache = Placement(conn, policy)
    cache.members.set_device("dev", cap=CAP, policy=cache.policy_name)
    cache.members.register("w0", "dev", 100, "host")
    for name, size, now in (("small", 100, 1000.0), ("big", 500, 1001.0)):
        placement, _ = cache.place(ModelFacts(name, size, 0.1, 0.01), _no_enqueue, now=now)
        cache.copies.loaded("dev", name, "w0", size, 0.1)
        _served(cache, name, "w0")
    placement, _ = cache.place(ModelFacts("new", 700, 0.1, 0.01), _no_enqueue, now=1002.0)
    assert sorted(m for m, _ in placement.evicted) == sorted(evicted)


def test_bad_policy_option_is_named(conn):
    with pytest.raises(ValueError, match="trim must be true or false"):
        Placement(conn, "lru:trim=sometimes")


def test_lfu_counts_requests_since_load_not_lifetime(conn):
    """In-cache LFU keeps each model's insert-time count in the stored priority, and a hit must
    not overwrite it. "a" was popular, got evicted, came back and had one hit since; "c" has
    had six since it was loaded. The next miss evicts "a" (1 since load) — counting lifetime
    requests would say 8 against 7 and evict "c"."""
    cache = Placement(conn, "lfu")
    cache.members.set_device("dev", cap=CAP, policy="lfu")
    cache.members.register("w0", "dev", 100, "host")

    def use(name: str, requests: int, now: float) -> list:
        evicted = []
        for i in range(requests):
            placement, _ = cache.place(ModelFacts(name, 400, 0.1, 0.01), _no_enqueue, now=now + i)
            evicted += placement.evicted
            if not placement.hit:
                cache.copies.loaded("dev", name, "w0", 400, 0.1)
            _served(cache, name, "w0")
        return evicted

    use("a", 6, 1000.0)
    use("b", 1, 1100.0)
    assert use("c", 7, 1200.0) == [("b", "w0")]  # a: 6 since load, b: 1
    assert use("b", 1, 1300.0) == [("a", "w0")]  # a: 6, c: 7
    assert use("a", 2, 1400.0) == [("b", "w0")]  # b: 0 since load, c: 7
    assert use("d", 1, 1500.0) == [("a", "w0")]  # a: 1 since load (8 in all), c: 6


def test_prewarm_fills_free_memory_only_with_wanted_models(conn):
    """``warming`` loads the unloaded model of highest utility that fits in free memory: never
    one without past requests, never one larger than the free memory, never by evicting."""
    from agent.policies.proactive import make_proactive

    cache = _setup(conn, workers=1)
    _warm(cache, "cached", load_s=0.1, requests=1, now=1000.0)  # 400 of the 1000 bytes
    conn.hset(key("stats", "wanted"), "requests", 5)  # asked for before, since evicted
    conn.hset(key("stats", "huge"), "requests", 50)
    facts = {
        "wanted": ModelFacts("wanted", 500, 0.2, 0.01),
        "never-asked": ModelFacts("never-asked", 100, 0.2, 0.01),
        "huge": ModelFacts("huge", 700, 0.2, 0.01),  # more than the 600 bytes free
        "cached": ModelFacts("cached", 400, 0.1, 0.01),
    }
    files = {name: f"{name}.tflite" for name in facts}
    placed = prewarm(cache, make_proactive("warming"), facts, files, now=2000.0)
    assert placed == [("wanted", "w0")]
    device = snapshot(cache)["devices"]["dev"]
    held = {m["model"]: m["state"] for m in device["workers"]["w0"]["models"]}
    assert held == {"cached": "ready", "wanted": "loading"}  # nothing was evicted
    assert device["used_bytes"] == 900 and device["prewarms"] == {"wanted": 1}
    # the worker is asked to load it
    from rq import Queue
    from rq.serializers import JSONSerializer

    jobs = Queue("brulee.w0", connection=conn, serializer=JSONSerializer).get_jobs()
    assert [(j.func_name, j.args) for j in jobs] == [
        ("agent.worker.prewarm", ["wanted", "wanted.tflite"])
    ]
    # asked again while it loads: nothing more (it is cached; the rest does not fit)
    assert prewarm(cache, make_proactive("warming"), facts, files, now=2001.0) == []


def test_model_facts_profile_is_a_floor_that_observations_raise(conn, tmp_path):
    """The bytes placement reserves: a profile's loaded bytes, never lowered by a worker's RSS
    delta (the allocator reuses freed pages), raised when a worker measured more; without a
    profile, the worker's observation, else twice the file size."""
    from agent.registry import model_facts

    doc = {"name": "f", "model": "m", "file": "m.tflite", "record": {"file_bytes": 10}}
    profile = {"loaded_bytes": 1000, "avg_load_latency": 0.2, "exec_s": 0.01}
    facts, profiled = model_facts(conn, doc, tmp_path, profile)
    assert (facts.bytes, facts.load_s, profiled) == (1000, 0.2, True)
    conn.hset(key("stats", "m"), "bytes", 400)
    assert model_facts(conn, doc, tmp_path, profile)[0].bytes == 1000
    conn.hset(key("stats", "m"), "bytes", 1200)
    assert model_facts(conn, doc, tmp_path, profile)[0].bytes == 1200
    assert model_facts(conn, doc, tmp_path, None) == (ModelFacts("m", 1200, 0.05, 0.01), False)
    conn.delete(key("stats", "m"))
    assert model_facts(conn, doc, tmp_path, None)[0].bytes == 20


def _state(conn: redis.Redis) -> dict:
    """What a hit changes in Redis (clock and arrival times aside)."""
    return {
        "pins": conn.hgetall(key("pins", "dev")),
        "used": conn.hgetall(key("used", "dev")),
        "requests": conn.get(key("requests")),
        "stats": conn.hget(key("stats", "a"), "requests"),
        "hits": conn.hgetall(key("hits", "dev")),
        "priority": conn.hgetall(key("priority", "dev")),
        "arrivals": conn.xlen(key("arrivals")),
    }


@pytest.mark.parametrize("policy", ["cremebrulee", "gdsf", "lfu"])
def test_fast_hit_accounts_like_a_placed_hit(conn, policy):
    """``try_hit`` (one script) and ``place`` (the transaction) leave the same state behind
    for a hit, the policy's stored priority included (GDSF recomputes it on every hit)."""
    states = []
    for fast in (False, True):
        conn.flushdb()
        cache = Placement(conn, policy)
        cache.members.set_device("dev", cap=CAP, policy=policy)
        cache.members.register("w0", "dev", 100, "host")
        _warm(cache, "a", load_s=0.5, requests=2, now=1000.0)
        _warm(cache, "b", load_s=0.1, requests=1, now=1000.0)
        cache.place(ModelFacts("c", 400, 0.1, 0.01), _no_enqueue, now=1100.0)  # evicts: clock
        if fast:
            placement = cache.try_hit("a", b"msg", now=2000.0)
            assert conn.lrange(key("lane", "w0"), 0, -1) == [b"msg"]
        else:
            placement, _ = cache.place(ModelFacts("a", 400, 0.5, 0.01), _no_enqueue, now=2000.0)
        assert placement.hit and placement.worker == "w0"
        states.append(_state(conn))
    assert states[0] == states[1]


def test_fast_hit_declines_what_is_not_a_plain_hit(conn):
    """No holder, a dead holder, a holder backed up (a second copy may be due): None, and
    nothing is changed or queued; the least backed-up holder wins."""
    from agent.placement import SCALE_OUT_QUEUE

    cache = _setup(conn, workers=2)
    assert cache.try_hit("a", b"msg") is None  # cached nowhere
    for w in ("w0", "w1"):
        conn.hset(key("entries", "dev"), f"a|{w}", '{"bytes": 100, "state": "ready", '
                  '"inserted_at": 1.0}')  # fmt: skip
    conn.rpush(key("lane", "w0"), b"earlier")
    assert cache.try_hit("a", b"msg").worker == "w1"
    for _ in range(SCALE_OUT_QUEUE):
        conn.rpush(key("lane", "w0"), b"earlier")
    conn.delete(key("alive", "w1"))  # w1 died; w0 is backed up
    before = (conn.llen(key("lane", "w0")), conn.get(key("requests")))
    assert cache.try_hit("a", b"msg") is None
    assert (conn.llen(key("lane", "w0")), conn.get(key("requests"))) == before


def test_fast_hit_checks_the_callers_registry_and_failed_flag(conn):
    """The hit script refuses a caller whose copy of the function registry is stale, and a
    function whose model failed, before placing anything."""
    from agent.placement import FunctionFailed, RegistryChanged

    cache = _setup(conn, workers=1)
    conn.hset(key("entries", "dev"), "a|w0", '{"bytes": 1, "state": "ready", "inserted_at": 1}')
    conn.set(key("functions", "version"), 3)
    with pytest.raises(RegistryChanged):
        cache.try_hit("a", b"msg", function="f", registry_version=b"2")
    conn.hset(key("failed"), "f", "corrupt file")
    with pytest.raises(FunctionFailed, match="corrupt file"):
        cache.try_hit("a", b"msg", function="f", registry_version=b"3")
    assert conn.llen(key("lane", "w0")) == 0 and conn.get(key("requests")) is None
    conn.hdel(key("failed"), "f")
    assert cache.try_hit("a", b"msg", function="f", registry_version=b"3").worker == "w0"


def test_a_load_larger_than_reserved_makes_room_or_gives_up(conn):
    """Within its reservation a load just turns ready (and the worker's measure is kept);
    beyond it, idle models are evicted to keep the cap; if only executing models hold the
    memory, the reservation is given back (the worker drops the model) and the measured size
    is kept for the next placement."""
    cache = _setup(conn, workers=1)
    placement, _ = cache.place(ModelFacts("a", 400, 0.1, 0.01), _no_enqueue)
    assert cache.copies.loaded("dev", "a", "w0", 300, 0.2, rss_growth=310)
    _served(cache, "a", "w0")
    entry = json.loads(conn.hget(key("entries", "dev"), "a|w0"))
    assert (entry["state"], entry["bytes"]) == ("ready", 300)
    assert conn.hmget(key("stats", "a"), "observed_bytes", "bytes") == [b"310", b"300"]

    cache.place(ModelFacts("b", 300, 0.1, 0.01), _no_enqueue)  # 600 of 1000 used
    assert cache.copies.loaded("dev", "b", "w0", 800, 0.1)  # grew by 500: "a" (idle) makes room
    assert _used(cache) == 800 and not conn.hexists(key("entries", "dev"), "a|w0")
    assert conn.llen("rq:queue:brulee.w0") == 1  # the worker is told to drop "a"

    cache.copies.claim("dev", "b", "w0")  # "b" executes: pinned
    cache.place(ModelFacts("c", 150, 0.1, 0.01), _no_enqueue)
    assert not cache.copies.loaded("dev", "c", "w0", 400, 0.1)
    assert not conn.hexists(key("entries", "dev"), "c|w0") and _used(cache) == 800
    assert conn.hget(key("stats", "c"), "bytes") == b"400"


def _live_policies() -> list[str]:
    from agent.policies import POLICIES

    return sorted(name for name, cls in POLICIES.items() if not cls.needs_oracle)


@pytest.mark.parametrize("policy", _live_policies())
@pytest.mark.parametrize("busy", ["w0", "w1", None])
def test_hit_script_and_transaction_agree_with_several_workers(conn, policy, busy):
    """Two copies of "a" (on w0 and w1) and a third worker: whichever holder is backed up (or
    neither: a tie, broken by name), the hit script and the Python decision pick the same
    worker and leave the same state, for
    every policy the agent can run (the policy's stored priority included)."""
    states, picks = [], []
    for fast in (False, True):
        conn.flushdb()
        cache = Placement(conn, policy)
        cache.members.set_device("dev", cap=CAP, policy=policy)
        for w in ("w0", "w1", "w2"):
            cache.members.register(w, "dev", 100, "host")
        _warm(cache, "a", load_s=0.5, requests=2, now=1000.0)  # on w0
        for _ in range(SCALE_OUT_QUEUE):
            conn.rpush(key("lane", "w0"), b"earlier")
        second, _ = cache.place(ModelFacts("a", 400, 0.5, 0.01), _no_enqueue, now=1050.0)
        assert (second.hit, second.worker) == (False, "w1")  # a second copy, in free memory
        cache.copies.loaded("dev", "a", "w1", 400, 0.5)
        conn.delete(key("lane", "w0"))
        if busy:
            conn.rpush(key("lane", busy), b"earlier")
        if fast:
            placement = cache.try_hit("a", b"msg", now=2000.0)
        else:
            placement, _ = cache.place(ModelFacts("a", 400, 0.5, 0.01), _no_enqueue, now=2000.0)
        assert placement.hit
        picks.append(placement.worker)
        state = _state(conn)
        state["lanes"] = {w: conn.llen(key("lane", w)) for w in ("w0", "w1", "w2")}
        states.append(state)
    assert picks[0] == picks[1] != busy
    states[0]["lanes"][picks[0]] += 1  # the script also pushed the message itself
    assert states[0] == states[1]
