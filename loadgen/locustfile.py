"""Open-loop Locust replay of a brulee workload file.

One Locust user reads the workload file as a stream and, for each row, sleeps until the row's
scheduled wall-clock time (``t0 + time / speedup``) and then *spawns* a greenlet that sends the
request. The user never waits for an answer before scheduling the next request, so a slow agent
cannot slow the generator down (an open loop; a closed loop would hide queueing).

Every request is recorded by a listener on Locust's ``request`` event hook: the request context
carries the row id, the scheduled and actual send times, and the listener adds the response's
cache headers. Records go to a CSV file (one line per request, flushed per line so an
interrupted run still leaves them). Locust's own stats, CSV and HTML reports are kept as usual.

Run it directly with Locust's own options plus these (added through Locust's own parser, so
its web UI shows them, and ``LOCUST_*``-style config files take them too)::

    locust -f loadgen/locustfile.py --host http://127.0.0.1:8080 --token TOKEN \
        --workload W.csv --speedup 60 --records records.csv --headless --users 1

- ``--workload FILE``: a brulee workload file (``brulee trace workload``/``synth``); default:
  the bundled Azure 2019 rows (loadgen/data: one day, 1,061 requests) mapped onto the agent's
  functions (``--speedup 1440`` replays that day in a minute);
- ``--map``: map workload functions the agent does not serve onto served ones (otherwise they
  are an error that names them);
- ``--speedup S`` (divide workload times by S, default 1), ``--duration D`` (replay only the
  first D workload seconds), ``--concurrency N`` (requests in flight at most, default 500);
- ``--records FILE``: the per-request CSV (default: none, Locust's own reports only);
- ``--functions FILE``: the agent's ``/system/functions`` answer as JSON; default: fetched
  from ``--host`` with ``--token`` (or ``$BRULEE_TOKEN``).

``brulee replay`` is the one-command wrapper: it checks the workload, runs this file with these
options and summarises the records.
"""

from __future__ import annotations

import atexit
import csv
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gevent
from gevent.pool import Pool
from locust import FastHttpUser, events, task

from loadgen.replay_payloads import build_payloads, function_list
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


@dataclass
class Plan:
    """What one replay sends: the (mapped) workload, a body per function, the pacing."""

    workload: Path
    payloads: dict[str, tuple[bytes, str]]
    speedup: float
    duration: float | None
    concurrency: int
    records: str


_plan: dict[str, Plan] = {}


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    parser.add_argument(
        "--workload",
        default="",
        help="brulee workload file to replay (default: the bundled Azure 2019 rows, one day, "
        "mapped onto the agent's functions)",
    )
    parser.add_argument(
        "--map",
        action="store_true",
        default=False,
        help="map workload functions the agent does not serve onto served ones",
    )
    parser.add_argument(
        "--speedup", type=float, default=1.0, help="divide workload times by this (default 1)"
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="replay only the first D workload seconds"
    )
    parser.add_argument(
        "--concurrency", type=int, default=500, help="requests in flight at most (default 500)"
    )
    parser.add_argument("--records", default="", help="CSV file of per-request records")
    parser.add_argument(
        "--functions",
        default="",
        help="JSON of the agent's /system/functions answer (default: fetched from --host)",
    )
    parser.add_argument(
        "--token",
        default="",
        env_var="BRULEE_TOKEN",
        is_secret=True,
        help="the agent's management token, to fetch its functions (default: $BRULEE_TOKEN)",
    )


def make_plan(options, host: str | None) -> Plan:
    """The replay the options describe; ReplayError (or WorkloadError) names what is wrong."""
    from loadgen.replay import ReplayError, fetch_functions, prepare_workload

    if not host:
        raise ReplayError("no --host: give the agent's base URL, e.g. --host http://127.0.0.1:8080")
    if not (options.speedup or 0) > 0:
        raise ReplayError(f"--speedup {options.speedup}: must be > 0")
    if options.concurrency < 1:
        raise ReplayError(f"--concurrency {options.concurrency}: must be >= 1")
    if options.functions:
        try:
            functions = function_list(json.loads(Path(options.functions).read_text()))
        except (OSError, ValueError) as exc:
            raise ReplayError(f"--functions {options.functions}: {exc}") from None
    else:
        functions = fetch_functions(host, options.token or None)
    served = [f["name"] for f in functions]
    tmp = Path(tempfile.mkdtemp(prefix="brulee-locust-"))  # a mapped or the bundled workload
    atexit.register(shutil.rmtree, tmp, True)
    if options.workload:
        if not Path(options.workload).is_file():
            raise ReplayError(f"--workload {options.workload}: no such file")
        workload, _ = prepare_workload(options.workload, served, tmp, options.map)
    else:
        workload = bundled_workload(served, tmp / "bundled.csv")
    return Plan(
        workload, build_payloads(functions), options.speedup, options.duration,
        options.concurrency, options.records,
    )  # fmt: skip


def bundled_workload(served: list[str], out: Path) -> Path:
    """The bundled Azure rows' day (Poisson within each minute), functions mapped onto
    ``served`` as ``brulee replay --map`` does."""
    from loadgen.azure import BUNDLED_TRACE
    from loadgen.pipeline import PipelineOptions, build_workload
    from loadgen.replay import function_mapping

    opts = PipelineOptions(triggers="all", minutes=1440, spread="poisson", progress=False)
    build_workload([BUNDLED_TRACE], out, opts, lambda totals: function_mapping(totals, served))
    return out


def _prepare(environment) -> Plan:
    from loadgen.replay import ReplayError
    from loadgen.workload_file import WorkloadError

    try:
        _plan["plan"] = make_plan(environment.parsed_options, environment.host)
    except (ReplayError, WorkloadError) as exc:
        raise PlanError(f"loadgen/locustfile.py: {exc}") from None
    return _plan["plan"]


class PlanError(Exception):
    """The options do not describe a replay that can run."""


@events.init.add_listener
def _plan_headless(environment, web_ui=None, **_kwargs) -> None:
    """Headless (and on workers): check the options before the run; exit naming what is
    wrong. With the web UI, the plan is made when a run starts, from the form's values."""
    if web_ui is None and environment.parsed_options is not None:
        try:
            _prepare(environment)
        except PlanError as exc:
            sys.exit(str(exc))


@events.test_start.add_listener
def _open_records(environment, **_kwargs) -> None:
    if environment.web_ui is not None:
        try:
            _prepare(environment)
        except PlanError as exc:
            logging.error("%s", exc)
            _plan.pop("plan", None)
            return
    plan = _plan.get("plan")
    if plan and plan.records and "writer" not in _records:
        fh = open(plan.records, "w", newline="", buffering=1)  # noqa: SIM115 (closed at quit)
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
    connection_timeout = 5.0
    network_timeout = 120.0

    def _send(self, function: str, req_id: str, scheduled: float) -> None:
        body, content_type = self.plan.payloads[function]
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
        self.plan = plan = _plan.get("plan")
        if plan is None:  # the web UI's options were wrong (logged at the start)
            self.environment.runner.quit()
            return
        pool = Pool(plan.concurrency)
        t0 = time.time() + 0.2
        for req in iter_workload(plan.workload):
            if plan.duration is not None and req.time >= plan.duration:
                break
            scheduled = t0 + req.time / plan.speedup
            delay = scheduled - time.time()
            if delay > 0:
                gevent.sleep(delay)
            pool.spawn(self._send, req.function, req.id, scheduled)
        pool.join()
        self.environment.runner.quit()
