"""Simulate the replayed workload with the agent's own settings, to compare with the testbed.

Settings come from the agent's ``/system/cache`` answer (policy, workers, cap), overridable from
the command line. Costs (``settings["costs"]``):

- ``profile``: a profile file's (the device's models-dir profile), as measured on an idle
  device — the simulator then predicts the run from the profile alone;
- ``measured``: the costs measured in this very run (per model: mean ``X-Load-Seconds`` of its
  cold starts, mean ``X-Exec-Seconds``), the profile's where the run measured none, and the
  loaded bytes of the profile (else from ``/system/functions``) — then the comparison tests
  the simulator's model of queueing, admission and eviction, not its cost inputs. This is
  what the testbed uses: on a device whose workers share their cores with the gateway and
  the load generator, executions run ~2x slower than profiled, and how long a model stays
  busy decides how often two models that cannot share the cap are swapped.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path

from loadgen.cache_report import memory_bytes
from loadgen.profiles import ModelCost, load_profiles
from loadgen.workload_file import Request, iter_workload, write_workload


def _find(node: object, keys: tuple[str, ...]) -> object | None:
    """The first value under any of ``keys`` in a nested answer (breadth first)."""
    queue = [node]
    while queue:
        cur = queue.pop(0)
        if isinstance(cur, dict):
            for key in keys:
                if key in cur and cur[key] is not None:
                    return cur[key]
            queue.extend(cur.values())
        elif isinstance(cur, list):
            queue.extend(cur)
    return None


def agent_settings(cache: dict | None) -> dict:
    """(policy, workers, cap_bytes) as the agent reports them; missing ones are None. The
    admission settings (sync timeout = a waiting miss's deadline, max_waiting) as reported,
    else the agent's defaults."""
    from agent.admission import DEFAULT_MAX_WAITING
    from loadgen.simulator import DEFAULT_DEADLINE_S

    cache = cache or {}
    workers = _find(cache, ("worker_count", "num_workers", "workers"))
    if isinstance(workers, (list, dict)):
        workers = len(workers)
    cap = memory_bytes(cache)[1] or None
    policy = _find(cache, ("policy", "eviction_policy"))
    deadline = _find(cache, ("sync_timeout_s", "sync_timeout"))
    max_waiting = _find(cache, ("max_waiting",))
    return {
        "policy": policy,
        "workers": workers,
        "cap_bytes": cap,
        "deadline_s": float(deadline) if deadline is not None else DEFAULT_DEADLINE_S,
        "max_waiting": int(max_waiting) if max_waiting is not None else DEFAULT_MAX_WAITING,
    }


def model_of(functions: list[dict]) -> dict[str, str]:
    return {f["name"]: str(f.get("model") or f["name"]) for f in functions}


SIM_COSTS = ("profile", "measured")


def sim_costs_option(default: str, help_text: str):
    """The ``--sim-costs`` command-line option (``brulee replay``, ``brulee testbed``): which
    load and exec times the simulator runs on (see the module docstring)."""
    import click

    return click.option(
        "--sim-costs",
        type=click.Choice(SIM_COSTS),
        default=default,
        show_default=True,
        help=help_text,
    )


def measured_costs(
    records: Path, functions: list[dict]
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per model, the load times of its cold starts and its exec times, from the replay."""
    models = model_of(functions)
    loads: dict[str, list[float]] = defaultdict(list)
    execs: dict[str, list[float]] = defaultdict(list)
    with open(records, newline="") as fh:
        for row in csv.DictReader(fh):
            model = models.get(row["function"], row["function"])
            try:
                if row["x_cache"] == "miss" and float(row["load_s"] or 0) > 0:
                    loads[model].append(float(row["load_s"]))
                execs[model].append(float(row["exec_s"]))
            except ValueError:
                continue
    return loads, execs


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def with_measured(
    profiles: dict[str, ModelCost], records: Path, functions: list[dict]
) -> dict[str, ModelCost]:
    """The profile's costs with load and exec replaced by this run's where it measured them."""
    loads, execs = measured_costs(records, functions)
    return {
        m: c._replace(
            load_s=_mean(loads[m]) if loads.get(m) else c.load_s,
            exec_s=_mean(execs[m]) if execs.get(m) else c.exec_s,
        )
        for m, c in profiles.items()
    }


def measured_profiles(records: Path, functions: list[dict]) -> dict[str, ModelCost]:
    """Per-model costs measured by the replay (cold-start load, warm exec, loaded bytes)."""
    models = model_of(functions)
    loads, execs = measured_costs(records, functions)
    sizes = {}
    for f in functions:
        size = f.get("loaded_bytes") or f.get("memory") or f.get("bytes")
        if size:
            sizes[models[f["name"]]] = int(size)
    out = {}
    for model in set(models.values()):
        out[model] = ModelCost(
            load_s=_mean(loads.get(model) or [0.0]),
            exec_s=_mean(execs.get(model) or [0.001]),
            bytes=sizes.get(model),
            unload_s=0.0,
        )
    return out


def simulate_replay(
    replay_file: str | os.PathLike,
    out: Path,
    functions: list[dict],
    settings: dict,
    speedup: float,
    duration: float | None,
    profiles_path: str | None = None,
) -> dict:
    """Run the simulator on exactly what was replayed (times divided by the speed-up)."""
    from loadgen import simulator
    from loadgen.sim_workload import CompactWorkload

    models = model_of(functions)
    sim_file = out / "workload.sim.csv"
    write_workload(
        sim_file,
        (
            Request(r.time / speedup, models.get(r.function, r.function), r.id, r.source)
            for r in iter_workload(replay_file)
            if duration is None or r.time < duration
        ),
    )
    if profiles_path:
        page_cache = str(settings.get("page_cache") or "warm")
        profiles = load_profiles(profiles_path, page_cache=page_cache)
        source = f"{profiles_path} ({page_cache} page cache)"
        if settings.get("costs") == "measured":
            profiles = with_measured(profiles, out / "records.csv", functions)
            source = f"load and exec measured in this run, sizes from {profiles_path}"
    else:
        profiles = measured_profiles(out / "records.csv", functions)
        source = "measured in this run"
    used = {r.function for r in iter_workload(sim_file)}
    profiles = {m: c for m, c in profiles.items() if m in used}
    missing = [m for m in used if m not in profiles or profiles[m].bytes is None]
    if missing:
        raise RuntimeError(
            f"the agent reports no loaded size for model(s) {', '.join(sorted(missing))} "
            "(never loaded in this run?); pass --profiles with sizes"
        )
    with CompactWorkload(sim_file) as workload:
        result = simulator.run(
            workload,
            profiles,
            policy=str(settings["policy"]),
            cap_bytes=int(settings["cap_bytes"]),
            workers=int(settings["workers"]),
            placement="arrival",  # the agent decides when a request arrives
            deadline_s=float(settings["deadline_s"]),
            max_waiting=int(settings["max_waiting"]),
        )
    flat = result.summary()
    served = result.served
    return {
        "profiles": source,
        "settings": settings,
        "requests": flat["requests"],
        # the testbed's definition: X-Cache over answered requests, where a request that
        # waited for a load already under way says "hit" (its worker found the model loaded)
        "hit_ratio": round((flat["hits"] + flat["load_waits"]) / served, 4) if served else None,
        "load_waits": flat["load_waits"],
        "cold_starts": flat["cold_starts"],
        "mean_load_s": round(flat["mean_load_delay_s"], 6),
        "mean_exec_s": round(flat["mean_exec_s"], 6),
        "load_over_exec": round(flat["load_delay_ratio"], 4),
        "rejected": flat["rejected"],
        # the admission queue: misses that waited for memory (and how long, mean), the ones
        # whose deadline passed while waiting (the agent's 503) and those refused (429)
        "admitted_after_wait": flat["admitted_after_wait"],
        "mean_admission_wait_s": round(flat["mean_admission_wait_s"], 6)
        if flat["admitted_after_wait"]
        else None,
        "timed_out": flat["timed_out"],
        "queue_full": flat["queue_full"],
    }


def simulated_failures(simulated: dict) -> int:
    """Requests the simulator could not serve: larger than the cap, waited for memory past
    their deadline (the agent's 503), refused at a full admission queue (429)."""
    return sum(simulated.get(k) or 0 for k in ("rejected", "timed_out", "queue_full"))


def compare(measured: dict, simulated: dict) -> dict:
    """Differences against the targets: hit ratio within 5 pp, cold starts within 10 %."""
    hr_m, hr_s = measured.get("hit_ratio"), simulated.get("hit_ratio")
    cs_m, cs_s = measured.get("cold_starts") or 0, simulated.get("cold_starts") or 0
    hit_pp = None if hr_m is None or hr_s is None else round(abs(hr_m - hr_s) * 100, 2)
    cold_pct = round(abs(cs_m - cs_s) / max(cs_m, 1) * 100, 2)
    return {
        "hit_ratio_pp": hit_pp,
        "cold_starts_pct": cold_pct,
        "hit_ratio_ok": hit_pp is not None and hit_pp <= 5,
        "cold_starts_ok": cold_pct <= 10,
    }
