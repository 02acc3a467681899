"""The agent's own memory: what ``brulee up`` holds idle, before any model, against the simplest
server measured in the same run.

    python benchmarks/footprint.py --models DIR [--replay-seconds 120] [--seconds 8]

For each process of the tree, its proportional set size (PSS, ``/proc/PID/smaps_rollup``: a
page shared by n processes counts 1/n in each, so the column sums to the tree's real memory):

1. idle ``brulee up`` with 1, 2 and 4 workers, and 2 workers with one gateway process; the
   step from 2 to 4 workers is the cost of each further worker;
2. the 2-worker agent again after each half of a loop of invocations over every model (sync,
   every fifth async) lasting ``--replay-seconds``, once its keep-alive policy (``ttl``)
   unloaded the models: what the agent keeps per request shows as growth from one half to
   the next (Redis keeps each async result for an hour, by design);
3. the simplest server (``benchmarks/simple_server.py``: gunicorn + Flask, interpreters in a
   dict) idle, and after the same loop (it keeps every model it loaded);
4. hits per second with one and two gateway processes, alternating rounds of ``--seconds``,
   on the smallest model (the gateway's own work, no model to speak of) and the largest:
   what a second gateway process buys.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click
import numpy as np
import requests
from tabulate import tabulate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.redis_server import free_port  # noqa: E402
from agent.up import stop_processes  # noqa: E402

MiB = 2**20


def pss(pid: int) -> int:
    """Proportional set size of ``pid``, bytes."""
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("Pss:"))


def children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return sorted(
            int(c) for t in tasks for c in (t / "children").read_text().split()
        )  # fmt: skip
    except OSError:
        return []


def title(pid: int) -> str:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return raw.strip()


def tree(root: int, root_role: str) -> list[tuple[str, int, int]]:
    """(role, pid, PSS) of ``root`` and everything below it."""
    out, todo = [], [(root, root_role, 0)]
    while todo:
        pid, role, depth = todo.pop(0)
        out.append((role, pid, pss(pid)))
        for child in children(pid):
            name = title(child)
            if "redis-server" in name:
                sub = "redis-server"
            elif name.startswith("brulee worker"):
                sub = "worker"
            elif name.startswith("brulee gateway") and role == "supervisor":
                sub = "gateway master"
            else:
                sub = "gateway worker" if role.startswith("gateway") else "gunicorn worker"
            todo.append((child, sub, depth + 1))
    return out


def summary(rows: list[tuple[str, int, int]]) -> dict[str, list[int]]:
    """PSS by role, in the order of first appearance."""
    by_role: dict[str, list[int]] = {}
    for role, _pid, value in rows:
        by_role.setdefault(role, []).append(value)
    return by_role


def wait_http(url: str, ok, timeout: float = 120.0, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if ok(requests.get(url, timeout=2)):
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready within {timeout:g} s")


class Agent:
    """``brulee up`` on a scratch state directory."""

    def __init__(self, models: Path, workers: int, gateways: int = 2, *options: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="brulee-footprint-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("REDIS_URL", None)
        env.pop("BRULEE_TOKEN", None)
        self.log = open(self.dir / "up.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from agent.cli import main; main()", "up",
             "--port", str(self.port), "--models", str(models), "--state-dir",
             str(self.dir / "state"), "--workers", str(workers), "--gateway-processes",
             str(gateways), "--memory-cap", "256MiB", *options],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_http(f"{self.url}/healthz", lambda r: r.ok and r.json()["workers"] == workers,
                  proc=self.proc)  # fmt: skip
        self.token = (self.dir / "state" / "token").read_text().strip()

    def payloads(self) -> dict[str, tuple[bytes, str]]:
        from loadgen.replay_payloads import build_payloads

        headers = {"Authorization": f"Bearer {self.token}"}
        listed = requests.get(f"{self.url}/system/functions", headers=headers, timeout=10)
        return build_payloads(listed.json())

    def models_held(self) -> int:
        headers = {"Authorization": f"Bearer {self.token}"}
        doc = requests.get(f"{self.url}/system/cache", headers=headers, timeout=10).json()
        return sum(len(w["models"]) for d in doc["devices"].values() for w in d["workers"].values())

    def baseline(self) -> tuple[int, int]:
        """Sum over the workers of the baseline RSS and PSS ``/system/cache`` reports."""
        headers = {"Authorization": f"Bearer {self.token}"}
        doc = requests.get(f"{self.url}/system/cache", headers=headers, timeout=10).json()
        device = next(iter(doc["devices"].values()))
        return device["baseline_rss_bytes"], device.get("baseline_pss_bytes", 0)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()


class Simple:
    """``benchmarks/simple_server.py`` under gunicorn."""

    def __init__(self, models: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "MODELS": str(models)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gthread", "--threads", "8",
             "-b", f"127.0.0.1:{self.port}", "--no-control-socket",
             "benchmarks.simple_server:app"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_http(f"{self.url}/nothing", lambda r: r.status_code == 404, proc=self.proc)

    def stop(self) -> None:
        stop_processes([self.proc], 30)


def npy_payloads(models: Path) -> dict[str, tuple[bytes, str]]:
    """A random ``.npy`` input per model of the catalog (for the simple server)."""
    rng = np.random.default_rng(0)
    out = {}
    for rec in json.loads((models / "catalog.json").read_text())["models"]:
        batch = rng.random(rec["input_shape"]).astype(rec["input_dtype"])
        buf = io.BytesIO()
        np.save(buf, batch)
        out[rec["file"].removesuffix(".tflite")] = (buf.getvalue(), "application/x-npy")
    return out


def loop(url: str, payloads: dict, seconds: float, clients: int, async_every: int = 0) -> int:
    """Invoke every payload's function round-robin from ``clients`` keep-alive connections for
    ``seconds``; every ``async_every``-th call async (0: none). Returns the 2xx answers."""
    names, done, stop = sorted(payloads), [0] * clients, time.monotonic() + seconds
    host, port = url.removeprefix("http://").split(":")

    def client(i: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        n = i
        while time.monotonic() < stop:
            name = names[n % len(names)]
            body, ctype = payloads[name]
            kind = "async-function" if async_every and n % async_every == 0 else "function"
            conn.request("POST", f"/{kind}/{name}", body, {"Content-Type": ctype})
            resp = conn.getresponse()
            resp.read()
            done[i] += resp.status < 300
            n += clients
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done)


def settle(seconds: float = 3.0) -> None:
    time.sleep(seconds)  # heartbeats, registrations and the first collections are done


def row(label: str, rows: list[tuple[str, int, int]], note: str = "") -> list:
    roles = summary(rows)
    parts = ", ".join(
        f"{role} {' + '.join(f'{v / MiB:.0f}' for v in values)}" for role, values in roles.items()
    )
    return [label, parts, f"{sum(v for _, _, v in rows) / MiB:.0f}", note]


@click.command()
@click.option(
    "--models",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="a model directory with catalog.json (e.g. the test models)",
)
@click.option("--replay-seconds", default=120.0, show_default=True)
@click.option("--seconds", default=8.0, show_default=True, help="one throughput round")
@click.option("--rounds", default=3, show_default=True, help="throughput rounds per setting")
@click.option("--clients", default=8, show_default=True)
def main(models: Path, replay_seconds: float, seconds: float, rounds: int, clients: int) -> None:
    models = models.resolve()
    table, baselines = [], []
    for workers, gateways in ((1, 2), (2, 2), (4, 2), (2, 1)):
        agent = Agent(models, workers, gateways)
        try:
            settle()
            label = f"brulee up --workers {workers}" + (
                f" --gateway-processes {gateways}" if gateways != 2 else ""
            )
            table.append(row(label, tree(agent.proc.pid, "supervisor")))
            rss, pss_ = agent.baseline()
            baselines.append([label, f"{rss / workers / MiB:.1f}", f"{pss_ / workers / MiB:.1f}"])
        finally:
            agent.stop()

    agent = Agent(models, 2, 2, "--keep-alive", "ttl:5")
    try:
        settle()
        table.append(row("2 workers, keep-alive ttl:5, before the loop",
                         tree(agent.proc.pid, "supervisor")))  # fmt: skip
        payloads, calls = agent.payloads(), 0
        for half in ("first", "second"):
            calls += loop(agent.url, payloads, replay_seconds / 2, clients, async_every=5)
            deadline = time.monotonic() + 60
            while agent.models_held() and time.monotonic() < deadline:
                time.sleep(1)
            settle()
            note = f"{calls} calls; models held after: {agent.models_held()}"
            table.append(row(f"… after the {half} half of the loop, models unloaded",
                             tree(agent.proc.pid, "supervisor"), note))  # fmt: skip
    finally:
        agent.stop()

    simple = Simple(models)
    try:
        settle()
        table.append(row("simplest server, idle", tree(simple.proc.pid, "gunicorn master")))
        calls = loop(simple.url, npy_payloads(models), replay_seconds, clients)
        settle()
        note = f"{calls} calls; holds every model it loaded"
        table.append(row("simplest server, after the loop", tree(simple.proc.pid,
                         "gunicorn master"), note))  # fmt: skip
    finally:
        simple.stop()
    print("\nPSS (MiB) per process and in total")
    print(tabulate(table, ["", "per process", "total", ""], tablefmt="github"))
    print("\nThe workers' baseline /system/cache reports (MiB per worker)")
    print(tabulate(baselines, ["", "baseline RSS", "baseline PSS"], tablefmt="github"))

    catalog = json.loads((models / "catalog.json").read_text())["models"]
    by_size = sorted(catalog, key=lambda m: m["file_bytes"])
    agents = {g: Agent(models, 2, g) for g in (1, 2)}
    rows = []
    try:
        payloads = agents[1].payloads()
        for name in (by_size[0]["name"], by_size[-1]["name"]):
            payload = {name: payloads[name]}
            rates: dict[int, list[float]] = {1: [], 2: []}
            for agent in agents.values():
                loop(agent.url, payload, 2.0, clients)  # warm: model loaded, connections made
            for _ in range(rounds):
                for g, agent in agents.items():
                    rates[g].append(loop(agent.url, payload, seconds, clients) / seconds)
            one, two = statistics.median(rates[1]), statistics.median(rates[2])
            rows.append([name, f"{one:.0f}", f"{two:.0f}", f"{one / two:.2f}"])
    finally:
        for agent in agents.values():
            agent.stop()
    print(f"\nHits per second, 2 workers, {clients} clients (median of {rounds} rounds)")
    print(tabulate(rows, ["model", "1 gateway process", "2 gateway processes", "ratio 1/2"],
                   tablefmt="github"))  # fmt: skip


if __name__ == "__main__":
    main()
