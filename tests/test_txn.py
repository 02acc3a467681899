"""Optimistic transactions retry a bounded number of times with backoff, then give up with a
clear error (the caller answers 503), never hang. Real redis-server."""

from __future__ import annotations

import time

import pytest
import redis

from agent.txn import MAX_ATTEMPTS, Contended, transaction
from tests.agent_fixtures import redis_server


@pytest.fixture()
def conn():
    with redis_server() as server:
        yield redis.Redis.from_url(server.url)


def test_a_conflict_is_retried_on_fresh_state(conn):
    other = redis.Redis(connection_pool=conn.connection_pool)
    seen = []

    def body(pipe):
        value = int(pipe.get("k") or 0)
        seen.append(value)
        if len(seen) == 1:
            other.incr("k")  # a concurrent change: the first commit must fail
        pipe.multi()
        pipe.set("k", value + 10)
        return value

    assert transaction(conn, ["k"], body) == 1
    assert seen == [0, 1] and int(conn.get("k")) == 11


def test_endless_contention_gives_up_with_an_error(conn):
    other = redis.Redis(connection_pool=conn.connection_pool)
    attempts = []

    def body(pipe):
        attempts.append(1)
        other.incr("k")  # someone always changes it first
        pipe.multi()
        pipe.set("k", 0)

    t0 = time.monotonic()
    with pytest.raises(Contended, match="attempts") as caught:
        transaction(conn, ["k"], body, what="the test key")
    assert len(attempts) == MAX_ATTEMPTS and caught.value.status == 503
    assert time.monotonic() - t0 < 5  # bounded backoff, not a hang
