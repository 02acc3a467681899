"""What ``brulee up --durability strict`` costs against ``--durability fast``, measured in the
same run.

    nice -n -15 python benchmarks/async_durability.py [--models DIR] [--model NAME] [--rounds 6]

``--models`` defaults to ``$BRULEE_TEST_MODELS``, else the test models ``./brulee.sh test``
builds (``.cache/test-models``), whose ``mobilenet-micro`` (a 64x64x3 float input, 48 KiB a
call) is the default ``--model``; any model directory built by ``brulee models build``
(e.g. ``--models zoo/edge --model mobilenetv2``, 588 KiB a call) works.

Starts two real agents exactly as a user gets them, once each, on the same model directory:
``brulee up --durability strict`` (its embedded Redis runs ``appendfsync no`` and the agent
forces the append-only file itself at its promises, :mod:`agent.durable`: the gateway before
each 202, a worker after recording each job's end) and ``brulee up --durability fast`` (the
embedded Redis runs ``appendfsync everysec``, the agent forces nothing). Each has its own
redis-server, gunicorn and ``--workers`` workers, and the same function (the model through
the ``tensor`` handler: ``.npy`` in and out, no image decoding). Rounds alternate between
them (strict first in even rounds, fast first in odd ones), the other agent idle, every
accepted job run before the next measurement starts. Each round measures, on one agent:

- the **202 latency** of ``POST /async-function`` (one client, ``--runs`` sequential calls):
  median and p95;
- the **202 throughput**: ``--clients`` clients submitting flat out for ``--seconds`` (the
  workers run the accepted jobs meanwhile, as in use, so strict's forced write per finished
  job is in it too);
- the **sync warm-hit latency** (``POST /function``, ``--runs`` sequential calls): median
  (strict forces nothing for a synchronous call, so this should not differ).

Prints a progress line per round, then the median of the rounds per setting and the ratio
strict/fast (the machine is shared: medians of rounds, not means).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import numpy as np
import redis
from tabulate import tabulate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.overhead_parts import NPY, Client, deploy  # noqa: E402

SETTINGS = ("strict", "fast")
METRICS = {  # key -> the table's label ({clients} filled in)
    "lat": "202 latency, median ms",
    "p95": "202 latency, p95 ms",
    "rate": "202 throughput, {clients} clients, /s",
    "sync": "sync warm hit, median ms",
}


def default_models() -> Path:
    return Path(os.environ.get("BRULEE_TEST_MODELS") or REPO / ".cache" / "test-models")


def latencies(url: str, path: str, body: bytes, n: int, status: int) -> list[float]:
    """``n`` sequential calls on one keep-alive connection; their latencies in ms."""
    client = Client(url)
    out = [client.timed(path, body, NPY, expect=status)[0] * 1000 for _ in range(n)]
    client.close()
    return out


def throughput(url: str, path: str, body: bytes, clients: int, seconds: float) -> float:
    """202s a second of ``clients`` clients submitting flat out for ``seconds``."""
    end = time.monotonic() + seconds

    def client(_: int) -> tuple[int, int]:
        c, accepted, other = Client(url), 0, 0
        while time.monotonic() < end:
            if c.post(path, body, NPY, expect=None).status == 202:
                accepted += 1
            else:
                other += 1
        c.close()
        return accepted, other

    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(client, range(clients)))
    took = time.monotonic() - t0  # the calls in flight at the end count: so does their time
    if refused := sum(o for _, o in done):
        click.echo(f"  ({refused} submissions were not accepted)", err=True)
    return sum(a for a, _ in done) / took


def drain(conn: redis.Redis, timeout: float = 180.0) -> None:
    """Wait until the workers ran every accepted job (measurements start from an empty queue)."""
    from agent.jobs import counts

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(c["waiting"] + c["running"] for c in counts(conn).values()) <= 0:
            return
        time.sleep(0.2)
    raise click.ClickException(f"jobs still queued after {timeout:.0f} s")


def measure(agent: dict, body: bytes, runs: int, clients: int, seconds: float) -> dict:
    """One round on one agent: 202 latency (median, p95), 202 throughput, sync warm hit."""
    url, conn, fn = agent["url"], agent["redis"], agent["function"]
    drain(conn)
    lat = latencies(url, f"/async-function/{fn}", body, runs, 202)
    drain(conn)
    rate = throughput(url, f"/async-function/{fn}", body, clients, seconds)
    drain(conn)
    sync = latencies(url, f"/function/{fn}", body, runs, 200)
    return {
        "lat": statistics.median(lat),
        "p95": float(np.percentile(lat, 95)),
        "rate": rate,
        "sync": statistics.median(sync),
    }


def _line(setting: str, res: dict) -> str:
    return (f"{setting} 202 {res['lat']:.1f} ms (p95 {res['p95']:.1f}), {res['rate']:.0f}/s, "
            f"sync {res['sync']:.1f} ms")  # fmt: skip


@click.command()
@click.option(
    "--models",
    "models_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=default_models,
    show_default="$BRULEE_TEST_MODELS or .cache/test-models",
    help="a model directory (brulee models build); the default is the test models "
    "./brulee.sh test builds",
)
@click.option("--model", default="mobilenet-micro", show_default=True)
@click.option("--workers", default=2, show_default=True, help="workers of each agent")
@click.option("--runs", default=100, show_default=True, help="sequential calls per latency")
@click.option("--clients", default=8, show_default=True)
@click.option("--seconds", default=5.0, show_default=True, help="length of a throughput round")
@click.option("--rounds", default=6, show_default=True, help="rounds (each measures both)")
def main(models_dir: Path, model: str, workers: int, runs: int, clients: int, seconds: float,
         rounds: int) -> None:  # fmt: skip
    """202 latency/throughput and sync-hit latency, strict vs. fast durability."""
    from functions.tensors import to_npy
    from loadgen.testbed import agent_process
    from models.catalog import load_catalog

    catalog = load_catalog(models_dir)
    if model not in catalog:
        raise click.UsageError(f"{model} is not in {models_dir}/catalog.json")
    shape = [1 if d in (None, -1) else d for d in catalog[model]["input_shape"]]
    body = to_npy(np.random.default_rng(0).random(shape, dtype=np.float32))
    token = secrets.token_hex(8)
    results: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    state = tempfile.TemporaryDirectory(prefix="brulee-bench-")
    with state, contextlib.ExitStack() as stack:  # the agents stop before their state goes
        agents = {}
        for setting in SETTINGS:  # both started once, as `brulee up --durability SETTING`
            home = Path(state.name) / setting
            url = stack.enter_context(agent_process(
                models_dir, 2 << 30, "lru", workers, home, token, durability=setting
            ))  # fmt: skip
            conn = redis.Redis(unix_socket_path=str(home / "redis" / "redis.sock"))
            stack.callback(conn.close)
            fn = f"bench-{model}"
            deploy(url, token, fn, model, "tensor")
            latencies(url, f"/function/{fn}", body, 5, 200)  # loaded: later calls are hits
            latencies(url, f"/async-function/{fn}", body, 5, 202)
            agents[setting] = {"url": url, "redis": conn, "function": fn}
            fsync = conn.config_get("appendfsync")["appendfsync"]
            forced = "; the agent forces the file" if setting == "strict" else ""
            click.echo(f"{setting}: {url}, its Redis appendfsync {fsync}{forced}", err=True)
        for r in range(rounds):
            order = SETTINGS if r % 2 == 0 else SETTINGS[::-1]
            parts = []
            for setting in order:  # the other agent idle meanwhile
                res = measure(agents[setting], body, runs, clients, seconds)
                results[setting].append(res)
                parts.append(_line(setting, res))
            click.echo(f"round {r + 1}/{rounds}: {' | '.join(parts)}", err=True)
    med = {s: {k: statistics.median(res[k] for res in results[s]) for k in METRICS}
           for s in SETTINGS}  # fmt: skip
    rows = [[label.format(clients=clients), med["fast"][k], med["strict"][k],
             med["strict"][k] / med["fast"][k]] for k, label in METRICS.items()]  # fmt: skip
    click.echo(f"{model} through the tensor handler ({len(body)} bytes of input per call), "
               f"{workers} workers per agent, medians of {rounds} rounds")  # fmt: skip
    click.echo(tabulate(rows, ["", "fast", "strict", "strict/fast"], floatfmt=".2f"))


if __name__ == "__main__":
    main()
