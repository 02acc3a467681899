"""Strict durability with the embedded Redis: the file is forced at the agent's promises, not
after every write (agent/durable.py), on a real redis-server."""

from __future__ import annotations

import pytest
import redis

from agent import durable
from agent.redis_server import DURABILITY
from tests.agent_fixtures import redis_server


def test_strict_embedded_redis_writes_before_answering_and_the_agent_forces_it(monkeypatch):
    with redis_server(persist=True, durability="strict") as server:
        conn = redis.Redis.from_url(server.url)
        # every answered write is in the file (no write held back, as everysec may), not
        # forced after each one: a synchronous call's lane push, claim and answer cost no fsync
        assert conn.config_get("appendfsync")["appendfsync"] == "no"
        conn.set("brulee:job:x", "accepted")
        written = b"".join(p.read_bytes() for p in server.aof_dir.glob("*.incr.aof"))
        assert b"brulee:job:x" in written
        monkeypatch.setenv(durable.ENV, str(server.aof_dir))
        aof = durable.from_env()
        assert aof is not None and aof.dir == server.aof_dir
        aof.force()  # what the gateway does before a 202
    with redis_server(persist=True, durability="fast") as server:
        conn = redis.Redis.from_url(server.url)
        assert conn.config_get("appendfsync")["appendfsync"] == "everysec"


def test_nothing_to_force_without_the_embedded_redis(monkeypatch, tmp_path):
    monkeypatch.delenv(durable.ENV, raising=False)
    assert durable.from_env() is None  # fast, or a Redis of the user's
    assert DURABILITY["strict"] == "always"  # what a user's Redis must do under strict
    with pytest.raises(FileNotFoundError):
        durable.AppendOnlyFile(tmp_path / "gone").force()
