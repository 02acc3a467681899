"""``brulee simulate``: compare eviction policies over a workload at several memory caps.

Prints a table, writes ``results.csv``/``results.json`` (with memory timelines and response
CDFs) and three PNG plots into ``--out``. The work is ``loadgen.simulator``; this module only
parses options, loops over (policy, cap) and reports.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import click

from agent.admission import max_waiting_option
from loadgen.profiles import ProfileError, load_profiles
from loadgen.sim.variants import read_variants
from loadgen.sim_workload import CompactWorkload
from loadgen.simulator import (
    DEFAULT_DEADLINE_S,
    SimResult,
    SimulationError,
    check_models,
    parse_cap,
    parse_policy_spec,
    run,
    workload_bytes,
)
from loadgen.workload_file import WorkloadError

TABLE_COLUMNS = (
    "policy",
    "cap",
    "seed",
    "hit_ratio",
    "cold_starts",
    "rejected",
    "evictions",
    "mean_load_delay_s",
    "load_delay_ratio",
    "p50_s",
    "p95_s",
    "p99_s",
)
# arrival placement only (the admission queue): after "rejected"
ADMISSION_COLUMNS = ("timed_out", "queue_full", "admitted_after_wait", "mean_admission_wait_s")

MARKERS = "os^vD<>pXh"
LINES = ("-", "--")


def read_sizes(path: str) -> dict[str, int]:
    """A JSON object ``{model name: bytes}`` (sizes for the seed's profile, which has none)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--sizes") from None
    if not isinstance(doc, dict) or not all(
        isinstance(v, (int, float)) and v > 0 for v in doc.values()
    ):
        raise click.BadParameter(
            f"{path}: expected a JSON object {{model: bytes > 0}}", param_hint="--sizes"
        )
    return {str(k): int(v) for k, v in doc.items()}


def validate_policies(specs: Sequence[str]) -> None:
    """Fail before any run on an unknown policy name (the message lists the valid ones)."""
    from agent.policies import ALIASES, POLICIES

    for spec in specs:
        name, _ = parse_policy_spec(spec)
        if ALIASES.get(name, name) not in POLICIES:
            valid = ", ".join(sorted([*POLICIES, *ALIASES]))
            raise click.BadParameter(
                f"unknown policy {name!r}; valid: {valid}", param_hint="--policies"
            )


Row = tuple[str, int, SimResult]  # (cap, seed, result)


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: a comma-separated list (``0,1,2``; ``5,`` is the one seed 5) or a count
    ``N`` (the seeds 0 … N-1)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts if p]
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: a count (3) or comma-separated integer seeds (0,1,2)",
            param_hint="--seeds",
        ) from None
    if len(parts) == 1:  # a count
        if values[0] < 1:
            raise click.BadParameter(f"a count of seeds must be >= 1, not {values[0]}",
                                     param_hint="--seeds")  # fmt: skip
        return list(range(values[0]))
    if not values or len(set(values)) != len(values):
        raise click.BadParameter(f"{text!r}: give each seed once", param_hint="--seeds")
    return values


def write_outputs(out: Path, rows: list[Row], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summaries = [{"cap": cap, "seed": seed, **r.summary()} for cap, seed, r in rows]
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(summaries[0]))
        writer.writeheader()
        writer.writerows(summaries)
    full = []
    for s, (_, _, r) in zip(summaries, rows):
        if r.variant_rank_served:  # the requests each smaller variant served, by name
            s = {**s, "variant_served": r.variant_served}
        full.append({**s, "memory_timeline": r.memory_timeline, "response_cdf": r.response_cdf})
    (out / "results.json").write_text(json.dumps({"meta": meta, "runs": full}, indent=1))
    plot(out, rows)


def plot(out: Path, rows: list[Row]) -> None:
    """sim-load-delay.png, sim-hit-ratio.png (vs cap, one line per policy: the median over
    the seeds, shaded from the lowest to the highest) and sim-response-cdf.png (one curve per
    policy at the middle cap, first seed)."""
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    caps = list(dict.fromkeys(cap for cap, _, _ in rows))
    policies = list(dict.fromkeys(r.policy for _, _, r in rows))
    runs: dict[tuple[str, str], list[SimResult]] = {}
    for cap, _, r in rows:
        runs.setdefault((cap, r.policy), []).append(r)
    by = {key: rs[0] for key, rs in runs.items()}
    seeds = len(runs[(caps[0], policies[0])])
    xs = list(range(len(caps)))
    for fname, attr, label in (
        ("sim-load-delay.png", "load_delay_ratio", "mean load delay / mean exec latency"),
        ("sim-hit-ratio.png", "hit_ratio", "hit ratio"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, p in enumerate(policies):
            vals = [[getattr(r, attr) for r in runs[(c, p)]] for c in caps]
            ys = [statistics.median(v) for v in vals]
            line = ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], ls=LINES[i // 10 % 2],
                           label=p)  # fmt: skip
            if seeds > 1:
                ax.fill_between(xs, [min(v) for v in vals], [max(v) for v in vals],
                                color=line[0].get_color(), alpha=0.2, lw=0)  # fmt: skip
        if seeds > 1:
            ax.set_title(f"median of {seeds} seeds, shaded: min-max", fontsize=9)
        if attr == "load_delay_ratio" and all(
            getattr(r, attr) > 0 for _, _, r in rows
        ):  # ratios span decades across caps
            ax.set_yscale("log")
        ax.set_xticks(xs, caps)
        ax.set_xlabel("memory cap")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
    mid = caps[len(caps) // 2]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, p in enumerate(policies):
        cdf = by[(mid, p)].response_cdf
        if cdf:
            xs_, fs_ = [v for v, _ in cdf], [f for _, f in cdf]
            ax.step(xs_, fs_, where="post", ls=LINES[i // 10 % 2], label=p)
    ax.set_xscale("log")
    ax.set_xlabel(f"response time (s), cap {mid}")
    ax.set_ylabel("fraction of requests")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "sim-response-cdf.png", dpi=110)
    plt.close(fig)


def fmt(v: object) -> object:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return v


@click.command("simulate")
@click.option("--workload", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--profiles", required=True, type=click.Path(dir_okay=False))
@click.option(
    "--policies",
    default="cremebrulee,lru",
    show_default=True,
    help="Comma-separated; options as name:key=value (e.g. cremebrulee:cost=increase).",
)
@click.option(
    "--memory-cap",
    default="25%,50%,75%",
    show_default=True,
    help="Comma-separated caps: PCT% of the workload's total model bytes, or sizes (400M = "
    "400×10^6 bytes, 400Mi = 400×2^20).",
)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--seeds",
    default=None,
    help="Run every (cap, policy) with several seeds: a count N (seeds 0..N-1) or a "
    "comma-separated list (0,1,2); the table and CSV get a row per seed, the plots the "
    "median and min-max. Instead of --seed.",
)
@click.option("--proactive", default=None, help="Proactive policy (e.g. ttl:ttl_s=600).")
@click.option(
    "--placement",
    type=click.Choice(["start", "arrival"]),
    default="start",
    show_default=True,
    help="when the cache decides: as a worker starts a request, or as it arrives (the agent)",
)
@click.option(
    "--deadline",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_DEADLINE_S,
    show_default=True,
    help="arrival placement: seconds a miss waits for memory before it fails (the agent's "
    "sync timeout; inf: no deadline, as for async jobs)",
)
@max_waiting_option(
    "arrival placement: models whose misses may wait for memory at once (as the agent's); "
    "past that a miss is refused",
    minimum=0,
)
@click.option(
    "--sizes",
    type=click.Path(exists=True, dir_okay=False),
    help="JSON {model: bytes} for profiles without sizes (the seed's models.m5.json).",
)
@click.option(
    "--variants",
    "variants_file",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML/JSON {model: [model, smaller variant, ...]} (best first; or {variants: [...], "
    "min_accuracy: A}, as in functions/stack.yml): under pressure a request may be served by "
    "a smaller variant, by the agent's rule (docs/simulation.md).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option(
    "--redis",
    "redis_url",
    default=None,
    help="Run the (cap, policy) runs as RQ jobs on this Redis (brulee simulate-worker "
    "processes run them; every machine needs the files at the same paths) and gather them.",
)
@click.option(
    "--job-timeout",
    type=click.FloatRange(min=1),
    default=3600,
    show_default=True,
    help="--redis: seconds one run may take before RQ stops it",
)
def simulate_command(
    workload,
    profiles,
    policies,
    memory_cap,
    workers,
    seed,
    seeds,
    proactive,
    placement,
    deadline,
    max_waiting,
    sizes,
    variants_file,
    out,
    redis_url,
    job_timeout,
):
    """Simulate eviction POLICIES over WORKLOAD at each memory cap; table, CSV, JSON, plots."""
    from tabulate import tabulate
    from tqdm import tqdm

    specs = [p.strip() for p in policies.split(",") if p.strip()]
    if not specs:
        raise click.BadParameter("no policy given", param_hint="--policies")
    validate_policies(specs)
    caps = [c.strip() for c in memory_cap.split(",") if c.strip()]
    if seeds is not None:
        ctx = click.get_current_context()
        if ctx.get_parameter_source("seed") is click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError("give --seed or --seeds, not both")
    seed_list = [seed] if seeds is None else parse_seeds(seeds)
    try:
        profs = load_profiles(profiles, sizes=read_sizes(sizes) if sizes else None)
        variants = read_variants(variants_file, profs) if variants_file else None
    except (ProfileError, SimulationError) as exc:
        raise click.ClickException(str(exc)) from None
    rows: list[Row] = []
    try:
        with CompactWorkload(workload) as wl:
            check_models(wl, profs)
            total_bytes = workload_bytes(wl, profs)
            cap_bytes = [parse_cap(c, total_bytes) for c in caps]
            started = time.perf_counter()
            ran_on = None
            if redis_url:
                from loadgen.sim_sweep import make_jobs, sweep

                jobs = make_jobs(
                    caps, specs, seed_list, workload=workload, profiles=profiles, sizes=sizes,
                    workers=workers, proactive=proactive, placement=placement,
                    deadline_s=deadline, max_waiting=max_waiting, variants=variants_file,
                )  # fmt: skip
                with tqdm(total=len(jobs), unit="run", disable=len(jobs) < 2) as bar:
                    results, ran_on = sweep(redis_url, jobs, job_timeout, bar.update)
                rows = [(job["cap"], job["seed"], r) for job, r in zip(jobs, results)]
            else:
                todo = wl.n * len(specs) * len(caps) * len(seed_list)
                with tqdm(total=todo, unit="req", unit_scale=True, disable=todo < 200_000) as bar:
                    for cap, cb in zip(caps, cap_bytes):
                        for spec in specs:
                            for sd in seed_list:
                                r = run(
                                    wl, profs, spec, cb, workers, sd, proactive, bar.update,
                                    placement, deadline, max_waiting, variants=variants,
                                )  # fmt: skip
                                rows.append((cap, sd, r))
            elapsed = time.perf_counter() - started
            meta = {
                "workload": str(workload),
                "profiles": str(profiles),
                "sizes": sizes,
                "requests": wl.n,
                "functions": len(wl.names),
                "total_model_bytes": total_bytes,
                "workers": workers,
                "seeds": seed_list,
                "proactive": proactive,
                "placement": placement,
                "deadline_s": deadline if math.isfinite(deadline) else "inf",
                "max_waiting": max_waiting,
                "variants": variants_file,
                "elapsed_s": elapsed,
                "requests_per_s": wl.n * len(rows) / elapsed if elapsed > 0 else None,
            }
            if ran_on is not None:
                meta["rq_workers"] = sorted(set(ran_on))
    except (WorkloadError, SimulationError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    columns = list(TABLE_COLUMNS)
    if placement == "arrival":
        at = columns.index("rejected") + 1
        columns[at:at] = ADMISSION_COLUMNS
    if variants is not None:  # the share each rank of variant served, upgrades, accuracy
        columns += [k for k in rows[0][2].summary() if k.startswith("v") and k.endswith("_share")]
        columns += ["variant_upgrades", "accuracy_cost_pts"]
    table = [
        [r.policy, cap, sd, *(fmt(r.summary()[k]) for k in columns[3:])] for cap, sd, r in rows
    ]
    click.echo(tabulate(table, headers=columns))
    click.echo(
        f"{meta['requests']} requests x {len(rows)} runs in {meta['elapsed_s']:.1f}s "
        f"({meta['requests_per_s']:.0f} requests/s); cap 100% = {total_bytes} bytes"
        + (f"; on {len(meta['rq_workers'])} RQ worker(s)" if "rq_workers" in meta else "")
    )
    write_outputs(Path(out), rows, meta)
    click.echo(f"wrote {out}/results.csv, results.json, sim-*.png")
