"""Pairing trace functions with model functions (step 5 of ``workload.md``).

``pair(totals, models, method, ...)`` returns ``{trace function: model name}``:

- ``random``: each trace function draws a model (``weights`` optional, per model);
- ``round_robin`` (the seed's): trace functions ranked by popularity (total requests, most
  first) take the models in turn, the models ranked by cost as for ``quantiles`` when profiles
  are given (else in the order given): the i-th most popular function gets model ``i mod M``;
- ``quantiles``: trace functions ranked by popularity and models by cost (``load`` = load_s, or
  ``load/exec``, most expensive first) are matched rank to rank (function at rank quantile q
  gets the model at quantile q): the most popular functions get the most expensive models;
  ``reverse`` gives them the cheapest instead (for ``round_robin`` too).

``distinct_models`` turns a pairing into the seed's default: every trace function its own model
(``model_<popularity rank>``) with the costs of the model it was paired with;
``write_model_json`` writes the profiles of a workload's models (the seed's ``--model_json``),
exec times scaled by ``scale_runtime`` (the seed's ``--scale_runtime``, e.g. to mimic a GPU).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from loadgen.profiles import ModelCost

METHODS = ("random", "round_robin", "quantiles")
COSTS = ("load", "load/exec")
EXEC_KEYS = ("avg_exec_latency", "exec_s")  # the exec times load_profiles reads


def model_cost(cost: ModelCost, by: str) -> float:
    if by == "load":
        return cost.load_s
    if by == "load/exec":
        return cost.load_s / cost.exec_s if cost.exec_s > 0 else float("inf")
    raise ValueError(f"unknown cost {by!r}: choose one of {', '.join(COSTS)}")


def rank_models(
    models: Sequence[str], profiles: Mapping[str, ModelCost], cost: str, reverse: bool
) -> list[str]:
    """``models`` by cost, most expensive first (cheapest first when ``reverse``)."""
    missing = [m for m in models if m not in profiles]
    if missing:
        raise ValueError(f"models without a profile: {', '.join(missing)}")
    ranked = sorted(models, key=lambda m: (-model_cost(profiles[m], cost), m))
    return ranked[::-1] if reverse else ranked


def pair(
    totals: Mapping[str, int],
    models: Sequence[str],
    method: str = "quantiles",
    *,
    weights: Sequence[float] | None = None,
    profiles: Mapping[str, ModelCost] | None = None,
    cost: str = "load",
    reverse: bool = False,
    seed: int = 0,
) -> dict[str, str]:
    """Map each trace function of ``totals`` (name -> total requests) to one of ``models``."""
    if not models:
        raise ValueError("no models to pair with")
    funcs = list(totals)
    if method == "random":
        p = None
        if weights is not None:
            if len(weights) != len(models) or min(weights) < 0 or sum(weights) <= 0:
                raise ValueError("weights need one non-negative value per model, not all zero")
            p = np.asarray(weights, float) / sum(weights)
        draws = np.random.default_rng(seed).choice(len(models), size=len(funcs), p=p)
        return {f: models[int(d)] for f, d in zip(funcs, draws)}
    ranked = sorted(funcs, key=lambda f: (-totals[f], f))  # most popular first
    if method == "round_robin":
        if profiles is not None:
            models = rank_models(models, profiles, cost, reverse)
        elif reverse:
            models = list(reversed(models))
        return {f: models[i % len(models)] for i, f in enumerate(ranked)}
    if method == "quantiles":
        if profiles is None:
            raise ValueError("quantiles pairing needs a profile file (model costs)")
        ranked_models = rank_models(models, profiles, cost, reverse)
        n, m = len(ranked), len(ranked_models)
        return {f: ranked_models[min(m - 1, i * m // n)] for i, f in enumerate(ranked)}
    raise ValueError(f"unknown pairing {method!r}: choose one of {', '.join(METHODS)}")


def distinct_models(
    totals: Mapping[str, int], mapping: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """The seed's default (without ``--keep_real_models``): trace function at popularity rank
    i (most requests first, ties by name) becomes its own model ``model_<i>`` (zero-padded),
    a copy of the model ``mapping`` paired it with. Returns ({function: its model},
    {its model: the model copied})."""
    ranked = sorted(totals, key=lambda f: (-totals[f], f))
    width = len(str(max(len(ranked) - 1, 0)))
    own = {f: f"model_{i:0{width}d}" for i, f in enumerate(ranked)}
    return own, {own[f]: mapping[f] for f in ranked}


def write_model_json(
    path: str | os.PathLike,
    profile_path: str | os.PathLike,
    models: Mapping[str, str],
    scale_runtime: float = 1.0,
) -> int:
    """Write the profile records of ``models`` ({name: model of ``profile_path`` it copies})
    as a list (the seed's models.json, readable by ``loadgen.profiles.load_profiles``).

    A record is the copied model's record renamed, with ``copy_of`` naming the original when
    the name differs (so ``--sizes`` keyed by the original still applies), and its exec times
    (``avg_exec_latency``, ``exec_s``) multiplied by ``scale_runtime``. Returns the count."""
    if not scale_runtime > 0:
        raise ValueError(f"--scale-runtime must be > 0, got {scale_runtime}")
    doc = json.loads(Path(profile_path).read_text())
    records = doc if isinstance(doc, list) else doc["models"]
    by_name = {str(r["name"]): r for r in records}
    out = []
    for name in sorted(models):
        rec = {**by_name[models[name]], "name": name}
        if name != models[name]:
            rec["copy_of"] = models[name]
        for key in EXEC_KEYS:
            if rec.get(key) is not None:
                rec[key] = float(rec[key]) * scale_runtime
        if scale_runtime != 1.0:
            rec["scale_runtime"] = scale_runtime
        out.append(rec)
    Path(path).write_text(json.dumps(out, indent=1) + "\n")
    return len(out)
