"""``brulee testbed``: the seed's testbed experiment, end to end, on this machine.

One run: turn an Azure trace (by default the bundled real 2019 rows) into a workload whose
functions are the models of ``--models`` (quantile pairing on their measured load cost), with the
trace's day compressed into ``--minutes``; set the memory cap to a share of the workload's working
set (the loaded bytes of every model it uses, from the profile); then, for each policy, start a
private agent (``brulee up`` with embedded Redis), replay the workload open-loop with Locust,
simulate the same workload with the same settings, and print both side by side. With several
policies it also prints each one's model-load delay relative to random eviction (the paper's
"load penalty") and draws them.

This is the README's main job (``./brulee.sh demo``) and the experiment recorded in
``docs/replay.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import requests

from agent.admission import max_waiting_option
from agent.redis_server import free_port
from agent.up import stop_processes
from loadgen.azure import BUNDLED_TRACE
from loadgen.replay import ReplayError, format_summary, run_replay
from loadgen.replay_sim import sim_costs_option, simulated_failures
from loadgen.simulator import DEFAULT_DEADLINE_S
from loadgen.workload_file import iter_workload


@contextlib.contextmanager
def agent_process(
    models: str | os.PathLike,
    cap_bytes: int,
    policy: str,
    workers: int,
    state_dir: Path,
    token: str,
    startup_timeout: float = 90.0,
    max_waiting: int | None = None,
    durability: str | None = None,
) -> Iterator[str]:
    """A private ``brulee up`` (embedded Redis) on a free port; yields its URL, stops it after.
    Its output goes to ``state_dir/agent.log``. ``max_waiting``: its admission queue's bound,
    ``durability``: its ``--durability`` (None: the agent's defaults)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    brulee = str(Path(sys.executable).with_name("brulee"))
    cmd = [brulee, "up", "--port", str(port), "--workers", str(workers),
           "--memory-cap", str(cap_bytes), "--policy", policy, "--models", str(models),
           "--state-dir", str(state_dir)]  # fmt: skip
    if max_waiting is not None:
        cmd += ["--max-waiting", str(max_waiting)]
    if durability is not None:
        cmd += ["--durability", durability]
    url = f"http://127.0.0.1:{port}"
    with open(state_dir / "agent.log", "wb") as log:
        proc = subprocess.Popen(
            cmd, env=dict(os.environ, BRULEE_TOKEN=token), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                try:
                    health = requests.get(url + "/healthz", timeout=1)
                    if health.ok and health.json().get("workers", 0) >= workers:
                        break
                except requests.RequestException:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (state_dir / "agent.log").read_text(errors="replace")[-2000:]
                    raise click.ClickException(
                        f"the agent (policy {policy}) did not start within {startup_timeout:.0f} s;"
                        f" its log ({state_dir / 'agent.log'}) ends:\n{tail}"
                    )
                time.sleep(0.3)
            yield url
        finally:
            stop_processes([proc], timeout=60)


def make_workload(
    trace: str, profiles: str, models: list[str], minutes: float, seed: int, out: Path
) -> Path:
    """The trace's first day, paired onto ``models`` by load cost (the most invoked functions get
    the costliest models, as in the seed), compressed into ``minutes``."""
    from loadgen.pairing import pair
    from loadgen.pipeline import PipelineOptions, build_workload
    from loadgen.profiles import load_profiles

    costs = load_profiles(profiles)
    # Poisson spreading: "aligned" would start every function's single invocation of a minute
    # at that minute's first instant, a synchronized burst the real trace does not have (and
    # whose arrival order over HTTP, unlike in the simulator, is left to chance); the seed's
    # "even" has no such burst either, but the recorded testbed runs used Poisson
    opts = PipelineOptions(
        triggers="all",
        minutes=1440,
        spread="poisson",
        speedup=1440 / minutes,
        seed=seed,
        progress=False,
    )
    build_workload(
        [trace],
        out,
        opts,
        lambda totals: pair(totals, models, "quantiles", profiles=costs, cost="load", seed=seed),
    )
    return out


def working_set_bytes(workload: Path, profiles: str) -> tuple[int, dict[str, int]]:
    """Total loaded bytes of the distinct models the workload uses, and each one's."""
    from models.profile import read_profiles

    records = read_profiles(profiles)
    used = {req.function for req in iter_workload(workload)}
    sizes = {m: int(records[m]["loaded_bytes"]) for m in sorted(used)}
    return sum(sizes.values()), sizes


def parse_cap(text: str, working_set: int) -> int:
    """``--cap``: a size (agent.sizes: ``400M`` = 400×10^6) or ``PCT%`` of the working set."""
    from agent.sizes import SizeError, parse_size

    try:
        return parse_size(text, what="memory cap", percent_of=working_set)
    except SizeError as exc:
        raise click.BadParameter(str(exc), param_hint="--cap") from None


def policy_rows(results: dict[str, dict]) -> list[dict]:
    """One row per policy: measured and simulated load delay, hit ratio, penalty vs random."""

    def penalty(summary: dict, base: dict | None) -> float | None:
        if not base or not base.get("mean_load_s") or summary.get("mean_load_s") is None:
            return None
        return round(summary["mean_load_s"] / base["mean_load_s"], 3)

    random_run = results.get("random")
    rows = []
    for policy, s in results.items():
        sim = s.get("simulated") or {}
        rows.append(
            {
                "policy": policy,
                "requests": s["requests"],
                "failures": s["failures"],
                "hit ratio": s["hit_ratio"],
                "sim hit ratio": sim.get("hit_ratio"),
                "cold starts": s["cold_starts"],
                "sim cold": sim.get("cold_starts"),
                "sim failed": simulated_failures(sim) if sim else None,
                "sim waited": sim.get("admitted_after_wait"),
                "mean load ms": _ms(s.get("mean_load_s")),
                "mean exec ms": _ms(s.get("mean_exec_s")),
                "load/exec": s.get("load_over_exec"),
                "load vs random": penalty(s, random_run),
                "sim load vs random": penalty(sim, (random_run or {}).get("simulated")),
                "pool RSS MB": _mb((s.get("pool_memory") or {}).get("peak_above_baseline_bytes")),
            }
        )
    return rows


def _mb(nbytes: float | None) -> float | None:
    return None if nbytes is None else round(nbytes / 1e6, 1)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def plot_policies(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["policy"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    x = range(len(names))
    ax1.bar(x, [r["load/exec"] or 0 for r in rows], color="tab:orange")
    ax1.set_xticks(list(x), names, rotation=20)
    ax1.set_ylabel("mean load delay / mean exec")
    ax1.set_title("testbed: model-load delay")
    w = 0.4
    ax2.bar([i - w / 2 for i in x], [r["hit ratio"] or 0 for r in rows], w, label="testbed")
    ax2.bar([i + w / 2 for i in x], [r["sim hit ratio"] or 0 for r in rows], w, label="simulator")
    ax2.set_xticks(list(x), names, rotation=20)
    ax2.set_ylabel("hit ratio")
    ax2.set_title("testbed vs simulator")
    ax2.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@click.command("testbed")
@click.option(
    "--models",
    default="zoo/edge",
    show_default=True,
    type=click.Path(exists=True, file_okay=False),
    help="model directory (built by `brulee models build`)",
)
@click.option(
    "--profiles",
    type=click.Path(exists=True, dir_okay=False),
    help="its profile (`brulee models profile`)  [default: MODELS/profiles.json]",
)
@click.option(
    "--trace",
    default=str(BUNDLED_TRACE),
    type=click.Path(exists=True, dir_okay=False),
    help="an Azure 2019 invocations file  [default: the bundled real rows]",
)
@click.option(
    "--minutes",
    default=3.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="compress the trace's first day into this many minutes",
)
@click.option(
    "--cap",
    default="50%",
    show_default=True,
    help="memory cap: PCT% of the workload's working set (its models' loaded bytes), or a size "
    "(400M = 400×10^6 bytes, 400Mi = 400×2^20)",
)
@click.option("--policies", default="cremebrulee", show_default=True, help="comma-separated")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1))
@max_waiting_option(
    "the agent's admission queue bound (models waiting for memory), simulated alike",
    minimum=0,
)
@sim_costs_option(
    "measured",
    "the simulator's load and exec times: measured in each run (it then tests the model of "
    "queueing and eviction), or the profile's (a prediction from an idle device's costs)",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--out", default="out/testbed", show_default=True, type=click.Path(file_okay=False))
def testbed_command(
    models: str,
    profiles: str | None,
    trace: str,
    minutes: float,
    cap: str,
    policies: str,
    workers: int,
    max_waiting: int,
    sim_costs: str,
    seed: int,
    out: str,
) -> None:
    """Replay an Azure trace against a private agent per policy, next to the simulator."""
    from tabulate import tabulate

    from agent.policies import POLICIES
    from models.catalog import load_catalog

    names = [p for p in policies.split(",") if p]
    unknown = [p for p in names if p not in POLICIES]
    if unknown or not names:
        raise click.BadParameter(
            f"unknown {unknown}; known: {', '.join(sorted(POLICIES))}", param_hint="--policies"
        )
    profiles = profiles or str(Path(models) / "profiles.json")
    if not Path(profiles).exists():
        raise click.UsageError(
            f"no profile at {profiles}: run `brulee models profile --models {models} "
            f"--out {profiles}` first"
        )
    catalog = load_catalog(models)
    from models.profile import read_profiles

    profiled = read_profiles(profiles)
    usable = sorted(m for m in catalog if m in profiled)
    if not usable:
        raise click.UsageError(f"no model of {models}/catalog.json is in {profiles}")
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    workload = make_workload(trace, profiles, usable, minutes, seed, outdir / "workload.csv")
    total, sizes = working_set_bytes(workload, profiles)
    cap_bytes = parse_cap(cap, total)
    largest = max(sizes.values())
    click.echo(
        f"workload {workload}: {sum(1 for _ in iter_workload(workload))} requests over "
        f"{minutes:g} min, {len(sizes)} models, working set {total / 1e6:.0f} MB; "
        f"cap {cap_bytes / 1e6:.0f} MB"
    )
    if cap_bytes < largest:
        click.echo(
            f"warning: the cap is below the largest model ({largest / 1e6:.0f} MB): "
            "its requests will be refused (507)",
            err=True,
        )
    token = secrets.token_hex(16)
    results: dict[str, dict] = {}
    for policy in names:
        click.echo(f"\n== {policy}: starting the agent ({workers} workers) and replaying")
        try:
            with agent_process(
                models,
                cap_bytes,
                policy,
                workers,
                outdir / policy / "state",
                token,
                max_waiting=max_waiting,
            ) as url:
                summary = run_replay(
                    workload,
                    url,
                    outdir / policy,
                    simulate=True,
                    profiles_path=profiles,
                    token=token,
                    # the simulator predicts the same admission: the agent's sync timeout (its
                    # waiting misses' deadline; `brulee up` keeps the default) and bound
                    sim_overrides={
                        "deadline_s": DEFAULT_DEADLINE_S,
                        "max_waiting": max_waiting,
                        "costs": sim_costs,
                    },
                )
        except ReplayError as exc:
            raise click.ClickException(str(exc)) from None
        results[policy] = summary
        click.echo(format_summary(summary))
        if summary.get("interrupted"):
            break
    rows = policy_rows(results)
    click.echo(
        "pool RSS MB: the workers' peak resident memory above their baseline (cap "
        f"{cap_bytes / 1e6:.0f} MB)"
    )
    doc = {"workload": str(workload), "cap_bytes": cap_bytes, "working_set_bytes": total,
           "workers": workers, "models": sizes, "policies": rows}  # fmt: skip
    (outdir / "testbed.json").write_text(json.dumps(doc, indent=1))
    click.echo("\n" + tabulate(rows, headers="keys", tablefmt="github"))
    if len(rows) > 1:
        plot_policies(rows, outdir / "policies.png")
    click.echo(f"\nreports in {outdir}/ (per policy: summary.json, summary.png, report.html)")
    if any(s.get("interrupted") for s in results.values()):
        raise SystemExit(130)
