"""Memory-adaptive variants in the simulator: the table in ``docs/simulation.md``::

    python benchmarks/variants_simulated.py --zoo zoo/edge --variants-zoo zoo/edge-int8 \\
        --digits .cache/test-models-dtypes --out /tmp/variants-bench

Inputs, all real models from the project's builder, profiled by ``brulee models profile``:
``--zoo``, float32 models with ``profiles.json``; ``--variants-zoo``, the same architectures
built with ``--dtype int8-full`` (``brulee models build --set edge --dtype int8-full``), also
profiled; ``--digits``, the digits model in every dtype (profiled here if it has no
``profiles.json``), whose held-out accuracy per dtype is the accuracy cost charged to each
variant of that dtype (the edge models have random weights and no labelled set).

A synthetic Azure-like day (``brulee trace synth``, quantile pairing) over the float32 models;
every model may be served by its int8-full variant (floor: none). At 25/50/75 % of the
workload's float32 bytes, arrival placement (the agent's) with CremeBrulee, with and without
variants: hit ratio, mean load delay, the share of requests each variant served, the upgrades
and the accuracy cost (share served smaller x the digits accuracy lost by that dtype).
The runs take the path of ``brulee simulate --variants FILE`` (the benchmark writes FILE,
``variants.yml``, into ``--out``; ``read_variants``, ``run`` and ``SimResult``'s numbers).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import yaml
from tabulate import tabulate

from loadgen.profiles import load_profiles
from loadgen.sim.engine import run
from loadgen.sim.inputs import workload_bytes
from loadgen.sim.variants import VariantSpec, read_variants
from loadgen.sim_workload import CompactWorkload
from models.profile import read_profiles


def brulee(*args: str) -> None:
    cmd = [str(Path(sys.executable).parent / "brulee"), *args]
    click.echo("$ brulee " + " ".join(args), err=True)
    subprocess.run(cmd, check=True)


def digits_accuracy(digits: Path) -> dict[str, float]:
    """Held-out accuracy of the digits model per dtype suffix ("" for float32)."""
    if not (digits / "profiles.json").is_file():
        brulee("models", "profile", "--models", str(digits), "--runs", "3")
    records = read_profiles(digits / "profiles.json")
    return {name.removeprefix("digits-cnn"): r["digits_accuracy"] for name, r in records.items()}


def run_one(workload: Path, profiles, cap: int, spec: VariantSpec | None, workers: int):
    with CompactWorkload(str(workload)) as wl:
        return run(wl, profiles, "cremebrulee", cap, workers, placement="arrival",
                   deadline_s=30.0, max_waiting=1000, variants=spec)  # fmt: skip


@click.command()
@click.option("--zoo", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--variants-zoo", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--digits", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--functions", default=200, show_default=True)
@click.option("--hours", default=6.0, show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--dtype", default="int8-full", show_default=True, help="The variants' dtype.")
def main(zoo, variants_zoo, digits, out, functions, hours, workers, dtype):
    """Hit ratio, load delay and variant shares with and without variants at 25/50/75 %."""
    from models.build import _DTYPE_SUFFIX

    suffix = _DTYPE_SUFFIX[dtype]
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    accuracy = digits_accuracy(Path(digits))
    base, small = (read_profiles(Path(d) / "profiles.json") for d in (zoo, variants_zoo))
    models = sorted(m for m in base if f"{m}{suffix}" in small)
    combined = outp / "profiles.json"
    combined.write_text(json.dumps({"models": [*base.values(), *small.values()]}))
    synth = outp / "synth.csv.gz"
    brulee("trace", "synth", "--functions", str(functions), "--hours", str(hours), "--seed",
           "1", "--out", str(synth), "--profiles", str(combined), "--models", ",".join(models),
           "--pairing", "quantiles")  # fmt: skip
    profiles = load_profiles(combined)
    variants_file = outp / "variants.yml"  # what brulee simulate --variants reads
    variants_file.write_text(yaml.safe_dump({
        m: [{"model": m, "accuracy": accuracy[""]},
            {"model": f"{m}{suffix}", "accuracy": accuracy[suffix]}]
        for m in models
    }))  # fmt: skip
    spec = read_variants(str(variants_file), profiles)
    with CompactWorkload(str(synth)) as wl:
        total = workload_bytes(wl, profiles)
    rows = []
    for pct in (25, 50, 75):
        for label, used in (("off", None), (dtype, spec)):
            res = run_one(synth, profiles, total * pct // 100, used, workers)
            best, smaller = res.variant_shares() or [1.0, 0.0]
            rows.append(
                (
                    f"{pct} %",
                    label,
                    100 * res.served / res.requests,
                    100 * res.hit_ratio,
                    1e3 * res.mean_load_delay_s,
                    1e3 * res.mean_response_s,
                    100 * best,
                    100 * smaller,
                    res.variant_upgrades,
                    res.accuracy_cost_pts if used else 0.0,
                    res.evictions,
                )
            )
    headers = ["cap", "variants", "served %", "hit %", "load delay ms", "response ms", "float32 %",
               f"{dtype} %", "upgrades", "accuracy cost (pts)", "evictions"]  # fmt: skip
    table = tabulate(rows, headers, tablefmt="github", floatfmt=".3f")
    click.echo(
        f"{len(models)} models, {functions} functions, {hours:g} h; digits accuracy "
        f"float32 {100 * accuracy['']:.2f} %, {dtype} {100 * accuracy[suffix]:.2f} %"
    )
    click.echo(table)
    (outp / f"variants-{dtype}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
