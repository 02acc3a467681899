"""Replay a workload file against a running agent with Locust, and summarise what happened.

The run: check the agent answers and serves every function the workload names (or map them,
when asked), start a thread that polls ``/system/cache`` for memory in use, run Locust headless
on ``loadgen/locustfile.py`` (a subprocess, given its own command-line options), then build
the summary from the per-request records the locustfile writes. Ctrl-C is passed on to Locust
(SIGINT, so it writes its CSV/HTML) and the summary is still written from the partial records.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import requests

from loadgen.cache_report import memory_totals
from loadgen.replay_payloads import function_list
from loadgen.workload_file import Request, iter_workload, write_workload

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
REPO_ROOT = LOCUSTFILE.parent.parent


def http_session() -> requests.Session:
    """A session that talks to the agent directly, as Locust does (no proxy from the env)."""
    session = requests.Session()
    session.trust_env = False
    return session


class ReplayError(RuntimeError):
    """A replay that cannot start; the message says what is wrong and with what."""


def fetch_functions(host: str, token: str | None = None, timeout: float = 3.0) -> list[dict]:
    """The agent's function list; an unreachable or wrong host is a clear error within seconds."""
    url = host.rstrip("/") + "/system/functions"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = http_session().get(url, timeout=timeout, headers=headers)
    except requests.RequestException as exc:
        raise ReplayError(f"cannot reach the agent at {host}: {exc.__class__.__name__}") from exc
    if resp.status_code == 401:
        raise ReplayError(f"{url} needs the agent's token: pass --token or set BRULEE_TOKEN")
    if resp.status_code != 200:
        raise ReplayError(
            f"{url} answered HTTP {resp.status_code} (is {host} a brulee agent?): {resp.text[:200]}"
        )
    try:
        return function_list(resp.json())
    except ValueError as exc:
        raise ReplayError(f"{url} did not answer a function list: {exc}") from exc


def workload_functions(path: str | os.PathLike) -> dict[str, int]:
    """Requests per function name, in order of first appearance."""
    counts: dict[str, int] = {}
    for req in iter_workload(path):
        counts[req.function] = counts.get(req.function, 0) + 1
    return counts


def function_mapping(trace: dict[str, int], served: list[str]) -> dict[str, str]:
    """Map trace functions onto served ones deterministically.

    Served names keep themselves; the others, most requested first (ties by name), go round-robin
    over the sorted served names, so popular trace functions spread over distinct models.
    """
    if not served:
        raise ReplayError("the agent serves no functions")
    served_sorted = sorted(served)
    mapping = {name: name for name in trace if name in served}
    unknown = sorted((n for n in trace if n not in served), key=lambda n: (-trace[n], n))
    for i, name in enumerate(unknown):
        mapping[name] = served_sorted[i % len(served_sorted)]
    return mapping


def prepare_workload(
    workload: str | os.PathLike, served: list[str], out: Path, map_functions: bool
) -> tuple[Path, dict[str, str]]:
    """Check (or map) the workload's functions; returns the file to replay and the mapping."""
    trace = workload_functions(workload)
    unknown = sorted(n for n in trace if n not in served)
    if unknown and not map_functions:
        raise ReplayError(
            f"the workload names {len(unknown)} function(s) the agent does not serve: "
            f"{', '.join(unknown[:20])}{' …' if len(unknown) > 20 else ''} "
            f"(served: {', '.join(sorted(served))}); use --map to map them"
        )
    if not unknown:
        return Path(workload), {n: n for n in trace}
    mapping = function_mapping(trace, served)
    mapped = out / "workload.mapped.csv"
    write_workload(
        mapped,
        (Request(r.time, mapping[r.function], r.id, r.source) for r in iter_workload(workload)),
    )
    return mapped, mapping


class MemoryPoller(threading.Thread):
    """Polls ``/system/cache`` (with the management token) every ``interval`` seconds; keeps
    (time, used, cap), last answer."""

    def __init__(self, host: str, interval: float = 0.5, token: str | None = None) -> None:
        super().__init__(daemon=True)
        self.url = host.rstrip("/") + "/system/cache"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.interval = interval
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.last: dict | None = None
        self.first: dict | None = None
        self._stop_event = threading.Event()
        self._session = http_session()

    def poll_once(self) -> None:
        try:
            resp = self._session.get(self.url, headers=self.headers, timeout=2)
            if resp.status_code != 200:  # e.g. 401 without the token: no sample
                return
            answer = resp.json()
        except (requests.RequestException, ValueError):
            return
        if self.first is None:
            self.first = answer
        self.last = answer
        self.samples.append((time.time(), memory_totals(answer)))

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.poll_once()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
        self.poll_once()


def locust_command(
    host: str, out: Path, web: bool, run_time: float | None, replay_args: list[str]
) -> list[str]:
    """``locust -f loadgen/locustfile.py`` with ``replay_args`` (its own options, see there)."""
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", host, *replay_args]
    cmd += ["--users", "1", "--spawn-rate", "1", "--loglevel", "WARNING"]
    if web:
        return cmd + ["--web-port", os.environ.get("BRULEE_LOCUST_WEB_PORT", "8089")]
    cmd += ["--headless", "--csv", str(out / "locust"), "--html", str(out / "report.html")]
    cmd += ["--stop-timeout", "10", "--only-summary"]
    if run_time:
        cmd += ["--run-time", f"{int(run_time) + 1}s"]
    return cmd


def run_replay(
    workload: str | os.PathLike,
    host: str,
    out: str | os.PathLike,
    speedup: float = 1.0,
    duration: float | None = None,
    map_functions: bool = False,
    web: bool = False,
    concurrency: int = 500,
    simulate: bool = False,
    profiles_path: str | None = None,
    sim_overrides: dict | None = None,
    token: str | None = None,
) -> dict:
    """Run one replay; writes DIR/summary.json, plots and Locust's reports; returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    functions = fetch_functions(host, token)
    served = [f["name"] for f in functions]
    replay_file, mapping = prepare_workload(workload, served, out, map_functions)
    (out / "functions.json").write_text(json.dumps(functions, indent=1))
    (out / "mapping.json").write_text(json.dumps(mapping, indent=1))
    last_time = 0.0
    for req in iter_workload(replay_file):
        last_time = req.time
    wall = (min(last_time, duration) if duration else last_time) / speedup
    replay_args = ["--workload", str(replay_file), "--records", str(out / "records.csv"),
                   "--functions", str(out / "functions.json"), "--speedup", str(speedup),
                   "--concurrency", str(concurrency)]  # fmt: skip
    if duration is not None:
        replay_args += ["--duration", str(duration)]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    )
    poller = MemoryPoller(host, token=token)
    poller.start()
    started = time.time()
    # headless, Locust's own console tables go to DIR/locust.log (its CSV and HTML reports are
    # in DIR too); the summary printed afterwards says what matters
    log = None if web else open(out / "locust.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        locust_command(host, out, web, None if web else wall + 60, replay_args),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT if log else None,
        start_new_session=True,  # Ctrl-C reaches us only; we pass it on once
    )
    interrupted = False
    try:
        proc.wait()
    except KeyboardInterrupt:
        interrupted = True
        proc.send_signal(signal.SIGINT)  # Locust saves its HTML and CSV on SIGINT
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    finally:
        poller.stop()
        if log is not None:
            log.close()
            if proc.returncode not in (0, 1) and not interrupted:  # 1: some requests failed
                tail = (out / "locust.log").read_text(errors="replace").splitlines()[-15:]
                print(f"Locust exited with {proc.returncode}; the end of {out / 'locust.log'}:",
                      *tail, sep="\n", file=sys.stderr)  # fmt: skip
    summary = summarise(out / "records.csv", replay_file, duration)
    summary.update(
        host=host,
        workload=str(workload),
        speedup=speedup,
        wall_seconds=round(time.time() - started, 3),
        interrupted=interrupted,
        locust_exit_code=proc.returncode,
        agent_cache=poller.last,
        agent_counts=agent_counts(poller.first, poller.last),
        memory=[
            {
                "t": round(t - started, 3),
                "used_bytes": m["used"],
                "cap_bytes": m["cap"],
                "rss_bytes": m["rss"],
                "baseline_rss_bytes": m["baseline"],
            }
            for t, m in poller.samples
        ],
    )
    if simulate:
        try:  # loaded sizes are known only once models have been loaded: ask again
            functions = fetch_functions(host, token)
            (out / "functions.after.json").write_text(json.dumps(functions, indent=1))
        except ReplayError:
            pass
        summary.update(
            simulate_summary(
                summary,
                out,
                replay_file,
                functions,
                poller.last,
                speedup,
                duration,
                profiles_path,
                sim_overrides or {},
            )
        )
    summary["pool_memory"] = pool_memory(summary["memory"])
    write_reports(summary, out)
    return summary


def pool_memory(samples: list[dict]) -> dict | None:
    """The worker pool's resident memory against the cap: its peak above the workers' own
    baseline (what models hold, as the OS sees it) and whether it stayed within the cap."""
    rss = [m for m in samples if m.get("rss_bytes")]
    if not rss:
        return None
    peak = max(rss, key=lambda m: m["rss_bytes"] - m["baseline_rss_bytes"])
    above = peak["rss_bytes"] - peak["baseline_rss_bytes"]
    return {
        "peak_rss_bytes": max(m["rss_bytes"] for m in rss),
        "baseline_rss_bytes": peak["baseline_rss_bytes"],
        "peak_above_baseline_bytes": above,
        "cap_bytes": peak["cap_bytes"],
        "within_cap": above <= peak["cap_bytes"],
        "peak_accounted_bytes": max(m["used_bytes"] for m in samples),
    }


def simulate_summary(
    summary: dict,
    out: Path,
    replay_file: Path,
    functions: list[dict],
    cache: dict | None,
    speedup: float,
    duration: float | None,
    profiles_path: str | None,
    overrides: dict,
) -> dict:
    """The simulator's result on the replayed workload and its differences from the testbed."""
    from loadgen.replay_sim import agent_settings, compare, simulate_replay

    settings = agent_settings(cache)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    unknown = [k for k, v in settings.items() if v is None]
    if unknown:
        return {
            "simulated_error": f"agent did not report {', '.join(unknown)}; pass --sim-{unknown[0]}"
        }
    try:
        sim = simulate_replay(
            replay_file, out, functions, settings, speedup, duration, profiles_path
        )
    except Exception as exc:  # reported, never hides the measured summary
        return {"simulated_error": f"{exc.__class__.__name__}: {exc}"}
    return {"simulated": sim, "comparison": compare(summary, sim)}


def agent_counts(first: dict | None, last: dict | None) -> dict | None:
    """Hits and misses the agent itself counted during the run (difference of two polls)."""

    def totals(cache: dict | None) -> dict[str, float]:
        sums: dict[str, float] = defaultdict(float)

        def walk(node: object, under_workers: bool) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    if key in ("hits", "misses", "evictions"):
                        values = value.values() if isinstance(value, dict) else [value]
                        if not under_workers:
                            sums[key] += sum(v for v in values if isinstance(v, (int, float)))
                    else:
                        walk(value, under_workers or key == "workers")
            elif isinstance(node, list):
                for value in node:
                    walk(value, under_workers)

        walk(cache, False)
        return sums

    if last is None:
        return None
    before, after = totals(first), totals(last)
    return {k: after[k] - before.get(k, 0.0) for k in after}


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 6) if values else None


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 6) if values else None


def _float(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _latency_block(rows: list[dict]) -> dict:
    lat = [float(r["latency_s"]) for r in rows]
    loads = [v for v in (_float(r["load_s"]) for r in rows) if v is not None]
    execs = [v for v in (_float(r["exec_s"]) for r in rows) if v is not None]
    hits = sum(r["x_cache"] == "hit" for r in rows)
    misses = sum(r["x_cache"] == "miss" for r in rows)
    mean_load, mean_exec = _mean(loads), _mean(execs)
    return {
        "requests": len(rows),
        "failures": sum(r["ok"] != "1" for r in rows),
        "latency_p50_s": _pct(lat, 50),
        "latency_p95_s": _pct(lat, 95),
        "latency_p99_s": _pct(lat, 99),
        "hits": hits,
        "cold_starts": misses,
        "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
        "mean_load_s": mean_load,
        "mean_exec_s": mean_exec,
        "load_over_exec": round(mean_load / mean_exec, 4) if mean_load and mean_exec else None,
    }


def summarise(records: Path, workload: Path, duration: float | None = None) -> dict:
    """The summary of a run from its per-request records (partial records when interrupted)."""
    rows: list[dict] = []
    if records.exists():
        with open(records, newline="") as fh:
            rows = list(csv.DictReader(fh))
    scheduled = sum(1 for r in iter_workload(workload) if duration is None or r.time < duration)
    lags = [float(r["lag_s"]) for r in rows]
    per_function: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        per_function[row["function"]].append(row)
    summary = {
        "scheduled": scheduled,
        **_latency_block(rows),
        "lag_p50_s": _pct(lags, 50),
        "lag_p99_s": _pct(lags, 99),
        "lag_max_s": round(max(lags), 6) if lags else None,
        "functions": {name: _latency_block(per_function[name]) for name in sorted(per_function)},
        "errors": _error_counts(rows),
    }
    return summary


def _error_counts(rows: list[dict]) -> dict[str, int]:
    """Failures by status and message (names and numbers that vary are kept: they explain)."""
    counts: Counter[str] = Counter(
        f"{r['status']}: {r.get('error') or '(no message)'}" for r in rows if r["ok"] != "1"
    )
    return dict(counts.most_common(10))


def format_summary(summary: dict) -> str:
    """A readable table of the summary (overall, then per function)."""
    from tabulate import tabulate

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.1f}"

    lines = [
        f"requests {summary['requests']} of {summary['scheduled']} scheduled, "
        f"failures {summary['failures']}"
        + (" (INTERRUPTED: partial)" if summary.get("interrupted") else ""),
        f"schedule lag p50 {ms(summary['lag_p50_s'])} ms, p99 {ms(summary['lag_p99_s'])} ms",
        f"hit ratio {summary['hit_ratio']}, cold starts {summary['cold_starts']}, "
        f"mean load {ms(summary['mean_load_s'])} ms / mean exec {ms(summary['mean_exec_s'])} ms"
        f" = {summary['load_over_exec']}",
    ]
    for error, count in (summary.get("errors") or {}).items():
        lines.append(f"  {count} x {error}")
    pool = summary.get("pool_memory")
    if pool:
        lines.append(
            f"worker pool resident memory: peak {pool['peak_above_baseline_bytes'] / 2**20:.0f} MiB"
            f" above its {pool['baseline_rss_bytes'] / 2**20:.0f} MiB baseline, cap "
            f"{pool['cap_bytes'] / 2**20:.0f} MiB"
            + (" (within the cap)" if pool["within_cap"] else " (OVER THE CAP)")
        )
    if summary.get("agent_counts"):
        lines.append(f"agent counted: {json.dumps(summary['agent_counts'])}")

    def row(label: str, block: dict) -> list:
        return [label, block["requests"], block["failures"], ms(block["latency_p50_s"]),
                ms(block["latency_p95_s"]), ms(block["latency_p99_s"]), block["hit_ratio"],
                block["cold_starts"]]  # fmt: skip

    table = [row("ALL", summary), *(row(n, b) for n, b in summary["functions"].items())]
    headers = ["function", "requests", "fail", "p50 ms", "p95 ms", "p99 ms", "hit ratio", "cold"]
    lines.append(tabulate(table, headers=headers))
    if summary.get("simulated"):
        lines.append(format_comparison(summary))
    if summary.get("simulated_error"):
        lines.append(f"simulation failed: {summary['simulated_error']}")
    return "\n".join(lines)


def format_comparison(summary: dict) -> str:
    """Measured vs simulated side by side, with the targets (5 pp hit ratio, 10 % cold starts)."""
    from tabulate import tabulate

    from loadgen.replay_sim import simulated_failures

    sim = summary["simulated"]
    rows = []
    for key in ("hit_ratio", "cold_starts", "mean_load_s", "mean_exec_s"):
        rows.append([key, summary.get(key), sim.get(key)])
    rows.append(["failed", summary.get("failures"), simulated_failures(sim)])
    # the simulator's failures by cause, next to the agent's answers with the same status
    for label, status, sim_key in (
        ("  waited for memory past the deadline (503)", "503", "timed_out"),
        ("  admission queue full (429)", "429", "queue_full"),
        ("  larger than the cap (rejected)", None, "rejected"),
    ):
        measured = (
            sum(n for k, n in (summary.get("errors") or {}).items() if k.startswith(status + ":"))
            if status
            else None
        )
        rows.append([label, measured, sim.get(sim_key)])
    rows.append(["waited for memory, then served", None, sim.get("admitted_after_wait")])
    cmp_ = summary.get("comparison", {})
    return (
        tabulate(rows, headers=["", "measured", "simulated"])
        + f"\nhit ratio diff {cmp_.get('hit_ratio_pp')} pp (target <= 5), "
        f"cold-start diff {cmp_.get('cold_starts_pct')} % (target <= 10)"
    )


def write_reports(summary: dict, out: Path) -> None:
    """summary.json and the PNG plots (latency per function, lag over time, memory over time)."""
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    try:
        plot_summary(summary, out)
    except Exception as exc:  # a plot must never lose the JSON summary
        print(f"warning: plots not written: {exc}", file=sys.stderr)


def plot_summary(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[dict] = []
    records = out / "records.csv"
    if records.exists():
        with open(records, newline="") as fh:
            rows = list(csv.DictReader(fh))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if rows:
        t0 = min(float(r["scheduled"]) for r in rows)
        axes[0].plot(
            [float(r["scheduled"]) - t0 for r in rows],
            [float(r["lag_s"]) * 1000 for r in rows],
            ".",
            ms=2,
        )
    axes[0].set(title="schedule lag", xlabel="scheduled time (s)", ylabel="lag (ms)")
    names = list(summary["functions"])
    for key, label in (("latency_p50_s", "p50"), ("latency_p99_s", "p99")):
        axes[1].bar(
            names,
            [(summary["functions"][n][key] or 0) * 1000 for n in names],
            alpha=0.6,
            label=label,
        )
    axes[1].set(title="latency per function", ylabel="ms")
    axes[1].tick_params(axis="x", rotation=30)
    axes[1].legend()
    mem = summary.get("memory") or []
    axes[2].plot([m["t"] for m in mem], [m["used_bytes"] / 2**20 for m in mem], label="used")
    axes[2].plot([m["t"] for m in mem], [m["cap_bytes"] / 2**20 for m in mem], "--", label="cap")
    if any(m.get("rss_bytes") for m in mem):
        axes[2].plot(
            [m["t"] for m in mem],
            [(m["rss_bytes"] - m["baseline_rss_bytes"]) / 2**20 for m in mem],
            label="workers' RSS above baseline",
        )
    axes[2].set(title="agent memory", xlabel="time (s)", ylabel="MiB")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out / "summary.png", dpi=90)
    plt.close(fig)
