"""The decision: where a request goes and what is evicted to make room for it.

What placement decides about (:class:`ModelFacts`, the :class:`Wait` of a request that may
wait), what it decides (:class:`Decision`), the ways placing fails, and the rule itself
(:func:`decide`). The rule is a function of the state :func:`agent.cachestate.read_state`
read; it writes nothing, so :mod:`agent.placement` can run it inside its optimistic
transaction and commit what it chose — or retake it when the state changed under it.

In order: a copy held by a worker that is not backed up is a hit; else, on every device the
model fits, the device's policy (the simulator's code) chooses victims among unpinned copies
(first sparing copies with requests queued, then draining them) and the miss goes where it
costs least (:func:`_cheapest`); nothing fits now: a ticket for the admission queue.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent import evictions
from agent.cachestate import CacheState, policy_entries, used_bytes, victims_or_drains
from agent.hit import SCALE_OUT_QUEUE
from agent.keys import slot, unslot
from agent.lifecycle import DRAINING
from agent.membership import PlacementError, Worker
from agent.policies import Entry, EvictionPolicy

if TYPE_CHECKING:
    from agent.placement import Placement


class NoWorkers(PlacementError):
    status = 503


class ModelTooLarge(PlacementError):
    status = 507


class FunctionFailed(PlacementError):
    """The function's model failed to load (the reason is in the ``failed`` hash)."""

    status = 503


class MemoryBusy(PlacementError):
    """The memory is held by executing or loading copies and the caller cannot wait."""

    status = 503


class QueueFull(PlacementError):
    """The device's admission queue holds ``--max-waiting`` requests already: 429."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RegistryChanged(Exception):
    """The function registry changed since the caller read it: read it again and retry."""


@dataclass(frozen=True)
class ModelFacts:
    """What placement needs to know about the model a request wants."""

    name: str
    bytes: int
    load_s: float
    exec_s: float
    variants: tuple = ()  # agent.variants.Variant, best first (this model's first), if any


@dataclass
class Decision:
    """Where a request goes. ``ticket``: it waits for memory (then nothing else is set)."""

    device: str
    worker: str = ""
    queue: str = ""
    hit: bool = False
    evicted: list[tuple[str, str]] = field(default_factory=list)  # (model, worker)
    ticket: str | None = None
    position: int = 0  # in the admission queue, 0 = head
    arrived: float = 0.0  # when it joined the admission queue
    drain: list[str] = field(default_factory=list)  # copies to drain while it waits
    why: dict[str, Any] | None = None  # the eviction decision, for the log (agent.evictions)
    served: ModelFacts | None = None  # a smaller variant placed instead (agent.variants)

    @property
    def wait_for(self) -> list[str]:
        """Slots the target must see released before it loads (victims anywhere)."""
        return [slot(m, w) for m, w in self.evicted]


@dataclass
class Wait:
    """How a request that may wait for memory waits: its ticket's id, its description and
    payload (see :mod:`agent.waiting`)."""

    id: str
    head: dict[str, Any]
    payload: bytes = b""
    deadline: float = float("inf")


def _cheapest(option: tuple) -> tuple:
    """Where a miss costs least, across devices: first where it evicts the fewest bytes (0:
    it fits in free memory; else the bytes of the victims the device's policy chose), then
    where the most memory stays free (misses spread over the fleet instead of filling one
    device while others idle), then the least backed-up worker, then the device's name."""
    return option[:4]


def _hit(holder: tuple[str, str], alive: dict[str, Worker]) -> Decision:
    device, worker = holder
    return Decision(device, worker, alive[worker].queue, hit=True)


def decide(
    placement: Placement,
    model: ModelFacts,
    alive: dict[str, Worker],
    devices: list[str],
    now: float,
    state: CacheState,
    admitting: bool,
    only_worker: str | None,
    hits_only: bool = False,
) -> tuple[Decision, EvictionPolicy | None]:
    """Where ``model`` goes, given the ``state`` read (the arguments are
    :meth:`agent.placement.Placement.place`'s), and the policy that chose the victims (None
    for a hit or a ticket). A function with variants goes through
    :func:`agent.variant_placement.decide`, which calls this for the variant it picks."""
    if model.variants and not (hits_only or admitting) and only_worker is None:
        from agent import variant_placement  # the memory-adaptive rule (agent.variants)

        return variant_placement.decide(
            placement, model, alive, devices, now, state, admitting, only_worker
        )
    backlog = state.backlog
    copies = [
        (d, w, doc["state"])
        for d, es in state.entries.items()
        for m, w, doc in es
        if m == model.name and (only_worker is None or w == only_worker)
    ]
    holders = [(d, w) for d, w, st in copies if st != DRAINING]  # draining: no new requests
    if hits_only and not holders:
        return Decision(copies[0][0] if copies else devices[0], ticket=""), None
    best_hit = None
    if holders:
        best_hit = min(holders, key=lambda dw: (backlog[dw[1]], dw[1]))
        if backlog[best_hit[1]] < SCALE_OUT_QUEUE or only_worker is not None:
            return _hit(best_hit, alive), None
    fits = [d for d in devices if model.bytes <= state.caps[d]]
    if not fits:
        caps = ", ".join(f"{d}: {state.caps[d]} bytes" for d in devices)
        raise ModelTooLarge(
            f"model {model.name!r} needs {model.bytes} bytes, more than "
            f"the whole memory cap ({caps})"
        )
    if best_hit is None and not admitting and any(state.waiting[d] for d in fits):
        # others wait for memory: no overtaking (agent.admission)
        device = next(d for d in fits if state.waiting[d])
        return Decision(device, ticket=""), None
    holding = {w for _, w, _ in copies}  # one copy per worker (its slot), draining or not
    # (bytes evicted, bytes short of free memory, backlog, device, worker, victims, policy):
    # see _cheapest
    options = []
    compared = {}  # per device: what its policy compared (for the eviction log)
    drains: dict[str, list[str]] = {}  # per device: copies to drain so that it fits
    for device in fits:
        candidates = [
            w
            for w in alive.values()
            if w.device == device
            and w.name not in holding
            and (only_worker is None or w.name == only_worker)
        ]
        if not candidates:
            continue
        # the least busy worker; among idle ones, the one holding the fewest copies, so
        # that different models land on different workers and run in parallel (by name
        # alone, every copy of an idle device went to the same worker)
        held = Counter(w for _, w, _ in state.entries[device])
        target = min(candidates, key=lambda w: (backlog[w.name], held[w.name], w.name))
        need = model.bytes - (state.caps[device] - used_bytes(state.entries[device]))
        rank = (need, backlog[target.name], device)
        if best_hit is not None:  # a second copy only into free memory
            if need <= 0:
                options.append((0, *rank, target, [], None))
            continue
        policy = placement.policy(state.clocks[device])
        facts = policy_entries(placement.r, device, state.entries[device], state.pins[device])
        incoming = Entry(
            model.name,
            model.bytes,
            model.load_s,
            model.exec_s,
            inserted_at=now,
            last_used=now,
            pinned=True,
        )
        chosen, drain = victims_or_drains(
            policy, facts, state.queued[device], incoming, need, state.requests, now
        )
        if chosen is None:
            drains[device] = drain
            continue
        by_id = {id(e): s for e, s in facts}
        victims = [(e, by_id[id(e)]) for e in chosen]
        compared[device] = (facts, incoming, need)
        options.append((sum(e.bytes for e in chosen), *rank, target, victims, policy))
    if best_hit is not None and not options:
        return _hit(best_hit, alive), None
    if not options:
        device = next((d for d in fits if drains.get(d)), fits[0])
        return Decision(device, ticket="", drain=drains.get(device, [])), None
    *_, device, target, victims, policy = min(options, key=_cheapest)
    decision = Decision(device, target.name, target.queue, hit=False)
    if victims:
        facts, incoming, need = compared[device]
        arrived = state.model_requests + 1  # counting this request
        chosen = [e for e, _ in victims]
        decision.why = evictions.explain(
            policy, facts, incoming, chosen, need, state.requests, now, arrived
        )
    for entry, s in victims:
        decision.evicted.append(unslot(s))
        policy.on_evict(entry, now)
    return decision, policy
