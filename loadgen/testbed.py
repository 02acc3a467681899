"""``brulee testbed``: the seed's testbed experiment, end to end, on this machine.

One run: make a workload (:mod:`loadgen.testbed_workload`: an Azure trace, by default the
bundled real 2019 rows, paired onto the models of ``--models``; any ``--workload`` file; or
``--synth N`` functions each with a model of its own from a variant zoo, built on first use),
with its day compressed into ``--minutes``; set the memory cap to a share of the workload's
working set (the loaded bytes of every model it uses, from the profile); then, for each policy
and each of ``--repeat`` repetitions, start a private agent (``brulee up`` with embedded Redis;
``--cold-loads`` by default, so an evicted model's file leaves the page cache as on a device whose
memory is full), replay the workload open-loop with Locust, simulate the same workload with the
same settings, and print both side by side. With several policies it also prints each one's
model-load delay relative to random eviction (the paper's "load penalty"), as the median and
min–max of its repetitions (:mod:`loadgen.testbed_report`), and draws them.

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
from loadgen.replay_sim import sim_costs_option
from loadgen.simulator import DEFAULT_DEADLINE_S
from loadgen.testbed_report import (
    format_spread,
    plot_policies,
    policy_rows,
    pooled_load_costs,
    spread_rows,
)
from loadgen.testbed_workload import (
    VARIANT_ARCHS,
    check_workload,
    ensure_variant_zoo,
    synth_workload,
    trace_workload,
    variant_names,
    working_set_bytes,
)
from loadgen.workload_file import iter_workload

__all__ = ["agent_process", "parse_cap", "testbed_command", "working_set_bytes"]


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
    cold_loads: bool = False,
) -> Iterator[str]:
    """A private ``brulee up`` (embedded Redis) on a free port; yields its URL, stops it after.
    Its output goes to ``state_dir/agent.log``. ``max_waiting``: its admission queue's bound,
    ``durability``: its ``--durability`` (None: the agent's defaults), ``cold_loads``: its
    ``--cold-loads``."""
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
    if cold_loads:
        cmd.append("--cold-loads")
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


def parse_cap(text: str, working_set: int) -> int:
    """``--cap``: a size (agent.sizes: ``400M`` = 400×10^6) or ``PCT%`` of the working set."""
    from agent.sizes import SizeError, parse_size

    try:
        return parse_size(text, what="memory cap", percent_of=working_set)
    except SizeError as exc:
        raise click.BadParameter(str(exc), param_hint="--cap") from None


def make_workload(
    source: dict, models: str, profiles: str, minutes: float, seed: int, outdir: Path
) -> Path:
    """The workload of this run (``source``: the command's workload options), checked against
    the zoo: every function it names is a model of ``models`` with a profile."""
    from models.catalog import load_catalog
    from models.profile import read_profiles

    catalog, profiled = load_catalog(models), read_profiles(profiles)
    if source["workload"]:
        workload = Path(source["workload"])
    elif source["synth"]:
        names = variant_names(source["archs"], source["synth"])
        workload = synth_workload(
            names, profiles, minutes, source["rate"], seed, outdir / "workload.csv"
        )
    else:
        usable = sorted(m for m in catalog if m in profiled)
        if not usable:
            raise click.UsageError(f"no model of {models}/catalog.json is in {profiles}")
        workload = trace_workload(
            source["trace"], profiles, usable, minutes, seed, outdir / "workload.csv"
        )
    check_workload(workload, catalog, profiled, models, profiles)
    return workload


@click.command("testbed")
@click.option(
    "--models",
    type=click.Path(file_okay=False),
    help="model directory (built by `brulee models build`)  [default: zoo/edge; with --synth "
    "zoo/variants, built there on first use]",
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
    "--workload",
    type=click.Path(exists=True, dir_okay=False),
    help="replay this workload file as it is (`brulee trace workload`/`synth`; its functions "
    "must be models of --models) instead of a trace",
)
@click.option(
    "--synth",
    type=click.IntRange(min=1),
    help="instead of a trace: a synthetic Azure-like day of this many functions (50-100 "
    "separate the policies), each with a model of its own from a variant zoo of --archs",
)
@click.option(
    "--archs",
    default=",".join(VARIANT_ARCHS),
    show_default=True,
    callback=lambda _c, _p, v: [a for a in v.split(",") if a],
    help="--synth: the architectures of the variant zoo (each built N/len(archs) times with "
    "different weights)",
)
@click.option(
    "--rate",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="--synth: about this many requests a second (the busiest functions are thinned; the "
    "rarely invoked ones keep every request)",
)
@click.option(
    "--minutes",
    default=3.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="compress the trace's (or the synthetic) first day into this many minutes",
)
@click.option(
    "--cap",
    default="50%",
    show_default=True,
    help="memory cap: PCT% of the workload's working set (its models' loaded bytes), or a size "
    "(400M = 400×10^6 bytes, 400Mi = 400×2^20)",
)
@click.option("--policies", default="cremebrulee", show_default=True, help="comma-separated")
@click.option(
    "--repeat",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="runs per policy (in rounds of every policy, so machine load drifts alike); the table "
    "gives each policy's median and min-max",
)
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--cold-loads/--warm-loads",
    default=True,
    show_default=True,
    help="the agent drops an evicted model's file from the page cache (a device whose memory "
    "is full keeps no copy of it), or leaves it there (every load after the first reads RAM)",
)
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
    models: str | None,
    profiles: str | None,
    minutes: float,
    cap: str,
    policies: str,
    repeat: int,
    workers: int,
    cold_loads: bool,
    max_waiting: int,
    sim_costs: str,
    seed: int,
    out: str,
    **source,
) -> None:
    """Replay a workload against a private agent per policy, next to the simulator."""
    from tabulate import tabulate

    from agent.policies import POLICIES

    names = [p for p in policies.split(",") if p]
    unknown = [p for p in names if p not in POLICIES]
    if unknown or not names:
        raise click.BadParameter(
            f"unknown {unknown}; known: {', '.join(sorted(POLICIES))}", param_hint="--policies"
        )
    if source["workload"] and source["synth"]:
        raise click.UsageError("--workload and --synth are two workloads: give one")
    models = models or ("zoo/variants" if source["synth"] else "zoo/edge")
    if source["synth"]:
        built = ensure_variant_zoo(Path(models), source["synth"], source["archs"])
        profiles = profiles or str(built)
    elif not Path(models).is_dir():
        raise click.BadParameter(f"no model directory {models}", param_hint="--models")
    profiles = profiles or str(Path(models) / "profiles.json")
    if not Path(profiles).exists():
        raise click.UsageError(
            f"no profile at {profiles}: run `brulee models profile --models {models} "
            f"--out {profiles}` first"
        )
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    workload = make_workload(source, models, profiles, minutes, seed, outdir)
    total, sizes = working_set_bytes(workload, profiles)
    cap_bytes = parse_cap(cap, total)
    largest = max(sizes.values())
    click.echo(
        f"workload {workload}: {sum(1 for _ in iter_workload(workload))} requests, "
        f"{len(sizes)} models, working set {total / 1e6:.0f} MB; cap {cap_bytes / 1e6:.0f} MB; "
        f"{'cold' if cold_loads else 'warm'} loads"
    )
    if cap_bytes < largest:
        click.echo(
            f"warning: the cap is below the largest model ({largest / 1e6:.0f} MB): "
            "its requests will be refused (507)",
            err=True,
        )
    token = secrets.token_hex(16)
    rounds: list[dict[str, dict]] = []
    interrupted = False
    for rep in range(1, repeat + 1):
        results: dict[str, dict] = {}
        rounds.append(results)
        for policy in names:
            rundir = outdir / policy / (f"rep{rep}" if repeat > 1 else "")
            click.echo(f"\n== {policy} (run {rep}/{repeat}): starting the agent and replaying")
            try:
                agent = agent_process(models, cap_bytes, policy, workers, rundir / "state", token,
                                      max_waiting=max_waiting, cold_loads=cold_loads)  # fmt: skip
                with agent as url:
                    summary = run_replay(
                        workload,
                        url,
                        rundir,
                        simulate=True,
                        profiles_path=profiles,
                        token=token,
                        # the simulator predicts the same admission: the agent's sync timeout
                        # (its waiting misses' deadline; `brulee up` keeps the default) and bound
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
                interrupted = True
                break
        if interrupted:
            break
    # each model's load time per miss over every run: the penalty without the machine's drift
    costs = pooled_load_costs([s for results in rounds for s in results.values()])
    rows = [row for rep, results in enumerate(rounds, 1)
            for row in policy_rows(results, rep, costs)]  # fmt: skip
    click.echo(
        "pool RSS MB: the workers' peak resident memory above their baseline (cap "
        f"{cap_bytes / 1e6:.0f} MB)"
    )
    spread = spread_rows(rows)
    doc = {"workload": str(workload), "cap_bytes": cap_bytes, "working_set_bytes": total,
           "workers": workers, "cold_loads": cold_loads, "repeat": repeat, "models": sizes,
           "policies": rows, "spread": spread}  # fmt: skip
    (outdir / "testbed.json").write_text(json.dumps(doc, indent=1))
    click.echo("\n" + tabulate(rows, headers="keys", tablefmt="github"))
    if repeat > 1:
        click.echo(f"\nmedian (min-max) of {repeat} runs per policy:")
        click.echo(tabulate(format_spread(spread), headers="keys", tablefmt="github"))
    if len(names) > 1:
        plot_policies(spread, outdir / "policies.png")
    click.echo(f"\nreports in {outdir}/ (per run: summary.json, summary.png, report.html)")
    if interrupted:
        raise SystemExit(130)
