"""``brulee trace``: Azure traces and synthetic traces to workload files, and their statistics."""

from __future__ import annotations

from pathlib import Path

import click

from loadgen.pairing import COSTS, METHODS, distinct_models, pair
from loadgen.pipeline import SPREADS
from loadgen.profiles import ProfileError, load_profiles


@click.group("trace")
def trace_group() -> None:
    """Build workload files from Azure Functions traces or a calibrated synthetic trace."""


def pairing_options(fn):
    """The pairing options shared by ``workload`` and ``synth``."""
    options = [
        click.option("--models", help="Comma-separated model names (default: all in --profiles)."),
        click.option(
            "--profiles",
            type=click.Path(dir_okay=False),
            help="Profiles JSON (brulee's or models.m5.json).",
        ),
        click.option(
            "--pairing", type=click.Choice(METHODS), default="quantiles", show_default=True
        ),
        click.option("--weights", help="random pairing: comma-separated weight per model."),
        click.option(
            "--cost",
            type=click.Choice(COSTS),
            default="load",
            show_default=True,
            help="quantiles, round_robin: rank models by this.",
        ),
        click.option(
            "--reverse",
            is_flag=True,
            help="quantiles, round_robin: popular functions get the cheapest models first.",
        ),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def make_pairing(models, profiles, pairing, weights, cost, reverse, seed):
    """A function totals -> {function: model}, or None when no models were named."""
    if not models and not profiles:
        return None
    if pairing == "quantiles" and not profiles:
        raise click.UsageError("--pairing quantiles needs --profiles (the models' load costs)")
    costs = None
    if profiles:
        try:
            costs = load_profiles(profiles)
        except ProfileError as exc:
            raise click.BadParameter(str(exc), param_hint="--profiles") from None
    names = [m for m in models.split(",") if m] if models else sorted(costs or {})
    if costs is not None:
        missing = [m for m in names if m not in costs]
        if missing:
            raise click.BadParameter(
                f"not in {profiles}: {', '.join(missing)}", param_hint="--models"
            )
    w = [float(x) for x in weights.split(",")] if weights else None

    def run(totals):
        try:
            return pair(
                totals,
                names,
                pairing,
                weights=w,
                profiles=costs,
                cost=cost,
                reverse=reverse,
                seed=seed,
            )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None

    return run


@trace_group.command("workload")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="Workload file (.csv or .csv.gz)."
)
@click.option(
    "--format",
    "trace_format",
    type=click.Choice(["2019", "2021"]),
    default="2019",
    show_default=True,
)
@click.option(
    "--triggers",
    type=click.Choice(["http", "all"]),
    default=None,
    help="2019 only [default: http].",
)
@click.option("--days", type=float, help="Window length in days (sets --minutes).")
@click.option("--start-minute", type=int, default=0, show_default=True)
@click.option("--minutes", type=int, help="Window length in minutes.")
@click.option(
    "--max-functions", type=int, help="Stop after this many distinct functions (row order)."
)
@click.option(
    "--max-invocations", type=int, help="Stop reading once this many invocations are read."
)
@click.option(
    "--stop-early",
    is_flag=True,
    help="End the window at the first whole hour after which more than --min-uniq-funcs "
    "functions or --min-uniq-invocations invocations have been seen (the seed's).",
)
@click.option("--min-uniq-funcs", type=click.IntRange(min=0), help="--stop-early [default: 1000].")
@click.option(
    "--min-uniq-invocations",
    type=click.IntRange(min=0),
    help="--stop-early, counted after --downsample [default: 10000].",
)
@click.option("--min-quantile", type=float, default=0.0, show_default=True)
@click.option("--max-quantile", type=float, default=1.0, show_default=True)
@click.option("--drop-one-hit", is_flag=True, help="Drop functions invoked only once.")
@click.option(
    "--make-representative",
    is_flag=True,
    help="FaasCache's representative sample: a few functions from each popularity quantile.",
)
@click.option(
    "--num-representative-quantiles",
    type=click.IntRange(min=1),
    help="--make-representative [default: 400].",
)
@click.option(
    "--num-from-each-quantile",
    type=click.IntRange(min=1),
    help="--make-representative [default: 1].",
)
@click.option(
    "--spread",
    type=click.Choice(SPREADS),
    default="even",
    show_default=True,
    help="2019: even = all of a minute's invocations at equal gaps, dealt to functions at random "
    "(the seed's); aligned = each function's own at equal gaps from the minute's start (bursts); "
    "poisson = random offsets.",
)
@click.option(
    "--downsample", type=float, default=1.0, show_default=True, help="Keep 1/factor of requests."
)
@click.option(
    "--qpm",
    type=click.FloatRange(min=0, min_open=True),
    help="Resample to qpm x window minutes requests, drawn with replacement (the seed's).",
)
@click.option("--speedup", type=float, default=1.0, show_default=True, help="Divide times by this.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--skip-bad-rows", is_flag=True, help="Skip and count malformed rows instead of stopping."
)
@pairing_options
@click.option(
    "--distinct-models",
    is_flag=True,
    help="Each function its own model model_<rank> with the costs of its paired model "
    "(the seed's default; simulator only). Needs --profiles and --model-json.",
)
@click.option(
    "--model-json",
    type=click.Path(dir_okay=False),
    help="Write the profiles of the workload's models here (for brulee simulate --profiles).",
)
@click.option(
    "--scale-runtime",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Multiply exec times in --model-json by this (the seed's, e.g. to mimic a GPU).",
)
def workload_command(files, out, trace_format, triggers, days, start_minute, minutes, **kw) -> None:
    """Turn Azure trace FILES (2019 dNN day files in order, or the 2021 file) into a workload."""
    from loadgen.azure import TraceError
    from loadgen.pairing import write_model_json
    from loadgen.pipeline import PipelineOptions, build_workload

    if triggers == "http" and trace_format == "2021":
        raise click.UsageError("--triggers: the 2021 trace has no trigger column")
    if days is not None:
        minutes = int(round(days * 1440))
    _only_with(kw, "stop_early", {"min_uniq_funcs": 1000, "min_uniq_invocations": 10000})
    _only_with(
        kw,
        "make_representative",
        {"num_representative_quantiles": 400, "num_from_each_quantile": 1},
    )
    distinct, model_json, scale = (
        kw.pop(k) for k in ("distinct_models", "model_json", "scale_runtime")
    )
    profiles = kw["profiles"]
    if (distinct or model_json) and not profiles:
        raise click.UsageError("--distinct-models and --model-json need --profiles (the models)")
    if (distinct or scale != 1.0) and not model_json:
        raise click.UsageError(
            "--distinct-models and --scale-runtime only act on --model-json: give it"
        )
    run_pairing = make_pairing(
        kw.pop("models"),
        kw.pop("profiles"),
        kw.pop("pairing"),
        kw.pop("weights"),
        kw.pop("cost"),
        kw.pop("reverse"),
        kw["seed"],
    )
    used: dict[str, str] = {}  # model in the workload -> profile record it copies

    def paired(totals):
        mapping = run_pairing(totals)
        if distinct:
            mapping, copies = distinct_models(totals, mapping)
            used.update(copies)
        else:
            used.update({m: m for m in mapping.values()})
        return mapping

    opts = PipelineOptions(
        trace_format=trace_format,
        triggers=triggers or ("http" if trace_format == "2019" else "all"),
        start_minute=start_minute,
        minutes=minutes,
        **kw,
    )
    try:
        report = build_workload(files, out, opts, paired if run_pairing else None)
    except (TraceError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if report.stopped_early_at is not None:
        click.echo(f"--stop-early: window cut at minute {report.stopped_early_at}")
    click.echo(
        f"{report.rows} rows, {report.functions_seen} functions seen, "
        f"{report.functions_kept} kept, "
        f"{report.requests} requests -> {out}"
    )
    if model_json:
        n = write_model_json(model_json, profiles, used, scale)
        click.echo(f"{n} models -> {model_json}")
    if report.bad_rows.count:
        click.echo(f"skipped {report.bad_rows.count} bad rows, e.g. {report.bad_rows.examples[0]}")


def _only_with(kw: dict, flag: str, defaults: dict) -> None:
    """Fill ``defaults`` into ``kw``; an option of them given without ``--flag`` is an error."""
    for name, default in defaults.items():
        if kw[name] is None:
            kw[name] = default
        elif not kw[flag]:
            opt, need = "--" + name.replace("_", "-"), "--" + flag.replace("_", "-")
            raise click.UsageError(f"{opt} only applies with {need}")


@trace_group.command("synth")
@click.option("--functions", type=click.IntRange(min=1), required=True)
@click.option(
    "--hours", type=click.FloatRange(min=0, min_open=True), default=24.0, show_default=True
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@pairing_options
def synth_command(functions, hours, seed, out, **kw) -> None:
    """A synthetic Azure-like workload calibrated to workload.md's targets."""
    from tqdm import tqdm

    from loadgen.synth import synth_functions, synth_requests
    from loadgen.workload_file import write_workload

    run_pairing = make_pairing(
        kw["models"], kw["profiles"], kw["pairing"], kw["weights"], kw["cost"], kw["reverse"], seed
    )
    mapping = None
    if run_pairing is not None:
        plan = synth_functions(functions, hours, seed)
        mapping = run_pairing({f.name: f.count for f in plan})
    total = sum(f.count for f in synth_functions(functions, hours, seed))
    reqs = tqdm(
        synth_requests(functions, hours, seed, mapping), total=total, unit="req", disable=None
    )
    n = write_workload(out, reqs)
    click.echo(f"{n} requests from {functions} functions over {hours:g} h -> {out}")


@trace_group.command("stats")
@click.argument("workload", type=click.Path(exists=True, dir_okay=False))
def stats_command(workload) -> None:
    """Print a workload's statistics next to the calibration targets."""
    from loadgen.stats import format_stats, workload_stats
    from loadgen.workload_file import WorkloadError

    try:
        stats = workload_stats(Path(workload))
    except WorkloadError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_stats(stats))
