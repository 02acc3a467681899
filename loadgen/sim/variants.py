"""Memory-adaptive variants in the simulator: the agent's rule (:mod:`agent.variants`, the same
functions) applied to the simulated device, with either placement: on arrival (the agent's) or,
with start placement, as a worker starts the request (where that placement decides a miss;
nothing waits for memory there, and no copy is queued-pinned or draining, so the victims asked
for are exactly those the miss would evict).

A request of a model that has variants is served by the variant :func:`agent.variants.choose`
names, with the simulated cache state: variants held (not draining), the device's free bytes,
the function's requests so far and, when the answer depends on them, the victims the policy
would evict for the best variant (none when others wait for memory or its memory is pinned,
as the agent's ticket). A request admitted from the admission queue is placed as its own
model, as in the agent. Upgrades: on a request served by a smaller variant, the better one
:func:`agent.variants.upgrade_target` names is loaded into free memory in the background (the
agent's keep-alive loop does it within a second); nothing is evicted for it.

What it measures goes into the run's ``SimResult`` (``variant_served``, ``variant_rank_served``,
``variant_upgrades``, ``variant_accuracy_lost``), so ``brulee simulate --variants FILE``, a sweep
over RQ and ``benchmarks/variants_simulated.py`` read the same numbers. ``read_variants`` reads
that FILE with the stack's own checks (:func:`agent.variants.declared`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from agent import admission
from agent import variants as rule
from loadgen.profiles import ModelCost
from loadgen.sim.inputs import SimulationError

if TYPE_CHECKING:
    from loadgen.sim.engine import Simulation
    from loadgen.sim.placement import ArrivalPlacement


@dataclass
class VariantSpec:
    """Which models have variants (``of``: model -> variants, best first, itself first) and
    each variant's accuracy (a fraction; missing: as the best's)."""

    of: dict[str, list[str]]
    accuracy: dict[str, float] = field(default_factory=dict)

    def check(self, profiles: Mapping[str, ModelCost]) -> None:
        for model, names in self.of.items():
            if not names or names[0] != model:
                raise SimulationError(f"variants of {model!r} must start with {model!r}")
            missing = [n for n in names if n not in profiles or not profiles[n].bytes]
            if missing:
                raise SimulationError(f"variant(s) of {model!r} without a sized profile: {missing}")

    def extra_names(self, names: Sequence[str]) -> list[str]:
        """Variant models the workload does not request itself (the device needs them too)."""
        known = set(names)
        extra = [v for vs in self.of.values() for v in vs if v not in known]
        return list(dict.fromkeys(extra))


ENTRY_KEYS = {"variants", "min_accuracy"}


def read_variants(path: str, profiles: Mapping[str, ModelCost]) -> VariantSpec:
    """``--variants FILE``: YAML (or JSON) mapping each workload model to its variants, best
    first, itself first, with the syntax of a ``functions/stack.yml`` entry — either the list
    (``m: [m, m-int8]``) or ``m: {variants: [...], min_accuracy: A}``; a variant is a model
    name or ``{model: NAME, accuracy: A}`` (accuracy as a fraction; the simulator has no
    labelled set, so a floor needs them declared). Checked by :func:`agent.variants.declared`
    against ``profiles`` (the same errors as the stack's), then sized; SimulationError naming
    the file and the model."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SimulationError(f"variants file {path}: {exc}") from None
    if not isinstance(doc, dict) or not doc:
        raise SimulationError(
            f"variants file {path}: expected a mapping {{model: [variants, best first]}}"
        )
    catalog = {name: {"file": ""} for name in profiles}
    of, accuracy = {}, {}
    for model, entry in doc.items():
        entry = {"variants": entry} if isinstance(entry, list) else entry
        try:
            if not isinstance(entry, dict):
                raise ValueError(f"expected a list of variants or a mapping, got {entry!r}")
            if set(entry) - ENTRY_KEYS:
                raise ValueError(f"unknown key(s) {sorted(set(entry) - ENTRY_KEYS)}")
            if "variants" not in entry:
                raise ValueError("no variants: (the models to choose between, best first)")
            allowed, _ = rule.declared(entry, str(model), catalog, {}, "the profiles")
        except ValueError as exc:
            raise SimulationError(f"variants file {path}: {model!r}: {exc}") from None
        of[str(model)] = [v["model"] for v in allowed]
        accuracy.update({v["model"]: v["accuracy"] for v in allowed if v["accuracy"] is not None})
    spec = VariantSpec(of, accuracy)
    spec.check(profiles)
    return spec


class SimVariants:
    """The rule on the simulated device; ``served`` counts requests served by a variant other
    than the one requested (by name; by rank in ``sim.res.variant_rank_served``, the
    accuracy they lost summed in ``variant_accuracy_lost``), ``upgrades`` the background loads
    of a better variant."""

    def __init__(self, sim: Simulation, spec: VariantSpec) -> None:
        self.sim = sim
        self.of: dict[int, tuple[list[rule.Variant], list[int]]] = {}
        for model, names in spec.of.items():
            if model not in sim.index:
                continue
            idx = [sim.index[n] for n in names]
            vs = [
                rule.Variant(
                    n, sim.dev.size[i], sim.cost[i].load_s, sim.cost[i].exec_s, spec.accuracy.get(n)
                )
                for n, i in zip(names, idx)
            ]
            self.of[sim.index[model]] = (vs, idx)
        self.res = res = sim.res
        res.variant_rank_served = [0] * max(len(names) for names in spec.of.values())
        self.served: Counter[str] = Counter()

    @property
    def upgrades(self) -> int:
        return self.res.variant_upgrades

    def pick(self, place: ArrivalPlacement, t: float, m: int) -> int:
        """The model (index) that serves this arrival of ``m``."""
        got = self.of.get(m)
        if got is None:
            return m
        vs, idx = got
        sim, dev = self.sim, self.sim.dev
        held = {v.name for v, i in zip(vs, idx) if i in dev.cached and not dev.draining[i]}

        def victims():
            if dev.size[m] > dev.cap_bytes or dev.draining[m]:
                return None
            if admission.must_wait(len(place.waiting)):
                return None  # the agent's ticket: others wait for memory
            entries = dev.refresh_pins(t)
            for e in entries:  # as the agent: copies with requests queued are not evicted
                e.pinned = e.pinned or dev.queued[sim.index[e.name]] > 0
            incoming = dev.new_entry(m, sim.requests[m], t)
            found = sim.pol.victims(entries, incoming, dev.size[m] - dev.free, sim.total, t)
            dev.refresh_pins(t)
            return found

        chosen = rule.choose(vs, held, dev.free, sim.requests[m], victims, dev.cap_bytes)
        if not place.waiting:
            self._upgrade(place, vs, held, t)
        if chosen is vs[0]:
            return m
        k = sim.index[chosen.name]
        if k not in dev.cached and admission.must_wait(len(place.waiting)):
            return m  # as the agent: it would wait, so it waits as itself
        self.served[chosen.name] += 1
        res = self.res
        res.variant_served[chosen.name] = self.served[chosen.name]
        res.variant_rank_served[vs.index(chosen)] += 1
        res.variant_accuracy_lost += rule.accuracy_lost(vs[0], chosen)
        sim.pending[m] -= 1
        sim.pending[k] += 1
        sim.requests[k] += 1
        if k in dev.cached:
            dev.cached[k].requests = sim.requests[k]
        return k

    def _upgrade(
        self, place: ArrivalPlacement, vs: list[rule.Variant], held: set[str], t: float
    ) -> None:
        sim, dev = self.sim, self.sim.dev
        target = rule.upgrade_target(vs, held, dev.free)
        if target is None:
            return
        k = sim.index[target.name]
        dev.ready_at[k] = t + sim.cost[k].load_s
        dev.insert(k, dev.new_entry(k, sim.requests[k], t), t)
        dev.holder[k] = sim.least_loaded()
        self.res.variant_upgrades += 1
        place.prewarmed(k)
