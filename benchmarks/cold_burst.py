"""A cold burst under memory pressure: N concurrent clients, K calls each, spread over every
function of a model set, against the real `brulee up` with a cap that holds each model alone
but not all of them — the case where misses must wait for memory rather than fail.

    python benchmarks/cold_burst.py [--models zoo/edge] [--cap 300MiB] [--workers 2]
                                    [--clients 20] [--calls 3]

Prints the answers by status (and the errors' messages), latency percentiles, and the peak of
the accounted bytes and of the worker pool's resident memory against the cap (sampled from
/system/cache every 50 ms). Exit status 1 if any call failed or the cap was exceeded.
"""

from __future__ import annotations

import io
import json
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import requests
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.up import parse_cap  # noqa: E402
from loadgen.testbed import agent_process  # noqa: E402


def _image(side: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (90, 140, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def _bodies(models: Path) -> dict[str, tuple[bytes, str]]:
    """A valid body per model: a JPEG of its input size (image models), else JSON zeros."""
    import numpy as np

    out = {}
    for record in json.loads((models / "catalog.json").read_text())["models"]:
        shape = record["input_shape"]
        if len(shape) == 4 and shape[-1] == 3:
            out[record["name"]] = (_image(int(shape[1])), "image/jpeg")
        else:
            zeros = np.zeros(shape, dtype=record.get("input_dtype", "float32")).tolist()
            out[record["name"]] = (json.dumps({"inputs": zeros}).encode(), "application/json")
    return out


@click.command()
@click.option("--models", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default="zoo/edge", show_default=True)  # fmt: skip
@click.option("--cap", default="300MiB", show_default=True, help="size or PCT% of RAM")
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--clients", type=int, default=20, show_default=True)
@click.option("--calls", type=int, default=3, show_default=True, help="per client")
@click.option("--policy", default="cremebrulee", show_default=True)
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="keep the agent's state and log here (default: a temporary dir)")  # fmt: skip
def main(models: Path, cap: str, workers: int, clients: int, calls: int, policy: str,
         state_dir: Path | None) -> None:  # fmt: skip
    cap_bytes = parse_cap(cap)
    bodies = _bodies(models)
    names = sorted(bodies)
    token = secrets.token_urlsafe(16)
    auth = {"Authorization": f"Bearer {token}"}
    with tempfile.TemporaryDirectory(prefix="brulee-burst-") as tmp:
        state = state_dir or Path(tmp) / "state"
        with agent_process(models, cap_bytes, policy, workers, state, token) as url:
            peaks = {"used": 0, "rss_over_baseline": 0}
            done = threading.Event()

            def watch() -> None:
                while not done.is_set():
                    try:
                        snap = requests.get(f"{url}/system/cache", headers=auth, timeout=5).json()
                    except (requests.RequestException, ValueError):
                        continue
                    for d in snap["devices"].values():
                        peaks["used"] = max(peaks["used"], d["used_bytes"])
                        over = d["rss_bytes"] - d["baseline_rss_bytes"]
                        peaks["rss_over_baseline"] = max(peaks["rss_over_baseline"], over)
                    time.sleep(0.05)

            def client(i: int) -> list[tuple[int, float, str]]:
                out = []
                with requests.Session() as s:
                    for k in range(calls):
                        name = names[(i + k) % len(names)]
                        body, ctype = bodies[name]
                        t0 = time.perf_counter()
                        resp = s.post(f"{url}/function/{name}", data=body,
                                      headers={"Content-Type": ctype}, timeout=120)  # fmt: skip
                        text = "" if resp.ok else resp.json().get("error", resp.text)[:400]
                        out.append((resp.status_code, time.perf_counter() - t0, text))
                return out

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                answers = [a for batch in pool.map(client, range(clients)) for a in batch]
            wall = time.perf_counter() - t0
            done.set()
            watcher.join()
            snap = requests.get(f"{url}/system/cache", headers=auth, timeout=5).json()
    device = next(iter(snap["devices"].values()))
    statuses = Counter(code for code, _, _ in answers)
    errors = Counter(text for code, _, text in answers if code != 200)
    latencies = sorted(s for _, s, _ in answers)
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    print(
        f"{clients} clients x {calls} calls over {len(names)} functions ({models}), "
        f"{workers} workers, cap {cap_bytes / 2**20:.0f} MiB, {policy}; {wall:.1f} s"
    )
    print(tabulate(sorted(statuses.items()), headers=["status", "calls"]))
    for text, n in errors.most_common(5):
        print(f"  {n} x {text}")
    adm = device["admission"]
    rows = [
        ["latency p50 / p99 / max s", f"{q[49]:.2f} / {q[98]:.2f} / {latencies[-1]:.2f}"],
        ["peak accounted MiB (cap)", f"{peaks['used'] / 2**20:.1f} ({cap_bytes / 2**20:.1f})"],
        ["peak pool RSS over baseline MiB", f"{peaks['rss_over_baseline'] / 2**20:.1f}"],
        ["admitted after a wait / timed out / refused",
         f"{adm.get('admitted', 0)} / {adm.get('timed_out', 0)} / {adm.get('refused', 0)}"],
        ["hits / misses / evictions", f"{sum(device['hits'].values())} / "
         f"{sum(device['misses'].values())} / {sum(device['evictions'].values())}"],
    ]  # fmt: skip
    print(tabulate(rows))
    failed = sum(n for code, n in statuses.items() if code != 200)
    sys.exit(1 if failed or peaks["used"] > cap_bytes else 0)


if __name__ == "__main__":
    main()
