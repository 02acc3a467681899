"""Placement across devices against a real redis-server, without namespaces (the same rules
``tests/test_fleet.py`` checks on namespace hosts): a miss goes where the most memory stays
free when nothing need be evicted, and calls orphaned on a device whose last worker is gone
move to a device that has workers."""

from __future__ import annotations

import pytest
import redis

from agent.keys import key
from agent.placement import ModelFacts, Placement
from tests.agent_fixtures import redis_server


@pytest.fixture()
def cache():
    with redis_server() as server:
        placement = Placement(redis.Redis.from_url(server.url), "cremebrulee")
        for i, (device, cap) in enumerate((("a", 1000), ("b", 1000), ("c", 600))):
            placement.members.set_device(device, cap=cap, policy="cremebrulee")
            placement.members.register(f"w-{device}", device, 100 + i, device)
        yield placement


def _place(cache: Placement, model: str, size: int) -> str:
    decision, _ = cache.place(ModelFacts(model, size, 0.1, 0.01), lambda pipe, d: None)
    assert not decision.hit and not decision.evicted
    return decision.device


def test_misses_go_where_most_memory_stays_free(cache):
    assert _place(cache, "m1", 300) == "a"  # a and b equal: by name
    assert _place(cache, "m2", 300) == "b"  # a has 700 free, b 1000
    assert _place(cache, "m3", 100) == "a"  # a 700, b 700, c 600
    assert _place(cache, "m4", 550) == "b"  # a 600, b 700, c 600 (fits on all)
    assert _place(cache, "m5", 500) == "a"  # a 600, c 600, b 150: by name


def test_orphans_of_a_device_without_workers_move_to_one_with_workers(cache):
    conn = cache.r
    conn.rpush(key("orphans", "c"), b"job-1")
    conn.rpush(key("lane", "w-c"), b'{"reply": "brulee:reply:x"}\ncall')
    cache.members.forget_worker("w-c")
    assert conn.llen(key("orphans", "c")) == 0
    moved = conn.lrange(key("orphans", "a"), 0, -1)  # the first device that has workers
    assert moved[0] == b"job-1" and moved[1].endswith(b"call")
    assert conn.get("brulee:reply:x:route") == b"orphaned"


def test_orphans_stay_when_no_worker_is_left_anywhere(cache):
    conn = cache.r
    for device in ("a", "b"):
        cache.members.forget_worker(f"w-{device}")
    conn.rpush(key("orphans", "c"), b"job-1")
    cache.members.forget_worker("w-c")
    assert conn.lrange(key("orphans", "c"), 0, -1) == [b"job-1"]
