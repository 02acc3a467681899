"""The workloads ``brulee testbed`` replays, and the model zoo they need.

Three sources:

- an Azure 2019 trace (by default the bundled real rows), paired onto the zoo's models by load
  cost (:func:`trace_workload`);
- any workload file (:func:`check_workload`: every function it names must be a model of the
  zoo, with a profile);
- a synthetic Azure-like workload of N functions, each with a model of its own
  (:func:`synth_workload`), from a *variant zoo*: a few architectures built N/len(archs) times
  with different weights (``brulee models build --variants``), so that no two functions share a
  file and the cache really holds N distinct models (:func:`ensure_variant_zoo`).

Why the synthetic one: the nine bundled functions do not separate the policies — their two
busiest get the two ResNets, which cannot share the cap, and every policy thrashes alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import click
import numpy as np

from loadgen.workload_file import Request, iter_workload, write_workload

DAY_S = 86400.0
# small to mid-sized edge CNNs, from ~25 KB to ~17 MB of weights: loads from milliseconds to
# a few hundred, so a cost-aware policy has something to weigh; each builds in under a minute
VARIANT_ARCHS = (
    "tiny-cnn",
    "mobilenet-micro",
    "mobilenetv2-mini",
    "mobilenetv3small-mini",
    "mobilenet",
    "mobilenetv3small",
)


def trace_workload(
    trace: str, profiles: str, models: list[str], minutes: float, seed: int, out: Path
) -> Path:
    """The trace's first day, paired onto ``models`` by load cost (the most invoked functions get
    the costliest models, as in the seed), compressed into ``minutes``."""
    from loadgen.pairing import pair
    from loadgen.pipeline import PipelineOptions, build_workload
    from loadgen.profiles import load_profiles

    costs = load_profiles(profiles)
    # Poisson spreading: "aligned" would start every function's single invocation of a minute
    # at that minute's first instant, a synchronized burst the real trace does not have (and
    # whose arrival order over HTTP, unlike in the simulator, is left to chance); the seed's
    # "even" has no such burst either, but the recorded testbed runs used Poisson
    opts = PipelineOptions(
        triggers="all",
        minutes=1440,
        spread="poisson",
        speedup=1440 / minutes,
        seed=seed,
        progress=False,
    )
    build_workload(
        [trace],
        out,
        opts,
        lambda totals: pair(totals, models, "quantiles", profiles=costs, cost="load", seed=seed),
    )
    return out


def check_workload(workload: Path, catalog: dict, profiled: dict, models: str,
                   profiles: str) -> None:  # fmt: skip
    """Refuse a workload naming models the zoo lacks (or that have no profile), naming them."""
    from loadgen.workload_file import WorkloadError

    try:
        used = sorted({req.function for req in iter_workload(workload)})
    except (WorkloadError, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="--workload") from None
    if not used:
        raise click.BadParameter(f"{workload} has no requests", param_hint="--workload")
    for where, known, fix in (
        (f"{models}/catalog.json", catalog, f"build them with `brulee models build --out {models}`"
         " or point --models at the zoo that has them"),
        (profiles, profiled, f"run `brulee models profile --models {models}`"),
    ):  # fmt: skip
        missing = [m for m in used if m not in known]
        if missing:
            shown = ", ".join(missing[:10]) + (
                f" (and {len(missing) - 10} more)" * (len(missing) > 10)
            )
            raise click.BadParameter(
                f"{workload} names {len(missing)} model(s) that are not in {where}: {shown}; {fix}",
                param_hint="--workload",
            )


def variant_specs(archs: Sequence[str], n: int) -> list:
    """The ``n`` models (build specs) of a variant zoo a synthetic workload uses: variant 0 of
    every architecture, then variant 1 of every one, ... (so every architecture is represented
    and none is built more than needed)."""
    from models.build import plan
    from models.zoo import UnknownName, resolve

    try:
        specs = plan(resolve(names=list(archs)), variants=math.ceil(n / len(archs)))
    except (UnknownName, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--archs") from None
    return sorted(specs, key=lambda s: s.variant)[:n]


def variant_names(archs: Sequence[str], n: int) -> list[str]:
    return [s.name for s in variant_specs(archs, n)]


def ensure_variant_zoo(models_dir: Path, n: int, archs: Sequence[str], echo=click.echo) -> Path:
    """Build (once: the builder skips what exists) the :func:`variant_specs` into
    ``models_dir``, and profile the zoo if its profile lacks any of them; returns the profile's
    path."""
    from models.build import NotDelegated, build
    from models.profile import profile_dir, read_profiles

    specs = variant_specs(archs, n)
    missing = [s for s in specs if not (models_dir / f"{s.name}.tflite").exists()]
    if missing:
        echo(f"building {len(missing)} model(s) of the variant zoo in {models_dir} (once)")
    try:
        for _ in build(specs, models_dir, progress=True):
            pass
    except NotDelegated as exc:
        raise click.ClickException(f"building the variant zoo: {exc}") from None
    profiles = models_dir / "profiles.json"
    names = {s.name for s in specs}
    if not profiles.exists() or names - set(read_profiles(profiles)):
        echo(f"profiling the zoo's {len(list(models_dir.glob('*.tflite')))} models (once)")
        _doc, failures = profile_dir(models_dir, profiles, runs=5)
        if failures:
            raise click.ClickException(
                "profiling failed for " + "; ".join(f"{m}: {why}" for m, why in failures)
            )
    return profiles


def clip_ceiling(counts: Sequence[int], budget: int) -> float:
    """The largest per-function request count ``c`` with ``sum(min(count, c)) <= budget``
    (infinity when the whole day fits)."""
    if sum(counts) <= budget:
        return math.inf
    lo, hi = 0.0, float(max(counts))
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sum(min(c, mid) for c in counts) <= budget else (lo, mid)
    return lo


def synth_workload(
    models: list[str],
    profiles: str,
    minutes: float,
    rate: float,
    seed: int,
    out: Path,
) -> Path:
    """A synthetic Azure-like day of ``len(models)`` functions, each paired with a model of its
    own by load cost (quantiles: the most invoked function gets the costliest model), compressed
    into ``minutes`` at about ``rate`` requests a second.

    A whole day of even 50 functions is ~300,000 requests, far more than one device serves in a
    few minutes; thinning every function alike would leave only the dozen busiest (the rest,
    invoked a few times a day, vanish), which fit in any cap. So only the busiest are thinned:
    each function keeps at most ``c`` requests of its day (each kept with probability
    ``c / count``), ``c`` chosen so the total is ``rate × minutes``; the long tail of rarely
    invoked functions — what pushes the popular ones out of memory — stays as it is."""
    from tqdm import tqdm

    from loadgen.pairing import pair
    from loadgen.profiles import load_profiles
    from loadgen.synth import synth_functions, synth_requests

    plan = synth_functions(len(models), 24.0, seed)
    counts = {f.name: f.count for f in plan}
    mapping = pair(counts, models, "quantiles", profiles=load_profiles(profiles), seed=seed)
    ceiling = clip_ceiling(list(counts.values()), int(rate * minutes * 60))
    keep = {name: min(1.0, ceiling / c) if c else 1.0 for name, c in counts.items()}
    squeeze = minutes * 60 / DAY_S
    rng = np.random.default_rng(seed + 1)

    def kept() -> Iterator[Request]:
        day = synth_requests(len(models), 24.0, seed, mapping)
        bar = tqdm(day, total=sum(counts.values()), unit="req", desc="synthetic day", disable=None)
        for req in bar:
            if rng.random() < keep[req.source]:
                yield req._replace(time=req.time * squeeze)

    write_workload(out, kept())
    return out


def working_set_bytes(workload: Path, profiles: str) -> tuple[int, dict[str, int]]:
    """Total loaded bytes of the distinct models the workload uses (its working set), and each
    one's."""
    from models.profile import read_profiles

    records = read_profiles(profiles)
    used = {req.function for req in iter_workload(workload)}
    sizes = {m: int(records[m]["loaded_bytes"]) for m in sorted(used)}
    return sum(sizes.values()), sizes
