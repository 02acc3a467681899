"""The Lua scripts of :mod:`agent.lua`, loaded from their files and registered once per
connection (``EVALSHA``; redis-py loads a script again if the server forgot it, e.g. after a
restart). Each file's header names its KEYS and ARGV; every key a script touches is passed as
KEYS."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import redis
from redis.commands.core import Script

LUA_DIR = Path(__file__).with_name("lua")


@cache
def source(name: str) -> str:
    return (LUA_DIR / f"{name}.lua").read_text()


class Scripts:
    """The registered scripts, as attributes: ``Scripts(conn).claim(keys=…, args=…)``."""

    NAMES = ("hit", "claim", "unpin", "ready", "orphan", "lease")

    def __init__(self, conn: redis.Redis) -> None:
        for name in self.NAMES:
            setattr(self, name, conn.register_script(source(name)))

    @staticmethod
    def in_pipeline(pipe, name: str, keys: list, args: list):
        """Queue script ``name`` in ``pipe`` as ``EVAL`` of its source: redis-py sends
        ``SCRIPT EXISTS`` ahead of every pipeline that holds a registered script — one more
        round trip on each synchronous call's answer (0.26 ms here) — while ``EVAL`` costs
        Redis a SHA1 of 1-2 KB (it keeps the compiled script) and works after a restart of
        Redis too."""
        return pipe.eval(source(name), len(keys), *keys, *args)

    hit: Script
    claim: Script
    unpin: Script
    ready: Script
    orphan: Script
    lease: Script
