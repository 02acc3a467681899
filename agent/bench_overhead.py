"""Warm-hit overhead of the agent: the same model and input called in-process vs. over HTTP
through the gateway, Redis placement, RQ and a worker, measured in one run.

    python -m agent.bench_overhead --models .cache/test-models --model digits-cnn --runs 200
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import click
import numpy as np
import requests
from tabulate import tabulate


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure_in_process(path: Path, x: np.ndarray, runs: int) -> list[float]:
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


def measure_http(url: str, name: str, x: np.ndarray, runs: int) -> tuple[list[float], list[float]]:
    """End-to-end latencies and the worker-reported queue wait (enqueue to job start)."""
    session = requests.Session()
    body = {"inputs": x.tolist()}
    session.post(f"{url}/function/{name}", json=body, timeout=60).raise_for_status()  # warm
    out, queued = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        resp = session.post(f"{url}/function/{name}", json=body, timeout=60)
        out.append(time.perf_counter() - t0)
        assert resp.headers["X-Cache"] == "hit", resp.headers
        queued.append(float(resp.headers["X-Queue-Seconds"]))
    return out, queued


@click.command()
@click.option(
    "--models",
    "models_dir",
    type=click.Path(exists=True, path_type=Path),
    default=Path(".cache/test-models"),
    show_default=True,
)
@click.option("--model", default="digits-cnn", show_default=True)
@click.option("--runs", default=200, show_default=True)
def main(models_dir: Path, model: str, runs: int) -> None:
    """Print median/p99 latency in-process vs. through the agent, and the overhead."""
    import json
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    from tests.agent_fixtures import running_agent

    record = {m["name"]: m for m in json.loads((models_dir / "catalog.json").read_text())["models"]}
    rec = record[model]
    x = np.random.default_rng(0).random(rec["input_shape"], dtype=np.float32)
    local = measure_in_process(models_dir / rec["file"], x, runs)
    with running_agent(models_dir.resolve(), 256 * 1024 * 1024, workers=1) as agent:
        remote, queued = measure_http(agent["url"], model, x, runs)
    rows = []
    for label, vals in (("in-process", local), ("through agent (HTTP)", remote)):
        rows.append([label, statistics.median(vals) * 1e3, _percentile(vals, 99) * 1e3])
    rows.append(["overhead", rows[1][1] - rows[0][1], rows[1][2] - rows[0][2]])
    rows.append(
        ["  of which queue wait", statistics.median(queued) * 1e3, _percentile(queued, 99) * 1e3]
    )
    click.echo(f"model {model}, {runs} warm runs each")
    click.echo(tabulate(rows, headers=["path", "p50 ms", "p99 ms"], floatfmt=".3f"))
    click.echo(f"ratio p50 agent/in-process: {rows[1][1] / rows[0][1]:.1f}x")


if __name__ == "__main__":
    main()
