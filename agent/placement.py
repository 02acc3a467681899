"""Placement: which worker serves a request, and what is evicted to make room.

Every device's cache state lives in Redis (:mod:`agent.keys`), so any number of gateway
processes, workers and devices share it. Two ways in:

- :meth:`Placement.try_hit`, the warm-hit fast path: one Lua script (``lua/hit.lua``).
- :meth:`Placement.place`, everything else: one optimistic transaction (:mod:`agent.txn`)
  that reads the devices' copies, pins and admission queues, lets the eviction policy choose
  victims among unpinned copies (the same policy code as the simulator, built per decision
  with the device's stored GDSF clock), and commits the new copy (``loading``), the evictions
  and the work together. Concurrent misses never commit more than a device's cap.

A miss whose memory is held by pinned copies (executing or loading) — or that finds others
already waiting on the device — does not fail: it becomes a ticket in the device's admission
queue (:mod:`agent.waiting`, rule in :mod:`agent.admission`) in the same transaction.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from agent import admission, evictions, hit, waiting
from agent.cachestate import (
    ask_backlogs,
    backlogs_from,
    parse_entries,
    policy_entries,
    policy_for,
    used_bytes,
    victims_or_drains,
)
from agent.hit import ARRIVALS_KEPT, SCALE_OUT_QUEUE
from agent.keys import decode, key, slot, unslot
from agent.lifecycle import DRAINING, Copies
from agent.membership import Membership, PlacementError, Worker, parse_cap
from agent.policies import Entry, EvictionPolicy, make_policy, parse_policy_spec
from agent.scripts import Scripts
from agent.txn import transaction


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


@dataclass
class _State:
    """The cache state one placement decides on (read in one round trip)."""

    requests: int  # all requests so far (the policies' R)
    model_requests: int  # requests for the model being placed
    entries: dict[str, list[tuple[str, str, dict]]] = field(default_factory=dict)
    caps: dict[str, int] = field(default_factory=dict)
    pins: dict[str, dict[str, str]] = field(default_factory=dict)
    clocks: dict[str, float] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)
    queued: dict[str, dict[str, str]] = field(default_factory=dict)
    priority: dict[str, dict[str, str]] = field(default_factory=dict)
    backlog: dict[str, int] = field(default_factory=dict)


def move_count(client, device: str, model: str, old: str | None, new: str | None) -> None:
    """Move one request of ``model`` from the device's ``old`` outcome counter to ``new``
    (``"hit"``/``"miss"``; None: not counted there), through ``client`` (a pipeline or the
    connection)."""
    if old == new:
        return
    for outcome, step in ((old, -1), (new, 1)):
        if outcome is not None:
            client.hincrby(key("hits" if outcome == "hit" else "misses", device), model, step)


def _cheapest(option: tuple) -> tuple:
    """Where a miss costs least, across devices: first where it evicts the fewest bytes (0:
    it fits in free memory; else the bytes of the victims the device's policy chose), then
    where the most memory stays free (misses spread over the fleet instead of filling one
    device while others idle), then the least backed-up worker, then the device's name."""
    return option[:4]


class Placement:
    """The decisions (see the module's docstring); ``members`` and ``copies`` are the state
    they act on, ``max_waiting`` the admission queue's bound per device."""

    def __init__(
        self,
        conn: redis.Redis,
        policy: str = "cremebrulee",
        max_waiting: int | None = None,
        **policy_options: Any,
    ) -> None:
        if max_waiting is None:  # ``brulee up --max-waiting`` reaches its processes so
            max_waiting = int(os.environ.get("BRULEE_MAX_WAITING") or admission.DEFAULT_MAX_WAITING)
        self.r = conn
        # ``--policy`` may carry options after the name: ``lru:trim=off``
        self.policy_name, spec_options = parse_policy_spec(policy)
        self.policy_options = {**spec_options, **policy_options}
        make_policy(self.policy_name, **self.policy_options)  # a bad one fails here, not later
        self.max_waiting = max_waiting
        self.scripts = Scripts(conn)
        self.copies = Copies(conn, self.scripts)
        self.members = Membership(conn, self.copies)
        self._hit_view: tuple[bytes, list[Worker], list[str]] | None = None
        self._deciding = threading.Lock()

    def uncount(self, device: str, req: dict[str, Any]) -> None:
        """A request placed again that could not be (it gets an error instead): it no longer
        counts as the hit or miss it was counted as."""
        move_count(self.r, device, req["model"], req.get("recount"), None)

    def policy(self, clock: float = 0.0) -> EvictionPolicy:
        return policy_for(self.policy_name, self.policy_options, clock)

    @functools.cached_property
    def rescores_hits(self) -> bool:
        """Whether a hit must recompute the copy's priority (GDSF), known from the policy's
        class once: a hit builds no policy object (``make_policy``, 0.1 ms each)."""
        return type(self.policy()).on_hit is not EvictionPolicy.on_hit

    # -- the warm-hit fast path --------------------------------------------------------------

    def try_hit(
        self,
        model: str,
        message: bytes,
        now: float | None = None,
        function: str = "",
        registry_version: bytes | None = None,
    ) -> Decision | None:
        """The warm-hit fast path (:func:`agent.hit.try_hit`): None when it is not a plain
        hit; then call :meth:`place`."""
        return hit.try_hit(self, model, message, now, function, registry_version)

    # -- the transaction -----------------------------------------------------------------------

    def place(
        self,
        model: ModelFacts,
        enqueue: Callable[[redis.client.Pipeline, Decision], Any],
        now: float | None = None,
        wait: Wait | None = None,
        admitting: Callable[[redis.client.Pipeline], bool] | None = None,
        only_worker: str | None = None,
        recount: str | None = None,
        hits_only: bool = False,
    ) -> tuple[Decision, Any]:
        """Decide where ``model`` runs and commit it, with ``enqueue(pipe, decision)`` adding
        the work to the same transaction; returns the decision and what ``enqueue`` returned.

        Without room: with ``wait``, the request joins the admission queue (the decision
        carries its ticket; ``enqueue`` is not called) or :class:`QueueFull` is raised;
        without it, :class:`MemoryBusy`. ``admitting``: this is the admission queue's head
        being placed (it may not wait again; the check runs inside the transaction, False:
        the ticket is gone, return ``(None, None)``). ``only_worker``: place on that worker.
        ``hits_only``: place it only if its model is cached (a waiting request behind a head
        that does not fit: it takes no memory). ``recount``: a request placed again (its copy
        was evicted while it was queued) that was counted as a ``hit`` or ``miss`` then: it is
        not counted as a new request (the policies' statistics stay true), only moved to its
        new outcome.
        Also raises NoWorkers, ModelTooLarge, or ``agent.txn.Contended``."""
        now = now or time.time()
        alive: dict[str, Worker] = {}

        def watched() -> list[str]:
            alive.clear()
            alive.update(self.members.alive())
            if not alive:
                raise NoWorkers(
                    "no worker is running: start one with `brulee up` or `brulee worker`"
                )
            devices = sorted({w.device for w in alive.values()})
            names = ("entries", "pins", "waiting")
            return [key(n, d) for d in devices for n in names] + [key("workers")]

        def body(pipe) -> tuple[Decision | None, Any]:
            if admitting is not None and not admitting(pipe):
                pipe.unwatch()
                return None, None
            devices = sorted({w.device for w in alive.values()})
            state = self._read_state(model.name, alive, devices)
            decision, policy = self._decide(
                model, alive, devices, now, state, admitting is not None, only_worker, hits_only
            )
            if decision.ticket is not None:
                if admitting is not None:  # still no room for the head: it keeps waiting
                    if not decision.drain:
                        pipe.unwatch()
                        return decision, None
                    pipe.multi()
                else:
                    decision = waiting.join(self, pipe, model, decision, state, wait, alive, now)
                docs = {slot(m, w): doc for m, w, doc in state.entries[decision.device]}
                Copies.drain(pipe, decision.device, decision.drain, now, docs)
                return decision, None
            pipe.multi()
            if recount is None:
                self._record_arrival(pipe, model.name, now)
            self._commit(pipe, decision.served or model, decision, now, state, policy, recount)
            return decision, enqueue(pipe, decision)

        try:
            with self._deciding:  # one decision at a time per process: no self-contention
                return transaction(self.r, watched, body, what=f"placing {model.name!r}")
        except PlacementError:
            self._record_arrival(self.r, model.name, now)
            raise

    @staticmethod
    def _record_arrival(conn, model: str, now: float) -> None:
        conn.xadd(
            key("arrivals"), {"m": model, "t": repr(now)}, maxlen=ARRIVALS_KEPT, approximate=True
        )

    def _read_state(self, model: str, alive: dict[str, Worker], devices: list[str]) -> _State:
        """What a decision reads, in one round trip (inside the WATCH)."""
        with self.r.pipeline(transaction=False) as pipe:
            for d in devices:
                pipe.hgetall(key("entries", d))
                pipe.hget(key("device", d), "cap")
                pipe.hgetall(key("pins", d))
                pipe.get(key("clock", d))
                pipe.zcard(key("waiting", d))
                pipe.hgetall(key("queued", d))
                pipe.hgetall(key("priority", d))
            ask_backlogs(pipe, alive.values())
            pipe.get(key("requests"))
            pipe.hget(key("stats", model), "requests")
            replies = pipe.execute()
        state = _State(int(replies[-2] or 0), int(replies[-1] or 0))
        for i, d in enumerate(devices):
            raw, cap, pins, clock, waiting, queued, priority = replies[7 * i : 7 * i + 7]
            state.entries[d] = parse_entries(raw, alive)
            state.caps[d], state.pins[d] = parse_cap(d, cap), decode(pins)
            state.clocks[d], state.waiting[d] = float(clock or 0.0), int(waiting)
            state.queued[d], state.priority[d] = decode(queued), decode(priority)
        state.backlog = backlogs_from(alive.values(), replies[7 * len(devices) : -2])
        return state

    def _decide(
        self,
        model: ModelFacts,
        alive: dict[str, Worker],
        devices: list[str],
        now: float,
        state: _State,
        admitting: bool,
        only_worker: str | None,
        hits_only: bool = False,
    ) -> tuple[Decision, EvictionPolicy | None]:
        if model.variants and not (hits_only or admitting) and only_worker is None:
            from agent import variant_placement  # the memory-adaptive rule (agent.variants)

            return variant_placement.decide(
                self, model, alive, devices, now, state, admitting, only_worker
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
                return self._hit(best_hit, alive, state), None
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
            policy = self.policy(state.clocks[device])
            facts = policy_entries(self.r, device, state.entries[device], state.pins[device])
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
            return self._hit(best_hit, alive, state), None
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

    def _hit(self, holder: tuple[str, str], alive: dict[str, Worker], state: _State) -> Decision:
        device, worker = holder
        return Decision(device, worker, alive[worker].queue, hit=True)

    def _commit(
        self,
        pipe,
        model: ModelFacts,
        d: Decision,
        now: float,
        state: _State,
        policy: EvictionPolicy | None,
        recount: str | None = None,
    ) -> None:
        s = slot(model.name, d.worker)
        policy = policy or self.policy(state.clocks[d.device])
        pipe.hset(key("used", d.device), s, now)
        pipe.hincrby(key("queued", d.device), s, 1)
        if recount is None:
            pipe.hincrby(key("stats", model.name), "requests", 1)
            pipe.incr(key("requests"))
        entry = Entry(
            model.name,
            model.bytes,
            model.load_s,
            model.exec_s,
            requests=state.model_requests + (recount is None),
            inserted_at=now,
            last_used=now,
        )
        if d.hit:
            # a hit starts from the stored priority (LFU keeps its insert-time count there)
            stored = state.priority[d.device].get(s)
            entry.priority = float(stored) if stored is not None else 0.0
            policy.on_hit(entry, now)
        else:
            policy.on_insert(entry, now)
        pipe.hset(key("priority", d.device), s, entry.priority)
        move_count(pipe, d.device, model.name, recount, "hit" if d.hit else "miss")
        if d.hit:
            return
        Copies.reserve(
            pipe, d.device, model.name, d.worker, model.bytes, model.load_s, model.exec_s, now
        )
        if d.evicted:
            self.copies.evict(pipe, d.device, [slot(m, w) for m, w in d.evicted], self.policy_name)
            if d.why:
                evictions.record(pipe, d.device, d.why)
        if policy.uses_clock:
            pipe.set(key("clock", d.device), policy.clock)
