"""What each added device buys: the Azure-like replay against a fleet of 1, 2 and 3 devices on
one Redis, each device with the same memory cap.

The devices are network namespaces of this machine (``loadgen.fleet``): each runs one
``brulee worker --device devN --memory-cap CAP``, Redis (with a password) runs in a controller
namespace and the gateway (gunicorn) in its own, so requests and inputs cross TCP links as
between real devices. The workload is ``brulee testbed``'s: the bundled real Azure 2019 rows
(or ``--trace``), paired onto the models of ``--models`` by load cost and compressed into
``--minutes``; the cap is a share of its working set (``--cap``). The load generator (Locust,
``brulee replay``) runs in the gateway's namespace. The 1-device run is the baseline; every
row's ratios are against it, measured in the same run.

Caveat printed with the table: every device here shares this machine's CPU cores, so a second
device adds memory (room for more warm models) and a worker, but no cores; real devices would
add their own.

    nice -n -15 python benchmarks/fleet.py --models zoo/edge --minutes 3 --cap 30%
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import sys
from pathlib import Path

import click
from tabulate import tabulate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadgen.azure import BUNDLED_TRACE  # noqa: E402
from loadgen.fleet import Fleet, unavailable, worker_device  # noqa: E402
from loadgen.testbed import make_workload, parse_cap, working_set_bytes  # noqa: E402


def replay(fleet: Fleet, workload: Path, out: Path) -> dict:
    """``brulee replay`` of ``workload`` from the gateway's namespace; its summary."""
    argv = [sys.executable, "-c", "from agent.cli import main; main()", "replay",
            "--workload", str(workload), "--host", fleet.url, "--out", str(out),
            "--token", fleet.token]  # fmt: skip
    status = fleet.run_in("gateway", argv, timeout=3600)
    if status != 0:
        raise click.ClickException(
            f"the replay failed ({status}); see {fleet.dir}/gateway-run.log:\n"
            + fleet.log_tail("gateway-run")
        )
    return json.loads((out / "summary.json").read_text())


def row(devices: int, cap: int, summary: dict, cache: dict, base: dict | None) -> dict:
    evictions = sum(sum(d["evictions"].values()) for d in cache["devices"].values())
    p99 = summary["latency_p99_s"]
    out = {
        "devices": devices,
        "total cap MB": round(devices * cap / 1e6),
        "scheduled": summary["scheduled"],
        "answered": summary["requests"],
        "failed": summary["failures"],
        "hit ratio": summary["hit_ratio"],
        "cold starts": summary["cold_starts"],
        "evictions": evictions,
        "p50 ms": round(summary["latency_p50_s"] * 1000, 1),
        "p99 ms": round(p99 * 1000, 1),
    }
    if base is not None:
        out["cold starts / 1 device"] = round(summary["cold_starts"] / base["cold_starts"], 2)
        out["p99 / 1 device"] = round(p99 / base["latency_p99_s"], 2)
    return out


@click.command()
@click.option("--models", default="zoo/edge", show_default=True, type=click.Path(exists=True))
@click.option("--profiles", default=None, help="[default: MODELS/profiles.json]")
@click.option("--trace", default=BUNDLED_TRACE, show_default=True)
@click.option("--minutes", default=3.0, show_default=True, type=click.FloatRange(min=0.1))
@click.option(
    "--cap", default="30%", show_default=True, help="per device: PCT% of the working set, or a size"
)
@click.option("--devices", "counts", default="1,2,3", show_default=True)
@click.option("--policy", default="cremebrulee", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--out", default="out/fleet", show_default=True, type=click.Path(path_type=Path))
def main(models, profiles, trace, minutes, cap, counts, policy, seed, out) -> None:  # fmt: skip
    """Replay the same workload against fleets of 1, 2, 3 devices; print the table."""
    reason = unavailable()
    if reason is not None:
        raise click.ClickException(f"cannot build namespace hosts here: {reason}")
    from models.profile import read_profiles

    models = Path(models).resolve()
    profiles = profiles or str(models / "profiles.json")
    usable = sorted(read_profiles(profiles))
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    workload = make_workload(trace, profiles, usable, minutes, seed, out / "workload.csv")
    total, sizes = working_set_bytes(workload, profiles)
    cap_bytes = parse_cap(cap, total)
    click.echo(
        f"workload: {minutes:g} min, {len(sizes)} models, working set {total / 1e6:.0f} MB; "
        f"cap per device {cap_bytes / 1e6:.0f} MB; machine: {platform.machine()}, "
        f"{os.cpu_count()} cores shared by every device, Python {platform.python_version()}"
    )
    rows, base = [], None
    for n in [int(c) for c in counts.split(",")]:
        devices = [worker_device(f"dev{i + 1}", cap_bytes, models, policy) for i in range(n)]
        token = secrets.token_hex(16)
        with Fleet(devices, models, out / f"{n}-devices", policy=policy, token=token) as fleet:
            summary = replay(fleet, workload, out / f"{n}-devices" / "replay")
            cache = fleet.cache()
        base = base or summary
        rows.append(row(n, cap_bytes, summary, cache, base if summary is not base else None))
        click.echo(tabulate([rows[-1]], headers="keys", tablefmt="github"))
    for prev, cur in zip(rows, rows[1:], strict=False):
        cur["added device: hit ratio +"] = round(cur["hit ratio"] - prev["hit ratio"], 4)
        cur["added device: cold starts -"] = prev["cold starts"] - cur["cold starts"]
    (out / "fleet.json").write_text(json.dumps(rows, indent=1))
    click.echo("\n" + tabulate(rows, headers="keys", tablefmt="github"))
    click.echo(
        "\nAll devices share this machine's CPU cores: an added device adds memory and a "
        "worker, not cores."
    )


if __name__ == "__main__":
    main()
