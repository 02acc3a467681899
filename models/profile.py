"""Profile every model of a directory, each in a fresh process (``brulee models profile``).

A fresh process per model keeps measurements independent: resident memory starts from the
same baseline and no allocator state is inherited. The output is one JSON document per device
whose records also carry the seed's field names, so the simulator reads it like the seed's
``models.m5.json``.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from models.catalog import load_catalog

PROFILE_VERSION = 1
MB = 1e6


def device_info(threads: int) -> dict[str, Any]:
    from agent.runtime import runtime_version

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "model\t")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "runtime": runtime_version(),
        "threads": threads,
    }


def with_seed_fields(rec: dict[str, Any]) -> dict[str, Any]:
    """Add the seed's names. A miss costs the load plus what the first invoke adds over a
    warm one (TFLite maps weights lazily and delegates prepare on first use)."""
    load = rec["cold_load_s"] + max(rec["first_invoke_s"] - rec["exec_s"], 0.0)
    return {
        **rec,
        "avg_load_latency": load,
        "avg_exec_latency": rec["exec_s"],
        "loaded_size": rec["loaded_bytes"],
        "avg_unload_latency": rec["unload_s"],
    }


def _model_files(
    models_dir: Path, names: tuple[str, ...]
) -> tuple[list[tuple[str, Path]], dict[str, dict[str, Any]]]:
    catalog = load_catalog(models_dir)
    files = {name: models_dir / rec["file"] for name, rec in catalog.items()}
    for path in sorted(models_dir.glob("*.tflite")):  # files dropped in without a catalog entry
        if path.stem not in files and path not in files.values():
            files[path.stem] = path
    if not files:
        raise FileNotFoundError(f"no .tflite models in {models_dir}")
    unknown = [n for n in names if n not in files]
    if unknown:
        raise ValueError(
            f"no model named {', '.join(unknown)} in {models_dir}; have: {', '.join(files)}"
        )
    return [(n, files[n]) for n in (names or files)], catalog


def profile_one(
    path: Path, runs: int, threads: int, timeout: float, digits: bool = False
) -> dict[str, Any]:
    """Run ``models.probe`` on ``path`` in a fresh interpreter; RuntimeError carries the reason.
    ``digits``: the model is a digits classifier, whose held-out accuracy is measured too."""
    if not path.exists():
        raise RuntimeError(f"file {path} does not exist")
    cmd = [
        sys.executable,
        "-m",
        "models.probe",
        str(path),
        "--runs",
        str(runs),
        "--threads",
        str(threads),
        *(["--digits"] if digits else []),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"timed out after {timeout:g} s") from exc
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        result = {}
    if proc.returncode < 0:  # the runtime crashed on the file (e.g. a truncated flatbuffer)
        raise RuntimeError(f"the interpreter crashed ({signal.Signals(-proc.returncode).name})")
    if proc.returncode != 0 or "error" in result or not result:
        reason = result.get("error") or (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(reason)
    return result


def profile_dir(
    models_dir: Path,
    out: Path,
    names: tuple[str, ...] = (),
    runs: int = 10,
    threads: int = 1,
    timeout: float = 600.0,
    progress: bool = True,
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Profile the models, write ``out``; returns the document and ``(name, reason)`` failures."""
    from tqdm import tqdm

    from models.catalog import sha256_file

    models_dir = Path(models_dir)
    records, failures = [], []
    todo, catalog = _model_files(models_dir, tuple(names))
    bar = tqdm(todo, unit="model", desc="profiling", disable=None if progress else True)
    for name, path in bar:
        bar.set_postfix_str(name)
        try:
            digits = catalog.get(name, {}).get("task") == "digits"
            measured = profile_one(path, runs, threads, timeout, digits)
        except RuntimeError as exc:
            failures.append((name, f"{path.name}: {exc}"))
            continue
        rec = {
            "name": name,
            "file": path.name,
            "file_bytes": path.stat().st_size,
            "sha256": sha256_file(path),
            **measured,
        }
        records.append(with_seed_fields(rec))
    doc = {
        "version": PROFILE_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": device_info(threads),
        "models": records,
        "failures": [{"name": n, "reason": r} for n, r in failures],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return doc, failures


def read_profiles(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Records by model name from a brulee profile document or the seed's ``models.m5.json``
    (a plain list with ``name`` and ``avg_*`` fields; its ``loaded_size`` is 0, so sizes must
    be supplied separately)."""
    doc = json.loads(Path(path).read_text())
    records = doc if isinstance(doc, list) else doc.get("models", [])
    return {rec["name"]: rec for rec in records}


def format_table(
    records: list[dict[str, Any]], compare: dict[str, dict[str, Any]] | None = None
) -> str:
    """The profile as a table; ``compare`` (e.g. the seed's records) adds its load/exec ratio
    for models of the same name (case-insensitive)."""
    from tabulate import tabulate

    rows = [
        (
            r["name"],
            r["file_bytes"] / MB,
            r["loaded_bytes"] / MB,
            r["avg_load_latency"] * 1e3,
            r["cold_load_s"] * 1e3,
            r["warm_load_s"] * 1e3,
            r["first_invoke_s"] * 1e3,
            r["exec_s"] * 1e3,
            r["avg_load_latency"] / r["exec_s"],
            r["released_bytes"] / MB,
        )
        for r in records
    ]
    headers = [
        "model",
        "file MB",
        "loaded MB",
        "load ms",
        "open cold ms",
        "open warm ms",
        "1st inv ms",
        "exec ms",
        "load/exec",
        "freed MB",
    ]
    if any("digits_accuracy" in r for r in records):  # held-out accuracy through TFLite
        headers.append("digits acc %")
        rows = [(*row, _percent(r.get("digits_accuracy"))) for row, r in zip(rows, records)]
    if compare is not None:
        other = {name.lower(): rec for name, rec in compare.items()}
        headers.append("seed load/exec")
        rows = [(*row, _ratio(other.get(row[0].lower()))) for row in rows]
    return tabulate(rows, headers=headers, floatfmt=".2f", tablefmt="github")


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}"


def _ratio(rec: dict[str, Any] | None) -> str:
    return f"{rec['avg_load_latency'] / rec['avg_exec_latency']:.2f}" if rec else "-"


def plot_profiles(doc: dict[str, Any], path: Path) -> None:
    """Two panels: load vs. exec latency per model (log scale), and file vs. loaded memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    recs = sorted(doc["models"], key=lambda r: r["loaded_bytes"])
    names = [r["name"] for r in recs]
    y = np.arange(len(recs))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.45 * len(recs) + 1.8), sharey=True)
    h = 0.4
    ax1.barh(y - h / 2, [r["avg_load_latency"] * 1e3 for r in recs], h, label="load (miss penalty)")
    ax1.barh(y + h / 2, [r["exec_s"] * 1e3 for r in recs], h, label="warm exec")
    ax1.set_xscale("log")
    ax1.set_xlabel("milliseconds (log)")
    ax1.set_yticks(y, names)
    ax1.legend(loc="lower right")
    ax2.barh(y - h / 2, [r["file_bytes"] / MB for r in recs], h, label="file")
    ax2.barh(y + h / 2, [r["loaded_bytes"] / MB for r in recs], h, label="loaded (RSS increase)")
    ax2.set_xlabel("MB")
    ax2.legend(loc="lower right")
    dev = doc["device"]
    fig.suptitle(f"{dev['cpu']} ({dev['machine']}, {dev['threads']} thread), {dev['runtime']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
