"""What the agent adds to a model's own cost, each against its baseline measured in the same run.

    python benchmarks/agent_overhead.py [--models zoo/edge] [--model mobilenetv2] [--runs 200]

Starts the real agent (``brulee up``: its own redis-server, gunicorn, ``--workers`` workers) on
the model directory and measures it with a lean HTTP client (``http.client``, one keep-alive
connection: a client library's own cost is not the agent's):

- **warm hit**: end-to-end latency of the same model and input vs. the interpreter called
  in-process, and where the difference goes: the *HTTP floor* (the same web stack, gunicorn
  gthread + Flask, serving a route that only reads the same body and answers as many bytes),
  the Redis round trip (``PING``; a hit takes three in a row at the gateway and one at the
  worker), the wait from placement to the worker picking the request up, and the model's own
  time inside the worker (which shares the cores with the gateway, Redis and the client);
- **cold miss**: a miss that must first evict ``--evictor`` (as large as the cap allows) vs. the
  same work in-process: drop the evictor's interpreter and trim the heap (the worker's own
  ``InterpreterCache.drop``), load the model, first invoke; the page cache is warm for both;
- **throughput**: ``--workers`` workers kept busy on a compute-bound model by twice as many
  clients vs. as many in-process processes running it flat out, in alternating rounds (the
  machine is shared and its speed drifts); also against the issue's ``workers / exec time``;
- **memory**: per model, the profiled loaded bytes vs. the worker's RSS change at load and at
  eviction.

The in-process baselines run interleaved with the agent's calls (one in-process call, one
through the agent, and so on), so both sides see the machine in the same state. Prints tables
of medians and ratios (the machine is shared: medians, not means).
"""

from __future__ import annotations

import http.client
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import click
import numpy as np
import requests
from tabulate import tabulate

NPY = {"Content-Type": "application/x-npy"}


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _ms(values: list[float]) -> list[float]:
    return [statistics.median(values) * 1e3, _p(values, 99) * 1e3]


class Client:
    """One keep-alive HTTP connection."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)

    def post(self, path: str, body: bytes) -> http.client.HTTPResponse:
        self.conn.request("POST", path, body=body, headers=NPY)
        resp = self.conn.getresponse()
        resp.body = resp.read()
        if resp.status != 200:
            raise click.ClickException(f"{path}: HTTP {resp.status}: {resp.body[:300]!r}")
        return resp

    def timed(self, path: str, body: bytes) -> tuple[float, http.client.HTTPResponse]:
        t0 = time.perf_counter()
        resp = self.post(path, body)
        return time.perf_counter() - t0, resp


def floor_app():
    """The HTTP floor: a route that reads the body and answers ``?bytes=N`` bytes, nothing else
    (gunicorn serves it with the agent's own settings)."""
    from flask import Flask, Response, request

    app = Flask("floor")

    @app.post("/floor")
    def floor():
        request.get_data()
        return Response(b" " * int(request.args["bytes"]), mimetype="application/json")

    return app


def _gunicorn(port: int, app: str, cwd: Path):
    import subprocess

    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", "8",
         "-b", f"127.0.0.1:{port}", app],
        cwd=cwd, stderr=subprocess.DEVNULL,
    )  # fmt: skip


class InProcess:
    """The baselines, in this process: the model warm, and a cold miss done the worker's way
    (drop the evictor with ``InterpreterCache.drop``, load the model, first invoke). The
    benchmark interleaves them with the agent's calls, so both sides see the same machine."""

    def __init__(self, models_dir: Path, catalog: dict, model: str, evictor: str) -> None:
        from agent.interpreters import InterpreterCache

        self.catalog, self.model, self.evictor = catalog, model, evictor
        self.cache = InterpreterCache(models_dir)
        self.x, self.evictor_x = _input(catalog, model), _input(catalog, evictor)
        self.warm_model, _ = self.cache.load(f"warm-{model}", catalog[model]["file"])
        self.warm_model.predict(self.x)

    def warm(self) -> float:
        t0 = time.perf_counter()
        self.warm_model.predict(self.x)
        return time.perf_counter() - t0

    def cold(self) -> float:
        loaded, _ = self.cache.load(self.evictor, self.catalog[self.evictor]["file"])
        loaded.predict(self.evictor_x)
        t0 = time.perf_counter()
        self.cache.drop(self.evictor)
        loaded, _ = self.cache.load(self.model, self.catalog[self.model]["file"])
        loaded.predict(self.x)
        took = time.perf_counter() - t0
        self.cache.drop(self.model)
        return took


def in_process_exec(path: Path, x: np.ndarray, runs: int) -> list[float]:
    from agent.runtime import load_model

    model = load_model(path)
    model.predict(x)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.predict(x)
        out.append(time.perf_counter() - t0)
    model.close()
    return out


def _spin(path: str, shape: list[int], seconds: float) -> float:
    """One in-process 'worker': run the model flat out for ``seconds``; returns runs/s."""
    from agent.runtime import load_model

    model = load_model(path)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    model.predict(x)
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        model.predict(x)
        n += 1
    return n / (time.monotonic() - t0)


def in_process_rate(path: Path, shape: list[int], workers: int, seconds: float) -> float:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        return sum(pool.starmap(_spin, [(str(path), shape, seconds)] * workers))


def agent_rate(url: str, path: str, body: bytes, clients: int, seconds: float) -> float:
    """Requests/s completed by ``clients`` closed-loop clients over ``seconds``."""
    Client(url).post(path, body)
    deadline = time.monotonic() + seconds

    def client(_: int) -> int:
        c, n = Client(url), 0
        while time.monotonic() < deadline:
            c.post(path, body)
            n += 1
        return n

    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        done = sum(pool.map(client, range(clients)))
    return done / (time.monotonic() - t0)


def deploy_tensor_functions(url: str, token: str, models: list[str]) -> None:
    """Serve each model raw (``tensor`` handler, ``.npy`` in and out) as ``bench-<model>``, so
    the agent and the in-process baseline run the very same input, with no image decoding."""
    for model in models:
        resp = requests.post(
            f"{url}/system/functions",
            json={"name": f"bench-{model}", "model": model, "handler": "tensor"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        if resp.status_code != 201:
            raise click.ClickException(f"deploying bench-{model}: {resp.status_code} {resp.text}")


def _input(catalog: dict, name: str) -> np.ndarray:
    return np.random.default_rng(0).random(catalog[name]["input_shape"], dtype=np.float32)


def redis_rtt(socket_path: Path, runs: int = 500) -> list[float]:
    import redis

    conn = redis.Redis(unix_socket_path=str(socket_path))
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        conn.ping()
        out.append(time.perf_counter() - t0)
    return out


@click.command()
@click.option(
    "--models",
    "models_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("zoo/edge"),
    show_default=True,
)
@click.option("--model", default="mobilenetv2", show_default=True, help="warm and cold calls")
@click.option("--evictor", default="resnet50", show_default=True, help="a model that fills the cap")
@click.option("--compute-model", default="efficientnetb0", show_default=True, help="for throughput")
@click.option("--runs", default=200, show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--seconds", default=10.0, show_default=True, help="length of a throughput round")
@click.option("--rounds", default=5, show_default=True, help="throughput rounds (alternating)")
def main(
    models_dir: Path,
    model: str,
    evictor: str,
    compute_model: str,
    runs: int,
    workers: int,
    seconds: float,
    rounds: int,
) -> None:
    """Warm-hit overhead, cold-miss overhead and throughput of the agent vs. in-process."""
    import secrets
    import tempfile

    from agent.redis_server import free_port
    from functions.tensors import to_npy
    from loadgen.testbed import agent_process
    from models.catalog import load_catalog
    from models.profile import read_profiles

    catalog = load_catalog(models_dir)
    missing = [m for m in (model, evictor, compute_model) if m not in catalog]
    if missing:
        raise click.UsageError(f"not in {models_dir}/catalog.json: {', '.join(missing)}")
    profiles = models_dir / "profiles.json"
    if not profiles.exists():
        raise click.UsageError(f"no {profiles}: run `brulee models profile --models {models_dir}`")
    sizes = {n: r["loaded_bytes"] for n, r in read_profiles(profiles).items()}
    x = _input(catalog, model)
    body, evictor_body = to_npy(x), to_npy(_input(catalog, evictor))
    compute_body = to_npy(_input(catalog, compute_model))
    cap = sizes[evictor] + sizes[model] // 2  # the evictor fits, never together with the model
    token = secrets.token_hex(8)
    local = InProcess(models_dir, catalog, model, evictor)
    exec_compute = in_process_exec(
        models_dir / catalog[compute_model]["file"], _input(catalog, compute_model), 20
    )

    with tempfile.TemporaryDirectory(prefix="brulee-bench-") as state:
        with agent_process(models_dir, cap, "lru", workers, Path(state) / "a", token) as url:
            deploy_tensor_functions(url, token, [model, evictor])
            client, path = Client(url), f"/function/bench-{model}"
            client.post(path, body)
            warm, queued, executed, warm_local = [], [], [], []
            for _ in range(runs):
                warm_local.append(local.warm())
                took, resp = client.timed(path, body)
                if resp.getheader("X-Cache") != "hit":
                    raise click.ClickException(f"expected a hit, got {resp.getheader('X-Cache')}")
                warm.append(took)
                queued.append(float(resp.getheader("X-Queue-Seconds")))
                executed.append(float(resp.getheader("X-Exec-Seconds")))
            answer_bytes = len(resp.body)
            cold, cold_local = [], []
            for _ in range(max(5, runs // 20)):
                cold_local.append(local.cold())
                client.post(f"/function/bench-{evictor}", evictor_body)
                took, resp = client.timed(path, body)
                if resp.getheader("X-Cache") != "miss":
                    raise click.ClickException("the evictor did not evict: choose a larger one")
                cold.append(took)
            rtt = redis_rtt(Path(state) / "a" / "redis" / "redis.sock")
            listed = requests.get(
                f"{url}/system/functions",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            ).json()["functions"]
            measured = {f["model"]: f for f in listed if f["name"].startswith("bench-")}
        port = free_port()
        floor_server = _gunicorn(port, "agent_overhead:floor_app()", Path(__file__).parent)
        try:
            floor_url = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    requests.get(floor_url, timeout=1)
                    break
                except requests.RequestException:
                    time.sleep(0.1)
            floor_client = Client(floor_url)
            floor = [
                floor_client.timed(f"/floor?bytes={answer_bytes}", body)[0] for _ in range(runs)
            ]
        finally:
            floor_server.terminate()
            floor_server.wait()
        big = 10 * cap
        local_rates, agent_rates = [], []
        with agent_process(models_dir, big, "lru", workers, Path(state) / "b", token) as url:
            deploy_tensor_functions(url, token, [compute_model])
            compute_path = f"/function/bench-{compute_model}"
            compute_file = models_dir / catalog[compute_model]["file"]
            shape = catalog[compute_model]["input_shape"]
            for _ in range(rounds):
                local_rates.append(in_process_rate(compute_file, shape, workers, seconds))
                rate = agent_rate(url, compute_path, compute_body, 2 * workers, seconds)
                agent_rates.append(rate)

    overhead = [a - b for a, b in zip(_ms(warm), _ms(warm_local), strict=True)]
    rows = [
        ["warm hit, in-process", *_ms(warm_local)],
        ["warm hit, through the agent", *_ms(warm)],
        ["  overhead (target p50 <= 1, p99 <= 10)", *overhead],
        ["    the model in the worker (X-Exec-Seconds)", *_ms(executed)],
        ["    HTTP floor: same stack, same bytes, no work", *_ms(floor)],
        ["    Redis round trip (x4 on the path)", *_ms(rtt)],
        ["    placement to worker pick-up", *_ms(queued)],
        ["cold: drop evictor + load + 1st invoke, in-process", *_ms(cold_local)],
        ["cold miss, through the agent", *_ms(cold)],
        ["  overhead (target <= 5)", statistics.median(cold) * 1e3
         - statistics.median(cold_local) * 1e3, None],
    ]  # fmt: skip
    click.echo(
        f"model {model} ({runs} warm runs, {len(x.tobytes()) / 1024:.0f} KiB in, "
        f"{answer_bytes / 1024:.0f} KiB out); cold misses evict {evictor}; cap {cap} B"
    )
    click.echo(tabulate(rows, headers=["path", "p50 ms", "p99 ms"], floatfmt=".2f"))
    memory = [
        [
            name,
            sizes[name] / 2**20,
            measured[name].get("observed_bytes", 0) / 2**20,
            measured[name].get("freed_bytes", 0) / 2**20,
            measured[name].get("freed_bytes", 0) / sizes[name],
        ]
        for name in (model, evictor)
    ]
    click.echo("\nmemory per model: profiled loaded bytes vs. what the worker's RSS did")
    click.echo(
        tabulate(
            memory,
            headers=["model", "profiled MiB", "RSS +at load MiB", "RSS -at eviction MiB",
                     "freed / profiled"],
            floatfmt=".2f",
        )
    )  # fmt: skip
    exec_s = statistics.median(exec_compute)
    ratios = [a / b for a, b in zip(agent_rates, local_rates, strict=True)]
    rate_rows = [
        [i + 1, local, agent, ratio, agent / (workers / exec_s)]
        for i, (local, agent, ratio) in enumerate(zip(local_rates, agent_rates, ratios))
    ]
    click.echo(
        f"\nthroughput on {compute_model}, {workers} workers, {2 * workers} clients, "
        f"{seconds:g} s rounds; exec alone {exec_s * 1e3:.1f} ms "
        f"(N / exec = {workers / exec_s:.1f} req/s)"
    )
    click.echo(
        tabulate(
            rate_rows,
            headers=["round", f"{workers} in-process req/s", "agent req/s",
                     "agent / in-process", "agent / (N / exec)"],
            floatfmt=".2f",
        )
    )  # fmt: skip
    click.echo(
        f"median ratio to {workers} in-process processes: {statistics.median(ratios):.2f} "
        "(target >= 0.90)"
    )


if __name__ == "__main__":
    main()
