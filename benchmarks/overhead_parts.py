"""The parts of ``benchmarks/agent_overhead.py``: a lean client, the in-process baselines, the
closed-loop throughput drivers, and the image a real client sends.

Every baseline here is measured in the same run as the agent, interleaved with it, because
this machine's speed drifts by up to 3x from day to day (and within minutes when the cores
are shared).
"""

from __future__ import annotations

import http.client
import io
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import click
import numpy as np
import requests

from benchmarks.footprint import children, title

NPY = "application/x-npy"


def p99(values: list[float]) -> float:
    return float(np.percentile(np.asarray(values), 99))


def ms(values: list[float]) -> tuple[float, float]:
    """Median and p99, in milliseconds."""
    return statistics.median(values) * 1e3, p99(values) * 1e3


class Client:
    """One keep-alive HTTP connection (``http.client``: a client library's own cost — 1.3-1.6 ms
    a call for ``requests`` here — is not the server's)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)

    def post(
        self, path: str, body: bytes, content_type: str, expect: int | None = 200
    ) -> http.client.HTTPResponse:
        """POST ``body``; a status other than ``expect`` fails (``None``: any status)."""
        self.conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        resp = self.conn.getresponse()
        resp.body = resp.read()
        if expect is not None and resp.status != expect:
            raise click.ClickException(
                f"{path}: HTTP {resp.status} (expected {expect}): {resp.body[:300]!r}"
            )
        return resp

    def timed(self, path: str, body: bytes, content_type: str, expect: int | None = 200):
        t0 = time.perf_counter()
        resp = self.post(path, body, content_type, expect)
        return time.perf_counter() - t0, resp

    def close(self) -> None:
        self.conn.close()


class InProcess:
    """The in-process baselines: models held warm, and a cold miss done the worker's way (drop
    the evictor with ``InterpreterCache.drop``, load the model, first invoke)."""

    def __init__(self, models_dir: Path, catalog: dict) -> None:
        from agent.interpreters import InterpreterCache

        self.catalog = catalog
        self.cache = InterpreterCache(models_dir)
        self.warm_models: dict = {}

    def warm(self, model: str, x: np.ndarray, decode=None) -> float:
        """One warm call; ``decode`` (bytes -> array, timed too) for an image the client sends."""
        if model not in self.warm_models:
            self.warm_models[model], _ = self.cache.load(
                f"warm-{model}", self.catalog[model]["file"]
            )
        loaded = self.warm_models[model]
        t0 = time.perf_counter()
        loaded.predict(x if decode is None else decode())
        return time.perf_counter() - t0

    def cold(self, model: str, x: np.ndarray, evictor: str, evictor_x: np.ndarray) -> float:
        loaded, _ = self.cache.load(evictor, self.catalog[evictor]["file"])
        loaded.predict(evictor_x)
        t0 = time.perf_counter()
        self.cache.drop(evictor)
        loaded, _ = self.cache.load(model, self.catalog[model]["file"])
        loaded.predict(x)
        took = time.perf_counter() - t0
        self.cache.drop(model)
        return took


def model_input(catalog: dict, name: str) -> np.ndarray:
    return np.random.default_rng(0).random(catalog[name]["input_shape"], dtype=np.float32)


def client_jpeg(size: int = 640, quality: int = 90) -> bytes:
    """A photo-like JPEG as a phone or camera client would send (smooth gradients, edges and
    noise, ``size`` pixels square: 20-60 KiB at the default quality), generated here: no
    downloads."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rgb = np.stack([200 * xx + 30, 160 * yy + 50, 120 * (1 - xx * yy) + 60], axis=-1)
    rgb += rng.normal(0, 12, rgb.shape)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(25):
        x0, y0 = rng.integers(0, size, 2)
        r = int(rng.integers(10, size // 5))
        fill = tuple(int(c) for c in rng.integers(0, 255, 3))
        draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def deploy(url: str, token: str, name: str, model: str, handler: str) -> None:
    resp = requests.post(
        f"{url}/system/functions",
        json={"name": name, "model": model, "handler": handler},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    if resp.status_code != 201:
        raise click.ClickException(f"deploying {name}: {resp.status_code} {resp.text}")


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
    """Calls/s of ``workers`` processes each running the model flat out."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        return sum(pool.starmap(_spin, [(str(path), shape, seconds)] * workers))


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads), from ``/proc/PID/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _role(pid: int) -> str:
    # redis-server rewrites its title, leaving /proc/PID/cmdline empty: its comm has the name
    name = f"{title(pid)} {Path(f'/proc/{pid}/comm').read_text()}"
    for role in ("redis-server", "brulee worker", "brulee gateway"):
        if role in name:
            return role.removeprefix("brulee ")
    return "other"


def cpu_by_role() -> dict[str, float]:
    """CPU seconds used so far by this process (the clients) and each role of the agent it
    started (the processes under ``brulee up``: redis-server, gateway, workers)."""
    out = {"client": _cpu_s(os.getpid())}
    todo = children(os.getpid())
    while todo:
        pid = todo.pop()
        try:
            used, role = _cpu_s(pid), _role(pid)
        except (OSError, IndexError):  # gone meanwhile
            continue
        out[role] = out.get(role, 0.0) + used
        todo += children(pid)
    return out


def http_rate(
    url: str, path: str, body: bytes, clients: int, seconds: float, cpu: dict | None = None
) -> float:
    """Calls/s completed by ``clients`` closed-loop clients over ``seconds``; with ``cpu``, adds
    each role's CPU seconds per call to it (lists per role)."""
    Client(url).post(path, body, NPY)
    deadline = time.monotonic() + seconds

    def client(_: int) -> int:
        c, n = Client(url), 0
        while time.monotonic() < deadline:
            c.post(path, body, NPY)
            n += 1
        return n

    t0, before = time.monotonic(), cpu_by_role()
    with ThreadPoolExecutor(clients) as pool:
        done = sum(pool.map(client, range(clients)))
    took, after = time.monotonic() - t0, cpu_by_role()
    if cpu is not None:
        for role, used in after.items():
            if role in before and role not in ("gone", "other"):
                cpu.setdefault(role, []).append((used - before[role]) / max(done, 1))
    return done / took


def redis_rtt(socket_path: Path, runs: int = 500) -> list[float]:
    import redis

    conn = redis.Redis(unix_socket_path=str(socket_path))
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        conn.ping()
        out.append(time.perf_counter() - t0)
    return out
