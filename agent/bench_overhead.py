"""What the agent adds to a model's own cost, each against its baseline measured in the same run.

    python -m agent.bench_overhead [--models zoo/edge] [--model mobilenetv2] [--runs 200]

Starts the real agent (``brulee up``: its own redis-server, gunicorn, ``--workers`` RQ
workers) on the model directory, then measures:

- **warm hit**: end-to-end HTTP latency of the same model and input vs. the interpreter called
  in-process (p50, p99, the difference);
- **cold miss**: latency of a miss (the model evicted before each call) minus the model's own
  load and first invoke measured in-process from a warm page cache (the agent's files stay
  cached too);
- **throughput**: requests/s with all workers busy on a compute-bound model, from as many
  concurrent clients as twice the workers, vs. ``workers / exec time`` measured in-process.

Prints a table of medians and ratios (the machine is shared: medians, not means).
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import numpy as np
import requests
from tabulate import tabulate


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def in_process(path: Path, x: np.ndarray, runs: int) -> tuple[list[float], list[float]]:
    """Warm exec latencies, and (load + first invoke) latencies of fresh loads."""
    from agent.runtime import load_model

    model = load_model(path)
    model.predict(x)
    warm = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.predict(x)
        warm.append(time.perf_counter() - t0)
    model.close()
    cold = []
    for _ in range(max(3, runs // 20)):
        t0 = time.perf_counter()
        fresh = load_model(path)
        fresh.predict(x)
        cold.append(time.perf_counter() - t0)
        fresh.close()
    return warm, cold


def _call(session: requests.Session, url: str, name: str, body: bytes) -> requests.Response:
    resp = session.post(
        f"{url}/function/{name}",
        data=body,
        headers={"Content-Type": "application/x-npy"},
        timeout=120,
    )
    if not resp.ok:
        raise click.ClickException(f"{name}: HTTP {resp.status_code}: {resp.text}")
    return resp


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


def warm_hits(url: str, name: str, body: bytes, runs: int) -> tuple[list[float], list[float]]:
    session = requests.Session()
    _call(session, url, name, body)
    out, queued = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        resp = _call(session, url, name, body)
        out.append(time.perf_counter() - t0)
        if resp.headers["X-Cache"] != "hit":
            raise click.ClickException(f"expected a hit, got {resp.headers['X-Cache']}")
        queued.append(float(resp.headers["X-Queue-Seconds"]))
    return out, queued


def cold_misses(
    url: str, name: str, body: bytes, evictor: str, evictor_body: bytes, runs: int
) -> list[float]:
    """Each call is a miss: a call to ``evictor`` (as large as the cap allows) evicts it."""
    session = requests.Session()
    out = []
    for _ in range(runs):
        _call(session, url, evictor, evictor_body)
        t0 = time.perf_counter()
        resp = _call(session, url, name, body)
        out.append(time.perf_counter() - t0)
        if resp.headers["X-Cache"] != "miss":
            raise click.ClickException("the evictor did not evict: choose a larger --evictor")
    return out


def throughput(url: str, name: str, body: bytes, clients: int, seconds: float) -> float:
    """Requests/s completed by ``clients`` closed-loop clients over ``seconds``."""
    deadline = time.monotonic() + seconds

    def client(_: int) -> int:
        session, n = requests.Session(), 0
        while time.monotonic() < deadline:
            _call(session, url, name, body)
            n += 1
        return n

    _call(requests.Session(), url, name, body)
    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        done = sum(pool.map(client, range(clients)))
    return done / (time.monotonic() - t0)


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
@click.option("--seconds", default=20.0, show_default=True, help="throughput run length")
def main(
    models_dir: Path,
    model: str,
    evictor: str,
    compute_model: str,
    runs: int,
    workers: int,
    seconds: float,
) -> None:
    """Warm-hit overhead, cold-miss overhead and throughput of the agent vs. in-process."""
    import secrets
    import tempfile

    from loadgen.testbed import agent_process
    from models.catalog import load_catalog
    from models.profile import read_profiles

    catalog = load_catalog(models_dir)
    missing = [m for m in (model, evictor, compute_model) if m not in catalog]
    if missing:
        raise click.UsageError(f"not in {models_dir}/catalog.json: {', '.join(missing)}")

    def tensor(name: str) -> tuple[np.ndarray, bytes]:
        from functions.tensors import to_npy

        rec = catalog[name]
        x = np.random.default_rng(0).random(rec["input_shape"], dtype=np.float32)
        return x, to_npy(x)

    x, body = tensor(model)
    _, evictor_body = tensor(evictor)
    cx, compute_body = tensor(compute_model)
    warm_local, cold_local = in_process(models_dir / catalog[model]["file"], x, runs)
    exec_compute, _ = in_process(models_dir / catalog[compute_model]["file"], cx, 30)
    sizes = {n: r["loaded_bytes"] for n, r in read_profiles(models_dir / "profiles.json").items()}
    cap = sizes[evictor] + sizes[model] // 2  # the evictor fits, never together with the model
    token = secrets.token_hex(8)

    with tempfile.TemporaryDirectory(prefix="brulee-bench-") as state:
        with agent_process(models_dir, cap, "lru", workers, Path(state) / "a", token) as url:
            deploy_tensor_functions(url, token, [model, evictor])
            warm_agent, queued = warm_hits(url, f"bench-{model}", body, runs)
            cold_agent = cold_misses(
                url, f"bench-{model}", body, f"bench-{evictor}", evictor_body, max(5, runs // 20)
            )
            listed = requests.get(
                f"{url}/system/functions",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            ).json()["functions"]
            measured = {f["model"]: f for f in listed if f["name"].startswith("bench-")}
        big = 10 * cap
        with agent_process(models_dir, big, "lru", workers, Path(state) / "b", token) as url:
            deploy_tensor_functions(url, token, [compute_model])
            rate = throughput(url, f"bench-{compute_model}", compute_body, 2 * workers, seconds)
    med = statistics.median
    rows = [
        ["warm hit, in-process", med(warm_local) * 1e3, _p(warm_local, 99) * 1e3],
        ["warm hit, through the agent", med(warm_agent) * 1e3, _p(warm_agent, 99) * 1e3],
        ["  overhead", (med(warm_agent) - med(warm_local)) * 1e3,
         (_p(warm_agent, 99) - _p(warm_local, 99)) * 1e3],
        ["  of which queue wait", med(queued) * 1e3, _p(queued, 99) * 1e3],
        ["cold: load + 1st invoke, in-process", med(cold_local) * 1e3, _p(cold_local, 99) * 1e3],
        ["cold miss, through the agent", med(cold_agent) * 1e3, _p(cold_agent, 99) * 1e3],
        ["  overhead", (med(cold_agent) - med(cold_local)) * 1e3, None],
    ]  # fmt: skip
    click.echo(f"model {model} ({runs} warm runs), cold misses evicted by {evictor}; cap {cap} B")
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
            headers=[
                "model",
                "profiled MiB",
                "RSS +at load MiB",
                "RSS -at eviction MiB",
                "freed / profiled",
            ],  # fmt: skip
            floatfmt=".2f",
        )
    )
    ideal = workers / med(exec_compute)
    click.echo(
        f"\nthroughput on {compute_model}: {rate:.1f} req/s with {workers} workers and "
        f"{2 * workers} clients; in-process bound {workers} / {med(exec_compute) * 1e3:.1f} ms = "
        f"{ideal:.1f} req/s; ratio {rate / ideal:.2f} (target >= 0.90)"
    )


if __name__ == "__main__":
    main()
