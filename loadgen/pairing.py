"""Pairing trace functions with model functions (step 5 of ``workload.md``).

``pair(totals, models, method, ...)`` returns ``{trace function: model name}``:

- ``random``: each trace function draws a model (``weights`` optional, per model);
- ``round_robin``: models in turn, in the order the trace functions are given;
- ``quantiles``: trace functions ranked by popularity (total requests, most first) and models by
  cost (``load`` = load_s, or ``load/exec``, most expensive first) are matched rank to rank
  (function at rank quantile q gets the model at quantile q): the most popular functions get the
  most expensive models; ``reverse`` gives them the cheapest instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from loadgen.profiles import ModelCost

METHODS = ("random", "round_robin", "quantiles")
COSTS = ("load", "load/exec")


def model_cost(cost: ModelCost, by: str) -> float:
    if by == "load":
        return cost.load_s
    if by == "load/exec":
        return cost.load_s / cost.exec_s if cost.exec_s > 0 else float("inf")
    raise ValueError(f"unknown cost {by!r}: choose one of {', '.join(COSTS)}")


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
    if method == "round_robin":
        return {f: models[i % len(models)] for i, f in enumerate(funcs)}
    if method == "quantiles":
        if profiles is None:
            raise ValueError("quantiles pairing needs a profile file (model costs)")
        missing = [m for m in models if m not in profiles]
        if missing:
            raise ValueError(f"models without a profile: {', '.join(missing)}")
        ranked_models = sorted(models, key=lambda m: (-model_cost(profiles[m], cost), m))
        if reverse:
            ranked_models.reverse()
        ranked = sorted(funcs, key=lambda f: (-totals[f], f))
        n, m = len(ranked), len(ranked_models)
        return {f: ranked_models[min(m - 1, i * m // n)] for i, f in enumerate(ranked)}
    raise ValueError(f"unknown pairing {method!r}: choose one of {', '.join(METHODS)}")
