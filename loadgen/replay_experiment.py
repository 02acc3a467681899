"""The testbed experiment: one workload, one cap, several eviction policies, on a real agent.

For each policy, start ``brulee up`` (embedded Redis, ``--workers`` workers, the cap), replay the
workload with ``run_replay`` and keep the summary; then print mean model-load delay, mean exec
latency and their ratio per policy, and each policy's load penalty relative to random eviction
(mean load delay / random's). Reports for each policy stay in ``OUT/<policy>/``.

Usage: ``python -m loadgen.replay_experiment --workload W --models DIR --cap BYTES --out OUT``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import requests

from loadgen.replay import format_comparison, run_replay


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_policy(
    workload: str, models: str, cap: str, policy: str, workers: int, speedup: float, out: Path
) -> dict:
    """One ``brulee up`` with ``policy`` and one replay against it; returns the summary."""
    port = _free_port()
    token = "experiment-token"
    with tempfile.TemporaryDirectory(prefix="brulee-exp-") as state:
        brulee = str(Path(sys.executable).with_name("brulee"))
        cmd = [brulee, "up", "--port", str(port), "--workers", str(workers), "--memory-cap", cap,
               "--policy", policy, "--models", models, "--state-dir", state]  # fmt: skip
        proc = subprocess.Popen(
            cmd,
            env=dict(os.environ, BRULEE_TOKEN=token),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 60
            while True:
                try:
                    if requests.get(url + "/healthz", timeout=1).ok:
                        break
                except requests.RequestException:
                    pass
                if time.time() > deadline or proc.poll() is not None:
                    raise click.ClickException(f"brulee up --policy {policy} did not start")
                time.sleep(0.3)
            time.sleep(2)  # let the workers register
            return run_replay(
                workload, url, out / policy, speedup=speedup, simulate=True, token=token
            )
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@click.command()
@click.option("--workload", required=True, type=click.Path(exists=True))
@click.option("--models", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--cap", required=True, help="memory cap, e.g. 3900000 (50 % of the working set)")
@click.option("--policies", default="cremebrulee,random,lru,gdsf", show_default=True)
@click.option("--workers", default=1, show_default=True)
@click.option("--speedup", default=1.0, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
def main(
    workload: str, models: str, cap: str, policies: str, workers: int, speedup: float, out: str
) -> None:
    """Print mean load delay / mean exec per policy and the load penalty vs random."""
    from tabulate import tabulate

    outdir = Path(out)
    results = {}
    for policy in policies.split(","):
        results[policy] = run_policy(workload, models, cap, policy, workers, speedup, outdir)
        if results[policy].get("simulated"):
            print(policy, format_comparison(results[policy]), sep="\n")
    random_load = (results.get("random") or {}).get("mean_load_s")
    rows = []
    for policy, s in results.items():
        rows.append(
            {
                "policy": policy,
                "requests": s["requests"],
                "failures": s["failures"],
                "hit ratio": s["hit_ratio"],
                "cold starts": s["cold_starts"],
                "mean load ms": round((s["mean_load_s"] or 0) * 1000, 2),
                "mean exec ms": round((s["mean_exec_s"] or 0) * 1000, 2),
                "load/exec": s["load_over_exec"],
                "load vs random": round(s["mean_load_s"] / random_load, 3)
                if random_load and s["mean_load_s"] is not None
                else None,
                "sim hit ratio": (s.get("simulated") or {}).get("hit_ratio"),
                "sim cold": (s.get("simulated") or {}).get("cold_starts"),
            }
        )
    print(tabulate(rows, headers="keys"))
    (outdir / "experiment.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
