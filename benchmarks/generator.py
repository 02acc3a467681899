"""Generator capacity: the highest request rate one Locust process sustains open-loop.

For each rate, replay a constant-rate workload of one function for ``--seconds`` through the
same path as ``brulee replay`` (one Locust process, ``loadgen/locustfile.py``) and measure the
schedule lag (actual send - scheduled). A rate is *sustained* when every request was sent, none
failed, and the lag p99 is <= 50 ms. Targets:

- baseline: the ``trivial`` function of a minimal gunicorn app this script starts
  (``loadgen/replay_standin.py``; no model), so the numbers measure the generator;
- optionally ``--host URL --function NAME``: a running agent's function (e.g. tiny-cnn).

Usage: ``python benchmarks/generator.py [--rates 100,200,...] [--seconds 10]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import requests

from agent.redis_server import free_port
from loadgen.replay import run_replay
from loadgen.workload_file import Request, write_workload

LAG_LIMIT_S = 0.050


def start_trivial_server(threads: int = 16) -> tuple[subprocess.Popen, str]:
    """A minimal gunicorn app (the stand-in's ``trivial`` function); returns (process, URL)."""
    port = free_port()
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "1", "-k", "gthread",
         "--threads", str(threads), "--keep-alive", "60", "--chdir", str(root),
         "loadgen.replay_standin:make_app()"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            requests.get(url + "/system/functions", timeout=1)
            return proc, url
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the trivial gunicorn app did not start within 15 s")


def measure_rate(
    host: str, function: str, rate: float, seconds: float, workdir: Path, token: str | None = None
) -> dict:
    """Replay ``rate`` req/s of ``function`` for ``seconds``; returns the lag and counts."""
    path = workdir / f"rate-{int(rate)}.csv"
    n = int(rate * seconds)
    write_workload(path, (Request(i / rate, function, str(i)) for i in range(n)))
    summary = run_replay(path, host, workdir / f"out-{function}-{int(rate)}", token=token)
    sustained = (
        summary["requests"] == n
        and summary["failures"] == 0
        and summary["lag_p99_s"] is not None
        and summary["lag_p99_s"] <= LAG_LIMIT_S
    )
    return {
        "target": function,
        "rate": rate,
        "sent": summary["requests"],
        "scheduled": n,
        "failures": summary["failures"],
        "lag_p50_ms": round(summary["lag_p50_s"] * 1000, 1),
        "lag_p99_ms": round(summary["lag_p99_s"] * 1000, 1),
        "latency_p50_ms": round(summary["latency_p50_s"] * 1000, 1),
        "sustained": sustained,
    }


@click.command()
@click.option("--rates", default="100,200,300,400,600", show_default=True)
@click.option("--seconds", default=10.0, show_default=True)
@click.option("--host", help="also measure against this running agent")
@click.option("--function", "function", default="tiny-cnn", show_default=True)
@click.option("--token", envvar="BRULEE_TOKEN", help="the agent's management token")
def main(rates: str, seconds: float, host: str | None, function: str, token: str | None) -> None:
    """Print a table of schedule lag per rate and the highest sustained rate per target."""
    from tabulate import tabulate

    rate_list = [float(r) for r in rates.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        proc, url = start_trivial_server()
        try:
            targets = [(url, "trivial")] + ([(host, function)] if host else [])
            for target_host, fn in targets:
                for rate in rate_list:
                    rows.append(measure_rate(target_host, fn, rate, seconds, workdir, token))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(tabulate(rows, headers="keys"))
    for fn in dict.fromkeys(r["target"] for r in rows):
        ok = [r["rate"] for r in rows if r["target"] == fn and r["sustained"]]
        best = max(ok) if ok else None
        print(f"highest sustained rate against {fn}: {best} req/s (lag p99 <= 50 ms)")
    print(f"cpu count {os.cpu_count()}")


if __name__ == "__main__":
    main()
