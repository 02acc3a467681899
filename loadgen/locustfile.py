"""Open-loop Locust replay of a brulee workload file.

One Locust user reads the workload file as a stream and, for each row, sleeps until the row's
scheduled wall-clock time (``t0 + time / speedup``) and then *spawns* a greenlet that sends the
request. The user never waits for an answer before scheduling the next request, so a slow agent
cannot slow the generator down (an open loop; a closed loop would hide queueing).

Every request is recorded by a listener on Locust's ``request`` event hook: the request context
carries the row id, the scheduled and actual send times, and the listener adds the response's
cache headers. Records go to a CSV file (one line per request, flushed per line so an
interrupted run still leaves them). Locust's own stats, CSV and HTML reports are kept as usual.

Configuration comes from environment variables (set by ``loadgen/replay.py``):

- ``BRULEE_REPLAY_WORKLOAD``: workload file (already mapped onto served functions);
- ``BRULEE_REPLAY_RECORDS``: output CSV of per-request records;
- ``BRULEE_REPLAY_FUNCTIONS``: JSON file with the agent's ``/system/functions`` answer;
- ``BRULEE_REPLAY_SPEEDUP`` (default 1), ``BRULEE_REPLAY_DURATION`` (workload seconds, default
  all), ``BRULEE_REPLAY_CONCURRENCY`` (max connections in flight, default 500).
"""

from __future__ import annotations

import csv
import json
import os
import time

import gevent
from gevent.pool import Pool
from locust import FastHttpUser, events, task

from loadgen.replay_payloads import build_payloads
from loadgen.workload_file import iter_workload

RECORD_FIELDS = (
    "id",
    "function",
    "scheduled",
    "sent",
    "lag_s",
    "latency_s",
    "status",
    "ok",
    "x_cache",
    "load_s",
    "exec_s",
    "queue_s",
    "worker",
    "error",
)

_records: dict[str, object] = {}


def _env_float(name: str, default: float | None) -> float | None:
    text = os.environ.get(name, "")
    return float(text) if text else default


@events.test_start.add_listener
def _open_records(environment, **_kwargs) -> None:
    path = os.environ.get("BRULEE_REPLAY_RECORDS")
    if path and "writer" not in _records:
        fh = open(path, "w", newline="", buffering=1)
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(RECORD_FIELDS)
        _records.update(fh=fh, writer=writer)


@events.quitting.add_listener
def _close_records(environment, **_kwargs) -> None:
    fh = _records.pop("fh", None)
    _records.pop("writer", None)
    if fh is not None:
        fh.close()


@events.request.add_listener
def _record_request(
    request_type, name, response_time, response, context, exception, **_kwargs
) -> None:
    """Write one record per replayed request (requests without a replay context are skipped)."""
    writer = _records.get("writer")
    if writer is None or not context or "scheduled" not in context:
        return
    headers = getattr(response, "headers", None) or {}
    status = getattr(response, "status_code", 0) or 0
    writer.writerow(
        (
            context["id"],
            context["function"],
            f"{context['scheduled']:.6f}",
            f"{context['sent']:.6f}",
            f"{context['sent'] - context['scheduled']:.6f}",
            f"{response_time / 1000.0:.6f}",
            status,
            int(exception is None),
            headers.get("X-Cache", ""),
            headers.get("X-Load-Seconds", ""),
            headers.get("X-Exec-Seconds", ""),
            headers.get("X-Queue-Seconds", ""),
            headers.get("X-Worker", ""),
            _error_text(response, exception),
        )
    )


def _error_text(response, exception) -> str:
    """Why a request failed: the agent's JSON ``error`` message, else the exception."""
    if exception is None:
        return ""
    try:
        return str(json.loads(response.text)["error"])[:300]
    except Exception:  # not JSON, no body, connection error: fall back to the exception
        return str(exception)[:300]


class ReplayUser(FastHttpUser):
    """The single open-loop replayer: schedules every row, waits for none of them."""

    fixed_count = 1
    concurrency = int(os.environ.get("BRULEE_REPLAY_CONCURRENCY", "500"))
    connection_timeout = 5.0
    network_timeout = 120.0

    def on_start(self) -> None:
        with open(os.environ["BRULEE_REPLAY_FUNCTIONS"]) as fh:
            self.payloads = build_payloads(json.load(fh))

    def _send(self, function: str, req_id: str, scheduled: float) -> None:
        body, content_type = self.payloads[function]
        context = {"id": req_id, "function": function, "scheduled": scheduled}
        context["sent"] = time.time()
        self.client.post(
            f"/function/{function}",
            data=body,
            headers={"Content-Type": content_type},
            name=f"/function/{function}",
            context=context,
        )

    @task
    def replay(self) -> None:
        speedup = _env_float("BRULEE_REPLAY_SPEEDUP", 1.0) or 1.0
        duration = _env_float("BRULEE_REPLAY_DURATION", None)
        pool = Pool(self.concurrency)
        t0 = time.time() + 0.2
        for req in iter_workload(os.environ["BRULEE_REPLAY_WORKLOAD"]):
            if duration is not None and req.time >= duration:
                break
            scheduled = t0 + req.time / speedup
            delay = scheduled - time.time()
            if delay > 0:
                gevent.sleep(delay)
            pool.spawn(self._send, req.function, req.id, scheduled)
        pool.join()
        self.environment.runner.quit()
