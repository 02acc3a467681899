"""Layer-wise loading: a cold model's first answer and peak memory per loading policy, against
loading the whole model, and a loop of calls with the cap below the largest model.

Builds ResNet50, DenseNet121 and EfficientNetB0 (random weights) and their stages with the
project's builder (``brulee models build --stages K``) into ``--models`` unless there.

1. Cold first answer: each run in a fresh process, the page cache of every model file
   dropped first (``posix_fadvise(POSIX_FADV_DONTNEED)`` after an fsync): open and run the
   whole model (the baseline), or its stages under ``bulk``, ``linear``, ``interleaved`` and
   ``interleaved`` keeping its first stage open (``keep 1``). Reports the median time to the
   first answer, the next call's time (page cache warm: what a streamed model pays per call)
   and the peak resident memory over the process's baseline (``ru_maxrss``).
2. Cap below the largest model: a real agent (``brulee up``, one worker) with a cap under
   ResNet50's accounted bytes, a loop of calls cycling over the three models; with the stage
   files hidden (as before: 507 for ResNet50) and present (ResNet50 streamed).

Run heavy parts at ``nice -n -15``; the machine may be shared.
"""

from __future__ import annotations

import io
import json
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import click
import numpy as np
import requests
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ARCHS = ("resnet50", "densenet121", "efficientnetb0")
MODES = ("whole", "bulk", "linear", "interleaved", "interleaved keep 1")


def drop_cache(paths: list[Path]) -> None:
    """Evict the files' pages from the page cache (written pages are flushed first)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def child(models: Path, name: str, mode: str) -> dict:
    """One cold run in this (fresh) process: the first answer, the next, the peak memory."""
    from agent.memory import rss_bytes
    from agent.runtime import load_model
    from agent.staged import StagedModel

    rss0 = rss_bytes()
    t0 = time.perf_counter()
    if mode == "whole":
        model = load_model(models / f"{name}.tflite")
    else:
        policy, _, keep = mode.partition(" keep ")
        model = StagedModel(models, f"{name}.stages/manifest.json", policy, keep=int(keep or 0))
    x = np.zeros(model.input.shape, dtype=model.input.dtype)
    model.predict(x)
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    model.predict(x)
    following = time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    return {"first_s": first, "next_s": following, "peak_bytes": peak}


def cold(models: Path, name: str, mode: str) -> dict:
    files = [models / f"{name}.tflite", *sorted((models / f"{name}.stages").glob("*.tflite"))]
    drop_cache(files)
    code = (
        "import json, sys; from pathlib import Path; from benchmarks.staged_loading import child;"
        f"print(json.dumps(child(Path({str(models)!r}), {name!r}, {mode!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env()
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _env() -> dict:
    root = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "3"}


def cold_table(models: Path, repeats: int) -> list[list]:
    rows = []
    for name in ARCHS:
        runs: dict[str, list[dict]] = {m: [] for m in MODES}
        for r in range(repeats):
            order = MODES if r % 2 == 0 else MODES[::-1]  # alternate: no order bias
            for mode in order:
                runs[mode].append(cold(models, name, mode))
        base = statistics.median(x["first_s"] for x in runs["whole"])
        for mode in MODES:
            first = statistics.median(x["first_s"] for x in runs[mode])
            rows.append(
                [
                    name,
                    mode,
                    f"{first * 1e3:.0f}",
                    f"{first / base:.2f}",
                    f"{statistics.median(x['next_s'] for x in runs[mode]) * 1e3:.0f}",
                    f"{statistics.median(x['peak_bytes'] for x in runs[mode]) / 2**20:.0f}",
                ]
            )
    return rows


def _jpeg(side: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (90, 140, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def replay(models: Path, cap: int, rounds: int, staged: bool) -> tuple[Counter, dict]:
    """A loop of calls over the three models (zero configuration: each served under its own
    name, JPEG in) on a real agent with ``cap``; the stage files are hard-linked into the
    agent's models directory only when ``staged``."""
    from loadgen.testbed import agent_process

    token = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="brulee-staged-", dir=models.parent) as tmp:
        agent_models = Path(tmp) / "models"
        agent_models.mkdir()
        for item in models.iterdir():
            if item.suffix in (".tflite", ".json"):
                os.link(item, agent_models / item.name)
            elif staged and item.name.endswith(".stages"):
                shutil.copytree(item, agent_models / item.name, copy_function=os.link)
        statuses, latency = Counter(), {n: [] for n in ARCHS}
        jpeg, jpeg_type = _jpeg(224), {"Content-Type": "image/jpeg"}
        with agent_process(agent_models, cap, "cremebrulee", 1, Path(tmp) / "state", token) as url:
            with requests.Session() as s:
                for _ in range(rounds):
                    for name in ARCHS:
                        t0 = time.perf_counter()
                        resp = s.post(f"{url}/function/{name}", data=jpeg, headers=jpeg_type,
                                      timeout=300)  # fmt: skip
                        statuses[(name, resp.status_code)] += 1
                        if resp.ok:
                            latency[name].append(time.perf_counter() - t0)
    return statuses, latency


@click.command()
@click.option("--models", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".cache/staged-zoo"), show_default=True)  # fmt: skip
@click.option("--stages", type=int, default=4, show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True, help="cold runs per mode")
@click.option("--cap", default="160MiB", show_default=True, help="below ResNet50's bytes")
@click.option("--rounds", type=int, default=4, show_default=True, help="calls per model")
@click.option("--skip-cold", is_flag=True, help="only the loop of calls under the cap")
def main(models: Path, stages: int, repeats: int, cap: str, rounds: int, skip_cold: bool) -> None:
    from agent.up import parse_cap

    brulee = str(Path(sys.executable).with_name("brulee"))
    subprocess.run([brulee, "models", "build", "--arch",
                    ",".join(ARCHS), "--stages", str(stages), "--out", str(models)],
                   check=True, env=_env(), capture_output=True)  # fmt: skip
    if not skip_cold:
        print(f"cold first answer ({repeats} fresh processes per mode, page cache dropped)")
        headers = ["model", "loading", "first answer ms", "vs whole", "next call ms", "peak MiB"]
        print(tabulate(cold_table(models, repeats), headers=headers))
    cap_bytes = parse_cap(cap)
    print(f"\nloop of calls, cap {cap_bytes / 2**20:.0f} MiB, one worker, {rounds} rounds")
    rows = []
    for staged in (False, True):
        statuses, latency = replay(models, cap_bytes, rounds, staged)
        for name in ARCHS:
            ok = latency[name]
            codes = {c: n for (m, c), n in statuses.items() if m == name}
            rows.append([
                "stage files" if staged else "whole only", name,
                ", ".join(f"{c}: {n}" for c, n in sorted(codes.items())),
                f"{statistics.median(ok) * 1e3:.0f}" if ok else "-",
            ])  # fmt: skip
    print(tabulate(rows, headers=["models dir", "model", "answers", "median ms"]))


if __name__ == "__main__":
    main()
