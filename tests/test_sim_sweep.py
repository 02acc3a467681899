"""``brulee simulate --redis``: the sweep as RQ jobs run by two real ``brulee simulate-worker``
processes on a real redis-server gives the local sweep's table, CSV and plots."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from agent.cli import main
from tests.agent_fixtures import REPO, redis_server
from tests.test_simulator import PROFILES, profile_file, workload


def synthetic(tmp_path: Path) -> str:
    """A few thousand requests over the four test models: misses at every cap."""
    rng = random.Random(7)
    t, reqs = 0.0, []
    for _ in range(3000):
        t += rng.expovariate(4.0)
        reqs.append((t, rng.choice(["A", "A", "A", "B", "B", "C"])))
    return workload(tmp_path, reqs)


def simulate(args: list[str]) -> str:
    res = CliRunner().invoke(main, ["simulate", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def start_worker(url: str, name: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "agent.cli", "simulate-worker", "--redis", url, "--name", name]
    return subprocess.Popen(argv, cwd=REPO, env=env)


def wait_for_workers(url: str, n: int, timeout: float = 60.0) -> None:
    import time

    from redis import Redis
    from rq import Worker

    conn, deadline = Redis.from_url(url), time.monotonic() + timeout
    while len(Worker.all(connection=conn)) < n:
        assert time.monotonic() < deadline, "simulate-worker processes did not register"
        time.sleep(0.1)
    time.sleep(0.5)  # (registered, then blocking on the queue)


def test_rq_sweep_on_two_workers_equals_the_local_sweep(tmp_path):
    """policies x caps x seeds: 3 x 2 x 3 jobs on two worker processes."""
    wl, prof = synthetic(tmp_path), profile_file(tmp_path, PROFILES)
    common = ["--workload", wl, "--profiles", prof, "--policies", "random,lru,gdsf",
              "--memory-cap", "150,250", "--workers", "2", "--seeds", "3"]  # fmt: skip
    local = simulate([*common, "--out", str(tmp_path / "local")])
    with redis_server() as server:
        workers = [start_worker(server.url, f"sim-{i}") for i in range(2)]
        try:
            wait_for_workers(server.url, 2)  # both listening: each gets jobs
            remote = simulate([*common, "--out", str(tmp_path / "rq"), "--redis", server.url])
        finally:
            for w in workers:
                w.terminate()
            for w in workers:
                w.wait(timeout=30)

    def table(out: str) -> list[str]:
        heads = ("---", "random", "lru", "gdsf")  # (the header shares a line with tqdm)
        return [ln for ln in out.splitlines() if ln.startswith(heads)]

    assert table(local) == table(remote) and len(table(local)) == 1 + 18
    assert (tmp_path / "local" / "results.csv").read_text() == (
        tmp_path / "rq" / "results.csv"
    ).read_text()
    import csv
    import json

    rows = list(csv.DictReader(open(tmp_path / "rq" / "results.csv")))
    assert [(r["cap"], r["policy"], r["seed"]) for r in rows[:4]] == [
        ("150", "random", "0"), ("150", "random", "1"), ("150", "random", "2"), ("150", "lru", "0")
    ]  # fmt: skip

    def evictions(policy: str) -> set[str]:
        return {r["evictions"] for r in rows if r["policy"] == policy and r["cap"] == "250"}

    assert len(evictions("random")) > 1 and len(evictions("lru")) == 1  # the seeds matter
    meta = json.loads((tmp_path / "rq" / "results.json").read_text())["meta"]
    assert meta["rq_workers"] == ["sim-0", "sim-1"]  # both real workers ran jobs
    assert meta["seeds"] == [0, 1, 2]
    assert (tmp_path / "rq" / "sim-hit-ratio.png").stat().st_size > 0


def test_seeds_option_and_its_errors(tmp_path):
    """``--seeds`` takes a count or a list; the one-seed run keeps its numbers; bad input is
    refused naming the option."""
    import csv

    wl, prof = synthetic(tmp_path), profile_file(tmp_path, PROFILES)
    common = ["--workload", wl, "--profiles", prof, "--policies", "random",
              "--memory-cap", "150"]  # fmt: skip
    simulate([*common, "--seeds", "4,7", "--out", str(tmp_path / "two")])
    simulate([*common, "--seed", "7", "--out", str(tmp_path / "one")])
    two = list(csv.DictReader(open(tmp_path / "two" / "results.csv")))
    (one,) = csv.DictReader(open(tmp_path / "one" / "results.csv"))
    assert [r["seed"] for r in two] == ["4", "7"] and two[1] == one
    for bad, msg in (("x", "a count"), ("0", ">= 1"), ("1,1", "each seed once"), (",", "once")):
        res = CliRunner().invoke(main, ["simulate", *common, "--seeds", bad, "--out", "o"])
        assert res.exit_code != 0 and "--seeds" in res.output and msg in res.output, res.output
    res = CliRunner().invoke(
        main, ["simulate", *common, "--seed", "1", "--seeds", "2", "--out", "o"]
    )
    assert res.exit_code != 0 and "not both" in res.output


def test_rq_sweep_reports_a_worker_missing_the_file(tmp_path):
    """Workers read files by path: a job naming a file the worker's machine lacks fails the
    sweep with a message naming the file (not a hang, not a pickled traceback)."""
    import click
    import pytest

    from loadgen.sim_sweep import make_jobs, sweep

    prof = profile_file(tmp_path, PROFILES)
    jobs = make_jobs(
        ["50%"], ["lru"], [0], workload=str(tmp_path / "nowhere.csv"), profiles=prof,
        sizes=None, workers=1, proactive=None, placement="start", deadline_s=60.0, max_waiting=8,
    )  # fmt: skip
    with redis_server() as server:
        worker = start_worker(server.url, "sim-x")
        try:
            with pytest.raises(click.ClickException, match="nowhere.csv"):
                sweep(server.url, jobs, job_timeout=60)
        finally:
            worker.terminate()
            worker.wait(timeout=30)


def test_rq_sweep_unreachable_redis_is_a_clear_error(tmp_path):
    from agent.redis_server import free_port

    res = CliRunner().invoke(
        main,
        ["simulate", "--workload", synthetic(tmp_path), "--profiles",
         profile_file(tmp_path, PROFILES), "--out", str(tmp_path / "o"),
         "--redis", f"redis://127.0.0.1:{free_port()}/0"],
    )  # fmt: skip
    assert res.exit_code != 0 and "cannot reach Redis" in res.output
