"""What ``--durability strict`` costs against ``fast``, measured in the same run.

    python benchmarks/async_durability.py [--models zoo/edge] [--model mobilenetv2] [--rounds 6]

Starts the real agent (``brulee up``: its own redis-server, gunicorn, ``--workers`` workers)
and alternates rounds between the two settings of its embedded Redis — ``appendfsync
always`` (strict: every write forced to disk before the reply, so an accepted job is on disk
before its 202) and ``everysec`` (fast) — switched with ``CONFIG SET`` on the same server, so
both see the same agent, disk and machine state. Each round measures:

- the **202 latency** of ``POST /async-function`` (one client, sequential calls);
- the **202 throughput**: ``--clients`` clients submitting flat out for ``--seconds``;
- the **sync warm-hit latency** (strict forces every write to disk, not only the jobs').

The workers run the accepted jobs meanwhile, as in use. Prints medians per setting and the
ratio strict/fast (the machine is shared: medians of rounds, not means).
"""

from __future__ import annotations

import http.client
import secrets
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import click
import numpy as np
import redis
from tabulate import tabulate

SETTINGS = {"fast": "everysec", "strict": "always"}


def _post(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[float, int]:
    t0 = time.perf_counter()
    conn.request("POST", path, body, {"Content-Type": "application/x-npy"})
    resp = conn.getresponse()
    resp.read()
    return time.perf_counter() - t0, resp.status


def _connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)


def latencies(url: str, path: str, body: bytes, n: int, status: int) -> list[float]:
    conn = _connect(url)
    out = []
    for _ in range(n):
        took, got = _post(conn, path, body)
        if got != status:
            raise click.ClickException(f"{path} answered {got}, expected {status}")
        out.append(took * 1000)
    return out


def throughput(url: str, path: str, body: bytes, clients: int, seconds: float) -> float:
    end = time.monotonic() + seconds

    def client(_: int) -> int:
        conn, done = _connect(url), 0
        while time.monotonic() < end:
            done += _post(conn, path, body)[1] == 202
        return done

    with ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(client, range(clients))) / seconds


def drain(conn: redis.Redis, timeout: float = 120.0) -> None:
    """Wait until the workers ran every accepted job (rounds start from an empty queue)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = [int(v) for k, v in conn.hgetall("brulee:jobs").items()
                  if k.rsplit(b"|", 1)[1] in (b"waiting", b"running")]  # fmt: skip
        if sum(counts) <= 0:
            return
        time.sleep(0.2)


@click.command()
@click.option("--models", "models_dir", default="zoo/edge", type=click.Path(path_type=Path))
@click.option("--model", default="mobilenetv2", show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--runs", default=100, show_default=True, help="calls per latency round")
@click.option("--clients", default=8, show_default=True)
@click.option("--seconds", default=5.0, show_default=True, help="length of a throughput round")
@click.option("--rounds", default=6, show_default=True, help="rounds (alternating settings)")
def main(models_dir: Path, model: str, workers: int, runs: int, clients: int, seconds: float,
         rounds: int) -> None:  # fmt: skip
    """202 latency/throughput and sync-hit latency, strict vs. fast durability."""
    from agent_overhead import deploy_tensor_functions

    from functions.tensors import to_npy
    from loadgen.testbed import agent_process
    from models.catalog import load_catalog

    catalog = load_catalog(models_dir)
    if model not in catalog:
        raise click.UsageError(f"{model} is not in {models_dir}/catalog.json")
    shape = [1 if d in (None, -1) else d for d in catalog[model]["input_shape"]]
    body = to_npy(np.random.default_rng(0).random(shape, dtype=np.float32))
    token = secrets.token_hex(8)
    results: dict[str, dict[str, list[float]]] = {
        s: {"lat": [], "p95": [], "rate": [], "sync": []} for s in SETTINGS
    }
    with tempfile.TemporaryDirectory(prefix="brulee-bench-") as state:
        home = Path(state) / "a"
        with agent_process(models_dir, 2 << 30, "lru", workers, home, token) as url:
            conn = redis.Redis(unix_socket_path=str(home / "redis" / "redis.sock"))
            deploy_tensor_functions(url, token, [model])  # .npy in and out, no image decoding
            model = f"bench-{model}"
            latencies(url, f"/function/{model}", body, 5, 200)  # load it: later calls are hits
            for r in range(rounds):
                for setting in SETTINGS if r % 2 == 0 else reversed(SETTINGS):
                    conn.config_set("appendfsync", SETTINGS[setting])
                    drain(conn)
                    lat = latencies(url, f"/async-function/{model}", body, runs, 202)
                    drain(conn)
                    rate = throughput(url, f"/async-function/{model}", body, clients, seconds)
                    drain(conn)
                    sync = latencies(url, f"/function/{model}", body, runs // 2, 200)
                    res = results[setting]
                    res["lat"].append(statistics.median(lat))
                    res["p95"].append(float(np.percentile(lat, 95)))
                    res["rate"].append(rate)
                    res["sync"].append(statistics.median(sync))
    med = {s: {k: statistics.median(v) for k, v in res.items()} for s, res in results.items()}
    rows = [
        [label, med["fast"][k], med["strict"][k], med["strict"][k] / med["fast"][k]]
        for label, k in [
            ("202 latency, median ms", "lat"),
            ("202 latency, p95 ms", "p95"),
            (f"202 throughput, {clients} clients, /s", "rate"),
            ("sync warm hit, median ms", "sync"),
        ]
    ]
    click.echo(f"{model} ({len(body)} bytes of input per call), {workers} workers, "
               f"{rounds} rounds, medians of rounds")  # fmt: skip
    click.echo(tabulate(rows, ["", "fast", "strict", "strict/fast"], floatfmt=".2f"))


if __name__ == "__main__":
    main()
