"""What running whole on XNNPACK is worth: models converted with an open batch dimension (as
``brulee models build`` did before builder version 2, and as a Keras model's own signature
gives) against the same architectures with static shapes, measured in the same run.

    python benchmarks/zoo_delegation.py --models zoo/edge [--before DIR] [--rounds 3] [NAMES]

``--models`` is a directory built by ``brulee models build``; ``--before`` one whose files
were converted from the Keras signature (default: convert NAMES that way now, into a temporary
directory; needs TensorFlow). Each round profiles every model before and after, alternately,
each in a fresh process (``models.profile``); the table gives medians over rounds, ops on
XNNPACK, and exec without XNNPACK (TFLite's built-in kernels) for the static file.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

import click
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.catalog import load_catalog  # noqa: E402
from models.delegation import check  # noqa: E402
from models.profile import profile_one, with_seed_fields  # noqa: E402

MB = 1e6


def _convert_open_batch(records: dict, names: list[str], out: Path) -> None:
    from models.build import BuildSpec, convert
    from models.zoo import ARCHITECTURES

    for name in names:
        rec = records[name]
        arch = ARCHITECTURES[rec["architecture"]]
        spec = BuildSpec(
            arch, rec["variant"], rec["dtype"], rec["seed"], rec["weights"], rec.get("batch", 1)
        )
        (out / rec["file"]).write_bytes(convert(spec, open_batch=True))


@click.command()
@click.option("--models", "models_dir", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--before", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--runs", type=click.IntRange(min=1), default=10, show_default=True)
@click.argument("names", nargs=-1)
def main(models_dir: Path, before: Path | None, rounds: int, runs: int, names) -> None:
    records = load_catalog(models_dir)
    names = list(names) or sorted(records)
    with tempfile.TemporaryDirectory(prefix="zoo-before-") as tmp:
        if before is None:
            before = Path(tmp)
            _convert_open_batch(records, names, before)
        sides = {"before": before, "after": models_dir}
        seen: dict[tuple[str, str], list[dict]] = {}
        for _ in range(rounds):
            for name in names:
                for side, directory in sides.items():
                    path = directory / records[name]["file"]
                    measured = with_seed_fields(profile_one(path, runs, 1, 600))
                    seen.setdefault((name, side), []).append(measured)
        delegation = {
            (name, side): check(directory / records[name]["file"], runs=runs)
            for name in names
            for side, directory in sides.items()
        }
    rows = []
    for name in names:
        b, a = seen[(name, "before")], seen[(name, "after")]
        db, da = delegation[(name, "before")], delegation[(name, "after")]

        def med(recs: list[dict], field: str, scale: float = 1e3) -> float:
            return statistics.median(r[field] for r in recs) * scale

        rows.append(
            (
                name,
                f"{db.ops - sum(db.outside.values())}/{db.ops}",
                f"{da.ops - sum(da.outside.values())}/{da.ops}",
                med(b, "exec_s"),
                med(a, "exec_s"),
                med(b, "exec_s") / med(a, "exec_s"),
                da.builtin_exec_s * 1e3,
                med(b, "loaded_bytes", 1 / MB),
                med(a, "loaded_bytes", 1 / MB),
                med(b, "avg_load_latency"),
                med(a, "avg_load_latency"),
            )
        )
    headers = [
        "model",
        "XNNPACK ops before",
        "after",
        "exec ms before",
        "after",
        "speed-up",
        "after, no XNNPACK",
        "loaded MB before",
        "after",
        "load ms before",
        "after",
    ]
    click.echo(tabulate(rows, headers=headers, floatfmt=".2f", tablefmt="github"))
    click.echo(
        f"\n{rounds} rounds x {runs} runs, medians; {os.cpu_count()} cores; "
        "load ms = cold open + what the first invoke costs over a warm one (the miss penalty)"
    )


if __name__ == "__main__":
    main()
