"""brulee's simulator against the seed's own, policy by policy, on small workloads of our making.

    python benchmarks/seed_compare.py --seed-root /path/to/CremeBrulee [--requests 400]

The seed (cake-lab/CremeBrulee) is not brulee's code: its ``src-simulator`` and ``src-testbed``
are copied from ``--seed-root`` into a temporary directory and run there, one process per
policy, with this Python (it needs numpy only). Nothing of it is imported here; nothing in
brulee or its tests needs this script. The result is recorded in ``docs/simulation.md``
("brulee against the seed's simulator").

Workloads: ``--models`` Keras models (the seed's m5.large latencies, ``loadgen/data``; sizes =
parameters x 4 bytes as in ``policies_simulated.py``), Zipf(1) popularity, exponential gaps of
mean ``--gap`` s ("light": loads of 3-13 s rarely queue) and ``--busy-gap`` s ("busy": queues
form), one worker, caps as a share of the models' total bytes. Both simulators get the same
request ids, times, latencies and sizes. Per run: misses (cold starts; brulee's also with
``trim=off`` and with ``--placement arrival``, which decides at arrival as the seed does),
evictions, mean response time, and on how many requests the two agree on hit or miss
(brulee's hit or miss is read from its finish times: one FIFO worker starts a request at
max(arrival, previous finish), so a miss is a start-to-finish time longer than the execution).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click
from tabulate import tabulate

from loadgen.profiles import ModelCost
from loadgen.simulator import simulate
from loadgen.workload_file import Request, write_workload

sys.path.insert(0, str(Path(__file__).parent))
from policies_simulated import DATA, KERAS_PARAMS_M  # noqa: E402

# seed --model_eviction_algorithm (and --random_weights) -> brulee policy
POLICIES = {
    "recent": "lru",
    "popularity": "popularity",
    "loadtime": "loadtime",
    "cremebrulee": "cremebrulee",
    "belady": "belady",
    "cremebrulee-oracle": "cremebrulee-oracle",
    "random": "random",
    "random/cremebrulee": "cremebrulee-random",
}
MODELS = ["MobileNetV2", "DenseNet121", "ResNet50", "InceptionV3", "EfficientNetB3",
          "Xception", "ResNet152", "NASNetMobile", "DenseNet201", "ResNet101"]  # fmt: skip

# The seed sleeps up to 10 s at start-up (to stagger parallel runs): not here.
_SEED_MAIN = "import sys, time; time.sleep = lambda s: None; import simulation; simulation.main()"


def costs(n: int) -> dict[str, ModelCost]:
    """The first ``n`` of ``MODELS`` with the seed's measured latencies and Keras sizes."""
    measured = {r["name"]: r for r in json.loads((DATA / "models.m5.json").read_text())}
    return {
        m: ModelCost(
            measured[m]["avg_load_latency"],
            measured[m]["avg_exec_latency"],
            int(KERAS_PARAMS_M[m] * 4e6),
            measured[m]["avg_unload_latency"],
        )
        for m in MODELS[:n]
    }


def workload(names: list[str], count: int, gap: float, seed: int) -> list[tuple[float, str]]:
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(names))]
    t, out = 0.0, []
    for _ in range(count):
        t += rng.expovariate(1 / gap)
        out.append((round(t, 6), rng.choices(names, weights)[0]))
    return out


def run_seed(seed_dir: Path, work: Path, policy: str, cap: int, rng_seed: int) -> dict:
    """One run of the seed's simulator; its per-request log read back."""
    algorithm, _, weights = policy.partition("/")
    tag = policy.replace("/", "-")
    args = ["--workload_file", str(work / "workload.txt"),
            "--model_description_file", str(work / "models.json"),
            "--model_eviction_algorithm", algorithm, "--worker_memory", str(cap),
            "--num_workers_to_add", "1", "--rng_seed", str(rng_seed),
            "--base_logging_dir", str(work / "seed-logs"), "--run_series", tag,
            "--run_identifier", tag]  # fmt: skip
    if weights:
        args += ["--random_weights", weights]
    code = f"import sys; sys.argv = ['simulation.py', *{args!r}]; {_SEED_MAIN}"
    # The seed breaks ties (and draws) in the order of a set of models: fix the string hash.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=seed_dir / "src-simulator",
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    (log,) = (work / "seed-logs" / tag).glob(f"{tag}.*.log.gz")
    with gzip.open(log, "rt") as fh:
        rows = [json.loads(line) for line in fh]
    shutil.rmtree(work / "seed-logs" / tag)
    return {
        "miss": {r["request_id"]: r["model_miss"] for r in rows},
        "evictions": sum(" Removing " in line for line in out.stdout.splitlines()),
        "mean": sum(r["overall_latency"] for r in rows) / len(rows),
        "failed": sum("REJECTED" in r["response"] for r in rows),
    }


def run_brulee(
    path: Path, prof: dict[str, ModelCost], policy: str, cap: int, placement: str = "start"
) -> dict:
    served: list[tuple[str, float, float]] = []
    res = simulate(
        str(path), prof, policy, cap, placement=placement, on_served=lambda *s: served.append(s)
    )
    miss, free_at = {}, 0.0
    for i, (model, arrival, finish) in enumerate(sorted(served, key=lambda s: s[1])):
        start = max(arrival, free_at)
        miss[i] = finish - start > prof[model].exec_s + 1e-9
        free_at = finish
    return {"miss": miss, "res": res}


def compare(seed_dir: Path, work: Path, name: str, reqs, prof, share: float, seed: int, chosen):
    """Rows of the table for one workload and cap."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "workload.txt").write_text("".join(f"{i} {t} {m}\n" for i, (t, m) in enumerate(reqs)))
    (work / "models.json").write_text(json.dumps([
        {"name": m, "avg_load_latency": c.load_s, "avg_exec_latency": c.exec_s,
         "avg_unload_latency": c.unload_s, "loaded_size": c.bytes} for m, c in prof.items()
    ]))  # fmt: skip
    path = work / "workload.csv"
    write_workload(path, [Request(t, m, str(i)) for i, (t, m) in enumerate(reqs)])
    cap = int(share * sum(c.bytes for c in prof.values()))
    if cap < max(c.bytes for c in prof.values()):  # the seed has no answer for that (it crashes)
        raise click.UsageError(f"cap {share:.0%} is smaller than the largest model: raise --caps")
    rows = []
    for seed_policy, policy in chosen.items():
        s = run_seed(seed_dir, work, seed_policy, cap, seed)
        b = run_brulee(path, prof, policy, cap)
        off = run_brulee(path, prof, f"{policy}:trim=off", cap)
        arrival = run_brulee(path, prof, policy, cap, placement="arrival")["res"]
        res = b["res"]
        same = sum(s["miss"][i] == b["miss"][i] for i in range(len(reqs)))
        rows.append([
            name, f"{share:.0%}", policy, sum(s["miss"].values()), res.cold_starts + res.load_waits,
            off["res"].cold_starts + off["res"].load_waits,
            arrival.cold_starts + arrival.load_waits, s["evictions"], res.evictions,
            f"{same}/{len(reqs)}", f"{s['mean']:.2f}", f"{res.mean_response_s:.2f}", s["failed"],
        ])  # fmt: skip
    return rows


@click.command()
@click.option(
    "--seed-root",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="A checkout of cake-lab/CremeBrulee (its src-simulator and src-testbed).",
)
@click.option("--requests", default=400, show_default=True)
@click.option("--models", default=8, show_default=True, type=click.IntRange(2, len(MODELS)))
@click.option("--gap", default=60.0, show_default=True, help="Mean gap, light workload (s).")
@click.option("--busy-gap", default=4.0, show_default=True, help="Mean gap, busy workload (s).")
@click.option("--caps", default="0.4,0.6", show_default=True, help="Shares of the models' bytes.")
@click.option("--seed", default=1, show_default=True)
@click.option("--only", default=None, help="Comma-separated brulee policy names (default: all).")
def main(seed_root, requests, models, gap, busy_gap, caps, seed, only):
    """Print one row per (workload, cap, policy): the seed's numbers against brulee's."""
    prof = costs(models)
    chosen = {k: v for k, v in POLICIES.items() if only is None or v in only.split(",")}
    if not chosen:
        raise click.UsageError(f"--only {only!r}: none of {', '.join(POLICIES.values())}")
    with tempfile.TemporaryDirectory(prefix="seed-compare-") as tmp:
        seed_dir = Path(tmp) / "seed"
        for part in ("src-simulator", "src-testbed"):
            shutil.copytree(Path(seed_root) / part, seed_dir / part)
        rows = []
        for name, mean_gap in (("light", gap), ("busy", busy_gap)):
            reqs = workload(list(prof), requests, mean_gap, seed)
            for share in (float(c) for c in caps.split(",")):
                work = Path(tmp) / f"{name}-{share}"
                rows += compare(seed_dir, work, name, reqs, prof, share, seed, chosen)
    head = ["workload", "cap", "policy", "seed misses", "brulee misses", "trim=off misses",
            "arrival-placement misses",
            "seed evictions", "brulee evictions", "same hit/miss", "seed mean s",
            "brulee mean s", "seed failed"]  # fmt: skip
    click.echo(tabulate(rows, head, tablefmt="github"))


if __name__ == "__main__":
    main()
