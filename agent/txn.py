"""Optimistic Redis transactions (``WATCH``/``MULTI``) with a bounded number of retries.

A concurrent change to a watched key aborts the commit and the decision is taken again on
fresh state. Under heavy contention that could go on for a long time; here it is retried at
most :data:`MAX_ATTEMPTS` times with jittered exponential backoff (so contenders spread out),
then :class:`Contended` is raised: the caller answers 503 rather than hang.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import redis

T = TypeVar("T")
log = logging.getLogger("brulee.txn")
MAX_ATTEMPTS = 64
BACKOFF_FIRST_S = 0.0005
BACKOFF_MAX_S = 0.02


class Contended(Exception):
    """An optimistic transaction lost to concurrent changes :data:`MAX_ATTEMPTS` times."""

    status = 503


def transaction(
    conn: redis.Redis,
    watch: list[str] | Callable[[], list[str]],
    body: Callable[[redis.client.Pipeline], T],
    what: str = "the cache state",
) -> T:
    """Run ``body(pipe)`` with ``watch`` (keys, or a function returning them, re-evaluated on
    each attempt) watched: ``body`` reads through ``pipe`` (immediate mode), calls
    ``pipe.multi()``, queues its writes and returns; the commit follows. ``body`` may instead
    ``pipe.unwatch()`` and return without writing. Returns what ``body`` returned."""
    delay = BACKOFF_FIRST_S
    for _ in range(MAX_ATTEMPTS):
        with conn.pipeline() as pipe:
            try:
                pipe.watch(*(watch() if callable(watch) else watch))
                result = body(pipe)
                if pipe.explicit_transaction:
                    pipe.execute()
                return result
            except redis.WatchError:
                time.sleep(random.uniform(0, delay))
                delay = min(delay * 2, BACKOFF_MAX_S)
    raise Contended(
        f"{what} changed under {MAX_ATTEMPTS} attempts in a row (heavy contention); retry"
    )


def through_outage(call: Callable[[], T], what: str, patience_s: float = 15.0) -> T:
    """``call()``, tried again while Redis is unreachable (a restart takes about a second),
    for at most ``patience_s``: the steps a worker must not lose — a copy turning ready, the
    answer that unpins it — survive a Redis restart instead of leaving a pin behind."""
    deadline = time.monotonic() + patience_s
    delay = 0.1
    while True:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            if time.monotonic() > deadline:
                raise
            log.warning("Redis unreachable while %s; trying again in %.1f s", what, delay)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
