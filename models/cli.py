"""``brulee models build`` and ``brulee models profile``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from models.zoo import SETS, UnknownName, resolve


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _count(flag: str, help: str, default: int = 1):
    """An option taking a whole number >= 1."""
    return click.option(
        flag, type=click.IntRange(min=1), default=default, show_default=True, help=help
    )


@click.group("models")
def models_group() -> None:
    """Build the TFLite model zoo and measure what each model costs."""


@models_group.command("build")
@click.option("--set", "set_name", help=f"A named set of architectures: {', '.join(SETS)}.")
@click.option(
    "--arch",
    "archs",
    multiple=True,
    help="Architecture(s) to build, repeatable or comma-separated.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("zoo"),
    show_default=True,
    help="Directory for the .tflite files and catalog.json.",
)
@_count("--variants", "Distinct models per architecture (different weight seeds).")
@click.option(
    "--dtype",
    "dtypes",
    multiple=True,
    default=("float32",),
    show_default=True,
    help="Storage dtype(s): float32, float16, int8 (dynamic range: int8 weights, float "
    "compute) or int8-full (int8 weights and activations, calibrated; int8 input and output).",
)
@_count("--batch", "Rows per call, fixed in the file (static shapes let XNNPACK run it whole).")
@_count(
    "--stages",
    "Also cut each model at single-tensor boundaries into this many stage files (NAME.stages/, "
    "with a manifest), checked to chain to the whole model's output; 1: no stages.",
)
@click.option(
    "--allow-partial",
    is_flag=True,
    help="Keep models that XNNPACK does not run whole (they are refused otherwise).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Base seed for random weights."
)
@click.option(
    "--weights",
    type=click.Choice(["random", "imagenet"]),
    default="random",
    show_default=True,
    help="random: seeded, offline. imagenet: Keras downloads pretrained weights (needs internet).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Models converted at a time, each in a worker process of its own (0: one per CPU). "
    "The files are the same bytes whatever the number.",
)
@click.option("--list", "list_only", is_flag=True, help="Print what would be built, build nothing.")
def build_cmd(
    set_name,
    archs,
    out,
    variants,
    dtypes,
    batch,
    stages,
    allow_partial,
    seed,
    weights,
    jobs,
    list_only,
) -> None:
    """Build real Keras architectures and convert them to .tflite, with a catalog.

    Idempotent: models already built with the same settings are not rebuilt. Each new file is
    opened as a worker would: a model that XNNPACK does not run whole fails the build, naming
    the operators left outside (the catalog records ops and exec time with and without it).
    """
    from models.build import plan

    try:
        chosen = resolve(set_name, _split(archs)) if (set_name or archs) else resolve("edge")
        specs = plan(
            chosen,
            variants=variants,
            dtypes=_split(dtypes),
            seed=seed,
            weights=weights,
            batch=batch,
        )
    except (UnknownName, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    if list_only:
        for spec in specs:
            click.echo(f"{spec.name}\t{spec.arch.name}\t{spec.dtype}\tvariant {spec.variant}")
        return
    from models.build import NotDelegated, build
    from models.catalog import load_catalog
    from models.delegation import summary

    built, skipped, failures = [], 0, None
    try:
        for name, did_build in build(
            specs, out, allow_partial=allow_partial, stages=stages, jobs=jobs
        ):
            built += [name] if did_build else []
            skipped += not did_build
    except NotDelegated as exc:
        failures = str(exc).splitlines()
    except ValueError as exc:  # e.g. --stages on a quantised model, or too few boundaries
        raise click.UsageError(str(exc)) from exc
    records = load_catalog(out)
    for name in built:
        click.echo(f"{name}: {summary(records[name]['delegation'])}")
    click.echo(
        f"{len(built)} built, {skipped} already up to date, catalog in {out / 'catalog.json'}"
    )
    if failures:
        for line in failures:
            click.echo(f"FAILED {line}", err=True)
        click.echo("(--allow-partial keeps such models)", err=True)
        sys.exit(1)


@models_group.command("profile")
@click.option(
    "--models",
    "models_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("zoo"),
    show_default=True,
    help="Directory of .tflite files.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Profile JSON to write [default: MODELS/profiles.json].",
)
@_count("--runs", "Warm executions per model (the median is reported).", default=10)
@_count("--threads", "Interpreter threads (a worker per core uses 1).")
@click.option(
    "--timeout", type=float, default=600.0, show_default=True, help="Seconds allowed per model."
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also draw load vs. exec latency and memory to this PNG.",
)
@click.option(
    "--compare",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Add the load/exec ratio of another profile (e.g. the seed's models.m5.json, "
    "shipped as loadgen/data/models.m5.json) for models of the same name.",
)
@click.argument("names", nargs=-1)
def profile_cmd(models_dir, out, runs, threads, timeout, plot, compare, names) -> None:
    """Measure each model in a fresh process: load (cold and warm), exec, memory, unload.

    NAMES restricts the run to some models of the directory.
    """
    from models.profile import format_table, plot_profiles, profile_dir, read_profiles

    out = out or models_dir / "profiles.json"
    try:
        doc, failures = profile_dir(
            models_dir, out, names=names, runs=runs, threads=threads, timeout=timeout
        )
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(format_table(doc["models"], read_profiles(compare) if compare else None))
    click.echo(f"\nprofile of {len(doc['models'])} model(s) written to {out}")
    if plot:
        plot_profiles(doc, plot)
        click.echo(f"plot written to {plot}")
    for name, reason in failures:
        click.echo(f"FAILED {name}: {reason}", err=True)
    if failures:
        sys.exit(1)


@models_group.command("table")
@click.argument("profile", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--compare",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Add the load/exec ratio of another profile (e.g. loadgen/data/models.m5.json).",
)
def table_cmd(profile, compare) -> None:
    """Print the table of a profile written by `brulee models profile`, without re-measuring."""
    import json

    from models.profile import format_table, read_profiles

    try:
        doc = json.loads(profile.read_text())
        records = doc["models"]
    except (ValueError, KeyError, TypeError):
        raise click.UsageError(f"{profile} is not a brulee profile (no 'models' list)") from None
    click.echo(format_table(records, read_profiles(compare) if compare else None))
    click.echo(f"\nmeasured on {doc.get('device', {})}")
