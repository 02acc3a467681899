"""The worker's blocking pop: RQ's queue and the worker's lanes in one call.

:class:`LaneQueue` is the RQ queue class of a :class:`agent.worker.BruleeWorker`: its
``dequeue_any`` waits on the worker's RQ queue and its lanes (synchronous calls) together,
RQ's queue first, so evictions and async jobs are never starved by a stream of synchronous
calls. A lane call is served in place; a job is handed back to RQ. A stop request is
noticed between pops (never by interrupting one, which could lose what it popped), and jobs
a pop took while Redis went away are put back on the queue.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import TYPE_CHECKING, ClassVar

import redis
from rq import Queue
from rq.exceptions import DequeueTimeout, StopRequested

from agent import jobs
from agent.txn import through_outage

if TYPE_CHECKING:
    from agent.worker import BruleeWorker

log = logging.getLogger("brulee.worker")
POP_SLICE_S = 1.0  # a stop request is noticed between blocking pops this long


class LaneQueue(Queue):
    """RQ's queue class for a :class:`BruleeWorker`: its blocking pop also takes the worker's
    lane, so one call waits for both (RQ's queue first: evictions and async jobs are never
    starved by a stream of synchronous calls)."""

    lane_worker: ClassVar[BruleeWorker | None] = None

    @classmethod
    def dequeue_any(
        cls, queues, timeout, connection, job_class=None, serializer=None, death_penalty_class=None
    ):
        worker = cls.lane_worker
        if worker is None:
            return super().dequeue_any(
                queues, timeout, connection, job_class, serializer, death_penalty_class
            )
        keys = [q.key for q in queues]
        since = time.monotonic()
        while True:
            if worker._stop_requested:  # checked between pops, never by interrupting one
                raise StopRequested()
            if worker.pop_failed:
                requeued = jobs.requeue_lost(connection, worker.name, keys[0])
                if requeued:
                    log.warning("put back %d job(s) popped during a Redis outage", requeued)
                worker.pop_failed = False
            try:
                if timeout is None:  # RQ's burst mode: do not block
                    popped = next(
                        ((k, v) for k in (*keys, *worker.lanes) if (v := connection.lpop(k))),
                        None,
                    )
                    if popped is None:
                        return None
                else:
                    left = timeout - (time.monotonic() - since)
                    wait = max(min(left, POP_SLICE_S), 0.01)
                    popped = connection.blpop([*keys, *worker.lanes], wait)
                    if popped is None:
                        if left <= POP_SLICE_S:
                            raise DequeueTimeout(timeout, keys)
                        continue
            except (redis.ConnectionError, redis.TimeoutError):
                worker.pop_failed = True  # Redis may have popped a job nobody received
                raise
            popped_key = popped[0].decode() if isinstance(popped[0], bytes) else popped[0]
            if popped_key in worker.lanes:
                worker.serve_lane(popped[1])
                if time.monotonic() - since > 1.0:  # back to RQ's loop, which heartbeats
                    raise DequeueTimeout(timeout, keys)
                continue
            job_id = popped[1].decode() if isinstance(popped[1], bytes) else popped[1]
            fetch = partial(cls._fetch_dequeued_job, connection, popped_key, job_id,
                            job_class=job_class, serializer=serializer,
                            death_penalty_class=death_penalty_class)  # fmt: skip
            found = through_outage(fetch, f"fetching job {job_id}")
            if found is not None:
                return found
            connection.lrem(jobs.held(worker.name), 0, job_id)  # expired: nothing to run
