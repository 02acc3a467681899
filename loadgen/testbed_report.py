"""The tables and the plot of ``brulee testbed``: one row per run, and with repetitions the
median and the min–max spread of each policy's runs."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

from loadgen.replay_sim import simulated_failures

# what the summary table spreads over repetitions (run row key -> shown as)
SPREAD = ("load/exec", "load vs random", "costed vs random", "hit ratio", "sim hit ratio",
          "mean load ms", "mean exec ms", "cold starts", "failures")  # fmt: skip


def pooled_load_costs(summaries: list[dict]) -> dict[str, float]:
    """Each model's mean load time per miss over all the runs given (hits record no load)."""
    total: Counter = Counter()
    misses: Counter = Counter()
    for summary in summaries:
        for model, block in summary["functions"].items():
            if block["cold_starts"] and block.get("mean_load_s") is not None:
                total[model] += block["mean_load_s"] * (block["requests"] - block["failures"])
                misses[model] += block["cold_starts"]
    return {model: total[model] / misses[model] for model in misses}


def costed_load_s(summary: dict, costs: dict[str, float]) -> float | None:
    """The run's mean load delay per request had every miss cost ``costs[model]`` (from
    :func:`pooled_load_costs` over every run of the testbed): which models a policy reloads,
    with the machine's speed during the run taken out. On a shared machine the measured delay
    follows the load of the moment as much as the policy (and a profile taken on it can be
    off for one model by 10x, as mobilenet-v4's was)."""
    if not summary.get("requests"):
        return None
    misses = sum(b["cold_starts"] * costs.get(m, 0.0) for m, b in summary["functions"].items())
    return misses / summary["requests"]


def policy_rows(
    results: dict[str, dict], rep: int = 1, costs: dict[str, float] | None = None
) -> list[dict]:
    """One row per policy of one repetition: measured and simulated load delay, hit ratio, and
    the load penalty against random eviction of the same repetition (same workload): measured,
    simulated, and with ``costs`` (model -> seconds per miss) at those costs
    (:func:`costed_load_s`)."""

    def penalty(summary: dict, base: dict | None, key: str = "mean_load_s") -> float | None:
        if not base or not base.get(key) or summary.get(key) is None:
            return None
        return round(summary[key] / base[key], 3)

    if costs is not None:
        for s in results.values():
            s["costed_load_s"] = costed_load_s(s, costs)

    random_run = results.get("random")
    rows = []
    for policy, s in results.items():
        sim = s.get("simulated") or {}
        rows.append(
            {
                "policy": policy,
                "rep": rep,
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
                "costed vs random": penalty(s, random_run, "costed_load_s"),
                "pool RSS MB": _mb((s.get("pool_memory") or {}).get("peak_above_baseline_bytes")),
            }
        )
    return rows


def spread_rows(rows: list[dict]) -> list[dict]:
    """Per policy (in first-run order): the median of each :data:`SPREAD` column over its runs,
    with ``[min, max]``."""
    out = []
    for policy in dict.fromkeys(r["policy"] for r in rows):
        runs = [r for r in rows if r["policy"] == policy]
        row: dict = {"policy": policy, "runs": len(runs)}
        for col in SPREAD:
            values = [r[col] for r in runs if r.get(col) is not None]
            row[col] = (
                {"median": statistics.median(values), "min": min(values), "max": max(values)}
                if values
                else None
            )
        out.append(row)
    return out


def format_spread(rows: list[dict]) -> list[dict]:
    """:func:`spread_rows` for a table: ``median (min–max)``."""

    def cell(v: dict | None) -> str:
        if v is None:
            return "–"
        if v["min"] == v["max"]:
            return f"{v['median']:g}"
        return f"{v['median']:.3g} ({v['min']:.3g}–{v['max']:.3g})"

    return [{k: (cell(v) if k in SPREAD else v) for k, v in r.items()} for r in rows]


def _mb(nbytes: float | None) -> float | None:
    return None if nbytes is None else round(nbytes / 1e6, 1)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def plot_policies(rows: list[dict], path: Path, title: str = "testbed") -> None:
    """Bars of each policy's median over its runs, whiskers from its min to its max: load delay
    over exec, load delay against random (measured, and at the profile's load times), and the
    hit ratio measured and simulated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["policy"] for r in rows]
    x = list(range(len(names)))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))

    def bars(ax, col, offset=0.0, width=0.6, **kw):
        med = [(r[col] or {}).get("median", 0) for r in rows]
        lo = [m - (r[col] or {}).get("min", m) for m, r in zip(med, rows)]
        hi = [(r[col] or {}).get("max", m) - m for m, r in zip(med, rows)]
        ax.bar([i + offset for i in x], med, width, yerr=[lo, hi], capsize=4, **kw)

    bars(axes[0], "load/exec", color="tab:orange")
    axes[0].axhline(0.92, color="grey", lw=0.8, ls=":", label="paper: below 0.92")
    axes[0].legend(loc="lower right", fontsize=8)
    axes[0].set_ylabel("mean load delay / mean exec")
    axes[0].set_title(f"{title}: model-load delay")
    bars(axes[1], "load vs random", -0.2, 0.4, label="measured")
    bars(axes[1], "costed vs random", 0.2, 0.4, label="at each model's mean load time")
    axes[1].axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[1].axhline(0.36, color="grey", lw=0.8, ls=":", label="paper (CremeBrulee): below 0.36")
    axes[1].set_ylabel("mean load delay / random's")
    axes[1].set_title("load penalty vs random")
    axes[1].legend(loc="lower right", fontsize=7)
    for ax in axes[:2]:
        ax.set_xticks(x, names, rotation=20)
    bars(axes[2], "hit ratio", -0.2, 0.4, label="testbed")
    bars(axes[2], "sim hit ratio", 0.2, 0.4, label="simulator")
    axes[2].set_xticks(x, names, rotation=20)
    axes[2].set_ylabel("hit ratio")
    axes[2].set_title("testbed vs simulator")
    axes[2].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
