"""Memory-adaptive variants (Gilman et al., DIDL'19): when memory is short, serve a variant of
a function's model that needs less of it (float16, full-integer int8) instead of evicting for
the best one — by the rule of ``docs/spec/policies.md`` ("Memory-adaptive variants").

This module is the rule, and nothing else decides it: the agent's placement
(:func:`agent.variant_placement.decide`) and the simulator (``loadgen.sim.placement``) both call
:func:`choose` and :func:`upgrade_target`. It imports nothing of Redis, so the simulator runs
it as it is.

The rule, for a request of a function whose variants are ``v0`` (its model, the best) to
``vn``, best first, each with bytes, load seconds ``L``, exec seconds ``x`` and accuracy ``a``
(a fraction):

1. ``v0`` held (not draining): it serves (the ordinary warm hit).
2. Else the candidate ``vk`` is the best variant held, if any (it serves warm; when ``v0``
   fits in the free memory it serves while the upgrade loads ``v0``), else the best variant
   that fits in the free memory; if ``v0`` fits in the free memory and nothing is held, or
   there is no candidate, ``v0`` (as without variants) — unless ``v0`` is larger than the
   cap: then the best variant that fits the cap, evicting for it as for any miss.
3. If evicting for ``v0`` is impossible now (its memory is pinned, or ``v0`` is larger than
   the cap), ``vk``. Otherwise, with ``E`` the copies the eviction policy would evict for
   ``v0`` (a held ``vk`` among them, maybe), serve ``vk`` iff

       n_f * ((a0 - ak) * L0 + max(0, xk - x0))  <=  sum over e in E of n_e * L_e

   where ``n`` counts requests (the function's over all its variants). The right side is
   CremeBrulee's popularity x miss cost of the victims (its ``1 / (1 + R)`` cancels): the
   reload time their next requests would pay. The left side is what the function's requests
   pay for the variant: its extra execution time, and its wrong answers priced at a reload
   of ``v0`` each. As the function's requests grow, a held variant gives way to ``v0``.

Upgrades (:func:`upgrade_target`): when free memory fits a better variant than the best one
held, it is loaded in the background (the keep-alive loop), never evicting for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Variant:
    """One variant of a function's model: what placement accounts it with."""

    name: str
    bytes: int
    load_s: float
    exec_s: float
    accuracy: float | None = None  # a fraction; None: not measured (then like the best)
    file: str = ""


class Victim(Protocol):
    requests: int
    load_s: float


def _accuracy(v: Variant, best: Variant) -> float:
    if v.accuracy is not None:
        return v.accuracy
    return best.accuracy if best.accuracy is not None else 1.0


def accuracy_lost(best: Variant, candidate: Variant) -> float:
    """``a0 - ak`` (a fraction, at least 0): what a request served by ``candidate`` loses."""
    return max(_accuracy(best, best) - _accuracy(candidate, best), 0.0)


def variant_cost(best: Variant, candidate: Variant, function_requests: int) -> float:
    """The rule's left side: ``n_f * ((a0 - ak) * L0 + max(0, xk - x0))``."""
    lost = accuracy_lost(best, candidate)
    slower = max(candidate.exec_s - best.exec_s, 0.0)
    return function_requests * (lost * best.load_s + slower)


def eviction_cost(victims: Iterable[Victim]) -> float:
    """The rule's right side: ``sum(n_e * L_e)`` over the copies evicting for ``v0`` takes."""
    return sum(v.requests * v.load_s for v in victims)


def prefers_variant(
    best: Variant, candidate: Variant, function_requests: int, victims: Sequence[Victim] | None
) -> bool:
    """Whether ``candidate`` (which fits in free memory) serves instead of evicting
    ``victims`` for ``best``; ``victims`` None: evicting for ``best`` is impossible now."""
    if victims is None:
        return True
    return variant_cost(best, candidate, function_requests) <= eviction_cost(victims)


def choose(
    variants: Sequence[Variant],
    held: Iterable[str],
    free: int,
    function_requests: int,
    victims: Callable[[], Sequence[Victim] | None],
    cap: int | None = None,
) -> Variant:
    """The variant that serves a request (the module's rule). ``variants``: best first, only
    those allowed by the function's accuracy floor; ``held``: names of variants cached and not
    draining; ``free``: the most free bytes on a device that could hold it;
    ``victims()``: what evicting for ``variants[0]`` would evict (None: impossible now),
    asked only when the answer depends on it; ``cap``: the largest cap of those devices
    (None: unknown)."""
    held = set(held)
    best = variants[0]
    if best.name in held:
        return best
    candidate = next((v for v in variants[1:] if v.name in held), None)
    if candidate is not None and best.bytes <= free:
        return candidate  # warm now; the background upgrade loads the best
    if best.bytes <= free:
        return best
    if candidate is None:
        candidate = next((v for v in variants[1:] if v.bytes <= free), None)
    if candidate is None:
        if cap is not None and best.bytes > cap:  # the best can never be placed: the best
            return next((v for v in variants[1:] if v.bytes <= cap), best)  # that can, evicting
        return best
    return candidate if prefers_variant(best, candidate, function_requests, victims()) else best


def upgrade_target(variants: Sequence[Variant], held: Iterable[str], free: int) -> Variant | None:
    """The variant to load in the background: the best one better than every variant held
    that fits in ``free`` (never evicting); None when no variant is held (nothing was served
    smaller) or none fits."""
    held = set(held)
    rank = next((i for i, v in enumerate(variants) if v.name in held), None)
    if not rank:  # None: nothing held; 0: the best is held
        return None
    return next((v for v in variants[:rank] if v.bytes <= free), None)


# -- declarations (functions/stack.yml) -------------------------------------------------------


def _fraction(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value <= 1


def declared(
    spec: dict[str, Any],
    model: str,
    catalog: dict[str, dict],
    profiles: dict[str, dict],
    where: str = "the catalog",
) -> tuple[list[dict[str, Any]], float | None]:
    """A stack entry's ``variants`` (model names, or ``{model, accuracy}``; best first, the
    function's model first) and ``min_accuracy``, checked: ``[{model, file, accuracy}]`` of
    the variants the floor allows, and the floor. Accuracy: declared, else the profile's
    ``digits_accuracy``. ValueError naming the problem (``where``: what ``catalog`` is, for
    it; the simulator's ``--variants`` file checks against its profiles)."""
    raw = spec.get("variants")
    floor = spec.get("min_accuracy")
    if raw is None:
        if floor is not None:
            raise ValueError("min_accuracy needs variants: (the models to choose between)")
        return [], None
    if not isinstance(raw, list) or not raw:
        raise ValueError("variants must be a non-empty list of model names, best first")
    if floor is not None and not _fraction(floor):
        raise ValueError(f"min_accuracy must be a fraction between 0 and 1, got {floor!r}")
    out = []
    for item in raw:
        item = {"model": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or not isinstance(item.get("model"), str):
            raise ValueError(f"a variant must be a model name or {{model: NAME}}, got {item!r}")
        if set(item) - {"model", "accuracy"}:
            raise ValueError(f"variant {item['model']!r}: unknown key(s) {sorted(set(item))}")
        name = item["model"]
        if name not in catalog:
            raise ValueError(f"variant model {name!r} is not in {where} ({sorted(catalog)})")
        if "accuracy" in item and not _fraction(item["accuracy"]):
            raise ValueError(f"variant {name!r}: accuracy must be a fraction 0..1")
        accuracy = item.get("accuracy", (profiles.get(name) or {}).get("digits_accuracy"))
        out.append({"model": name, "file": catalog[name]["file"], "accuracy": accuracy})
    names = [v["model"] for v in out]
    if names[0] != model:
        raise ValueError(f"variants must start with the function's model {model!r} (best first)")
    if len(set(names)) != len(names):
        raise ValueError(f"variants list a model twice: {names}")
    if floor is None:
        return out, None
    unknown = [v["model"] for v in out if v["accuracy"] is None]
    if unknown:
        raise ValueError(
            f"min_accuracy {floor} needs every variant's accuracy; {unknown} have none "
            "(profile them with a labelled set, or declare {model: NAME, accuracy: A})"
        )
    if out[0]["accuracy"] < floor:
        best = max(v["accuracy"] for v in out)
        raise ValueError(
            f"min_accuracy {floor} is above the best variant's accuracy "
            f"({names[0]}: {out[0]['accuracy']:.4f}; highest of all: {best:.4f})"
        )
    return [v for v in out if v["accuracy"] >= floor], floor
