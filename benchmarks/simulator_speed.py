"""The simulator's speed against its pre-split baseline, in one process, and the RQ sweep on
one against two worker processes. Prints two tables (``docs/simulation.md``, "Simulator speed")::

    python benchmarks/simulator_speed.py --workload synth.csv.gz --sizes keras-sizes.json

(``benchmarks/policies_simulated.py`` writes both files and runs this as its last step.)

Baseline: ``loadgen/simulator.py`` as of commit ``BASELINE`` (one 314-line ``run``, one request
at a time), read with ``git show`` and loaded as a module; its one line that unpacks
``CompactWorkload.chunks`` is adapted to the 5-tuple chunks now yield. Each (policy, workers)
runs old then new on the same compacted workload, ``--repeat`` times; the table gives median
requests/s of ``run`` (compaction excluded) and checks the two ``SimResult`` are equal. One
run before the table loads (or compiles) the numba loop, ``loadgen/sim/fastloop.py``; its CPU
time is printed first.

The RQ part: ``brulee simulate --redis`` over ``--rq-policies`` x 25/50/75 % x ``--rq-seeds``
with 1, then 2 ``brulee simulate-worker`` processes on a private redis-server; wall time of
the command.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BASELINE = "94dbd22"  # the last commit before loadgen/sim/
PROFILES = REPO / "loadgen" / "data" / "models.m5.json"


def load_baseline(ref: str):
    src = subprocess.run(
        ["git", "show", f"{ref}:loadgen/simulator.py"], cwd=REPO, check=True,
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    old = "for _, times, funcs, nexts in workload.chunks("
    assert old in src, "baseline: the chunks line moved"
    src = src.replace(old, "for _, times, funcs, nexts, *_ in workload.chunks(")
    path = Path(tempfile.mkdtemp()) / "baseline_simulator.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("baseline_simulator", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["baseline_simulator"] = mod
    spec.loader.exec_module(mod)
    return mod


def same(a, b) -> bool:
    da, db = asdict(a), asdict(b)
    return all(da[k] == db[k] or (da[k] != da[k] and db[k] != db[k]) for k in da)


def speed_table(workload: str, sizes: str, policies, workers, cap: str, repeat: int, ref: str):
    from tabulate import tabulate

    from loadgen import simulator
    from loadgen.profiles import load_profiles
    from loadgen.sim_workload import CompactWorkload

    old = load_baseline(ref)
    profs = load_profiles(str(PROFILES), sizes=json.loads(Path(sizes).read_text()))
    rows = []
    with CompactWorkload(workload) as wl:
        cb = simulator.parse_cap(cap, simulator.workload_bytes(wl, profs))
        t = time.process_time()  # numba compiles the loop (or loads it from its cache) once
        simulator.run(wl, profs, policies[0], cb, 1)
        print(f"first run (with the compiled loop's set-up if {policies[0]} takes it): "
              f"{time.process_time() - t:.1f} s CPU")  # fmt: skip
        for pol in policies:
            for w in workers:
                rates: dict[str, list[float]] = {"old": [], "new": []}
                for _ in range(repeat):
                    out = {}
                    for name, mod in (("old", old), ("new", simulator)):
                        t = time.process_time()
                        out[name] = mod.run(wl, profs, pol, cb, w)
                        rates[name].append(wl.n / (time.process_time() - t))
                    assert same(out["old"], out["new"]), f"{pol}, {w} workers: results differ"
                o, n = statistics.median(rates["old"]), statistics.median(rates["new"])
                rows.append([pol, w, f"{o:,.0f}", f"{n:,.0f}", f"{n / o:.2f}x", "identical"])
    return tabulate(
        rows,
        headers=["policy", "workers", "baseline req/s", "now req/s", "ratio", "results"],
        tablefmt="github",
    )


def rq_table(workload: str, sizes: str, policies: str, seeds: int, workers: int, out: Path):
    from tabulate import tabulate

    from tests.agent_fixtures import redis_server

    brulee = str(Path(sys.executable).parent / "brulee")
    rows = []
    with redis_server() as server:
        times = {}
        for n in (1, 2):
            procs = [
                subprocess.Popen(
                    [brulee, "simulate-worker", "--redis", server.url, "--name", f"bench-{n}-{i}"]
                )  # fmt: skip
                for i in range(n)
            ]
            try:
                time.sleep(3)  # (the workers import and register)
                t = time.perf_counter()
                subprocess.run(
                    [brulee, "simulate", "--workload", workload, "--profiles", str(PROFILES),
                     "--sizes", sizes, "--policies", policies, "--memory-cap", "25%,50%,75%",
                     "--workers", str(workers), "--seeds", str(seeds),
                     "--out", str(out / f"rq-{n}"),
                     "--redis", server.url],
                    check=True, capture_output=True,
                )  # fmt: skip
                times[n] = time.perf_counter() - t
            finally:
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.wait(timeout=30)
        runs = 3 * len(policies.split(",")) * seeds
        for n in (1, 2):
            rows.append([n, runs, f"{times[n]:.1f}", f"{times[1] / times[n]:.2f}x"])
    csv1 = (out / "rq-1" / "results.csv").read_text()
    assert csv1 == (out / "rq-2" / "results.csv").read_text(), "1 vs 2 workers: tables differ"
    return tabulate(
        rows, headers=["worker processes", "runs", "wall s", "speed-up"], tablefmt="github"
    )


@click.command()
@click.option("--workload", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--sizes", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--policies", default="lru,cremebrulee", show_default=True)
@click.option("--workers", default="1,32,64", show_default=True)
@click.option("--cap", default="50%", show_default=True)
@click.option("--repeat", default=1, show_default=True)
@click.option("--baseline", "ref", default=BASELINE, show_default=True)
@click.option("--rq-workload", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--rq-policies", default="lru,cremebrulee,gdsf,belady", show_default=True)
@click.option("--rq-seeds", default=3, show_default=True, help="--seeds of the RQ sweep")
@click.option("--out", default=None, type=click.Path(file_okay=False))
def main(
    workload, sizes, policies, workers, cap, repeat, ref, rq_workload, rq_policies, rq_seeds, out
):
    """Simulator speed vs the baseline; RQ sweep on 1 vs 2 worker processes."""
    pols = [p for p in policies.split(",") if p]
    ws = [int(w) for w in workers.split(",") if w]
    click.echo(speed_table(workload, sizes, pols, ws, cap, repeat, ref))
    if rq_workload:
        outp = Path(out or tempfile.mkdtemp(prefix="brulee-rq-bench-"))
        click.echo("")
        click.echo(rq_table(rq_workload, sizes, rq_policies, rq_seeds, 32, outp))


if __name__ == "__main__":
    main()
