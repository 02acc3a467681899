"""A ``brulee simulate`` sweep over RQ: one job per (cap, policy, seed), run by any number of
``brulee simulate-worker`` processes on any number of machines sharing one Redis.

Nothing is pickled: a job's arguments are JSON values (``rq``'s ``JSONSerializer``) and its
result is ``SimResult`` as a JSON object. Workers read the workload, profile and sizes files
by the paths the client gave, so **every machine needs those files at the same paths** (a
shared directory, or the same ``rsync``); a missing file fails that job with a message naming
it, and the client reports it. The client gathers the results in sweep order, so the table,
CSV and plots are those of a local sweep (``loadgen.sim_cli.report``).

A worker keeps each workload it has compacted (keyed by path, size and mtime) for the next
job on the same file: the CSV is parsed once per worker process, not once per job.
"""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import click

from loadgen.profiles import load_profiles
from loadgen.sim.engine import run
from loadgen.sim.inputs import SimulationError, check_models, parse_cap, workload_bytes
from loadgen.sim.results import SimResult
from loadgen.sim.variants import read_variants
from loadgen.sim_workload import CompactWorkload

QUEUE = "brulee-simulate"
_WORKLOADS: dict[tuple[str, int, int], CompactWorkload] = {}


def _workload(path: str) -> CompactWorkload:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SimulationError(
            f"workload {path}: {exc.strerror} (on this worker's machine)"
        ) from None
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _WORKLOADS:
        for old in [k for k in _WORKLOADS if k[0] == key[0]]:  # the file changed
            _WORKLOADS.pop(old).close()
        _WORKLOADS[key] = CompactWorkload(path)
    return _WORKLOADS[key]


atexit.register(lambda: [wl.close() for wl in _WORKLOADS.values()])


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """The RQ job: one (policy, cap, seed) run from files named in ``job`` (see ``make_jobs``);
    returns the ``SimResult`` as a JSON object."""
    from loadgen.sim_cli import read_sizes

    sizes = read_sizes(job["sizes"]) if job["sizes"] else None
    profs = load_profiles(job["profiles"], sizes=sizes)
    variants = read_variants(job["variants"], profs) if job.get("variants") else None
    wl = _workload(job["workload"])
    check_models(wl, profs)
    cap_bytes = parse_cap(job["cap"], workload_bytes(wl, profs))
    res = run(
        wl, profs, job["policy"], cap_bytes, job["workers"], job["seed"], job["proactive"],
        placement=job["placement"], deadline_s=job["deadline_s"],
        max_waiting=job["max_waiting"], variants=variants,
    )  # fmt: skip
    return asdict(res)


def make_jobs(
    caps: Sequence[str], specs: Sequence[str], seeds: Sequence[int], **common: Any
) -> list[dict[str, Any]]:
    """One job description per (cap, policy, seed), in the local sweep's order. File paths are
    made absolute (a worker may run in another directory)."""
    for key in ("workload", "profiles", "sizes", "variants"):
        if common.get(key):
            common[key] = os.path.abspath(common[key])
    return [
        {"cap": cap, "policy": spec, "seed": seed, **common}
        for cap in caps
        for spec in specs
        for seed in seeds
    ]


def result_from(d: dict[str, Any]) -> SimResult:
    """A ``SimResult`` from its JSON object (pairs back to tuples)."""
    d = dict(d)
    for key in ("memory_timeline", "response_cdf"):
        d[key] = [tuple(p) for p in d[key]]
    return SimResult(**d)


def sweep(
    redis_url: str,
    jobs: Sequence[dict[str, Any]],
    job_timeout: float,
    progress: Callable[[int], None] | None = None,
    poll_s: float = 0.2,
) -> tuple[list[SimResult], list[str]]:
    """Enqueue ``jobs``, wait for all, return their results in order and the names of the
    workers that ran them. A failed job fails the sweep with the worker's error."""
    from redis import Redis
    from redis.exceptions import RedisError
    from rq import Queue
    from rq.job import JobStatus
    from rq.serializers import JSONSerializer

    from agent.redis_server import redact

    conn = Redis.from_url(redis_url)
    try:
        conn.ping()
    except RedisError as exc:
        raise click.ClickException(f"cannot reach Redis at {redact(redis_url)}: {exc}") from None
    queue = Queue(QUEUE, connection=conn, serializer=JSONSerializer)
    enq = [
        queue.enqueue_call(
            "loadgen.sim_sweep.run_job",
            args=(job,),
            timeout=int(job_timeout),
            result_ttl=3600,
            failure_ttl=3600,
        )  # fmt: skip
        for job in jobs
    ]
    done: dict[int, SimResult] = {}
    workers: list[str] = []
    while len(done) < len(enq):
        time.sleep(poll_s)
        for i, job in enumerate(enq):
            if i in done:
                continue
            status = job.get_status(refresh=True)
            if status == JobStatus.FINISHED:
                result = job.latest_result()
                done[i] = result_from(result.return_value)
                workers.append(result.worker_name or "?")
                if progress is not None:
                    progress(1)
            elif status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
                result = job.latest_result()
                text = (result.exc_string if result is not None else "") or ""
                last = text.strip().splitlines()[-1:] or [str(status)]
                raise click.ClickException(
                    f"simulation job {jobs[i]['policy']} at {jobs[i]['cap']} (seed "
                    f"{jobs[i]['seed']}) failed on "
                    f"worker {job.worker_name}: {last[0]}"
                )
    return [done[i] for i in range(len(enq))], workers


@click.command("simulate-worker")
@click.option("--redis", "redis_url", required=True, help="The Redis the sweep enqueues on.")
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.option("--name", default=None, help="Worker name (default: host and pid).")
def simulate_worker_command(redis_url: str, burst: bool, name: str | None) -> None:
    """Run ``brulee simulate --redis`` jobs (one at a time, in this process) until stopped."""
    from redis import Redis
    from rq import Queue, SimpleWorker
    from rq.serializers import JSONSerializer

    conn = Redis.from_url(redis_url)
    queue = Queue(QUEUE, connection=conn, serializer=JSONSerializer)
    worker = SimpleWorker([queue], connection=conn, serializer=JSONSerializer, name=name)
    worker.work(burst=burst, logging_level="WARNING")
